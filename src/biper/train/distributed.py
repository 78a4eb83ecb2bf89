"""Data-parallel training with PyTorch's own engine: torch.distributed, DDP, torchrun.

One process per device; each holds a full replica, reads its own shard of each batch (global
batch ``B`` over ``W`` processes: ``B / W`` each), and ``DistributedDataParallel`` averages the
gradients in ``backward``, so every replica keeps the same weights and a W-process run follows
the one-process run with the same global batch up to float rounding (except BatchNorm's local
statistics; ``sync_bn: true`` uses ``torch.nn.SyncBatchNorm``, CUDA only). docs/distributed.md
has the derivation; `rank_divergence` measures the agreement.

Launch (torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)::

    torchrun --nproc_per_node=8 -m biper train imagenet-resnet18-biper --data-dir /data/imagenet
    biper train imagenet-resnet18-biper --nproc 8 --data-dir /data/imagenet     # the same

Backend: NCCL on GPUs (rank r uses ``cuda:LOCAL_RANK``), gloo on CPU. Rank 0 alone prints,
draws progress bars and writes files; it also picks the checkpoint to resume from and sends it
to every rank (`run_on_main`, `broadcast_object`), so all ranks resume from the same state even
when only rank 0 sees the run folder.

Example (a script started with ``torchrun --nproc_per_node=2 script.py``; `biper.train.train`
does all of this itself)::

    with process_group("auto") as info:              # join the job, leave it at the end
        net = wrap_model(model.to(info.device), info.device)  # DDP (+ SyncBatchNorm: sync_bn=True)
        loader = TensorLoader(data, per_rank_batch(256, info.world), train=True,
                              rank=info.rank, world_size=info.world)
        ...                                          # the usual loop over loader with net
        check_in_sync(model, "at the end")           # raises if any rank drifted
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import pickle
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import BiperError
from .metrics import rank_world

__all__ = ["DistInfo", "env_world", "backend_for", "rank_device", "process_group", "per_rank_batch",
           "preflight", "wrap_model", "barrier", "broadcast_object", "run_on_main", "main_first",
           "all_reduce_sums", "agree_signal", "sync_buffers", "cuda_rng_states", "set_cuda_rng_states",
           "rank_divergence", "check_in_sync", "launch"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job: ``rank`` of ``world`` (global), ``local_rank`` on
    its machine, its ``device`` and the communication ``backend`` (None for one process)."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    backend: str | None


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise BiperError(f"environment variable {name} must be an integer, got {text!r}") from None


def env_world() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from the torchrun environment; ``(0, 0, 1)`` without."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1:
        raise BiperError(f"environment variable WORLD_SIZE must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise BiperError(f"environment variable RANK must be in [0, {world - 1}] for WORLD_SIZE={world}, "
                         f"got {rank}")
    if local_rank < 0:
        raise BiperError(f"environment variable LOCAL_RANK must be >= 0, got {local_rank}")
    if world > 1:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if missing:
            raise BiperError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set; start the processes "
                             f"with torchrun (or biper train --nproc N)")
    return rank, local_rank, world


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(name: str = "auto") -> torch.device:
    """The device of this process for config ``device`` ``name``: with several processes
    ``cuda`` / ``auto`` on a GPU machine become ``cuda:LOCAL_RANK``; one process as usual."""
    from .model import resolve_device

    device = resolve_device(name)
    world = max(rank_world()[1], env_world()[2])
    if world == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise BiperError(f"device: {name} names one GPU but {world} processes run; "
                         f"use device=cuda (each process takes cuda:LOCAL_RANK)")
    local = _env_int("LOCAL_RANK", -1)
    if local < 0:
        local = torch.cuda.current_device()
    if local >= torch.cuda.device_count():
        raise BiperError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPU(s); "
                         f"lower --nproc_per_node")
    return torch.device("cuda", local)


@contextlib.contextmanager
def process_group(device: str = "auto", *, sync_bn: bool = False) -> Iterator[DistInfo]:
    """Join the job described by the torchrun environment for the duration of the block.

    Without ``WORLD_SIZE > 1`` (or with a process group someone else already started) nothing
    is created or destroyed. ``sync_bn`` is checked here, before any process waits for another.
    """
    if dist.is_available() and dist.is_initialized():  # the caller owns the group
        yield DistInfo(dist.get_rank(), _env_int("LOCAL_RANK", 0), dist.get_world_size(),
                       rank_device(device), dist.get_backend())
        return
    rank, local_rank, world = env_world()
    if world == 1:
        yield DistInfo(0, 0, 1, rank_device(device), None)
        return
    if not dist.is_available():
        raise BiperError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    dev = rank_device(device)
    if sync_bn and dev.type != "cuda":
        raise BiperError(f"sync_bn: SyncBatchNorm needs CUDA devices (PyTorch has no CPU kernel for it), "
                         f"this run uses {dev}; set sync_bn=false")
    backend = backend_for(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend)
    try:
        yield DistInfo(rank, local_rank, world, dev, backend)
    except BaseException as err:
        _drop_frames(err)
        raise
    finally:
        _destroy_group()


def _drop_frames(err: BaseException | None) -> None:
    """Release the locals (DDP wrappers, models) of the finished frames an exception holds."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        traceback.clear_frames(err.__traceback__)
        err = err.__cause__ or err.__context__


