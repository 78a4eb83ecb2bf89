"""Time the scenes dataset: first load (generate + cache) and second load (cache) of both
splits at the default parameters, and one batch of 256 through the TensorLoader.

    PYTHONPATH=src python benchmarks/bench_scenes.py --data-dir ../shared/data --cache-dir /tmp/c
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from biper.data import TensorLoader, load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--cache-dir", required=True, help="an empty folder (first load = generation)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    for split in ("train", "test"):
        load_dataset("cifar10", args.data_dir, split, cache_dir=args.cache_dir, progress=False)
        for what in ("first load (generate + write cache)", "second load (cache)"):
            t = time.perf_counter()
            ds = load_dataset("scenes", args.data_dir, split, cache_dir=args.cache_dir,
                              progress=False)
            print(f"{split} {len(ds)} scenes, {what}: {time.perf_counter() - t:.2f} s")
    for target in ("mask", "boxes"):
        ds = load_dataset("scenes", args.data_dir, "train", cache_dir=args.cache_dir,
                          progress=False, target=target)
        loader = TensorLoader(ds, 256, train=True, seed=0)
        times = []
        for b in range(20):
            t = time.perf_counter()
            loader.batch(b)
            times.append(time.perf_counter() - t)
        print(f"one batch of 256 ({target}, flip + translate): "
              f"{sorted(times)[len(times) // 2] * 1e3:.1f} ms median of 20")


if __name__ == "__main__":
    main()
