"""Methods side by side: one base recipe, several methods and seeds, one budget, one report.

`compare(recipe, methods, seeds, out)` trains every (method, seed) pair, seed-major (every
method once before any twice), as an ordinary run folder ``out/runs/<method>-seed<seed>`` and
writes ``results.md`` / ``results.csv`` / ``results.json`` (rewritten after every run, so an
unfinished comparison reports what finished) and ``curves.png`` (test accuracy per epoch: mean
over seeds with a min-max band). For a dense task the task's main metric (mIoU, mAP@0.5) takes
the place of accuracy: ``results["metric"]`` names it and the keys become ``final_test_miou``,
``best_test_miou``, ... . Every run shares the base recipe's model, data, augmentation
and runtime settings and gets the same budget; a method only changes how the model is binarized
and trained:

- a *weight-quantizer* method (``bnn``, ``bnn+``, ``bnn++``, ``bc``, ``pc``, ``rpc``) is the
  base recipe with ``binarize.weight_quantizer`` replaced (its parameters, and stage-level
  ``weight_params`` such as BiPer's ``stage``, dropped);
- ``fp`` is the base recipe with ``binarize: null``;
- a *recipe* method (``biper``, ``bop``) takes ``binarize`` and ``stages`` from a sibling
  recipe: the base recipe itself when it already uses that method, else the first of
  ``<base>-<suffix>``, ``<base minus its last -part>-<suffix>``, ... that exists (for
  ``cifar10-resnet20-bc``: ``cifar10-resnet20-biper``, ``cifar10-resnet20-bop``);
- ``NAME=RECIPE`` in the method list names any recipe as a method the same way.

The ``key=value`` overrides apply to every run after the method. The budget is total epochs
(``epochs``) or total steps (``max_steps``) per run; a multi-stage method splits it in the
proportion of its recipe's stage epochs (BiPer 600 + 300: two thirds sine, one third square),
with warm-up scaled alike, and the split is stated in the report. A run whose folder holds a
``summary.json`` is not repeated (its config must match); an interrupted one resumes from its
last checkpoint, so rerunning the same command finishes an interrupted comparison.

Example::

    >>> results = compare("cifar10-resnet20-bc", ["biper", "bnn"], [0, 1], "runs/cmp",
    ...                   epochs=4, data_dir="../shared/data", subset=5000)
    >>> results["methods"]["biper"]["final_test_acc"]["mean"]
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BiperError, did_you_mean
from ..nn import is_binary_layer
from .checkpoint import load_checkpoint
from .compare_report import write_report
from .config import RunConfig
from .engine import train
from .metrics import log
from .model import build_model_from_config
from .overrides import apply_overrides, load_run_config
from .run_files import check_resume_config

__all__ = ["Method", "METHODS", "resolve_method", "method_config", "split_budget", "compare",
           "deployed_bits"]


@dataclass(frozen=True)
class Method:
    """``kind``: quantizer (``value`` = weight quantizer), float, or recipe (``value`` = the
    sibling recipe's suffix, or a recipe name / path for ``NAME=RECIPE``)."""

    name: str
    kind: str
    value: str | None = None


METHODS: dict[str, Method] = {
    "biper": Method("biper", "recipe", "biper"),
    "bop": Method("bop", "recipe", "bop"),
    **{q: Method(q, "quantizer", q) for q in ("bnn", "bnn+", "bnn++", "bc", "pc", "rpc")},
    "fp": Method("fp", "float"),
}
_SIGNATURE = {"biper": lambda d: (d.get("binarize") or {}).get("weight_quantizer") == "biper",
              "bop": lambda d: any(s.get("optimizer") == "bop" for s in d.get("stages") or [])}


def resolve_method(text: str) -> Method:
    """A method-list entry: a name of `METHODS` or ``NAME=RECIPE``."""
    if "=" in text:
        name, _, recipe = text.partition("=")
        if not name or not recipe:
            raise BiperError(f"method {text!r} must be a name or NAME=RECIPE")
        return Method(name.strip(), "recipe-name", recipe.strip())
    if text not in METHODS:
        raise BiperError(f"unknown method {text!r}{did_you_mean(text, list(METHODS))}; valid: "
                         f"{', '.join(METHODS)} (or NAME=RECIPE)")
    return METHODS[text]


def _sibling(base_name: str, base: dict, method: Method) -> tuple[str, dict]:
    from ..recipes import list_recipes, load_recipe

    if _SIGNATURE[method.name](base):
        return base_name, base
    parts = Path(str(base_name)).stem.split("-")
    tried = ["-".join(parts[:n] + [method.value]) for n in range(len(parts), 0, -1)]
    for name in tried:
        if name in list_recipes():
            return name, load_recipe(name)
    raise BiperError(f"method {method.name}: no recipe {' or '.join(tried)}; name one with "
                     f"{method.name}=RECIPE")


def method_config(base_name: str, method: Method) -> tuple[dict, str]:
    """The raw config mapping of ``method`` on the base recipe, and where it came from."""
    from ..recipes import load_recipe

    base = load_recipe(base_name)
    out = copy.deepcopy(base)
    if method.kind == "float":
        out["binarize"] = None
        return out, "base recipe, binarize: null"
    if method.kind == "quantizer":
        if not base.get("binarize"):
            raise BiperError(f"method {method.name} replaces the weight quantizer, but the base recipe "
                             f"{base_name} is full precision; compare on a binarized recipe")
        out["binarize"] = dict(base["binarize"], weight_quantizer=method.value, weight_params={})
        for stage in out.get("stages") or []:
            if isinstance(stage.get("binarize"), dict):
                stage["binarize"] = {k: v for k, v in stage["binarize"].items() if k != "weight_params"}
        return out, f"base recipe, binarize.weight_quantizer={method.value}"
    source, data = ((method.value, load_recipe(method.value)) if method.kind == "recipe-name"
                    else _sibling(base_name, base, method))
    for key in ("binarize", "stages", "omega0_init"):
        if key in data:
            out[key] = copy.deepcopy(data[key])
        else:
            out.pop(key, None)
    return out, f"binarize and stages of {Path(str(source)).stem}"


def split_budget(stage_epochs: list[int], total: int) -> list[int]:
    """``total`` split over stages in proportion to ``stage_epochs`` (each >= 1, sum = total)."""
    if total < len(stage_epochs):
        raise BiperError(f"a budget of {total} cannot be split over {len(stage_epochs)} stages; give at "
                         f"least {len(stage_epochs)}")
    whole = sum(stage_epochs)
    shares = [max(1, math.floor(total * e / whole)) for e in stage_epochs]
    order = sorted(range(len(shares)), key=lambda i: total * stage_epochs[i] / whole - shares[i], reverse=True)
    i = 0
    while sum(shares) < total:
        shares[order[i % len(order)]] += 1
        i += 1
    while sum(shares) > total:
        j = max(range(len(shares)), key=lambda k: shares[k])
        shares[j] -= 1
    return shares


def _apply_budget(data: dict, epochs: int | None, max_steps: int | None) -> str:
    stages = data["stages"]
    given = [int(s["epochs"]) for s in stages]
    names = [s.get("name") or f"stage{i + 1}" for i, s in enumerate(stages)]
    if epochs is not None:
        shares = split_budget(given, epochs)
        for stage, old, new in zip(stages, given, shares):
            stage["epochs"] = new
            stage["max_steps"] = None
            stage["warmup_epochs"] = float(stage.get("warmup_epochs", 0.0)) * new / old
        unit = "epochs"
    elif max_steps is not None:
        shares = split_budget(given, max_steps)
        for stage, new in zip(stages, shares):
            stage["max_steps"] = new
        unit = "steps"
    else:
        shares, unit = given, "epochs"
    if len(stages) == 1:
        return f"{shares[0]} {unit}"
    return (" + ".join(f"{n} {s}" for n, s in zip(names, shares)) + f" {unit}"
            + (f" (split {':'.join(map(str, given))} as the recipe's stages)" if epochs or max_steps else ""))


def deployed_bits(model) -> int:
    """Deployed size in bits: 1 per binary weight, 32 per other parameter (`biper summary`)."""
    binary = {id(m.weight) for m in model.modules()
              if is_binary_layer(m) and getattr(m, "weight_quantizer", None) is not None}
    return sum(p.numel() * (1 if id(p) in binary else 32) for p in model.parameters())


def _run_one(cfg: RunConfig, folder: Path, quiet: bool) -> dict:
    """The run's summary: read when the run finished earlier (same config), else trained or
    resumed from its last checkpoint."""
    if (folder / "summary.json").is_file():
        from .overrides import yaml_load

        saved = yaml_load((folder / "config.yaml").read_text())
        current = cfg.to_dict()
        if current["model"]["num_classes"] is None:  # the engine fills it in from the data
            current["model"]["num_classes"] = (saved.get("model") or {}).get("num_classes")
        try:
            check_resume_config(saved, current, folder / "config.yaml")
        except BiperError as err:
            raise BiperError(f"{folder} holds a finished run of another config ({err}); use another "
                             f"--out or remove that folder") from None
        return json.loads((folder / "summary.json").read_text())
    return train(cfg, folder, resume=folder.exists(), quiet=quiet)


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std}


