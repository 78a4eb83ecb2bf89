"""Packed XNOR-popcount inference vs float32 PyTorch (see `biper.deploy.bench` for the cases).

    python benchmarks/bench_deploy.py --threads 2 --rounds 30
    python benchmarks/bench_deploy.py --threads 1 --clock cpu --json deploy.json
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from biper.deploy.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
