"""``biper infer MODEL --input FILE...``: run a packed model on tensors or images, print top-k.

Inputs: ``.npy`` / ``.pt`` tensors (already normalised, ``(C,H,W)`` or ``(N,C,H,W)``), image
files or folders of images (resized and normalised with the model file's settings), or with
``--test-images N`` (alias ``--scenes-test``) the first N test images of the model's own
dataset (``--data-dir``), whose ground truth is then drawn by ``--plot``. MODEL may also be a
training checkpoint (run in PyTorch). Segmentation and detection models (by their run's task)
write ``DIR/<input>-mask.png`` (pixel value = class index) or print and write
``DIR/<input>-boxes.json`` (label, score, xyxy) with ``--out DIR``; ``--plot`` adds
``DIR/<input>-plot.png`` (`biper.analysis.dense_plots`).
"""

from __future__ import annotations


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def add_parser(sub) -> None:
    p = sub.add_parser("infer", help="run a packed model file on tensors or images")
    p.add_argument("model", help="packed model file written by biper export (or a training checkpoint)")
    p.add_argument("--input", "-i", nargs="+", metavar="PATH",
                   help=".npy/.pt tensors, images, or folders of images")
    p.add_argument("--test-images", "--scenes-test", type=int, metavar="N", dest="test_images",
                   help="the first N test images of the model's dataset instead of --input")
    p.add_argument("--data-dir", metavar="D", help="dataset folder for --test-images (default: the run's)")
    p.add_argument("--out", metavar="DIR", help="segmentation / detection: where masks, boxes and plots go")
    p.add_argument("--plot", action="store_true", help="segmentation / detection: draw each prediction "
                                                       "(and the ground truth of --test-images) as PNG")
    p.add_argument("--score-threshold", type=float, default=0.3, metavar="S",
                   help="detection: keep boxes scoring at least S (default 0.3)")
    p.add_argument("--topk", type=int, default=5, help="predictions (detection: boxes) to show per input (default 5)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--input-size", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="C,H,W for images when the file has none")
    p.add_argument("--mean", type=_floats, default=None, help="per-channel mean for images, e.g. 0.49,0.48,0.45")
    p.add_argument("--std", type=_floats, default=None, help="per-channel std for images")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=run)


def run(args) -> int:
    import json
    import time

    import torch

    from ..deploy import kernels
    from ..deploy.predict import load_inputs, topk
    from ..errors import BiperError
    from .infer_dense import dense_output, load_model, test_inputs

    if args.batch_size < 1 or args.topk < 1:
        raise BiperError("--batch-size and --topk must be positive integers")
    if args.threads is not None:
        if args.threads < 1:
            raise BiperError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if (args.input is None) == (args.test_images is None):
        raise BiperError("give the inputs as --input PATH... or as --test-images N (not both)")
    model, meta, config, task = load_model(args.model)
    truth = None
    if args.test_images is not None:
        x, names, truth, meta = test_inputs(args, config, meta)
    else:
        x, names = load_inputs(args.input, input_size=args.input_size or meta.get("input_size"),
                               mean=args.mean or meta.get("mean"), std=args.std or meta.get("std"))
    size = meta.get("input_size")
    if size and x.shape[1] != size[0]:
        raise BiperError(f"{names[0]}: the model takes {size[0]}-channel inputs "
                         f"({'x'.join(map(str, size))}), got shape {tuple(x.shape[1:])}")
    kernels.backend()  # load (or build) the kernels before timing
    try:
        with torch.no_grad():
            model(x[:1])  # first call builds per-shape caches (padding corrections, weight panels)
    except (RuntimeError, ValueError) as exc:
        expected = f" (it takes {'x'.join(map(str, size))})" if size else ""
        raise BiperError(f"the model cannot run on inputs of shape {tuple(x.shape[1:])}{expected}: "
                         f"{str(exc).splitlines()[0]}") from None
    start = time.perf_counter()
    with torch.no_grad():
        logits = torch.cat([model(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)])
    elapsed = time.perf_counter() - start
    if task in ("segmentation", "detection"):
        return dense_output(args, task, logits, x, names, truth, meta, elapsed)
    rows = topk(logits, args.topk, meta.get("classes"))
    if args.json:
        print(json.dumps({"backend": kernels.info(), "seconds": elapsed,
                          "predictions": [{"input": n, "top": [{"label": l, "index": i, "logit": v}
                                                              for l, i, v in r]}
                                          for n, r in zip(names, rows)]}, indent=2))
        return 0
    for name, row in zip(names, rows):
        best = ", ".join(f"{label} ({value:.3f})" for label, _, value in row)
        print(f"{name}: {best}")
    print(f"{len(x)} inputs in {elapsed * 1e3:.1f} ms with the {kernels.backend()} kernels "
          f"({torch.get_num_threads()} threads)")
    return 0
