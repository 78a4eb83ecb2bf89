"""Test-set evaluation shared by the trainer, `biper eval` and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.loader import TensorLoader
from ..data.progress import Progress
from . import distributed as ddp
from .metrics import progress_enabled
from .model import autocast_context

__all__ = ["evaluate"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: TensorLoader, *, device: torch.device,
             precision: str = "fp32", desc: str = "eval", quiet: bool = True) -> tuple[float, float]:
    """(mean cross-entropy, top-1 accuracy in %) of ``model`` over ``loader``."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    bar = Progress(len(loader), desc, enabled=progress_enabled(quiet), unit="batch")
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast_context(precision, device):
            logits = model(x)                                               # (B, K)
        keep = min(y.numel(), loader.num_real - count)   # a rank's shard ends with padding duplicates
        logits, y = logits[:keep], y[:keep]
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == y).sum())
        count += y.numel()
        bar.update()
    bar.close()
    model.train(was_training)
    total_loss, correct, count = ddp.all_reduce_sums([total_loss, correct, count])  # over the shards
    return total_loss / max(count, 1), 100.0 * correct / max(count, 1)
