"""Table of the surrogate comparison: mean +- std over seeds of run folders METHOD-sSEED.

    python benchmarks/surrogates_table.py /work/runs_surr biper2 tanh fourier triangle bnn

Columns: final and best test accuracy (%), flip rate of the last epoch, mean |B'| of the last
epoch, soft_frac of the last epoch (weights whose forward differs from the deployed square wave
by more than 0.01), wall time (s); n = seeds found with a summary.json.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def _ms(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def main(root: str, methods: list[str]) -> None:
    print("| method | n | final test acc % | best test acc % | last-epoch flip rate | last-epoch mean abs B' "
          "| last-epoch soft_frac | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        runs = sorted(p for p in Path(root).glob(f"{m}-s*") if (p / "summary.json").exists())
        summ = [json.loads((p / "summary.json").read_text()) for p in runs]
        last = [json.loads((p / "metrics.jsonl").read_text().splitlines()[-1]) for p in runs]
        print(f"| {m} | {len(runs)} | {_ms([s['final_test_acc'] for s in summ], '.2f')} "
              f"| {_ms([s['best_test_acc'] for s in summ], '.2f')} | {_ms([r.get('flip_rate') for r in last], '.4f')} "
              f"| {_ms([r.get('mean_abs_bprime') for r in last], '.3g')} | {_ms([r.get('soft_frac') for r in last], '.4f')} "
              f"| {_ms([s['wall_time'] for s in summ], '.0f')} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
