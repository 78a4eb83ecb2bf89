"""``biper summary MODEL_OR_RECIPE``: Larq-style per-layer table of a binary model.

The argument may be a packed model file, a training checkpoint, a recipe (packaged name or
YAML path; its last stage's model) or a registered model name (binarized with the default
config unless ``--float``). Shows parameters by precision, memory in bits and KiB, binary vs
float MACs and the totals ``OPs = BOPs/64 + FLOPs`` with the compression ratio. For a
training checkpoint it adds the test metrics of its last epoch (accuracy, or mIoU / pixel
accuracy, mAP@0.5 / mAP@[.5:.95] for dense tasks).
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help="per-layer parameters, memory and MACs of a model")
    p.add_argument("target", metavar="MODEL_OR_RECIPE",
                   help="packed model file, checkpoint, recipe name/path or model name")
    p.add_argument("--input-size", type=lambda s: tuple(int(v) for v in s.split(",")), default=None,
                   help="C,H,W of one input (default: the model's)")
    p.add_argument("--float", action="store_true", help="for a model name: do not binarize it")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    import dataclasses
    import json

    from ..deploy.summary import resolve_target, summarize

    model, name, input_size = resolve_target(args.target, binarize=not args.float)
    summary = summarize(model, args.input_size or input_size, name=name)
    tests = _test_metrics(args.target)
    if args.json:
        print(json.dumps({**({"test_metrics": tests} if tests else {}),
            "name": summary.name, "input_size": list(summary.input_size),
            "layers": [dataclasses.asdict(layer) for layer in summary.layers],
            "binary_params": summary.binary_params, "float_params": summary.float_params,
            "memory_bits": summary.memory_bits, "float32_bits": summary.float32_bits,
            "compression": summary.compression, "bops": summary.bops, "flops": summary.flops,
            "ops": summary.ops,
        }, indent=2))
        return 0
    print(summary.table())
    if tests:
        from ..train.metrics import METRIC_LABELS

        shown = ", ".join(f"{METRIC_LABELS[k]} {v:.2f}%" for k, v in tests.items() if k in METRIC_LABELS)
        print(f"Test metrics of the last epoch: {shown}, loss {tests['test_loss']:.4f}")
    return 0


def _test_metrics(target: str) -> dict | None:
    """The test metrics of a checkpoint's last epoch (None for anything else)."""
    from pathlib import Path

    from ..deploy.filetype import sniff

    if not Path(target).is_file() or sniff(target) != "torch":
        return None
    from ..train import load_checkpoint
    from ..train.metrics import METRIC_LABELS

    history = (load_checkpoint(target).get("metrics") or {}).get("history") or []
    if not history:
        return None
    row = history[-1]
    return {k: row[k] for k in ("test_loss", *METRIC_LABELS) if row.get(k) is not None}
