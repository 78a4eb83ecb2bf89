"""The files of a comparison: ``results.md`` / ``.csv`` / ``.json`` and ``curves.png``.

``results.json`` is the dict `biper.train.compare.compare` returns; ``results.csv`` has one row
per run (method, seed, final and best test accuracy, seconds per epoch, deployed size, folder);
``results.md`` one row per method: accuracies as mean ± sample standard deviation over seeds
with every seed's value, seconds per training epoch (mean over the runs' epochs) and the
deployed size (1 bit per binary weight, 32 per other parameter). A dense comparison
(``results["metric"]``: ``test_miou``, ``test_map50``) shows that metric in place of accuracy,
named in the header and the CSV columns.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_write
from .metrics import METRIC_LABELS, write_json

__all__ = ["write_report", "markdown_table"]

CSV_COLUMNS = ("method", "seed", "final_test_acc", "best_test_acc", "sec_per_epoch", "wall_time",
               "size_kib", "run_dir")


def _pm(stats: dict) -> str:
    if len(stats["seeds"]) == 1:
        return f"{stats['mean']:.2f} (1 seed)"
    seeds = ", ".join(f"{v:.2f}" for v in stats["seeds"].values())
    return f"{stats['mean']:.2f} ± {stats['std']:.2f} ({seeds})"


def _metric(results: dict) -> tuple[str, str]:
    """(key, short name) of the compared metric: test_acc / acc, or the dense task's (mIoU, ...)."""
    key = results.get("metric", "test_acc")
    return key, METRIC_LABELS.get(key, key)


def markdown_table(results: dict) -> str:
    key, name = _metric(results)
    lines = [f"| method | final test {name} % (mean ± std; per seed) | best test {name} % | s / epoch | "
             "deployed KiB | budget | from |",
             "|---|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {_pm(m[f'final_{key}'])} | {_pm(m[f'best_{key}'])} | "
                     f"{m['sec_per_epoch']:.1f} | {m['size_kib']:.1f} | {m['budget']} | {m['source']} |")
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, results: dict, *, plot: bool = True) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    buf = io.StringIO()
    key, label = _metric(results)
    columns = [c.replace("test_acc", key) for c in CSV_COLUMNS]
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for run in results["runs"]:
        writer.writerow(run)
    atomic_write(out / "results.csv", buf.getvalue().encode())
    budget = (f"{results['epochs']} epochs" if results.get("epochs") else
              f"{results['max_steps']} steps" if results.get("max_steps") else "the recipes' own")
    extra = f"; subset {results['subset']}" if results.get("subset") else ""
    if results.get("overrides"):
        extra += "; overrides " + " ".join(results["overrides"])
    done, planned = len(results["runs"]), results.get("runs_planned", len(results["runs"]))
    if done < planned:
        extra += f"; UNFINISHED: {done} of {planned} runs done"
    head = (f"# Comparison on {results['recipe']}\n\nSeeds {', '.join(map(str, results['seeds']))}; "
            f"budget per run: {budget}{extra}.\n\n")
    atomic_write(out / "results.md", (head + markdown_table(results)).encode())
    if plot:
        from ..analysis.curves import plot_accuracy_curves

        curves: dict[str, list[list[float]]] = {}
        for run in results["runs"]:
            curves.setdefault(run["method"], []).append(run["curve"])
        what = "accuracy" if key == "test_acc" else label
        plot_accuracy_curves(out / "curves.png", curves, title=f"{results['recipe']}: test {what}, "
                                                               f"mean and min-max over seeds",
                             ylabel=f"test {what} (%)")
