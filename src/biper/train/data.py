"""The datasets and loaders of a run: what a stage reads its batches from.

The training loader's batch is the recipe's global batch split over the processes; both
loaders shard by rank. Rank 0 loads (and caches) the data before the other ranks read it.
"""

from __future__ import annotations

from ..data.loader import TensorLoader, derive_seed
from ..validate import wrap_errors
from . import distributed as ddp
from .config import RunConfig
from .tasks import check_task_data

__all__ = ["load_run_data", "stage_loaders"]


def load_run_data(config: RunConfig, *, progress: bool):
    """(train set, test set) of ``config.data``; errors are prefixed with ``data``. The stages'
    tasks must fit the data's targets (`biper.train.tasks.check_task_data`)."""
    from ..data import load_dataset

    d = config.data
    kwargs = dict(subset=d.subset, cache_dir=d.cache_dir, skip_corrupt=d.skip_corrupt, progress=progress,
                  **d.options)

    def load():
        with wrap_errors("data"):
            return (load_dataset(d.dataset, d.data_dir, "train", **kwargs),
                    load_dataset(d.dataset, d.data_dir, "test", **kwargs))

    train, test = ddp.main_first(load)  # rank 0 fills the cache before the others read it
    check_task_data(config, train)
    return train, test


def stage_loaders(config: RunConfig, index: int, train_set, test_set, rank: int, world: int
                  ) -> tuple[TensorLoader, TensorLoader]:
    """(train loader, test loader) of stage ``index`` for process ``rank`` of ``world``."""
    d = config.data
    train = TensorLoader(train_set, ddp.per_rank_batch(d.batch_size, world), train=True, augment=d.augment,
                         seed=derive_seed(config.seed, "data", index), drop_last=d.drop_last, rank=rank,
                         world_size=world, channels_last=config.channels_last)
    test = TensorLoader(test_set, -(-d.eval_batch_size // world), train=False, rank=rank, world_size=world,
                        channels_last=config.channels_last)
    return train, test
