"""Epoch-end diagnostics of the binary layers: sign flips, backward magnitude, soft forwards.

`FlipTracker.update(model)` is called by the training engine once per epoch, for every method.
It returns the keys added to that epoch's metrics row:

- ``flip_rate``: fraction of deployed weights ``binary(w)`` whose sign changed since the
  previous call (over all binary layers, weighted by size; None on the first call, when there
  is nothing to compare with; the remembered signs travel with checkpoints, see `state_dict`);
- ``mean_abs_bprime``: mean over all binary weights of ``|B'(w)|``, the backward multiplier;
- ``soft_frac``: fraction of weights whose training forward ``F(w)`` differs from the deployed
  ``binary(w)`` by more than ``SOFT_TOL`` (0 for methods that train with the binary weights;
  the end of a one-stage sine-to-square anneal should bring it near 0);
- ``layers``: ``{name: {"flip_rate", "mean_abs_bprime", "soft_frac", "omega0"}}`` per layer
  (``omega0`` only for periodic quantizers).

Frequency re-targeting: a weight quantizer with a parameter ``target_qe > 0`` (the periodic
surrogates) gets its omega0 re-chosen here, before the signs are recorded, so that the sine
QE at the optimal scale of a Laplace fit of its weights equals the target
(`biper.analysis.flexible_init.omega0_for_target`).

Example::

    >>> import torch
    >>> from biper.nn import BinaryLinear
    >>> model = torch.nn.Sequential(BinaryLinear(4, 4, weight_quantizer="bc"))
    >>> t = FlipTracker()
    >>> t.update(model)["flip_rate"] is None
    True
    >>> with torch.no_grad():
    ...     model[0].weight.neg_()
    >>> t.update(model)["flip_rate"]
    1.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..nn import binary_layers
from .flexible_init import omega0_for_target
from .measure import laplace_b

__all__ = ["FlipTracker", "layer_diagnostics", "SOFT_TOL"]

SOFT_TOL = 1e-2


@torch.no_grad()
def layer_diagnostics(layer: nn.Module) -> tuple[torch.Tensor, dict[str, Any]]:
    """(deployed signs as bool, {"mean_abs_bprime", "soft_frac", "numel", "omega0"?}) of one layer."""
    q = layer.weight_quantizer
    w = layer.weight.detach().float()
    binary = q.binary(w)
    out: dict[str, Any] = {
        "numel": w.numel(),
        # float64 and 10 significant digits: independent of vector paths and reduction order (threads, processes)
        "mean_abs_bprime": float(f"{float(q.backward_fn(w.double()).abs().mean()):.10g}"),
        "soft_frac": float(((q.forward_fn(w) - binary).abs() > SOFT_TOL).float().mean()),
    }
    if hasattr(q, "omega0"):
        out["omega0"] = float(q.omega0)
    return binary > 0, out


@torch.no_grad()
def retarget_omega0(layer: nn.Module) -> float | None:
    """Re-choose omega0 of a layer whose quantizer has ``target_qe > 0``; the new omega0 or None."""
    q = layer.weight_quantizer
    target = float(getattr(q, "target_qe", 0.0) or 0.0)
    if target <= 0:
        return None
    b = laplace_b(layer.weight.detach().double().flatten())
    q.omega0 = float(omega0_for_target(b, target))
    return q.omega0


class FlipTracker:
    """Remembers each binary layer's deployed signs between calls (see module docs)."""

    def __init__(self) -> None:
        self.previous: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The remembered signs (bool tensors by layer name), for a checkpoint."""
        return dict(self.previous)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.previous = {k: v.bool() for k, v in state.items()}

    def update(self, model: nn.Module) -> dict[str, Any]:
        layers: dict[str, dict[str, Any]] = {}
        flipped = compared = total = 0
        bprime = soft = 0.0
        for name, layer in binary_layers(model):
            if layer.weight_quantizer is None:
                continue
            retarget_omega0(layer)
            signs, row = layer_diagnostics(layer)
            n = row.pop("numel")
            prev = self.previous.get(name)
            if prev is not None and prev.shape == signs.shape:
                f = int((prev.to(signs.device) != signs).sum())
                row["flip_rate"] = f / n
                flipped, compared = flipped + f, compared + n
            else:
                row["flip_rate"] = None
            self.previous[name] = signs.cpu()
            total += n
            bprime += row["mean_abs_bprime"] * n
            soft += row["soft_frac"] * n
            layers[name] = row
        if not total:
            return {}
        return {"flip_rate": flipped / compared if compared else None,
                "mean_abs_bprime": bprime / total, "soft_frac": soft / total, "layers": layers}
