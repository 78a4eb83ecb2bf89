"""Model registry: ``@register_model`` entrypoints, `create_model`, `list_models`, `model_info`.

An entrypoint is a small function ``name(*, num_classes, **kwargs) -> nn.Module`` building the
*float* model; the decorator records its metadata (dataset, default input size, class count,
the parameter count the papers report). `create_model` builds the float model and, when
``binarize`` is given, converts it in place with `biper.binarize_`, adding the model's
``fp_patterns`` (layers the papers keep full precision, e.g. ImageNet downsample convs) to the
config's ``exclude``. The conversion report is kept on the model as ``model.binarize_report``
(``None`` for a float model) and everything needed to rebuild it as ``model.model_spec``, a
frozen `ModelSpec` (``model.model_config`` is its JSON-able dict form). A `ModelSpec` is what
checkpoints (key ``model_config``) and packed files (header key ``model``) store, and what
every rebuild of a trained model goes through.

Example::

    >>> import biper
    >>> from biper.models import create_model, list_models
    >>> "resnet20_cifar" in list_models()
    True
    >>> model = create_model("resnet20_cifar", binarize=biper.BinarizeConfig(weight_quantizer="biper"))
    >>> len(model.binarize_report.converted)
    18
    >>> ModelSpec.from_json(model.model_spec.to_json()) == model.model_spec
    True
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import BiperError, did_you_mean
from ..transform import BinarizeConfig, binarize_

__all__ = ["ModelInfo", "ModelSpec", "register_model", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What `biper summary` and the recipes need to know about a registered model."""

    name: str
    dataset: str                      # "cifar10", "imagenet", "scenes" or "any"
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
    _positive_classes(num_classes)
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
        if extra:  # a validated config plus known-good patterns: no second validation otherwise
            config = dataclasses.replace(config, exclude=config.exclude + extra)
        report = binarize_(model, config)
    model.binarize_report = report
    model.model_spec = ModelSpec(name, num_classes, kwargs, config)
    model.model_config = model.model_spec.to_dict()
    return model


def _positive_classes(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BiperError(f"num_classes must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that rebuilds a model: registry ``name``, ``num_classes`` (None: the model's
    default), the entrypoint's ``kwargs`` and the ``binarize`` config (None: full precision).

    ``build()`` returns a fresh model; ``to_dict`` / ``from_dict`` (and the JSON forms) are the
    ``{"name", "num_classes", "kwargs", "binarize"}`` mapping stored in checkpoints and packed
    files. `from_checkpoint` is the one place that reads the older layouts of that mapping.
    """

    name: str
    num_classes: int | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    binarize: BinarizeConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BiperError(f"model name must be a non-empty string, got {self.name!r}")
        if self.num_classes is not None:
            _positive_classes(self.num_classes)
        if not isinstance(self.kwargs, Mapping):
            raise BiperError(f"model kwargs must be a mapping, got {type(self.kwargs).__name__}")
        object.__setattr__(self, "kwargs", copy.deepcopy(dict(self.kwargs)))  # own copy; read-only by contract
        if self.binarize is not None and not isinstance(self.binarize, BinarizeConfig):
            raise BiperError(f"binarize must be a BinarizeConfig or None, got {type(self.binarize).__name__}")

    def build(self) -> nn.Module:
        """A new model built from the registry (binarized when ``binarize`` is set)."""
        return create_model(self.name, binarize=self.binarize, num_classes=self.num_classes,
                            **copy.deepcopy(dict(self.kwargs)))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_classes": self.num_classes, "kwargs": copy.deepcopy(dict(self.kwargs)),
                "binarize": None if self.binarize is None else self.binarize.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> "ModelSpec":
        """A spec from its mapping form; a `ModelSpec` is returned as it is."""
        if isinstance(data, ModelSpec):
            return data
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise BiperError("a model spec needs a mapping with a 'name' (and num_classes, kwargs, binarize)")
        unknown = sorted(set(data) - {"name", "num_classes", "kwargs", "binarize"})
        if unknown:
            raise BiperError(f"unknown model spec key {unknown[0]!r}; valid: name, num_classes, kwargs, binarize")
        return cls(data["name"], data.get("num_classes"), data.get("kwargs") or {},
                   _as_config(data.get("binarize")))

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise BiperError(f"model spec is not valid JSON: {err}") from None
        return cls.from_dict(data)

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping) -> "ModelSpec | None":
        """The spec stored in a checkpoint dict, or None when it holds none.

        Current checkpoints store it under ``model_config``; older ones only under their run
        config (``config.model_config``, or ``config.model`` with the run's ``config.binarize``).
        """
        config = ckpt.get("config") if isinstance(ckpt.get("config"), Mapping) else {}
        for found in (ckpt.get("model_config"), config.get("model_config"), config.get("model")):
            if isinstance(found, Mapping) and isinstance(found.get("name"), str):
                found = {k: found[k] for k in ("name", "num_classes", "kwargs", "binarize") if k in found}
                if "binarize" not in found and "binarize" in config:
                    found["binarize"] = config["binarize"]
                return cls.from_dict(found)
        return None
