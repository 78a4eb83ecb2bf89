"""``biper plot-flips RUN [RUN ...] --out FILE.png``: flip rate, mean |B'| and accuracy per epoch.

Reads each run folder's ``metrics.jsonl`` (the ``flip_rate`` and ``mean_abs_bprime`` columns the
training engine writes for binary models) and draws one line per run; ``--label`` names them.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("plot-flips", help="plot per-epoch flip rate, mean |B'| and test accuracy of runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (with metrics.jsonl)")
    p.add_argument("--out", required=True, metavar="FILE", help="PNG file to write")
    p.add_argument("--label", action="append", metavar="NAME", help="legend name of each run, in order")
    p.set_defaults(run=run)


def run(args) -> int:
    from ..analysis.surrogate_plots import plot_flips
    from ..errors import BiperError

    if args.label and len(args.label) != len(args.runs):
        raise BiperError(f"--label given {len(args.label)} time(s) for {len(args.runs)} run(s)")
    print(f"wrote {plot_flips(args.out, args.runs, args.label)}")
    return 0
