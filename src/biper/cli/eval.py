"""``biper eval CHECKPOINT [--data-dir D] [--subset N] [--split test|train] [--json]``.

Rebuilds the model stored in a biper checkpoint (loaded with ``weights_only=True`` and its
checksum verified), loads the dataset named in the checkpoint's config and reports what its
task measures: top-1 accuracy and mean cross-entropy for classifiers, mIoU and pixel accuracy
for segmentation, mAP@0.5 and mAP@[.5:.95] for detection (with the task's mean loss). A packed
model file (``biper export``) is evaluated the same way, with the training config stored in it,
on the CPU kernels; the file type is recognised by its first bytes, and any other file is
reported as what it is.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint or a packed model on its dataset")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a checkpoint (e.g. runs/x/final.pt) or a packed model file (.biper)")
    p.add_argument("--data-dir", metavar="D", help="dataset folder (default: the one in the checkpoint)")
    p.add_argument("--subset", type=int, metavar="N", help="only the first N examples")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split (default test)")
    p.add_argument("--batch-size", type=int, metavar="B", help="evaluation batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    import json

    import torch

    from ..data import TensorLoader, load_dataset
    from ..deploy.filetype import require_model_file
    from ..errors import BiperError
    from ..train import RunConfig, build_model_from_config, load_checkpoint
    from ..train.metrics import METRIC_LABELS
    from ..train.model import autocast_context, resolve_device
    from ..train.tasks import check_task_data, eval_task

    for name in ("subset", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BiperError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if require_model_file(args.checkpoint) == "packed":
        model, ckpt, device = _packed(args)
        config = RunConfig.from_dict(ckpt["config"])
    else:
        ckpt = load_checkpoint(args.checkpoint)
        config = RunConfig.from_dict(ckpt["config"])
        model = build_model_from_config(ckpt)
        device = resolve_device(args.device)
    precision = config.precision if (config.precision != "amp" or device.type == "cuda") else "fp32"
    if "packed_meta" in ckpt:
        precision = "fp32"  # the packed kernels compute in float32
    autocast_context(precision, device)
    data = config.data
    data_dir = args.data_dir if args.data_dir is not None else data.data_dir
    ds = load_dataset(data.dataset, data_dir, args.split, subset=args.subset, cache_dir=data.cache_dir,
                      skip_corrupt=data.skip_corrupt, progress=not args.quiet, **data.options)
    check_task_data(config, ds)
    task = eval_task(config)
    loader = TensorLoader(ds, args.batch_size or data.eval_batch_size, train=False,
                          channels_last=config.channels_last)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    try:
        tests = task.evaluate(model, loader, device=device, precision=precision, quiet=args.quiet)
    except (RuntimeError, ValueError) as exc:  # e.g. a dataset whose images do not fit the model
        if isinstance(exc, BiperError):
            raise
        raise BiperError(f"{args.checkpoint} cannot run on {data.dataset} inputs of shape "
                         f"{tuple(ds[0][0].shape)}: {str(exc).splitlines()[0]}") from None
    scores = {("accuracy" if k == "test_acc" else k[len("test_"):]): v for k, v in tests.items()}
    result = {"checkpoint": str(args.checkpoint), "stage": ckpt.get("stage_name"), "split": args.split,
              "examples": len(ds), **({} if task.name == "classification" else {"task": task.name}), **scores,
              "global_step": ckpt["progress"]["global_step"], "version": ckpt.get("version")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        shown = " ".join(f"{'accuracy' if k == 'test_acc' else METRIC_LABELS[k]} {v:.2f}%"
                         for k, v in tests.items() if k in METRIC_LABELS)
        print(f"{args.checkpoint}: stage '{result['stage']}', step {result['global_step']}: "
              f"{args.split} {shown} loss {tests['test_loss']:.4f} on {len(ds)} examples")
    return 0


def _packed(args):
    """(packed model, checkpoint-like dict of its header, device) for a packed model file."""
    import torch

    from ..deploy import load_packed
    from ..errors import BiperError

    if args.device not in ("auto", "cpu"):
        raise BiperError(f"--device {args.device}: packed models run on the CPU kernels; use --device cpu")
    model = load_packed(args.checkpoint)
    header = model.packed_meta
    meta = header.get("meta") or {}
    if not isinstance(header.get("config"), dict):
        raise BiperError(f"{args.checkpoint} holds no training config, so its dataset is unknown; "
                         "export it from a checkpoint with biper export")
    ckpt = {"packed_meta": header, "config": header["config"], "stage_name": meta.get("stage"),
            "progress": {"global_step": meta.get("global_step")}, "version": meta.get("checkpoint_version")}
    return model, ckpt, torch.device("cpu")