def _history(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def compare(recipe: str | os.PathLike, methods: list[str], seeds: list[int], out: str | os.PathLike, *,
            epochs: int | None = None, max_steps: int | None = None, overrides: list[str] = (),
            data_dir: str | None = None, subset: int | None = None, quiet: bool = False,
            plot: bool = True) -> dict[str, Any]:
    """Train every method x seed under one budget and write the report (module docstring)."""
    if epochs is not None and max_steps is not None:
        raise BiperError("give the budget as epochs or as max_steps, not both")
    if not methods or not seeds:
        raise BiperError("compare needs at least one method and one seed")
    resolved = [resolve_method(m) for m in methods]
    names = [m.name for m in resolved]
    if len(set(names)) != len(names):
        raise BiperError(f"a method is listed twice: {', '.join(names)}")
    if len(set(seeds)) != len(seeds):
        raise BiperError(f"a seed is listed twice: {seeds}")
    out = Path(out)
    configs, info = {}, {}
    for method in resolved:
        data, source = method_config(str(recipe), method)
        data = apply_overrides(data, overrides)
        split = _apply_budget(data, epochs, max_steps)
        info[method.name] = {"source": source, "budget": split}
        configs[method.name] = data
    # seed-major: every method's first seed runs before any second seed
    plan = [(name, seed, load_run_config(dict(data, seed=seed, name=f"{name}-seed{seed}"),
                                         data_dir=data_dir, subset=subset))
            for seed in seeds for name, data in configs.items()]
    for name, entry in info.items():
        log(f"compare: {name}: {entry['source']}; {entry['budget']}")
    runs = []
    for i, (name, seed, cfg) in enumerate(plan, 1):
        folder = out / "runs" / f"{name}-seed{seed}"
        done = (folder / "summary.json").is_file()
        log(f"run {i}/{len(plan)}: {name} seed {seed}{' (finished earlier, not repeated)' if done else ''}")
        summary = _run_one(cfg, folder, quiet)
        history = _history(folder)
        model = build_model_from_config(load_checkpoint(folder / "final.pt"))
        key = summary.get("main_metric", "test_acc")  # the task's main metric: accuracy, mIoU, mAP@0.5
        runs.append({"method": name, "seed": seed, "run_dir": str(folder),
                     f"final_{key}": summary[f"final_{key}"], f"best_{key}": summary[f"best_{key}"],
                     "sec_per_epoch": sum(r["epoch_time"] for r in history) / max(len(history), 1),
                     "wall_time": summary["wall_time"], "size_kib": deployed_bits(model) / 8 / 1024,
                     "curve": [r[key] for r in history]})
        # the report after every run: an unfinished comparison shows what finished
        results = _summarize(str(recipe), seeds, info, runs, epochs=epochs, max_steps=max_steps,
                             overrides=list(overrides), subset=subset, runs_planned=len(plan))
        if key != "test_acc":
            results["metric"] = key
        write_report(out, results, plot=plot)
    return results


def _summarize(recipe: str, seeds: list[int], info: dict, runs: list[dict], **settings) -> dict:
    key = next((k[len("final_"):] for k in runs[0] if k.startswith("final_")), "test_acc") if runs else "test_acc"
    final, best = f"final_{key}", f"best_{key}"
    methods = {}
    for name, entry in info.items():
        mine = [r for r in runs if r["method"] == name]
        if not mine:
            continue
        methods[name] = {
            **entry,
            final: {**_stats([r[final] for r in mine]), "seeds": {str(r["seed"]): r[final] for r in mine}},
            best: {**_stats([r[best] for r in mine]), "seeds": {str(r["seed"]): r[best] for r in mine}},
            "sec_per_epoch": _stats([r["sec_per_epoch"] for r in mine])["mean"],
            "size_kib": mine[0]["size_kib"],
        }
    return {"recipe": recipe, "seeds": list(seeds), **settings, "methods": methods, "runs": runs}
