"""``biper compare RECIPE --methods biper,bnn,... --seeds 0,1 [--epochs N | --max-steps N] [key=value ...] --out DIR``.

Trains every method x seed on the base recipe under one budget (`biper.train.compare`): same
model, data, augmentation and seeds; a method is a weight-quantizer override (bnn, bnn+, bnn++,
bc, pc, rpc), fp (no binarization), a sibling recipe (biper, bop) or NAME=RECIPE. Each run is a
run folder under DIR/runs; rerunning the command resumes an interrupted comparison and does not
repeat finished runs. Writes DIR/results.md, results.csv, results.json and curves.png.
``--data-dir``, ``--subset`` and ``--quiet`` mean what they mean for ``biper train``.
"""

from __future__ import annotations

import argparse

from ._args import int_list, name_list, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="train several methods and seeds under one budget, report side by side",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", metavar="RECIPE", help="base recipe (model, data, runtime; e.g. cifar10-resnet20-bc)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    p.add_argument("--methods", type=name_list, required=True, metavar="M1,M2",
                   help="biper,bop,bnn,bnn+,bnn++,bc,pc,rpc,fp or NAME=RECIPE")
    p.add_argument("--seeds", type=int_list, default=[0], metavar="S1,S2", help="seeds (default 0)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, metavar="N", help="total epochs per run")
    budget.add_argument("--max-steps", type=positive_int, metavar="N", help="total optimizer steps per run")
    p.add_argument("--out", metavar="DIR", required=True, help="comparison folder")
    p.add_argument("--data-dir", metavar="D", help="dataset folder (sets data.data_dir)")
    p.add_argument("--subset", type=positive_int, metavar="N", help="use only the first N train and N test examples")
    p.add_argument("--quiet", action="store_true", help="no progress bars (epoch lines are still printed)")
    p.add_argument("--no-plot", action="store_true", help="skip curves.png (no matplotlib needed)")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..train.compare import compare
    from ..train.compare_report import markdown_table
    from ..train.stops import TrainingStopped

    try:
        results = compare(args.recipe, args.methods, args.seeds, args.out, epochs=args.epochs,
                          max_steps=args.max_steps, overrides=args.overrides, data_dir=args.data_dir,
                          subset=args.subset, quiet=args.quiet, plot=not args.no_plot)
    except TrainingStopped as stop:
        message = str(stop).replace("continue with --resume", "rerun the same command to continue")
        print(f"biper compare: {message}", file=sys.stderr)
        return stop.exit_code
    print(markdown_table(results), end="")
    print(f"results in {Path(args.out) / 'results.md'}")
    return 0
