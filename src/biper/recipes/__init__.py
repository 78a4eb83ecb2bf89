"""Training recipes shipped with biper: YAML files, listed by ``biper recipes``.

A recipe is a `biper.train.RunConfig` written as YAML. ``base: OTHER`` starts from another
recipe (a packaged name, or a path relative to the file) and merges this file's keys on top:
mappings merge key by key, lists and values replace. ``set:`` maps dotted keys (as in
command-line overrides, e.g. ``stages.1.task``) to values applied last, which is how a recipe
changes one entry of a list such as ``stages``. The baseline recipes are one key away
from their base (``binarize.weight_quantizer``), which is also how any recipe can be switched
from the command line: ``biper train cifar10-resnet20-bc binarize.weight_quantizer=rpc``.

Example::

    >>> "cifar10-resnet20-biper-cpu" in list_recipes()
    True
    >>> load_recipe("cifar10-resnet20-bnn")["binarize"]["weight_quantizer"]
    'bnn'
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from ..errors import BiperError, did_you_mean
from ..validate import ConfigError, wrap_errors

__all__ = ["RECIPE_DIR", "list_recipes", "recipe_path", "load_recipe", "read_yaml", "describe_recipes",
           "yaml_load", "set_path", "deep_merge"]

RECIPE_DIR = Path(__file__).resolve().parent

_LOADER = None


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that also reads ``1e-4`` as a float (YAML 1.2; PyYAML needs ``1.0e-4``)."""
    global _LOADER
    import re

    import yaml

    if _LOADER is None:
        class Loader(yaml.SafeLoader):
            pass

        Loader.add_implicit_resolver(
            "tag:yaml.org,2002:float",
            re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"))
        _LOADER = Loader
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a SafeLoader subclass)


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override`` merged in: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_path(node: Any, parts: list[str], value: Any, done: list[str]) -> None:
    here = ".".join(done) or "config"
    head, rest = parts[0], parts[1:]
    if isinstance(node, list):
        if head == "*":
            targets = range(len(node))
        else:
            try:
                index = int(head)
            except ValueError:
                raise ConfigError(".".join(done + [head]), f"{here} is a list; address its entries by "
                                                           f"index 0..{len(node) - 1} or *") from None
            if not -len(node) <= index < len(node):
                raise ConfigError(".".join(done + [head]), f"index out of range: {here} has {len(node)} "
                                                           f"entries (0..{len(node) - 1})")
            targets = [index]
        for i in targets:
            if rest:
                _set_path(node[i], rest, copy.deepcopy(value), done + [str(i)])
            else:
                node[i] = copy.deepcopy(value)
        return
    if not isinstance(node, dict):
        raise ConfigError(here, f"is a value ({node!r}), not a mapping or list; cannot set "
                                f"{'.'.join(parts)!r} inside it")
    if head == "*":
        raise ConfigError(".".join(done + ["*"]), f"* addresses list entries, but {here} is a mapping")
    if not rest:
        node[head] = value
        return
    if node.get(head) is None:
        node[head] = {}  # e.g. binarize.weight_params.omega0 when weight_params is absent
    _set_path(node[head], rest, value, done + [head])


def set_path(data: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` (list indexes and ``*`` allowed) in ``data`` to ``value``, in place."""
    _set_path(data, key.split("."), value, [])


def list_recipes() -> list[str]:
    """Names of the packaged recipes, sorted."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name: str | os.PathLike) -> Path:
    """The file of a packaged recipe name, or ``name`` itself when it is an existing file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise BiperError(f"recipe file {str(path)!r} does not exist")
        return path
    candidate = RECIPE_DIR / f"{name}.yaml"
    if not candidate.is_file():
        names = list_recipes()
        raise BiperError(f"unknown recipe {str(name)!r}{did_you_mean(str(name), names)}; "
                         f"valid: {', '.join(names)} (or a path to a .yaml file)")
    return candidate


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """One YAML file as a mapping, with a one-line error for unreadable or invalid files."""
    import yaml

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BiperError(f"cannot read recipe {str(path)!r}: {err}") from None
    try:
        data = yaml_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BiperError(f"recipe {str(path)!r} is not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BiperError(f"recipe {str(path)!r} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def load_recipe(name: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The recipe's mapping with its ``base:`` chain merged in (not yet validated)."""
    path = recipe_path(name).resolve()
    if path in _seen:
        chain = " -> ".join(p.stem for p in _seen + (path,))
        raise BiperError(f"recipe base chain loops: {chain}")
    data = read_yaml(path)
    base = data.pop("base", None)
    edits = data.pop("set", None) or {}
    if not isinstance(edits, dict):
        raise BiperError(f"recipe {path.name}: set must map dotted keys to values, got {edits!r}")
    if base is not None:
        if not isinstance(base, str) or not base:
            raise BiperError(f"recipe {path.name}: base must be a recipe name or a file path, got {base!r}")
        relative = path.parent / base
        source = relative if relative.suffix in (".yaml", ".yml") and relative.is_file() else base
        data = deep_merge(load_recipe(source, _seen + (path,)), data)
    for key, value in edits.items():
        with wrap_errors(f"recipe {path.name}: set"):
            set_path(data, str(key), value)
    return data


def describe_recipes() -> list[dict[str, Any]]:
    """One row per packaged recipe: name, description, model, weight quantizer, stage epochs."""
    rows = []
    for name in list_recipes():
        data = load_recipe(name)
        binarize = data.get("binarize")
        stages = data.get("stages") or []
        rows.append({
            "name": name,
            "description": data.get("description", ""),
            "model": (data.get("model") or {}).get("name"),
            "method": "full precision" if binarize is None else binarize.get("weight_quantizer", "biper"),
            "epochs": [s.get("epochs") for s in stages],
        })
    return rows
