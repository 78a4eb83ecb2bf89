"""Building the model of a stage, loading initial weights, devices and precision contexts.

`build_model_from_config` is the one way to rebuild a trained model: it takes a
`biper.models.ModelSpec` (or its dict, a checkpoint's ``model_config``), a whole checkpoint
(read through `biper.models.ModelSpec.from_checkpoint`), or a run config plus a stage index.

Loading weights across a precision change (a full-precision stage followed by a binary one)
is allowed: keys that only binary layers have (``alpha``, quantizer state) may be missing or
unexpected; any other mismatch is an error.

Example::

    >>> ckpt = load_checkpoint("runs/r20/final.pt")
    >>> model = build_model_from_config(ckpt)          # weights loaded too
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from ..errors import BiperError
from ..models import ModelSpec
from ..validate import wrap_errors
from .config import RunConfig

__all__ = ["build_model_from_config", "model_spec", "load_init_state", "init_stage_weights",
           "check_stage_models", "resolve_device", "autocast_context", "BINARY_ONLY_KEYS"]

BINARY_ONLY_KEYS = (".alpha", "weight_quantizer.", "input_quantizer.")


def model_spec(config: RunConfig, stage: int, num_classes: int | None = None) -> ModelSpec:
    """The `ModelSpec` of stage ``stage`` of a run (its binarize config merged once, at load)."""
    return ModelSpec(config.model.name,
                     config.model.num_classes if num_classes is None else num_classes,
                     config.model.kwargs, config.stage_binarize(stage))


def build_model_from_config(config: ModelSpec | dict | RunConfig, stage: int | None = None) -> nn.Module:
    """Rebuild a model: from a `ModelSpec` or its dict, a checkpoint dict (weights loaded as
    well), or a run config (dict or `RunConfig`) for ``stage`` (default: the last stage)."""
    weights = None
    if isinstance(config, dict) and ("model_config" in config or "config" in config):  # a checkpoint
        weights = config.get("model")
        found = ModelSpec.from_checkpoint(config)
        if found is None:
            raise BiperError("checkpoint has no model config (expected 'model_config' with a 'name')")
        config = found
    if isinstance(config, dict) and "stages" in config:             # a run config dict
        config = RunConfig.from_dict(config)
    if isinstance(config, RunConfig):
        index = len(config.stages) - 1 if stage is None else stage
        if not 0 <= index < len(config.stages):
            raise BiperError(f"stage must be in [0, {len(config.stages) - 1}], got {stage}")
        config = model_spec(config, index)
    if isinstance(config, dict) and isinstance(config.get("name"), str):
        config = ModelSpec.from_dict(config)
    if not isinstance(config, ModelSpec):
        raise BiperError("build_model_from_config needs a ModelSpec (or its dict: name, num_classes, "
                         "kwargs, binarize), a checkpoint or a run config")
    model = config.build()
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


def init_stage_weights(model: nn.Module, config: RunConfig, index: int,
                       previous_state: Callable[[], dict], log: Callable[[str], None]) -> None:
    """Initialise stage ``index``'s fresh model: from the previous stage (``previous_state()``)
    or a weights file as ``init_from`` says, then the flexible omega0 init before stage 0."""
    from .checkpoint import load_state_file

    stage = config.stages[index]
    if stage.init_from == "previous" and index > 0:
        load_init_state(model, previous_state(), f"stage '{config.stages[index - 1].name}'")
    elif stage.init_from not in (None, "previous"):
        with wrap_errors(f"stages.{index}.init_from"):
            load_init_state(model, load_state_file(stage.init_from), stage.init_from)
    if index == 0 and config.flexible_init is not None:
        with wrap_errors("omega0_init"):
            chosen = config.flexible_init.apply(model)
        values = sorted(chosen.values())
        log(f"omega0_init: {len(chosen)} layer(s), omega0 from {values[0]:.4g} to {values[-1]:.4g}")


def _selection(config: RunConfig, index: int) -> tuple:
    b = config.stage_binarize(index)
    if b is None:
        return (None,)
    return (b.include, b.exclude, b.layer_types, b.keep_first, b.keep_last, b.input_quantizer,
            tuple(sorted(b.input_params)))


def check_stage_models(config: RunConfig) -> None:
    """Surface layer-selection errors of later stages before training: build (on the meta
    device) each later stage whose binarize config selects layers differently from the stages
    before it. Stage 0 is built right away anyway."""
    seen = {_selection(config, 0)}
    for i in range(1, len(config.stages)):
        key = _selection(config, i)
        if key not in seen:
            seen.add(key)
            with wrap_errors(f"stages.{i}"), torch.device("meta"):
                model_spec(config, i).build()


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
