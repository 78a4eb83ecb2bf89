"""Bop, the Binary Optimizer (Helwegen et al., NeurIPS 2019, "Latent weights do not exist").

Bop treats the weights of the binary layers as signs to be flipped, not as real numbers to be
moved. Per weight it keeps an exponential moving average ``m`` of the gradient ``g`` and flips
the weight when the average is strong enough and points the way the weight already points
(a gradient-descent step would push it through zero)::

    m <- (1 - gamma) m + gamma g
    w <- -w   where |m| > threshold and sign(m) == sign(w)

Defaults gamma 1e-4 and threshold 1e-8 (Larq's). The flip keeps ``|w|``, so with sign
quantizers only the sign matters; with ``sign(0) = +1`` a weight of exactly 0 stays 0. Every
other parameter (BatchNorm, scales ``alpha``, float layers) is trained by an ordinary float
optimizer (``sgd``, ``adam`` or ``adamw`` with the stage's lr, betas, momentum and weight decay;
the paper uses Adam 0.01). Bop's weights get no weight decay.

``gamma_schedule: lr`` scales gamma by the stage's learning-rate schedule (``gamma * lr(s) /
lr``: the warm-up and cosine of the stage, the way the paper decays gamma with the lr);
``constant`` keeps it fixed. The composite optimizer has ``param_groups``, ``zero_grad``,
``step``, ``state_dict`` and ``load_state_dict``, so the engine, its schedule and its
checkpoints treat it like any torch optimizer, and resume is exact.

Stage keys: ``optimizer: bop`` and ``bop: {gamma, threshold, float_optimizer, gamma_schedule}``.

Example::

    >>> import torch
    >>> w = torch.nn.Parameter(torch.tensor([0.5, -0.5, 0.5]))
    >>> opt = Bop([w], gamma=0.5, threshold=0.1)
    >>> w.grad = torch.tensor([1.0, 1.0, -1.0]); opt.step()
    >>> w.tolist()
    [-0.5, -0.5, 0.5]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import BiperError
from ..functional import sign
from ..nn import is_binary_layer
from ..validate import ConfigError, check_choice, check_keys, check_mapping, check_number

__all__ = ["Bop", "BopWithFloat", "BOP_DEFAULTS", "check_bop", "binary_weights", "build_bop"]

BOP_DEFAULTS: dict[str, Any] = {"gamma": 1e-4, "threshold": 1e-8, "float_optimizer": "adam",
                                "gamma_schedule": "constant"}
FLOAT_OPTIMIZERS = ("sgd", "adam", "adamw")
GAMMA_SCHEDULES = ("constant", "lr")


def check_bop(value: Any) -> dict[str, Any] | None:
    """The stage's ``bop`` mapping validated (None stays None; defaults are not filled in)."""
    if value is None:
        return None
    check_mapping("bop", value)
    check_keys("bop", value, list(BOP_DEFAULTS), [])
    if "gamma" in value:
        check_number("bop.gamma", value["gamma"], minimum=0.0, maximum=1.0, strict_min=True)
    if "threshold" in value:
        check_number("bop.threshold", value["threshold"], minimum=0.0)
    if "float_optimizer" in value:
        check_choice("bop.float_optimizer", value["float_optimizer"], FLOAT_OPTIMIZERS)
    if "gamma_schedule" in value:
        check_choice("bop.gamma_schedule", value["gamma_schedule"], GAMMA_SCHEDULES)
    return dict(value)