def _destroy_group() -> None:
    """Leave the process group without the teardown deadlock of gloo: the group's destructor
    joins its worker threads while holding the GIL, and a worker still releasing a finished
    operation's Python-owned tensors waits for the GIL. So DDP wrappers (which hold the group)
    are freed first, the GIL is released for a moment, and only then is the group destroyed."""
    gc.collect()
    time.sleep(0.05)
    dist.destroy_process_group()


def per_rank_batch(global_batch: int, world: int, name: str = "data.batch_size") -> int:
    """Samples per rank for a recipe's global batch; it must split evenly over the processes."""
    if global_batch % world:
        lower, upper = global_batch - global_batch % world, global_batch + world - global_batch % world
        raise BiperError(f"{name}={global_batch} (the global batch) does not split over {world} processes; "
                         f"use a multiple of {world} such as {lower or upper} or {upper}")
    return global_batch // world


def preflight(config, world: int) -> None:
    """Errors a run of ``config`` over ``world`` processes on this machine would hit, raised
    once before any process starts: an uneven global batch, sync_bn off CUDA, too few GPUs."""
    from .model import resolve_device

    per_rank_batch(config.data.batch_size, world)
    device = resolve_device(config.device)
    if config.sync_bn and world > 1 and device.type != "cuda":
        raise BiperError(f"sync_bn: SyncBatchNorm needs CUDA devices (PyTorch has no CPU kernel for it), "
                         f"this run uses {device}; set sync_bn=false")
    if device.type == "cuda" and world > torch.cuda.device_count():
        raise BiperError(f"--nproc {world} but this machine has {torch.cuda.device_count()} GPU(s); "
                         f"use at most one process per GPU")
    if device.type == "cuda" and device.index is not None and world > 1:
        raise BiperError(f"device: {config.device} names one GPU but {world} processes would run; "
                         f"use device=cuda (each process takes cuda:LOCAL_RANK)")


def wrap_model(model: nn.Module, device: torch.device, *, sync_bn: bool = False) -> nn.Module:
    """``DistributedDataParallel(model)``; with ``sync_bn`` its BatchNorm layers become
    ``SyncBatchNorm`` first (in place: same parameters, buffers and state-dict keys).
    Returns ``model`` itself when only one process runs."""
    if rank_world()[1] == 1:
        return model
    if sync_bn:
        if torch.device(device).type != "cuda":
            raise BiperError(f"sync_bn: SyncBatchNorm needs CUDA devices, got {device}; set sync_bn=false")
        if nn.SyncBatchNorm.convert_sync_batchnorm(model) is not model:
            raise BiperError("sync_bn: the model itself is a BatchNorm layer; wrap it in a module")
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if torch.device(device).type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)  # buffers follow rank 0 before each forward


# -- collectives (each is a no-op with one process) --------------------------------------------
def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every rank gets here."""
    if rank_world()[1] > 1:
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (pickled; tensors arrive on the CPU)."""
    if rank_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _portable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # an exception whose constructor does not round-trip
        return BiperError(str(error))


def _on_main(fn: Callable[[], T], share_result: bool) -> tuple[T | None, bool]:
    rank = rank_world()[0]
    result, error = None, None
    if rank == 0:
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001  (raised again below, on every rank)
            error = err
    shared = broadcast_object(((result if share_result else None),
                               None if error is None else _portable(error)) if rank == 0 else None)
    if error is not None:
        raise error
    if shared[1] is not None:
        raise shared[1]
    return (result if rank == 0 else shared[0]), rank == 0


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its result on every rank; an exception it raises
    is raised on every rank, so no rank waits forever for one that failed."""
    if rank_world()[1] == 1:
        return fn()
    return _on_main(fn, share_result=True)[0]


def main_first(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0, then (once it succeeded) on the other ranks: e.g. rank 0 builds a
    data cache that the others then read. A failure on rank 0 is raised on every rank."""
    if rank_world()[1] == 1:
        return fn()
    result, is_main = _on_main(fn, share_result=False)
    return result if is_main else fn()


