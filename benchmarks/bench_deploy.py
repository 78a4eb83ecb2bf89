"""Packed XNOR-popcount inference vs float32 PyTorch (see `biper.deploy.bench` for the cases).

    python benchmarks/bench_deploy.py --threads 2 --rounds 30
    python benchmarks/bench_deploy.py --threads 1 --clock cpu --json deploy.json
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from biper.cli.bench import add_arguments  # noqa: E402
from biper.deploy.bench import run_benchmarks  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    run_benchmarks(args.threads, args.rounds, args.warmup, args.clock, args.only, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
