"""From a recipe name or YAML file plus ``key=value`` overrides to a validated `RunConfig`.

Overrides use dotted paths into the config mapping; list entries are addressed by index, and
``*`` addresses every entry of a list. Values are parsed as YAML, so ``0.01`` is a float,
``true`` a bool, ``null`` None, ``[0.9, 0.99]`` a list and ``{stage: sine}`` a mapping::

    stages.0.lr=0.01  binarize.weight_quantizer=bc  stages.*.epochs=1  binarize=null

Overrides are applied to the raw mapping before validation, so a misspelt key is reported by
the config classes with the full path and a did-you-mean, exactly as if it were in the YAML.

Example::

    >>> cfg = load_run_config("cifar10-resnet20-biper-cpu", ["stages.*.epochs=1"], subset=100)
    >>> [s.epochs for s in cfg.stages], cfg.data.subset
    ([1, 1], 100)
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import BiperError
from ..recipes import load_recipe, set_path, yaml_load
from ..validate import ConfigError
from .config import RunConfig

__all__ = ["yaml_load", "parse_override", "apply_overrides", "set_path", "load_run_config"]


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.0.c=value`` into (["a", "b", "0", "c"], parsed YAML value)."""
    import yaml

    if not isinstance(text, str) or "=" not in text:
        raise BiperError(f"override {text!r} must look like key=value (e.g. stages.0.lr=0.01)")
    key, _, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise BiperError(f"override {text!r} has an empty key segment; write dotted keys like stages.0.lr")
    if raw.strip() == "":
        raise BiperError(f"override {key}= has no value; write {key}=null to unset it")
    try:
        value = yaml_load(raw)
    except yaml.YAMLError as err:
        problem = str(err).splitlines()[0]
        raise BiperError(f"override {key}: value {raw!r} is not valid YAML ({problem})") from None
    return parts, value


def apply_overrides(data: Mapping, overrides: Iterable[str]) -> dict:
    """A copy of ``data`` with every ``key=value`` override applied in order."""
    out = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        set_path(out, ".".join(parts), value)
    return out


def load_run_config(source: str | os.PathLike | Mapping | RunConfig, overrides: Iterable[str] = (), *,
                    data_dir: str | None = None, max_steps: int | None = None,
                    subset: int | None = None) -> RunConfig:
    """Validated `RunConfig` from a recipe name, a YAML path, a mapping or a `RunConfig`.

    ``data_dir``, ``max_steps`` (every stage) and ``subset`` are shortcuts for the overrides
    ``data.data_dir=...``, ``stages.*.max_steps=...`` and ``data.subset=...``; they are applied
    after ``overrides``.
    """
    if isinstance(source, RunConfig):
        data = source.to_dict()
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data = load_recipe(source)
    data = apply_overrides(data, overrides)
    shortcuts = []
    if data_dir is not None:
        shortcuts.append(("data.data_dir", os.fspath(data_dir)))
    if max_steps is not None:
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ConfigError("--max-steps", f"must be a positive integer, got {max_steps!r}")
        shortcuts.append(("stages.*.max_steps", max_steps))
    if subset is not None:
        if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
            raise ConfigError("--subset", f"must be a positive integer, got {subset!r}")
        shortcuts.append(("data.subset", subset))
    for key, value in shortcuts:
        set_path(data, key, value)
    return RunConfig.from_dict(data)
