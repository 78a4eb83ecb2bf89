"""Test-set evaluation shared by the trainer, `biper eval` and the benchmarks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..data.loader import TensorLoader
from ..data.progress import Progress
from . import distributed as ddp
from .metrics import progress_enabled
from .model import autocast_context

__all__ = ["eval_loop", "evaluate"]


@torch.no_grad()
def eval_loop(model: torch.nn.Module, loader: TensorLoader, add: Callable, *, device: torch.device,
              precision: str = "fp32", desc: str = "eval", quiet: bool = True) -> None:
    """Run ``model`` in eval mode over ``loader`` and call ``add(out, y, x_hw)`` per batch with
    the batch's real rows only (a rank's shard ends with padding duplicates, which are dropped);
    the model's train/eval mode is restored afterwards. Every task's test metrics use this loop."""
    was_training = model.training
    model.eval()
    seen = 0
    bar = Progress(len(loader), desc, enabled=progress_enabled(quiet), unit="batch")
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast_context(precision, device):
            out = model(x)
        keep = min(len(y), loader.num_real - seen)
        add(out[:keep], y[:keep], x.shape[-2:])
        seen += keep
        bar.update()
    bar.close()
    model.train(was_training)


def evaluate(model: torch.nn.Module, loader: TensorLoader, *, device: torch.device,
             precision: str = "fp32", desc: str = "eval", quiet: bool = True) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy in %) of ``model`` over ``loader``."""
    sums = [0.0, 0, 0]                                              # loss, correct, count

    def add(logits: torch.Tensor, y: torch.Tensor, hw) -> None:    # logits (B, K)
        sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").item()
        sums[1] += int((logits.argmax(dim=1) == y).sum())
        sums[2] += y.numel()

    eval_loop(model, loader, add, device=device, precision=precision, desc=desc, quiet=quiet)
    total_loss, correct, count = ddp.all_reduce_sums(sums)         # over the shards
    return total_loss / max(count, 1), 100.0 * correct / max(count, 1)
