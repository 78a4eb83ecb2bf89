"""The ProxConnect++ view of binarization: a method is a pair (F, B').

Training keeps latent real values ``w``. The network computes with the forward quantizer
``F(w)``; backpropagation replaces ``F'(w)`` by the backward derivative ``B'(w)``::

    y = F(w)            grad_w = B'(w) * grad_y

Every method is a subclass of `Quantizer` that names two small pure functions, ``forward_fn``
(F) and ``backward_fn`` (B'), and one `torch.autograd.Function` (`PairFunction`) joins them.
Parameters (omega0, mu, beta, clip, ...) are keyword arguments with defaults; a parameter may be
given as a `Schedule` (or its dict form) and is then annealed by ``set_progress``.

Reference: Lu, Yu, Li, Partovi Nia, "Understanding Neural Network Binarization with Forward and
Backward Proximal Quantizers", NeurIPS 2023 (arXiv 2402.17710).

Example::

    >>> import torch, biper
    >>> q = biper.get_quantizer("biper", omega0=20.0)
    >>> w = torch.tensor([0.01, 0.2], requires_grad=True)
    >>> q(w)                       # sign(sin(20 w))
    tensor([ 1., -1.], grad_fn=<PairFunctionBackward>)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import BiperError, did_you_mean
from ..functional import sign
from .schedules import Schedule, as_schedule

__all__ = [
    "Quantizer",
    "PairFunction",
    "register",
    "get_quantizer",
    "list_quantizers",
    "describe_quantizers",
    "set_progress",
    "KINDS",
]

KINDS = ("weight", "activation")
_REGISTRY: dict[str, type["Quantizer"]] = {}


class PairFunction(torch.autograd.Function):
    """Forward ``F(x)``; backward ``grad * B'(x)`` (B' evaluated at the input ``x``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantizer: "Quantizer") -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.quantizer = quantizer
        return quantizer.forward_fn(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return ctx.quantizer.input_grad(x, grad), None


class Quantizer(nn.Module):
    """Base class of every forward/backward quantizer pair.

    Subclasses set the class attributes below and implement ``forward_fn`` (F) and
    ``backward_fn`` (B'); ``binary`` gives the +-1 values used at deployment.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "weight"
    forward_formula: ClassVar[str] = ""
    backward_formula: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    choices: ClassVar[dict[str, tuple[str, ...]]] = {}
    positive: ClassVar[tuple[str, ...]] = ()  # numeric parameters that must be > 0
    latent_clip: float | None = None

    def __init__(self, **params: Any) -> None:
        super().__init__()
        for key in params:
            if key not in self.defaults:
                valid = ", ".join(self.defaults) or "none"
                raise BiperError(
                    f"quantizer {self.name!r} has no parameter {key!r}"
                    f"{did_you_mean(key, self.defaults)}; valid: {valid}"
                )
        self.schedules: dict[str, Schedule] = {}
        for key, default in self.defaults.items():
            value = params.get(key, default)
            if isinstance(value, (dict, Schedule)):
                schedule = as_schedule(value)
                self.schedules[key] = schedule
                for end in (schedule.start, schedule.end):
                    self._check(key, end)
                value = schedule(0.0)
            self._check(key, value)
            setattr(self, key, value)

    def _check(self, key: str, value: Any) -> None:
        if key in self.choices:
            if value not in self.choices[key]:
                raise BiperError(
                    f"{self.name} {key} must be one of {', '.join(self.choices[key])}, got {value!r}"
                    f"{did_you_mean(str(value), self.choices[key])}"
                )
            return
        default = self.defaults[key]
        if default is None or isinstance(default, bool):
            return
        if isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise BiperError(f"{self.name} {key} must be a finite number, got {value!r}")
            if key in self.positive and value <= 0:
                raise BiperError(f"{self.name} {key} must be > 0, got {value!r}")

    # -- the pair -------------------------------------------------------------------------
    def forward_fn(self, x: torch.Tensor) -> torch.Tensor:
        """F(x): the values the network computes with during training."""
        raise NotImplementedError

    def backward_fn(self, x: torch.Tensor) -> torch.Tensor:
        """B'(x): multiplies the incoming gradient in the backward pass."""
        raise NotImplementedError

    def input_grad(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``grad * B'(x)``, the gradient PairFunction passes back (subclasses may fuse it)."""
        return grad * self.backward_fn(x).to(grad.dtype)

    def backward_primitive(self, x: torch.Tensor) -> torch.Tensor:
        """B(x), a function whose derivative is B' (used by the PC++ criterion check)."""
        raise NotImplementedError(f"quantizer {self.name!r} declares no backward primitive B")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PairFunction.apply(x, self)

    def binary(self, x: torch.Tensor) -> torch.Tensor:
        """The +-1 values used at deployment (no gradient)."""
        return sign(x)

    # -- hooks the engine calls -------------------------------------------------------------
    def set_progress(self, p: float) -> None:
        """Update annealed parameters for stage progress ``p`` in [0, 1]."""
        for key, schedule in self.schedules.items():
            setattr(self, key, schedule(p))

    def optimal_scale(self, w: torch.Tensor) -> torch.Tensor:
        """Scalar gamma minimising E[(target - gamma binary(w))^2]; default mean|w| (target w)."""
        return w.detach().abs().mean()

    def regularizer(self, w: torch.Tensor) -> torch.Tensor:
        """A scalar added to the loss (times tau); zero unless the method defines one."""
        return w.new_zeros(())

    # Numeric parameters travel with the state dict, so a per-layer omega0 chosen at the start of
    # training survives checkpoints and stage changes; choices such as BiPer's stage do not (the
    # new stage's config decides them).
    def get_extra_state(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.hparams().items()
                if k not in self.choices and isinstance(v, (int, float)) and not isinstance(v, bool)}

    def set_extra_state(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            if key in self.defaults and key not in self.choices:
                self._check(key, value)
                setattr(self, key, type(getattr(self, key))(value))

    def hparams(self) -> dict[str, Any]:
        """Current parameter values."""
        return {key: getattr(self, key) for key in self.defaults}

    def config(self) -> dict[str, Any]:
        """Parameters as given, schedules in dict form: ``get_quantizer(name, **config())``."""
        return {k: (self.schedules[k].to_dict() if k in self.schedules else v) for k, v in self.hparams().items()}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())


def register(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator adding a quantizer to the registry under ``cls.name``."""
    if not cls.name or cls.kind not in KINDS:
        raise BiperError(f"quantizer class {cls.__name__} needs a name and a kind in {KINDS}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise BiperError(f"quantizer name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_quantizers(kind: str | None = None) -> list[str]:
    """Registered quantizer names, optionally only ``kind`` = 'weight' or 'activation'."""
    if kind is not None and kind not in KINDS:
        raise BiperError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return sorted(n for n, c in _REGISTRY.items() if kind is None or c.kind == kind)


def quantizer_class(name: str) -> type[Quantizer]:
    if name not in _REGISTRY:
        raise BiperError(
            f"unknown quantizer {name!r}{did_you_mean(name, _REGISTRY)}; "
            f"valid: {', '.join(list_quantizers())}"
        )
    return _REGISTRY[name]


def get_quantizer(name: str | Quantizer, **params: Any) -> Quantizer:
    """A fresh quantizer module by registry name (a `Quantizer` instance is returned as is)."""
    if isinstance(name, Quantizer):
        if params:
            raise BiperError("parameters cannot be given together with a quantizer instance")
        return name
    if not isinstance(name, str):
        raise BiperError(f"a quantizer is named by a string, got {type(name).__name__}")
    return quantizer_class(name)(**params)


def describe_quantizers() -> list[dict[str, Any]]:
    """Machine-readable description of every registered pair (the CLI's ``--json``)."""
    out = []
    for name in list_quantizers():
        cls = _REGISTRY[name]
        out.append(
            {
                "name": name,
                "kind": cls.kind,
                "forward": cls.forward_formula,
                "backward": cls.backward_formula,
                "parameters": dict(cls.defaults),
                "choices": {k: list(v) for k, v in cls.choices.items()},
                "reference": cls.reference,
            }
        )
    return out


def set_progress(model: nn.Module, p: float) -> None:
    """Step every quantizer's schedules in ``model`` to stage progress ``p``."""
    for module in model.modules():
        if isinstance(module, Quantizer):
            module.set_progress(p)
