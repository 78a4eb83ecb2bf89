"""Model registry: ``@register_model`` entrypoints, `create_model`, `list_models`, `model_info`.

An entrypoint is a small function ``name(*, num_classes, **kwargs) -> nn.Module`` building the
*float* model; the decorator records its metadata (dataset, default input size, class count,
the parameter count the papers report). `create_model` builds the float model and, when
``binarize`` is given, converts it in place with `biper.binarize_`, adding the model's
``fp_patterns`` (layers the papers keep full precision, e.g. ImageNet downsample convs) to the
config's ``exclude``. The conversion report is kept on the model as ``model.binarize_report``
(``None`` for a float model) and everything needed to rebuild it as ``model.model_config``.

Example::

    >>> import biper
    >>> from biper.models import create_model, list_models
    >>> "resnet20_cifar" in list_models()
    True
    >>> model = create_model("resnet20_cifar", binarize=biper.BinarizeConfig(weight_quantizer="biper"))
    >>> len(model.binarize_report.converted)
    18
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import BiperError, did_you_mean
from ..transform import BinarizeConfig, binarize_

__all__ = ["ModelInfo", "register_model", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What `biper summary` and the recipes need to know about a registered model."""

    name: str
    dataset: str                      # "cifar10", "imagenet" or "any"
    input_size: tuple[int, int, int]  # (C, H, W) of the default configuration
    num_classes: int
    params: int                       # parameter count of the float model (papers' figure)
    description: str


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ModelInfo]] = {}


def register_model(*, dataset: str, input_size: tuple[int, int, int], num_classes: int,
                   params: int) -> Callable:
    """Decorator registering an entrypoint under its function name with its metadata."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if name in _REGISTRY:
            raise BiperError(f"model {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        info = ModelInfo(name, dataset, tuple(input_size), num_classes, int(params),
                         doc[0] if doc else "")
        _REGISTRY[name] = (fn, info)
        return fn

    return wrap


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[Callable[..., nn.Module], ModelInfo]:
    if name not in _REGISTRY:
        raise BiperError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; "
                         f"valid: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model (dataset, default input size, classes, parameter count)."""
    return _lookup(name)[1]


def _as_config(binarize: Any) -> BinarizeConfig | None:
    if binarize is None or binarize is False:
        return None
    if binarize is True:
        return BinarizeConfig()
    if isinstance(binarize, BinarizeConfig):
        return binarize
    if isinstance(binarize, dict):
        return BinarizeConfig.from_dict(binarize)
    raise BiperError(f"binarize must be None, True, a BinarizeConfig or a dict, got {type(binarize).__name__}")


def create_model(name: str, *, binarize: BinarizeConfig | dict | bool | None = None,
                 num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Build registered model ``name``; binarize it with ``binarize`` (a config) when given.

    ``num_classes`` defaults to the model's dataset; other keyword arguments go to the
    entrypoint (e.g. ``act="relu"``, ``img_size=32``). The returned model carries
    ``binarize_report`` (`BinarizeReport` or ``None``) and ``model_config`` (a JSON-able dict:
    ``name``, ``num_classes``, ``kwargs``, ``binarize``) from which it can be rebuilt.
    """
    fn, info = _lookup(name)
    if num_classes is None:
        num_classes = info.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BiperError(f"num_classes must be a positive integer, got {num_classes!r}")
    accepted = [p for p in inspect.signature(fn).parameters if p != "num_classes"]
    for key in kwargs:
        if key not in accepted:
            raise BiperError(f"model {name!r} has no option {key!r}{did_you_mean(key, accepted)}; "
                             f"valid: {', '.join(accepted) or '(none)'}")
    config = _as_config(binarize)

    model = fn(num_classes=num_classes, **kwargs)
    report = None
    if config is not None:
        extra = tuple(p for p in getattr(model, "fp_patterns", ()) if p not in config.exclude)
        config = dataclasses.replace(config, exclude=config.exclude + extra)
        report = binarize_(model, config)
    model.binarize_report = report
    model.model_config = {
        "name": name,
        "num_classes": num_classes,
        "kwargs": dict(kwargs),
        "binarize": None if config is None else config.to_dict(),
    }
    return model
