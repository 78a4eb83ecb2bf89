"""The parts of ``biper infer`` beyond classification: loading a checkpoint as well as a packed
file, taking inputs from the model's own test set (with ground truth), and writing the masks,
box lists and pictures of segmentation and detection models (`biper.deploy.dense_predict`,
`biper.analysis.dense_plots`)."""

from __future__ import annotations

import json
from pathlib import Path


def load_model(path: str):
    """(model in eval mode, meta, run config dict or None, task name) of a packed file or a
    training checkpoint; the task is the run's last stage's (classification when unknown)."""
    from ..deploy import load_packed
    from ..deploy.export import checkpoint_model, default_meta
    from ..deploy.filetype import sniff

    if Path(path).is_file() and sniff(path) == "torch":
        ckpt, spec, model = checkpoint_model(path)
        config = ckpt.get("config")
        meta = {**default_meta(spec, config), "stage": ckpt.get("stage_name")}
        model.eval()
    else:
        model = load_packed(path)
        meta = dict(model.packed_meta.get("meta") or {})
        config = model.packed_meta.get("config")
    data = (config or {}).get("data") if isinstance(config, dict) else None
    if "classes" not in meta and isinstance(data, dict) and data.get("dataset") == "scenes":
        from ..data import CIFAR10_CLASSES

        boxes = (data.get("options") or {}).get("target") == "boxes"
        meta["classes"] = list(CIFAR10_CLASSES) if boxes else ["background", *CIFAR10_CLASSES]
    return model, meta, config, _task(config)


def _task(config) -> str:
    stages = (config or {}).get("stages") if isinstance(config, dict) else None
    if not stages:
        return "classification"
    name = (stages[-1].get("task") or {}).get("name") or "classification"
    return "classification" if name == "distillation" else name


def test_inputs(args, config, meta):
    """(normalised batch, names, targets, meta with the dataset's mean/std/classes) of the first
    ``args.test_images`` test images of the run's dataset."""
    from ..data import TensorLoader, load_dataset
    from ..errors import BiperError

    if args.test_images < 1:
        raise BiperError(f"--test-images must be a positive integer, got {args.test_images}")
    if not isinstance(config, dict) or not isinstance(config.get("data"), dict):
        raise BiperError(f"{args.model} holds no training config, so its test set is unknown; give --input")
    data = config["data"]
    data_dir = args.data_dir if args.data_dir is not None else data.get("data_dir")
    ds = load_dataset(data.get("dataset", "cifar10"), data_dir, "test", subset=args.test_images,
                      cache_dir=data.get("cache_dir"), progress=False, **(data.get("options") or {}))
    x, y = next(iter(TensorLoader(ds, min(args.test_images, len(ds)), train=False)))
    meta = {**meta, "mean": list(ds.mean), "std": list(ds.std), "classes": list(ds.classes)}
    return x, [f"test-{i:04d}" for i in range(len(x))], y, meta


def dense_output(args, task: str, out, x, names, truth, meta, elapsed: float) -> int:
    """Write / print the predictions of a segmentation or detection model (module docstring)."""
    from ..errors import BiperError

    if args.out is None and (task == "segmentation" or args.plot):
        raise BiperError(f"{'--plot' if args.plot else 'segmentation masks'} need --out DIR to write PNGs into")
    folder = Path(args.out) if args.out else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    classes = meta.get("classes")
    if args.plot:
        from ..analysis.plots import _pyplot

        _pyplot()  # a clear error now when matplotlib is missing, before any file is written
    results = (_segmentation(out, x, names, truth, meta, folder, args.plot) if task == "segmentation" else
               _detection(out, x, names, truth, meta, folder, args.plot, args.score_threshold))
    if args.json:
        print(json.dumps({"task": task, "seconds": elapsed, "predictions": results}, indent=2))
        return 0
    for r in results:
        if task == "segmentation":
            shares = ", ".join(f"{c} {p:.1f}%" for c, p in r["classes"].items())
            print(f"{r['input']}: {shares} -> {r['mask']}")
        else:
            boxes = "; ".join(f"{b['label']} {b['score']:.2f} [{', '.join(f'{v:.1f}' for v in b['xyxy'])}]"
                              for b in r["boxes"][:args.topk]) or "no boxes"
            more = f" (+{len(r['boxes']) - args.topk} more{' in ' + r['file'] if 'file' in r else ''})" \
                if len(r["boxes"]) > args.topk else ""
            print(f"{r['input']}: {boxes}{more}")
    print(f"{len(x)} inputs in {elapsed * 1e3:.1f} ms ({task}; classes: {len(classes) if classes else '?'})")
    return 0


def _picture_inputs(x, meta):
    from ..deploy.dense_predict import unnormalize

    return unnormalize(x, meta.get("mean"), meta.get("std"))


def _segmentation(logits, x, names, truth, meta, folder, plot) -> list[dict]:
    from ..deploy.dense_predict import output_name, write_mask_png

    classes = meta.get("classes")
    k = logits.shape[1]
    masks = logits.argmax(dim=1)                                            # (N, H, W)
    images = _picture_inputs(x, meta) if plot else None
    results = []
    for i, name in enumerate(names):
        stem = output_name(name)
        path = write_mask_png(folder / f"{stem}-mask.png", masks[i], k)
        counts = masks[i].flatten().bincount(minlength=k)
        shares = {(classes[c] if classes and c < len(classes) else str(c)): 100.0 * int(n) / masks[i].numel()
                  for c, n in enumerate(counts.tolist()) if n}
        row = {"input": name, "mask": str(path), "classes": shares}
        if plot:
            from ..analysis.dense_plots import plot_segmentation

            row["plot"] = plot_segmentation(folder / f"{stem}-plot.png", images[i], masks[i],
                                            None if truth is None else truth[i], classes=classes, title=name)
        results.append(row)
    return results


def _detection(out, x, names, truth, meta, folder, plot, threshold: float) -> list[dict]:
    from ..deploy.dense_predict import box_records, output_name
    from ..models.detection import decode_detections
    from ..train.dense_tasks import output_stride

    classes = meta.get("classes")
    dets = decode_detections(out, stride=output_stride(x.shape, out), score_threshold=threshold)
    images = _picture_inputs(x, meta) if plot else None
    results = []
    for i, name in enumerate(names):
        stem = output_name(name)
        row = {"input": name, "boxes": box_records(dets[i], classes)}
        if folder is not None:
            path = folder / f"{stem}-boxes.json"
            path.write_text(json.dumps(row["boxes"], indent=2) + "\n")
            row["file"] = str(path)
        if plot:
            from ..analysis.dense_plots import plot_detection

            row["plot"] = plot_detection(folder / f"{stem}-plot.png", images[i], dets[i],
                                         None if truth is None else truth[i], classes=classes, title=name)
        results.append(row)
    return results
