"""``biper eval CHECKPOINT [--data-dir D] [--subset N] [--split test|train] [--json]``.

Rebuilds the model stored in a biper checkpoint (loaded with ``weights_only=True`` and its
checksum verified), loads the dataset named in the checkpoint's config and reports top-1
accuracy and mean cross-entropy.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on its dataset")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file (e.g. runs/x/final.pt)")
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
    from ..errors import BiperError
    from ..train import RunConfig, build_model_from_config, evaluate, load_checkpoint
    from ..train.model import autocast_context, resolve_device

    for name in ("subset", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise BiperError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    ckpt = load_checkpoint(args.checkpoint)
    config = RunConfig.from_dict(ckpt["config"])
    model = build_model_from_config(ckpt)
    device = resolve_device(args.device)
    precision = config.precision if (config.precision != "amp" or device.type == "cuda") else "fp32"
    autocast_context(precision, device)
    data = config.data
    data_dir = args.data_dir if args.data_dir is not None else data.data_dir
    ds = load_dataset(data.dataset, data_dir, args.split, subset=args.subset, cache_dir=data.cache_dir,
                      skip_corrupt=data.skip_corrupt, progress=not args.quiet, **data.options)
    loader = TensorLoader(ds, args.batch_size or data.eval_batch_size, train=False,
                          channels_last=config.channels_last)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    loss, acc = evaluate(model, loader, device=device, precision=precision, quiet=args.quiet)
    result = {"checkpoint": str(args.checkpoint), "stage": ckpt.get("stage_name"), "split": args.split,
              "examples": len(ds), "accuracy": acc, "loss": loss,
              "global_step": ckpt["progress"]["global_step"], "version": ckpt.get("version")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.checkpoint}: stage '{result['stage']}', step {result['global_step']}: "
              f"{args.split} accuracy {acc:.2f}% loss {loss:.4f} on {len(ds)} examples")
    return 0
