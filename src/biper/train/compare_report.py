"""The files of a comparison: ``results.md`` / ``.csv`` / ``.json`` and ``curves.png``.

``results.json`` is the dict `biper.train.compare.compare` returns; ``results.csv`` has one row
per run (method, seed, final and best test accuracy, seconds per epoch, deployed size, folder);
``results.md`` one row per method: accuracies as mean ± sample standard deviation over seeds
with every seed's value, seconds per training epoch (mean over the runs' epochs) and the
deployed size (1 bit per binary weight, 32 per other parameter).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_write
from .metrics import write_json

__all__ = ["write_report", "markdown_table"]

CSV_COLUMNS = ("method", "seed", "final_test_acc", "best_test_acc", "sec_per_epoch", "wall_time",
               "size_kib", "run_dir")


def _pm(stats: dict) -> str:
    if len(stats["seeds"]) == 1:
        return f"{stats['mean']:.2f} (1 seed)"
    seeds = ", ".join(f"{v:.2f}" for v in stats["seeds"].values())
    return f"{stats['mean']:.2f} ± {stats['std']:.2f} ({seeds})"


def markdown_table(results: dict) -> str:
    lines = ["| method | final test acc % (mean ± std; per seed) | best test acc % | s / epoch | "
             "deployed KiB | budget | from |",
             "|---|---|---|---|---|---|---|"]
    for name, m in results["methods"].items():
        lines.append(f"| {name} | {_pm(m['final_test_acc'])} | {_pm(m['best_test_acc'])} | "
                     f"{m['sec_per_epoch']:.1f} | {m['size_kib']:.1f} | {m['budget']} | {m['source']} |")
    return "\n".join(lines) + "\n"


def write_report(out: str | Path, results: dict, *, plot: bool = True) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
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
        plot_accuracy_curves(out / "curves.png", curves, title=f"{results['recipe']}: test accuracy, "
                                                               f"mean and min-max over seeds")
