"""``binarize_(model, config)``: turn any PyTorch model into a binary network, in place.

Every ``nn.Conv2d`` and ``nn.Linear`` whose qualified name matches ``config.include`` and no
``config.exclude`` pattern (shell-style ``fnmatch``) is swapped for `BinaryConv2d` /
`BinaryLinear` holding the same latent weights. By default the first convolution and the last
linear layer stay full precision, as in every BNN paper. The returned `BinarizeReport` lists
every converted and every skipped candidate with the reason; a pattern that matches nothing is
an error rather than a silent no-op.

`BinarizeConfig` is a frozen, validated dataclass that round-trips through JSON.

Example::

    >>> import torch, biper
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16),
    ...                           torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> report = biper.binarize_(mlp, biper.BinarizeConfig(weight_quantizer="bc"))
    >>> [name for name, *_ in report.converted]
    ['0', '2']
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from torch import nn

from .errors import BiperError, did_you_mean
from .nn import ALPHA_INITS, SCALINGS, BinaryConv2d, BinaryLinear, is_binary_layer, set_submodule
from .quantizers import get_quantizer, list_quantizers
from .quantizers.base import quantizer_class

__all__ = ["BinarizeConfig", "BinarizeReport", "binarize_", "LAYER_TYPES"]

LAYER_TYPES = {"conv2d": (nn.Conv2d, BinaryConv2d), "linear": (nn.Linear, BinaryLinear)}


def _as_tuple(value, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BiperError(f"{key} must be a list of strings, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class BinarizeConfig:
    """What to binarize and how. Validated on construction; see `binarize_`."""

    weight_quantizer: str = "biper"
    weight_params: dict[str, Any] = field(default_factory=dict)
    input_quantizer: str | None = "recu_sign"
    input_params: dict[str, Any] = field(default_factory=dict)
    scaling: str = "learnable"
    alpha_init: str = "uniform"
    pad_value: float = 0.0
    keep_first: bool = True
    keep_last: bool = True
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    layer_types: tuple[str, ...] = ("conv2d", "linear")

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        for key in ("include", "exclude", "layer_types"):
            set_(key, _as_tuple(getattr(self, key), key))
        for key in ("weight_params", "input_params"):
            value = getattr(self, key)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise BiperError(f"{key} must be a mapping of parameter names to values, got {value!r}")
            set_(key, dict(value))
        for key in ("keep_first", "keep_last"):
            if not isinstance(getattr(self, key), bool):
                raise BiperError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if quantizer_class(self.weight_quantizer).kind != "weight":
            raise BiperError(f"weight_quantizer {self.weight_quantizer!r} is an activation quantizer; "
                             f"valid: {', '.join(list_quantizers('weight'))}")
        get_quantizer(self.weight_quantizer, **self.weight_params)  # validates the parameters
        if self.input_quantizer is not None:
            if quantizer_class(self.input_quantizer).kind != "activation":
                raise BiperError(f"input_quantizer {self.input_quantizer!r} is a weight quantizer; "
                                 f"valid: {', '.join(list_quantizers('activation'))}")
            # per-layer context (rsign channels) is filled in by the layer
            params = {k: v for k, v in self.input_params.items() if k not in ("channels", "dim")}
            get_quantizer(self.input_quantizer, **params)
        elif self.input_params:
            raise BiperError("input_params given but input_quantizer is null")
        if self.scaling not in SCALINGS:
            raise BiperError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}{did_you_mean(str(self.scaling), SCALINGS)}")
        if self.alpha_init not in ALPHA_INITS:
            raise BiperError(f"alpha_init must be one of {', '.join(ALPHA_INITS)}, got {self.alpha_init!r}")
        if isinstance(self.pad_value, bool) or not isinstance(self.pad_value, (int, float)):
            raise BiperError(f"pad_value must be a number, got {self.pad_value!r}")
        for t in self.layer_types:
            if t not in LAYER_TYPES:
                raise BiperError(f"layer_types entries must be in {', '.join(LAYER_TYPES)}, got {t!r}")

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BinarizeConfig":
        if not isinstance(data, dict):
            raise BiperError(f"a binarize config must be a mapping, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise BiperError(f"unknown binarize config key {key!r}{did_you_mean(key, names)}; valid: {', '.join(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "BinarizeConfig":
        return cls.from_dict(json.loads(text))

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `BinaryConv2d` / `BinaryLinear`."""
        return {
            "weight_quantizer": self.weight_quantizer,
            "weight_params": dict(self.weight_params),
            "input_quantizer": self.input_quantizer,
            "input_params": dict(self.input_params),
            "scaling": self.scaling,
            "alpha_init": self.alpha_init,
            "pad_value": self.pad_value,
        }