class Bop(torch.optim.Optimizer):
    """The Bop update over binary weights (module docstring). A group's ``lr`` is only read
    when ``gamma_schedule`` is ``lr``: gamma is then ``gamma * lr / base_lr``."""

    def __init__(self, params, gamma: float = 1e-4, threshold: float = 1e-8, *,
                 gamma_schedule: str = "constant", base_lr: float = 1.0):
        if not 0.0 < gamma <= 1.0:
            raise BiperError(f"Bop gamma must be in (0, 1], got {gamma}")
        if threshold < 0.0:
            raise BiperError(f"Bop threshold must be >= 0, got {threshold}")
        if gamma_schedule not in GAMMA_SCHEDULES:
            raise BiperError(f"Bop gamma_schedule must be constant or lr, got {gamma_schedule!r}")
        super().__init__(params, dict(gamma=gamma, threshold=threshold, gamma_schedule=gamma_schedule,
                                      base_lr=base_lr, lr=base_lr))

    def current_gamma(self, group: dict) -> float:
        if group["gamma_schedule"] == "lr" and group["base_lr"] > 0:
            return group["gamma"] * group["lr"] / group["base_lr"]
        return group["gamma"]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            gamma, threshold = self.current_gamma(group), group["threshold"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "m" not in state:
                    state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["m"]
                m.mul_(1.0 - gamma).add_(p.grad, alpha=gamma)
                flip = (m.abs() > threshold) & (sign(m) == sign(p))
                p.copy_(torch.where(flip, -p, p))
        return loss


class BopWithFloat:
    """Bop over the binary weights plus a float optimizer (or None) over the rest."""

    def __init__(self, bop: Bop, float_optimizer: torch.optim.Optimizer | None):
        self.bop, self.float = bop, float_optimizer

    @property
    def param_groups(self) -> list[dict]:
        return (self.float.param_groups if self.float is not None else []) + self.bop.param_groups

    @property
    def state(self):
        out = dict(self.bop.state)
        if self.float is not None:
            out.update(self.float.state)
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.bop.zero_grad(set_to_none=set_to_none)
        if self.float is not None:
            self.float.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        if self.float is not None:
            self.float.step()
        self.bop.step()
        return loss

    def state_dict(self) -> dict:
        return {"bop": self.bop.state_dict(),
                "float": self.float.state_dict() if self.float is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or "bop" not in state:
            raise BiperError("the checkpoint's optimizer state is not Bop's; it was written by another "
                             "optimizer (resume with the same recipe)")
        self.bop.load_state_dict(state["bop"])
        if self.float is not None:
            self.float.load_state_dict(state["float"])


def binary_weights(model: nn.Module) -> list[nn.Parameter]:
    """The latent weights of the binary layers whose weights are quantized."""
    return [m.weight for m in model.modules()
            if is_binary_layer(m) and getattr(m, "weight_quantizer", None) is not None
            and m.weight.requires_grad]


def build_bop(model: nn.Module, stage, float_groups: list[dict]) -> BopWithFloat:
    """Bop over `binary_weights(model)`; the float optimizer over ``float_groups`` (the stage's
    weight-decay groups) with the binary weights taken out."""
    settings = {**BOP_DEFAULTS, **(stage.bop or {})}
    weights = binary_weights(model)
    if not weights:
        raise ConfigError("optimizer", "bop needs binary layers with quantized weights; this stage's "
                                       "model has none (full precision?)")
    chosen = {id(p) for p in weights}
    groups = [dict(g, params=[p for p in g["params"] if id(p) not in chosen]) for g in float_groups]
    groups = [g for g in groups if g["params"]]
    float_opt = None
    if groups:
        kind = settings["float_optimizer"]
        if kind == "sgd":
            float_opt = torch.optim.SGD(groups, lr=stage.lr, momentum=stage.momentum, nesterov=stage.nesterov)
        elif kind == "adam":
            float_opt = torch.optim.Adam(groups, lr=stage.lr, betas=stage.betas, eps=stage.eps)
        else:
            float_opt = torch.optim.AdamW(groups, lr=stage.lr, betas=stage.betas, eps=stage.eps)
    bop = Bop(weights, float(settings["gamma"]), float(settings["threshold"]),
              gamma_schedule=settings["gamma_schedule"], base_lr=float(stage.lr))
    return BopWithFloat(bop, float_opt)
