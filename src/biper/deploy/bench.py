"""Packed XNOR-popcount inference vs float32 PyTorch, measured side by side in one run.

Run as ``python benchmarks/bench_deploy.py`` or ``biper bench``.

Cases (each packed layer/model is compared with its float32 PyTorch counterpart at the same
thread count; rounds interleave the contenders so that both see the same machine load, and
each round calls a contender 5 times in a row so that the median reflects warm caches):

- ResNet-18 3x3 conv 256->256 at 14x14, batch 1 and 16 (W1A1 `PackedConv2d`, whole layer:
  input packing, popcount GEMM, zero-padding correction, folded affine output), fed NCHW and
  channels_last (NHWC, the layout `load_packed` models run in) inputs;
- 4096x4096 linear at batch 1 and 64 (W1A1 `PackedLinear`);
- end-to-end ImageNet ResNet-18 W1A1 (Bi-Real blocks, FP stem/downsample/FC) at batch 1, the
  file written by `export_model` and read by `load_packed`;
- ``torch._int_mm`` on +-1 int8 matrices of the same GEMMs, where it runs, next to the packed
  GEMM alone (bits in, int32 out) for a like-for-like comparison.

A contender more than ten times slower than float32 (``torch._int_mm`` where the CPU has no
fast int8 path) is timed once and printed as such instead of in every round, so that a run
stays within minutes on any machine; the total wall time is printed at the end.

Float baselines are timed in both memory formats (NCHW and channels_last) and the faster one is
the reference for the speed-up. Reported: median latency, inter-quartile range, speed-up.

    python benchmarks/bench_deploy.py                 # 2 threads, 30 rounds
    python benchmarks/bench_deploy.py --threads 1 --clock cpu --json results.json

``--clock cpu`` times with the thread's CPU time (one thread only), which is far less disturbed
by other processes on a shared machine than wall-clock latency.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from ..version import __version__
from ..errors import BiperError
from ..nn import BinaryConv2d, BinaryLinear
from . import kernels
from .export import export_model, load_packed
from .modules import PackedConv2d, PackedLinear
from .verify import deployed_copy

__all__ = ["run_benchmarks"]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SLOW_FACTOR = 10.0  # a contender this many times slower than float32 is timed once


def measure(fns: dict, rounds: int, warmup: int, clock=time.perf_counter, burst: int = 5,
            slow_factor: float = SLOW_FACTOR) -> tuple[dict, set]:
    """Interleaved timing: each round runs every function ``burst`` times in a row (so that the
    median sees warm caches, as a process serving one model would) and every function shares
    the machine's load alike. One probe call each comes first: a contender more than
    ``slow_factor`` times slower than the fastest float32 one (or than the fastest of all when
    none is float32) keeps that one timing and is left out of the rounds, so that a reference path
    orders of magnitude slower cannot stretch the run. Returns (per-call seconds of each
    function, names of those timed once)."""
    times = {name: [] for name in fns}
    with torch.no_grad():
        probe = {}
        for name, fn in fns.items():
            start = clock()
            fn()
            probe[name] = clock() - start
        floats = [t for name, t in probe.items() if name.startswith("float32")]
        ref = min(floats or probe.values())
        slow = {name for name, t in probe.items()
                if not name.startswith("float32") and t > slow_factor * max(ref, 1e-9)}
        for name in slow:  # its probe is its timing (warm caches do not matter at that ratio)
            times[name].append(probe[name])
        fast = {name: fn for name, fn in fns.items() if name not in slow}
        for _ in range(warmup):
            for fn in fast.values():
                fn()
        for _ in range(rounds):
            for name, fn in fast.items():
                for _ in range(burst):
                    start = clock()
                    fn()
                    times[name].append(clock() - start)
    return times, slow


def stats(ts: list[float]) -> dict:
    """Median, inter-quartile range and minimum in ms (IQR 0 for a single call)."""
    q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
    return {"median_ms": statistics.median(ts) * 1e3, "iqr_ms": (q[2] - q[0]) * 1e3,
            "min_ms": min(ts) * 1e3}


def int_mm(m: int, k: int, n: int):
    """torch._int_mm on +-1 int8 (M, K) x (K, N), or None where it does not run."""
    a = torch.randint(0, 2, (m, k), dtype=torch.int8) * 2 - 1
    b = torch.randint(0, 2, (k, n), dtype=torch.int8) * 2 - 1
    try:  # checked on a small product: a full-size call can take seconds without fast int8
        sa, sb = a[:17, :64].contiguous(), b[:64, :24].contiguous()
        assert torch.equal(torch._int_mm(sa, sb), sa.int() @ sb.int())
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
    words = kernels.pack_rows(xc.permute(0, 2, 3, 1).reshape(-1, 256)).view(batch, 14, 14, -1)
    rows = kernels.im2col(words, (3, 3), (1, 1), (1, 1), (1, 1), torch.zeros(4, dtype=torch.int64))
    panels = packed._panels()
    fns = {"float32 NCHW": lambda: F.conv2d(x, w, padding=1),
           "float32 channels_last": lambda: F.conv2d(xc, wc, padding=1),
           "packed W1A1 (NCHW input)": lambda: packed(x),
           "packed W1A1 (channels_last input)": lambda: packed(xc),
           "packed GEMM only (bits in, int32 out)": lambda: kernels.gemm(rows, panels, 256, 2304)}
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
    from ..models import create_model
    from ..transform import BinarizeConfig

    torch.manual_seed(0)
    binary = create_model("resnet18_imagenet", binarize=BinarizeConfig()).eval()
    gen = torch.Generator().manual_seed(0)
    for m in binary.modules():  # trained-like BatchNorm statistics
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    path = os.path.join(folder, "resnet18.biper")
    info = export_model(binary, path)
    packed = load_packed(path)
    fp = create_model("resnet18_imagenet").eval()
    fp_cl = create_model("resnet18_imagenet").eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 224, 224)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        agree = bool((packed(x).argmax(1) == deployed_copy(binary)[0](x).argmax(1)).all())
    fns = {"float32 NCHW": lambda: fp(x), "float32 channels_last": lambda: fp_cl(xc),
           "packed W1A1": lambda: packed(x)}
    extra = {"file_bytes": info.file_bytes, "theoretical_bytes": info.theoretical_bytes,
             "size_ratio": info.size_ratio, "prediction_agrees_with_training_model": agree}  # run with its deployed signs
    return "ResNet-18 ImageNet W1A1 end-to-end batch 1", fns, extra


def run_benchmarks(threads: int = 2, rounds: int = 30, warmup: int = 5, clock: str = "wall",
                   only=None, json_path: str | None = None, out=print) -> dict:
    """Run the cases, print the table with ``out``, return (and optionally save) the results."""
    if threads < 1 or rounds < 2 or warmup < 0:
        raise BiperError("--threads and --rounds must be >= 1 and >= 2, --warmup >= 0")
    if clock == "cpu" and threads != 1:
        raise BiperError("--clock cpu measures one thread's CPU time; use it with --threads 1")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(threads, rounds, warmup, clock, only, json_path, out)
    finally:
        torch.set_num_threads(previous_threads)


def _run(threads, rounds, warmup, clock, only, json_path, out) -> dict:
    started = time.perf_counter()
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    kinfo = kernels.info()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "biper": __version__, "python": platform.python_version(),
              "kernels": kinfo, "clock": clock, "load_average_1min": load}
    out(f"# {header['cpu']} ({header['logical_cpus']} logical CPUs, load {load:.2f}), "
        f"{header['threads']} threads, {clock} clock, torch {header['torch']}, biper {header['biper']}, "
        f"kernels: {kinfo.get('backend')} {kinfo.get('isa', kinfo.get('reason', ''))}")
    builders = {"conv": [lambda _: conv_case(1), lambda _: conv_case(16)],
                "linear": [lambda _: linear_case(1), lambda _: linear_case(64)],
                "resnet18": [resnet18_case]}
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for key, makers in builders.items():
            if only and key not in only:
                continue
            for make in makers:
                case = make(folder)
                title, fns = case[0], case[1]
                extra = case[2] if len(case) > 2 else {}
                n = rounds if key != "resnet18" else max(4, rounds // 3)
                times, slow = measure(fns, n, warmup, timer)
                row = {name: stats(ts) for name, ts in times.items()}
                best_float = min(v["median_ms"] for k, v in row.items() if k.startswith("float32"))
                out(f"\n{title}  ({n} interleaved rounds of 5 calls)")
                for name, s in row.items():
                    s["speedup_vs_best_float32"] = best_float / s["median_ms"]
                    if name in slow:
                        s["timed_once"] = True
                        out(f"  {name:38s} one call {s['median_ms']:9.3f} ms   (over {SLOW_FACTOR:g}x slower "
                            f"than float32: timed once)   {s['speedup_vs_best_float32']:6.2f}x vs best float32")
                        continue
                    out(f"  {name:38s} median {s['median_ms']:9.3f} ms   IQR {s['iqr_ms']:7.3f} ms   "
                        f"min {s['min_ms']:9.3f} ms   {s['speedup_vs_best_float32']:6.1f}x vs best float32")
                for k, value in extra.items():
                    out(f"  {k}: {value:.4f}" if isinstance(value, float) else f"  {k}: {value}")
                results.append({"case": title, "rounds": n, "calls_per_round": 5, "timings": row, **extra})
    header["wall_s"] = time.perf_counter() - started
    out(f"\nbench wall time {header['wall_s']:.1f} s")
    report = {"environment": header, "results": results}
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2)
    return report