@dataclass
class BinarizeReport:
    """What `binarize_` did: converted ``(name, type, shape)`` and skipped ``(name, reason)``."""

    converted: list[tuple[str, str, tuple[int, ...]]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"binarized {len(self.converted)} layer(s), kept {len(self.skipped)} in full precision"]
        lines += [f"  binary  {n:<40} {t:<8} {tuple(s)}" for n, t, s in self.converted]
        lines += [f"  float   {n:<40} {r}" for n, r in self.skipped]
        return "\n".join(lines)


def binarize_(model: nn.Module, config: BinarizeConfig | dict | None = None) -> BinarizeReport:
    """Swap matching Conv2d / Linear layers of ``model`` for binary ones, in place."""
    if config is None:
        config = BinarizeConfig()
    elif isinstance(config, dict):
        config = BinarizeConfig.from_dict(config)
    elif not isinstance(config, BinarizeConfig):
        raise BiperError(f"config must be a BinarizeConfig or dict, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise BiperError(f"binarize_ expects an nn.Module, got {type(model).__name__}")

    float_types = {t: LAYER_TYPES[t][0] for t in config.layer_types}
    candidates = [(n, m) for n, m in model.named_modules()
                  if any(type(m) is cls for cls in (nn.Conv2d, nn.Linear))]
    convs = [n for n, m in candidates if type(m) is nn.Conv2d]
    linears = [n for n, m in candidates if type(m) is nn.Linear]
    first = convs[0] if convs else (linears[0] if linears else None)
    last = linears[-1] if linears else None

    used = {p: False for p in config.include + config.exclude}
    report = BinarizeReport()
    for name, module in candidates:
        kind = "conv2d" if type(module) is nn.Conv2d else "linear"
        included = [p for p in config.include if fnmatchcase(name, p)]
        excluded = [p for p in config.exclude if fnmatchcase(name, p)]
        for p in included + excluded:
            used[p] = True
        if kind not in float_types:
            report.skipped.append((name, f"layer type {kind} not in layer_types"))
        elif not included:
            report.skipped.append((name, "not matched by include"))
        elif excluded:
            report.skipped.append((name, f"excluded by {excluded[0]!r}"))
        elif config.keep_first and name == first:
            report.skipped.append((name, "first layer kept full precision (keep_first)"))
        elif config.keep_last and name == last:
            report.skipped.append((name, "last linear kept full precision (keep_last)"))
        else:
            binary = LAYER_TYPES[kind][1].from_float(module, **config.layer_kwargs())
            set_submodule(model, name, binary)
            report.converted.append((name, kind, tuple(module.weight.shape)))
    unused = [p for p, hit in used.items() if not hit and p != "*"]
    if unused:
        names = [n for n, _ in candidates]
        raise BiperError(f"pattern {unused[0]!r} matched no Conv2d/Linear layer{did_you_mean(unused[0], names)}")
    already = [n for n, m in model.named_modules() if is_binary_layer(m)]
    if not report.converted and not already:
        raise BiperError("binarize_ found no layer to convert (check include/exclude/layer_types)")
    return report
