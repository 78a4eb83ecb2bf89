"""Building the model of a stage, loading initial weights, devices and precision contexts.

`build_model_from_config` is the one way to rebuild a trained model from a checkpoint: it takes
the checkpoint's ``model_config`` (``name``, ``num_classes``, ``kwargs``, ``binarize``), a whole
checkpoint, or a run config plus a stage index.

Loading weights across a precision change (a full-precision stage followed by a binary one)
is allowed: keys that only binary layers have (``alpha``, quantizer state) may be missing or
unexpected; any other mismatch is an error.

Example::

    >>> ckpt = load_checkpoint("runs/r20/final.pt")
    >>> model = build_model_from_config(ckpt)          # weights loaded too
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from ..errors import BiperError
from .config import RunConfig

__all__ = ["build_model_from_config", "model_spec", "load_init_state", "resolve_device",
           "autocast_context", "BINARY_ONLY_KEYS"]

BINARY_ONLY_KEYS = (".alpha", "weight_quantizer.", "input_quantizer.")


def model_spec(config: RunConfig, stage: int, num_classes: int | None = None) -> dict[str, Any]:
    """``{"name", "num_classes", "kwargs", "binarize"}`` of stage ``stage`` of a run."""
    binarize = config.stage_binarize(stage)
    return {
        "name": config.model.name,
        "num_classes": config.model.num_classes if num_classes is None else num_classes,
        "kwargs": dict(config.model.kwargs),
        "binarize": None if binarize is None else binarize.to_dict(),
    }


def build_model_from_config(config: dict | RunConfig, stage: int | None = None) -> nn.Module:
    """Rebuild a model: from a ``model_config`` dict, a checkpoint dict (weights loaded as
    well), or a run config (dict or `RunConfig`) for ``stage`` (default: the last stage)."""
    from ..models import create_model

    weights = None
    if isinstance(config, dict) and "model_config" in config:       # a whole checkpoint
        weights = config.get("model")
        config = config["model_config"]
    if isinstance(config, dict) and "stages" in config:             # a run config dict
        config = RunConfig.from_dict(config)
    if isinstance(config, RunConfig):
        index = len(config.stages) - 1 if stage is None else stage
        if not 0 <= index < len(config.stages):
            raise BiperError(f"stage must be in [0, {len(config.stages) - 1}], got {stage}")
        config = model_spec(config, index)
    if not isinstance(config, dict) or "name" not in config:
        raise BiperError("build_model_from_config needs a model_config dict (name, num_classes, "
                         "kwargs, binarize), a checkpoint or a run config")
    model = create_model(config["name"], binarize=config.get("binarize"),
                         num_classes=config.get("num_classes"), **dict(config.get("kwargs") or {}))
    if weights is not None:
        model.load_state_dict(weights)
    return model


def _binary_only(key: str) -> bool:
    return any(part in key for part in BINARY_ONLY_KEYS) or key.endswith("_extra_state")


def load_init_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``model``; keys only binary layers have may differ. Returns the
    binary-only keys that kept their fresh initialisation."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in missing + unexpected if not _binary_only(k)]
    if bad:
        kind = "missing from" if bad[0] in missing else "unexpected in"
        raise BiperError(f"cannot initialise from {source}: key {bad[0]!r} is {kind} it "
                         f"({len(bad)} mismatched key(s)); is it the same model?")
    for key, value in state.items():
        if key in own and isinstance(value, torch.Tensor) and value.shape != own[key].shape:
            raise BiperError(f"cannot initialise from {source}: {key} has shape {tuple(value.shape)}, "
                             f"the model needs {tuple(own[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise BiperError(f"device: must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BiperError(f"device: {name} requested but CUDA is not available; use device=cpu")
    return device


def autocast_context(precision: str, device: torch.device):
    """The forward-pass context: nothing (fp32), bf16 autocast, or float16 autocast (amp)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "amp":
        if device.type != "cuda":
            raise BiperError("precision: amp (float16 + GradScaler) needs a CUDA device; use bf16 on CPU")
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast(device.type, dtype=torch.bfloat16)
