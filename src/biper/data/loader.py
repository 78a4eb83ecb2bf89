"""A deterministic, resumable, shardable batch loader over tensor datasets.

``TensorLoader`` replaces ``torch.utils.data.DataLoader`` for datasets that live in memory as
uint8 tensors: each batch is one index, one batched crop/flip and one normalisation.

Determinism contract:

- Sample order for an epoch is ``randperm(N)`` from a generator seeded with (seed, epoch) when
  ``train`` (identical in every process), and ``0..N-1`` when evaluating.
- Augmentation of batch ``b`` draws from a generator seeded with (seed, epoch, rank, b), so
  ``iter_from(b)`` (or ``set_epoch(epoch, start_batch=b)``) reproduces batches ``b, b+1, ...``
  bit for bit, which is what resuming mid-epoch needs.
- With ``world_size > 1`` the epoch order is padded, like ``DistributedSampler``, by repeating
  its first ``ceil(N / world_size) * world_size - N`` entries; rank ``r`` takes positions
  ``r, r + world_size, ...``. Every rank therefore gets the same number of samples and batches
  and the shards are disjoint apart from those padding duplicates, which sit at the end of a
  rank's shard: ``num_real`` says how many of the rank's ``num_samples`` are not duplicates.
- ``drop_last`` drops each rank's final partial batch.

Example::

    >>> loader = TensorLoader(ds, 256, train=True, seed=0)
    >>> for epoch in range(2):
    ...     loader.set_epoch(epoch)
    ...     for x, y in loader:      # x float32 (B, 3, H, W) normalised, y int64 (B,)
    ...         ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch

from biper.data.augment import normalize
from biper.errors import BiperError

__all__ = ["TensorLoader", "derive_seed"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed mixing ``parts`` (ints/strings) with BLAKE2b; stable across processes."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _generator(*parts: object) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*parts))
    return g


class TensorLoader:
    """Iterate ``(x, y)`` batches of ``dataset`` (an ``ImageTensorDataset`` or any object with
    ``__len__``, ``labels``, ``mean``, ``std`` and ``fetch(indices, augment=, generator=)``).
    A dataset with ``fetch_pair(indices, augment=, generator=) -> (x, y)`` (dense targets, see
    :class:`biper.data.dense.DenseDataset`) serves both ``x`` and ``y`` from it.

    Args:
        batch_size: samples per batch on this rank.
        train: shuffle every epoch and augment (if ``augment``); otherwise fixed order, no aug.
        augment: crop (pad 4) + flip when training.
        seed: base seed of the shuffle and augmentation streams.
        drop_last: drop this rank's final partial batch.
        rank, world_size: shard of the epoch order for data-parallel training.
        channels_last: return ``x`` in ``torch.channels_last`` memory format.
        dtype: floating dtype of ``x``.
        device: move the dataset tensors there once; batches are built on that device.
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, augment: bool = True,
                 seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BiperError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise BiperError(f"world_size must be a positive integer, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise BiperError(f"rank must be in [0, {world_size - 1}] for world_size={world_size}, "
                             f"got {rank!r}")
        if not dtype.is_floating_point:
            raise BiperError(f"dtype must be a floating dtype (float32, bfloat16, ...), got {dtype}")
        if len(dataset) == 0:
            raise BiperError("cannot build a loader over an empty dataset")
        if device is not None and hasattr(dataset, "to"):
            dataset = dataset.to(device)
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = bool(train)
        self.augment = bool(augment) and self.train
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.rank = rank
        self.world_size = world_size
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.epoch = 0
        self._start_batch = 0
        n = len(dataset)
        self.num_samples = -(-n // world_size)                         # per rank, after padding
        self.num_real = len(range(rank, n, world_size))                 # non-duplicate samples
        if self.drop_last and self.num_samples < batch_size:
            raise BiperError(f"drop_last with batch_size={batch_size} leaves no batch: this rank "
                             f"has {self.num_samples} samples; lower batch_size")

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch whose order and augmentation the next iteration replays; the next
        ``iter(loader)`` starts at ``start_batch`` (later ones start at 0)."""
        self._check_batch(start_batch)
        self.epoch = int(epoch)
        self._start_batch = int(start_batch)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices (``num_samples``,) for the current epoch, in batch order."""
        n = len(self.dataset)
        if self.train:
            order = torch.randperm(n, generator=_generator("order", self.seed, self.epoch))
        else:
            order = torch.arange(n)
        total = self.num_samples * self.world_size
        if total > n:                                                   # pad by wrapping around
            order = torch.cat([order, order.repeat(-(-total // n))[: total - n]])
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start, self._start_batch = self._start_batch, 0
        return self.iter_from(start)

    def iter_from(self, batch_index: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate the current epoch from batch ``batch_index`` on (exact replay of a resume)."""
        self._check_batch(batch_index)
        order = self.indices()
        return (self._batch(order, b) for b in range(batch_index, len(self)))

    def batch(self, batch_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``batch_index`` of the current epoch, computed on its own."""
        self._check_batch(batch_index)
        if batch_index >= len(self):
            raise BiperError(f"batch_index must be < {len(self)} batches, got {batch_index}")
        return self._batch(self.indices(), batch_index)

    def _check_batch(self, b: int) -> None:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b <= len(self):
            raise BiperError(f"batch index must be an integer in [0, {len(self)}], got {b!r}")

    def _batch(self, order: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = order[b * self.batch_size:(b + 1) * self.batch_size]       # (B,)
        gen = _generator("augment", self.seed, self.epoch, self.rank, b) if self.augment else None
        if hasattr(self.dataset, "fetch_pair"):                         # dense targets
            x, y = self.dataset.fetch_pair(idx, augment=self.augment, generator=gen)
        else:
            x = self.dataset.fetch(idx, augment=self.augment, generator=gen)  # uint8 (B,3,H,W)
            y = self.dataset.labels[idx.to(self.dataset.labels.device)]     # (B,)
        x = normalize(x, self.dataset.mean, self.dataset.std, self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y
