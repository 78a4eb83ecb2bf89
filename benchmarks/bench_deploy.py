"""Packed XNOR-popcount inference vs float32 PyTorch, measured side by side in one run.

Cases (each packed layer/model is compared with its float32 PyTorch counterpart at the same
thread count, runs interleaved so that both see the same machine load):

- ResNet-18 3x3 conv 256->256 at 14x14, batch 1 and 16 (W1A1 `PackedConv2d`, whole layer:
  input packing, popcount GEMM, zero-padding correction, folded affine output);
- 4096x4096 linear at batch 1 and 64 (W1A1 `PackedLinear`);
- end-to-end ImageNet ResNet-18 W1A1 (Bi-Real blocks, FP stem/downsample/FC) at batch 1, the
  file written by `export_model` and read by `load_packed`;
- ``torch._int_mm`` on +-1 int8 matrices of the same GEMMs, where it runs.

Float baselines are timed in both memory formats (NCHW and channels_last) and the faster one is
the reference for the speed-up. Reported: median latency, inter-quartile range, speed-up.

    python benchmarks/bench_deploy.py                 # 2 threads, 30 rounds
    python benchmarks/bench_deploy.py --threads 1 --rounds 50 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

import biper  # noqa: E402
from biper.deploy import export_model, kernels, load_packed  # noqa: E402
from biper.deploy.modules import PackedConv2d, PackedLinear  # noqa: E402
from biper.nn import BinaryConv2d, BinaryLinear  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(fns: dict, rounds: int, warmup: int) -> dict:
    """Interleaved timing: each round runs every function once. Returns seconds per function."""
    times = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(rounds):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return times


def stats(ts: list[float]) -> dict:
    q = statistics.quantiles(ts, n=4)
    return {"median_ms": statistics.median(ts) * 1e3, "iqr_ms": (q[2] - q[0]) * 1e3,
            "min_ms": min(ts) * 1e3}


def int_mm(m: int, k: int, n: int):
    """torch._int_mm on +-1 int8 (M, K) x (K, N), or None where it does not run."""
    a = torch.randint(0, 2, (m, k), dtype=torch.int8) * 2 - 1
    b = torch.randint(0, 2, (k, n), dtype=torch.int8) * 2 - 1
    try:
        out = torch._int_mm(a, b)
        assert torch.equal(out, a.int() @ b.int())
    except Exception:
        return None
    return lambda: torch._int_mm(a, b)


def conv_case(batch: int):
    torch.manual_seed(0)
    layer = BinaryConv2d(256, 256, 3, padding=1, bias=False, input_quantizer="approx_sign").eval()
    packed = PackedConv2d.from_binary(layer)
    x = torch.randn(batch, 256, 14, 14)
    xc = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3)
    wc = w.contiguous(memory_format=torch.channels_last)
    fns = {"float32 NCHW": lambda: F.conv2d(x, w, padding=1),
           "float32 channels_last": lambda: F.conv2d(xc, wc, padding=1),
           "packed W1A1": lambda: packed(x)}
    mm = int_mm(batch * 196, 2304, 256)
    if mm is not None:
        fns["torch._int_mm int8 (GEMM only)"] = mm
    return f"conv3x3 256->256 14x14 batch {batch}", fns


def linear_case(batch: int):
    torch.manual_seed(0)
    layer = BinaryLinear(4096, 4096, bias=False, input_quantizer="approx_sign").eval()
    packed = PackedLinear.from_binary(layer)
    x, w = torch.randn(batch, 4096), torch.randn(4096, 4096)
    fns = {"float32": lambda: F.linear(x, w), "packed W1A1": lambda: packed(x)}
    mm = int_mm(batch, 4096, 4096)
    if mm is not None:
        fns["torch._int_mm int8"] = mm
    return f"linear 4096x4096 batch {batch}", fns


def resnet18_case(folder: str):
    torch.manual_seed(0)
    binary = biper.create_model("resnet18_imagenet", binarize=biper.BinarizeConfig()).eval()
    gen = torch.Generator().manual_seed(0)
    for m in binary.modules():  # trained-like BatchNorm statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    path = os.path.join(folder, "resnet18.biper")
    info = export_model(binary, path)
    packed = load_packed(path)
    fp = biper.create_model("resnet18_imagenet").eval()
    fp_cl = biper.create_model("resnet18_imagenet").eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 224, 224)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        agree = bool((packed(x).argmax(1) == binary(x).argmax(1)).all())
    fns = {"float32 NCHW": lambda: fp(x), "float32 channels_last": lambda: fp_cl(xc),
           "packed W1A1": lambda: packed(x)}
    extra = {"file_bytes": info.file_bytes, "theoretical_bytes": info.theoretical_bytes,
             "size_ratio": info.size_ratio, "prediction_agrees_with_training_model": agree}
    return "ResNet-18 ImageNet W1A1 end-to-end batch 1", fns, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kinfo = kernels.info()
    header = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "biper": biper.__version__, "python": platform.python_version(),
              "kernels": kinfo}
    print(f"# {header['cpu']} ({header['logical_cpus']} logical CPUs), {header['threads']} threads, "
          f"torch {header['torch']}, biper {header['biper']}, kernels: {kinfo.get('backend')} "
          f"{kinfo.get('isa', kinfo.get('reason', ''))}")
    results = []
    with tempfile.TemporaryDirectory() as folder:
        cases = [conv_case(1), conv_case(16), linear_case(1), linear_case(64), resnet18_case(folder)]
        for case in cases:
            title, fns = case[0], case[1]
            extra = case[2] if len(case) > 2 else {}
            rounds = args.rounds if "ResNet" not in title else max(10, args.rounds // 2)
            row = {name: stats(ts) for name, ts in measure(fns, rounds, args.warmup).items()}
            best_float = min(v["median_ms"] for k, v in row.items() if k.startswith("float32"))
            print(f"\n{title}  ({rounds} interleaved rounds)")
            for name, s in row.items():
                speed = best_float / s["median_ms"]
                print(f"  {name:32s} median {s['median_ms']:9.3f} ms   IQR {s['iqr_ms']:7.3f} ms   "
                      f"min {s['min_ms']:9.3f} ms   {speed:6.1f}x vs best float32")
            for key, value in extra.items():
                print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
            results.append({"case": title, "rounds": rounds, "timings": row, **extra})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": header, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