def all_reduce_sums(values: Sequence[float]) -> list[float]:
    """Element-wise sums over ranks of ``values`` (float64, exact for counts below 2^53)."""
    if rank_world()[1] == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def agree_signal(signum: int | None) -> int | None:
    """The largest signal number any rank received (None: none did); every rank gets the
    same answer, so all stop after the same step."""
    if rank_world()[1] == 1:
        return signum
    t = torch.tensor([signum or 0], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item()) or None


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, ...) to every rank."""
    if rank_world()[1] == 1:
        return
    for buf in model.buffers():
        dist.broadcast(buf.data, src=0)


def cuda_rng_states() -> list[torch.Tensor]:
    """CUDA generator states for a checkpoint: every visible GPU's with one process, only this
    rank's own GPU under DDP (querying the others would open a CUDA context on each of them)."""
    if not torch.cuda.is_available():
        return []
    if rank_world()[1] == 1:
        return torch.cuda.get_rng_state_all()
    return [torch.cuda.get_rng_state()]


def set_cuda_rng_states(states: Sequence[torch.Tensor]) -> None:
    """Restore `cuda_rng_states`; under DDP every rank takes the first state for its own GPU."""
    if not torch.cuda.is_available() or not states:
        return
    if rank_world()[1] == 1:
        torch.cuda.set_rng_state_all(states)
    else:
        torch.cuda.set_rng_state(states[0])


def rank_divergence(model: nn.Module, *, buffers: bool = True) -> dict[str, float]:
    """``{name: max |x_r - x_0| over ranks r}`` for every parameter (and buffer) that differs
    from rank 0's anywhere (inf where only one side is NaN); ``{}`` when all ranks agree bit
    for bit. Buffers differ between the forward passes of DDP training (each rank updates its
    BatchNorm statistics from its own batch until rank 0's are broadcast): pass
    ``buffers=False`` there, or call `sync_buffers` first."""
    if rank_world()[1] == 1:
        return {}
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    named += list(model.named_buffers()) if buffers else []
    if not named:
        return {}
    dev = _comm_device()
    flat = torch.cat([t.reshape(-1).to(dev, torch.float64) for _, t in named])     # (P,)
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    same = (flat == ref) | (flat.isnan() & ref.isnan())
    diff = torch.where(same, torch.zeros_like(flat), (flat - ref).abs().nan_to_num(nan=float("inf")))
    sizes = torch.tensor([t.numel() for _, t in named], device=dev)
    owner = torch.repeat_interleave(torch.arange(len(named), device=dev), sizes)  # (P,)
    per = torch.zeros(len(named), dtype=torch.float64, device=dev).scatter_reduce_(0, owner, diff, "amax")
    dist.all_reduce(per, op=dist.ReduceOp.MAX)
    return {name: v for (name, _), v in zip(named, per.tolist()) if v != 0.0}


def check_in_sync(model: nn.Module, where: str) -> None:
    """Raise `BiperError` when some rank's parameters or buffers differ from rank 0's."""
    drift = rank_divergence(model)
    if drift:
        name, worst = max(drift.items(), key=lambda kv: kv[1])
        raise BiperError(f"rank drift {where}: {len(drift)} tensor(s) differ between ranks, worst {name} "
                         f"by {worst:.3g}; DDP keeps replicas identical, so a kernel or device differs "
                         f"between processes")


# -- launching ----------------------------------------------------------------------------------
def launch(nproc: int, argv: Sequence[str], *, module: str = "biper") -> int:
    """Run ``python -m <module> <argv>`` in ``nproc`` processes on this machine, like
    ``torchrun --standalone --nproc_per_node=<nproc> -m <module> <argv>`` (PyTorch's elastic
    launcher, a free local port); returns the exit status (128 + N after signal N)."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise BiperError(f"nproc must be a positive integer, got {nproc!r}")
    if env_world()[2] > 1 or (dist.is_available() and dist.is_initialized()):
        raise BiperError("--nproc: this process already runs under torchrun (WORLD_SIZE is set); "
                         "drop --nproc")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "--module", module, *argv])
    try:
        run(args)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        code = int(failure.exitcode)
        return 128 - code if code < 0 else code
    except SignalException as err:
        return 128 + int(err.sigval)
    return 0
