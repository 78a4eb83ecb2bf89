"""``biper train RECIPE_OR_YAML [key=value ...] [--data-dir D] [--out DIR] [--resume]``.

Loads a packaged recipe (``biper recipes``) or a YAML file, applies ``key=value`` overrides
(dotted paths, YAML values: ``stages.0.lr=0.01``, ``binarize.weight_quantizer=bc``,
``stages.*.epochs=1``), and runs it with `biper.train.train`. ``--max-steps N`` caps every
stage at N steps and ``--subset N`` keeps the first N training and N test examples, for quick
checks. ``--nproc N`` trains data-parallel in N processes on this machine, the same as
``torchrun --standalone --nproc_per_node=N -m biper train ...`` (one process per GPU, gloo on
CPU; the recipe's batch size is the global batch). Exit status: 0 done, 1 stopped (NaN loss,
failed checkpoint write), 2 bad input, 128 + signal number after SIGINT / SIGTERM (a checkpoint
was written; rerun with ``--resume``).
"""

from __future__ import annotations

import argparse

from ._args import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a recipe (multi-stage, resumable)",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", metavar="RECIPE_OR_YAML", help="packaged recipe name or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys)")
    p.add_argument("--data-dir", metavar="D", help="dataset folder (sets data.data_dir)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last good checkpoint")
    p.add_argument("--max-steps", type=positive_int, metavar="N", help="cap every stage at N optimizer steps")
    p.add_argument("--subset", type=positive_int, metavar="N", help="use only the first N train and N test examples")
    p.add_argument("--quiet", action="store_true", help="no progress bars (epoch lines are still printed)")
    p.add_argument("--nproc", type=positive_int, metavar="N",
                   help="data-parallel over N processes on this machine (torchrun; one per GPU, gloo on CPU)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(run=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..train import load_run_config, train
    from ..train.checkpoint import CheckpointWriteError
    from ..train.stops import TrainingStopped
    from ..train.metrics import metric_label

    config = load_run_config(args.recipe, args.overrides, data_dir=args.data_dir,
                             max_steps=args.max_steps, subset=args.subset)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.nproc and args.nproc > 1:  # the config is valid: start the workers
        from ..train.distributed import launch, preflight

        preflight(config, args.nproc)
        return launch(args.nproc, _worker_argv(args))
    out = Path(args.out) if args.out else Path("runs") / Path(str(args.recipe)).stem
    try:
        summary = train(config, out, resume=args.resume, quiet=args.quiet)
    except TrainingStopped as stop:
        if _main_rank():
            print(f"biper train: {stop}", file=sys.stderr)
        return stop.exit_code
    except CheckpointWriteError as err:
        print(f"biper train: error: {err}", file=sys.stderr)
        return 1
    if not _main_rank():
        return 0
    key = summary.get("main_metric", "test_acc")
    print(f"final test {metric_label(key)} {summary[f'final_{key}']:.2f}% (best {summary[f'best_{key}']:.2f}%), "
          f"weights sha256 {summary['weights_sha256'][:16]}..., summary in {out / 'summary.json'}")
    return 0


def _main_rank() -> bool:
    """Rank 0 of a torchrun job, or a lone process (the process group is gone by now)."""
    from ..train.distributed import env_world

    return env_world()[0] == 0


def _worker_argv(args) -> list[str]:
    """The ``biper`` command line each worker of ``--nproc`` runs (without ``--nproc``)."""
    argv = ["train", str(args.recipe), *args.overrides]
    for flag, value in (("--data-dir", args.data_dir), ("--out", args.out), ("--max-steps", args.max_steps),
                        ("--subset", args.subset)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + [flag for flag, on in (("--resume", args.resume), ("--quiet", args.quiet)) if on]
