"""Seconds per CIFAR-10 training epoch: BiPer W1A1 ResNet-20 next to float ResNet-20.

Every configuration runs the engine's own `biper.train.step.train_step` (quantizer progress,
learning rate, task loss with the sin^2 regulariser, non-finite check, backward, gradient
clipping, SGD step, latent clipping) on batches of 256 from the trainer's loader. After a
warm-up, the configurations take turns: each round times ``--steps`` steps of every configuration,
and the median over ``--rounds`` rounds is extrapolated to one epoch of 50,000 images (196
steps); the summary lines also give the ratios of the fastest rounds. Interleaving keeps the
ratios fair when other processes share the CPU; the spread column shows how much the rounds
disagreed. Evaluation is timed separately (10,000 test images). The baseline is the float
ResNet-20 in eager float32 measured in the same process.

Targets: BiPer W1A1 <= 0.35x eager float32, and <= 1.10x the same float model under the same
settings (docs/training.md has the measurements). Like ``biper train``, the script first calls
`biper.native.tune_allocator` (large freed blocks stay in the heap instead of faulting in fresh
pages every step); it applies to every configuration, the baseline included.
``--no-malloc-tuning`` shows glibc's defaults.

Usage::

    python benchmarks/bench_train.py                         # synthetic CIFAR-sized data
    python benchmarks/bench_train.py --data-dir ../shared/data --threads 2
    python benchmarks/bench_train.py --compile                # + torch.compile'd models
    python benchmarks/bench_train.py --device cuda            # on a GPU (synchronised timing)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

from biper.data import TensorLoader, load_dataset  # noqa: E402
from biper.native import tune_allocator  # noqa: E402
from biper.quantizers import fused  # noqa: E402
from biper.train import build_model_from_config, build_optimizer, load_run_config  # noqa: E402
from biper.train.evaluate import evaluate  # noqa: E402
from biper.train.model import model_spec  # noqa: E402
from biper.train.step import train_step  # noqa: E402
from biper.train.tasks import ClassificationTask  # noqa: E402

STEPS_PER_EPOCH = 196  # ceil(50000 / 256)
BASELINE = (False, "fp32", False, False, 1)  # Case.key of the eager float32 baseline

CASES = [
    # label, binarized?, stage (0 sine / 1 square), precision, channels_last, compile
    ("float  fp32 eager (baseline)", False, 1, "fp32", False, False),
    ("float  fp32 + channels_last", False, 1, "fp32", True, False),
    ("BiPer  W1A1 fp32 + channels_last, sine", True, 0, "fp32", True, False),
    ("BiPer  W1A1 fp32 + channels_last, square", True, 1, "fp32", True, False),
    ("float  bf16 + channels_last", False, 1, "bf16", True, False),
    ("BiPer  W1A1 bf16 + channels_last, square", True, 1, "bf16", True, False),
]
COMPILED = [
    ("float  fp32 + channels_last + compile", False, 1, "fp32", True, True),
    ("BiPer  W1A1 fp32 + cl + compile, square", True, 1, "fp32", True, True),
]


class Case:
    """One configuration: a model, its optimizer and task, and a timed training step."""

    def __init__(self, label, binary, stage_index, precision, channels_last, compiled, batches,
                 device=torch.device("cpu")):
        overrides = [f"precision={precision}", f"channels_last={str(channels_last).lower()}"]
        if not binary:
            overrides.append("binarize=null")
        cfg = load_run_config("cifar10-resnet20-biper", overrides)
        stage = self.stage = cfg.stages[stage_index]
        torch.manual_seed(0)
        self.model = build_model_from_config(model_spec(cfg, stage_index, 10)).to(device)
        self.device = device
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net = torch.compile(self.model) if compiled else self.model
        self.optimizer = build_optimizer(self.model, stage)
        self.task = ClassificationTask(label_smoothing=stage.label_smoothing, tau=stage.tau if binary else 0.0)
        self.label, self.binary, self.precision, self.channels_last = label, binary, precision, channels_last
        self.key = (binary, precision, channels_last, compiled, stage_index)
        cl = torch.channels_last if channels_last else torch.contiguous_format
        self.batches = [(x.to(device).contiguous(memory_format=cl), y.to(device)) for x, y in batches]
        self.times: list[float] = []
        self.cpu: list[float] = []

    def steps(self, n: int) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) per step over ``n`` engine training steps."""
        device = self.device
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            x, y = self.batches[i % len(self.batches)]
            train_step(self.model, self.task, self.optimizer, x, y, progress=0.5, lr=self.stage.lr,
                       net=self.net, grad_clip=self.stage.grad_clip, precision=self.precision)
        _sync(device)
        return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

    def eval_seconds(self, test_set) -> float:
        loader = TensorLoader(test_set, 500, train=False, channels_last=self.channels_last)
        t0 = time.perf_counter()
        evaluate(self.net, loader, device=self.device, precision=self.precision)
        _sync(self.device)
        return (time.perf_counter() - t0) * 10000 / len(test_set)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with CIFAR-10 (default: synthetic 32x32 data)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4, help="timed steps per case and round")
    p.add_argument("--rounds", type=int, default=5, help="rounds; cases alternate inside each round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--eval-images", type=int, default=2000, help="test images timed for evaluation")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's default malloc thresholds")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tuned = False if args.no_malloc_tuning else tune_allocator()
    n_train = 256 * args.steps
    if args.data_dir:
        train_set = load_dataset("cifar10", args.data_dir, "train", subset=n_train, progress=False)
        test_set = load_dataset("cifar10", args.data_dir, "test", subset=args.eval_images, progress=False)
    else:
        train_set = load_dataset("synthetic", None, "train", length=n_train)
        test_set = load_dataset("synthetic", None, "test", length=args.eval_images)
    batches = list(TensorLoader(train_set, 256, train=True, seed=0).iter_from(0))
    cpu = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {cpu}, python {platform.python_version()}, "
          f"malloc tuning {'on' if tuned else 'off'}, activation kernels {fused.backend()}")
    print(f"# median over {args.rounds} interleaved rounds of {args.steps} steps (batch 256) per case, after "
          f"{args.warmup} warm-up steps; epoch = {STEPS_PER_EPOCH} steps; eval = 10,000 images")
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"# device {torch.cuda.get_device_name(device)}")
    cases = [Case(*spec, batches, device=device) for spec in CASES + (COMPILED if args.compile else [])]
    evals = {}
    for case in cases:
        t0 = time.perf_counter()
        case.steps(args.warmup)
        evals[case.key] = case.eval_seconds(test_set)
        if case.key[3]:  # compiled
            print(f"# {case.label}: compiled and warmed up in {time.perf_counter() - t0:.0f}s", flush=True)
    for _ in range(args.rounds):  # interleave so that load from other processes hits every case alike
        for case in cases:
            wall, cpu_s = case.steps(args.steps)
            case.times.append(wall)
            case.cpu.append(cpu_s)
    for clock in ("wall", "cpu"):
        what = ("wall-clock seconds" if clock == "wall" else
                "process CPU seconds (all threads; robust to other processes' load)")
        print(f"\n## {what}")
        print(f"{'configuration':<44} {'s/step':>8} {'s/epoch':>9} {'spread':>7} {'eval s':>7} {'vs fp32':>8} "
              f"{'vs float same':>14}")
        series = {c.key: (c.times if clock == "wall" else c.cpu) for c in cases}
        med = {k: statistics.median(v) for k, v in series.items()}
        base = med[BASELINE]
        for c in cases:
            step = med[c.key]
            same = med.get((False,) + c.key[1:4] + (1,))
            ratio_same = f"{step / same:.2f}x" if c.binary and same else "-"
            spread = (max(series[c.key]) - min(series[c.key])) * STEPS_PER_EPOCH
            ev = f"{evals[c.key]:7.1f}" if clock == "wall" else f"{'':>7}"
            print(f"{c.label:<44} {step:8.3f} {step * STEPS_PER_EPOCH:9.1f} {spread:7.1f} {ev} "
                  f"{step / base:7.2f}x {ratio_same:>14}")
        low = {k: min(v) for k, v in series.items()}  # other processes only ever add time
        for c in (c for c in cases if c.binary):
            same = (False,) + c.key[1:4] + (1,)
            print(f"# {c.label.strip()}: {med[c.key] / base:.2f}x eager fp32 (target <= 0.35x), "
                  f"{med[c.key] / med[same]:.2f}x float same settings (target <= 1.10x); fastest rounds: "
                  f"{low[c.key] / low[BASELINE]:.2f}x, {low[c.key] / low[same]:.2f}x")

if __name__ == "__main__":
    main()
