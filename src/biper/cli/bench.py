"""``biper bench``: packed XNOR-popcount layers and ResNet-18 vs float32 PyTorch, side by side.

Same as ``python benchmarks/bench_deploy.py``; see `biper.deploy.bench` for the cases.
"""

from __future__ import annotations


def add_arguments(parser) -> None:
    """The benchmark's options (shared with ``benchmarks/bench_deploy.py``; no torch import)."""
    parser.add_argument("--threads", type=int, default=2, help="threads for both torch and the kernels")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds per case")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall-clock latency, or the thread's CPU time (needs --threads 1)")
    parser.add_argument("--only", choices=("conv", "linear", "resnet18"), action="append",
                        help="run only these cases (repeatable)")
    parser.add_argument("--json", help="also write the results to this file")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark packed inference against float32 PyTorch")
    add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..deploy.bench import run_benchmarks
    from ._checks import writable_file

    if args.json:
        writable_file(args.json, "--json")  # before minutes of timing, not after
    run_benchmarks(args.threads, args.rounds, args.warmup, args.clock, args.only, args.json)
    return 0
