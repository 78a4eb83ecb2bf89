"""Seconds per CIFAR-10 training epoch: BiPer W1A1 ResNet-20 next to float ResNet-20.

Every configuration runs the engine's training step (quantizer progress, learning rate, task
loss with the sin^2 regulariser, backward, SGD step, latent clipping) on batches of 256 from
the same loader the trainer uses, after a warm-up, and reports the median over ``--repeats``
timed blocks of ``--steps`` steps, extrapolated to one epoch of 50,000 images (196 steps).
Evaluation is timed separately (10,000 test images). The baseline is the float ResNet-20 in
eager float32 measured in the same process.

Targets (issue 4): BiPer W1A1 bf16 + channels_last <= 0.35x eager float32, and <= 1.10x the
same float model under the same settings.

Usage::

    python benchmarks/bench_train.py                         # synthetic CIFAR-sized data
    python benchmarks/bench_train.py --data-dir ../shared/data --threads 2
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
from biper.nn import clip_latent_weights_  # noqa: E402
from biper.quantizers import set_progress  # noqa: E402
from biper.train import build_model_from_config, build_optimizer, load_run_config  # noqa: E402
from biper.train.engine import evaluate  # noqa: E402
from biper.train.model import autocast_context, model_spec  # noqa: E402
from biper.train.tasks import ClassificationTask  # noqa: E402

STEPS_PER_EPOCH = 196  # ceil(50000 / 256)

CASES = [
    # label, binarized?, stage (0 sine / 1 square), precision, channels_last
    ("float  fp32 eager (baseline)", False, 1, "fp32", False),
    ("float  bf16 + channels_last", False, 1, "bf16", True),
    ("BiPer  W1A1 fp32 eager, square", True, 1, "fp32", False),
    ("BiPer  W1A1 bf16 + channels_last, sine", True, 0, "bf16", True),
    ("BiPer  W1A1 bf16 + channels_last, square", True, 1, "bf16", True),
]


def time_case(binary: bool, stage_index: int, precision: str, channels_last: bool, data, args):
    overrides = [f"precision={precision}", f"channels_last={str(channels_last).lower()}"]
    if not binary:
        overrides.append("binarize=null")
    cfg = load_run_config("cifar10-resnet20-biper", overrides)
    stage = cfg.stages[min(stage_index, len(cfg.stages) - 1)]
    torch.manual_seed(0)
    model = build_model_from_config(model_spec(cfg, min(stage_index, len(cfg.stages) - 1), 10))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, stage)
    task = ClassificationTask(label_smoothing=stage.label_smoothing, tau=stage.tau if binary else 0.0)
    train_set, test_set = data
    loader = TensorLoader(train_set, 256, train=True, seed=0, channels_last=channels_last)
    device = torch.device("cpu")
    batches = list(loader.iter_from(0))[: args.steps]

    def block(n):
        t0 = time.perf_counter()
        for i in range(n):
            x, y = batches[i % len(batches)]
            set_progress(model, 0.5)
            with autocast_context(precision, device):
                loss, _, _ = task.loss(model, x, y)
            loss.item()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clip_latent_weights_(model)
        return (time.perf_counter() - t0) / n

    block(args.warmup)
    per_step = [block(args.steps) for _ in range(args.repeats)]
    eval_loader = TensorLoader(test_set, 500, train=False, channels_last=channels_last)
    t0 = time.perf_counter()
    evaluate(model, eval_loader, device=device, precision=precision)
    eval_time = (time.perf_counter() - t0) * 10000 / len(test_set)
    return statistics.median(per_step), (max(per_step) - min(per_step)) / 2, eval_time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder with CIFAR-10 (default: synthetic 32x32 data)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=12, help="timed steps per block")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-images", type=int, default=2000, help="test images timed for evaluation")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n_train = 256 * args.steps
    if args.data_dir:
        data = (load_dataset("cifar10", args.data_dir, "train", subset=n_train, progress=False),
                load_dataset("cifar10", args.data_dir, "test", subset=args.eval_images, progress=False))
    else:
        data = (load_dataset("synthetic", None, "train", length=n_train),
                load_dataset("synthetic", None, "test", length=args.eval_images))
    cpu = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, {args.threads} thread(s), {cpu}, python {platform.python_version()}")
    print(f"# {args.repeats} x {args.steps} steps of batch 256 after {args.warmup} warm-up steps; "
          f"epoch = {STEPS_PER_EPOCH} steps; eval = 10,000 images")
    print(f"{'configuration':<44} {'s/step':>8} {'s/epoch':>9} {'+-':>6} {'eval s':>7} {'vs fp32':>8} {'vs float same':>14}")
    results = {}
    for label, binary, stage, precision, cl in CASES:
        step, spread, ev = time_case(binary, stage, precision, cl, data, args)
        results[(binary, precision, cl)] = step
        base = results[(False, "fp32", False)]
        same = results.get((False, precision, cl))
        ratio_same = f"{step / same:.2f}x" if binary and same else "-"
        print(f"{label:<44} {step:8.3f} {step * STEPS_PER_EPOCH:9.1f} {spread * STEPS_PER_EPOCH:6.1f} "
              f"{ev:7.1f} {step / base:7.2f}x {ratio_same:>14}", flush=True)
    best = results[(True, "bf16", True)]
    print(f"# BiPer W1A1 bf16+channels_last: {best / results[(False, 'fp32', False)]:.2f}x eager fp32 "
          f"(target <= 0.35x), {best / results[(False, 'bf16', True)]:.2f}x float same settings "
          f"(target <= 1.10x)")


if __name__ == "__main__":
    main()
