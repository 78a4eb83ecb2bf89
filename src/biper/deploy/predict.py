"""Running a packed model on files: tensors (.npy / .pt) or images, and top-k predictions.

Inputs, by file extension:

- ``.npy`` (NumPy, ``allow_pickle=False``) or ``.pt`` (``torch.load(weights_only=True)``): an
  already-normalised float tensor ``(C, H, W)`` or ``(N, C, H, W)``, used as is;
- images (``.jpg``, ``.png``, ...; needs Pillow) or folders of them: converted to RGB and
  brought to the model's input size by the evaluation's own code
  (`biper.data.images.eval_resize`, `biper.data.augment.normalize`) with the file's
  ``mean``/``std`` (set at export from the training dataset) unless overridden.

Example::

    >>> import torch
    >>> from biper.deploy.predict import topk
    >>> topk(torch.tensor([[0.1, 2.0, 0.3]]), k=2, classes=["a", "b", "c"])
    [[('b', 1, 2.0), ('c', 2, 0.3)]]
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import torch

from ..data.images import IMAGE_EXTENSIONS
from ..errors import BiperError

__all__ = ["load_inputs", "topk"]


def _as_batch(t: torch.Tensor, source: str) -> torch.Tensor:
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or not t.is_floating_point():
        raise BiperError(f"{source}: expected a float tensor (C, H, W) or (N, C, H, W), got "
                         f"{t.dtype} {tuple(t.shape)}")
    return t.float()


def _load_tensor(path: Path) -> torch.Tensor:
    if path.suffix == ".npy":
        import numpy as np

        try:
            array = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise BiperError(f"{path}: cannot read .npy without pickle ({exc})") from None
        except OSError as exc:
            raise BiperError(f"{path}: not a readable .npy file ({str(exc).splitlines()[0]})") from None
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
            raise BiperError(f"{path}: expected a float array (C, H, W) or (N, C, H, W), got dtype "
                             f"{getattr(array, 'dtype', type(array).__name__)}")
        return _as_batch(torch.from_numpy(np.ascontiguousarray(array)), str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BiperError(f"{path}: cannot read tensor file ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, torch.Tensor):
        raise BiperError(f"{path}: expected a tensor, got {type(obj).__name__}")
    return _as_batch(obj, str(path))


def _load_image(path: Path, size: tuple[int, int], mean, std) -> torch.Tensor:
    """One image as evaluation sees it: `biper.data.images.eval_resize`, then `normalize`."""
    from ..data.augment import normalize
    from ..data.images import eval_resize, require_pillow

    Image = require_pillow()
    h, w = size
    try:
        with Image.open(path) as img:
            img = eval_resize(img.convert("RGB"), (h, w))
            data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    except OSError as exc:
        raise BiperError(f"{path}: cannot read image ({exc})") from None
    return normalize(data.view(1, h, w, 3).permute(0, 3, 1, 2), mean, std)  # (1, 3, H, W)


def _check_image_settings(input_size, mean, std) -> None:
    """Images are read as RGB: 3 channels, 3 means, 3 positive stds, positive H and W."""
    if len(input_size) != 3 or not all(int(v) > 0 for v in input_size):
        raise BiperError(f"input size must be C,H,W with positive values, got {','.join(map(str, input_size))}")
    if int(input_size[0]) != 3:
        raise BiperError(f"images are read as RGB (3 channels) but the input size has {input_size[0]}")
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise BiperError(f"--{name} needs 3 finite values (one per RGB channel), got {list(values)}")
    if not all(v > 0 for v in std):
        raise BiperError(f"--std values must be > 0, got {list(std)}")


def load_inputs(paths: Sequence[str | os.PathLike], *, input_size: Sequence[int] | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None
                ) -> tuple[torch.Tensor, list[str]]:
    """A batch (N, C, H, W) from tensor files, images and image folders, and one name per row."""
    batches, names = [], []
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise BiperError(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise BiperError(f"input {str(p)!r} does not exist")
    for f in files:
        suffix = f.suffix.lower()
        if suffix in (".npy", ".pt", ".pth"):
            t = _load_tensor(f)
            names += [f"{f}[{i}]" for i in range(len(t))] if len(t) > 1 else [str(f)]
        elif suffix in IMAGE_EXTENSIONS:
            if input_size is None or mean is None or std is None:
                raise BiperError("images need the model's input size and normalisation; the file has "
                                 "none, pass --input-size, --mean and --std")
            _check_image_settings(input_size, mean, std)
            t = _load_image(f, (int(input_size[-2]), int(input_size[-1])), mean, std)
            names.append(str(f))
        else:
            raise BiperError(f"{f}: unsupported input type {suffix!r}; use .npy, .pt or an image "
                             f"({', '.join(IMAGE_EXTENSIONS)})")
        batches.append(t)
    shapes = {tuple(b.shape[1:]) for b in batches}
    if len(shapes) > 1:
        raise BiperError(f"inputs have different shapes {sorted(shapes)}; give one shape per run")
    return torch.cat(batches), names


def topk(logits: torch.Tensor, k: int = 5, classes: Sequence[str] | None = None) -> list[list[tuple]]:
    """Per row: [(label, index, logit), ...] for the k largest logits, best first."""
    if logits.dim() != 2:
        raise BiperError(f"top-k predictions need (N, classes) outputs; this model outputs per-sample "
                         f"maps of shape {tuple(logits.shape[1:])} (a dense-prediction model)")
    k = max(1, min(int(k), logits.shape[-1]))
    values, indices = logits.topk(k, dim=-1)
    out = []
    for vals, idx in zip(values.tolist(), indices.tolist()):
        out.append([((classes[i] if classes and i < len(classes) else str(i)), i, round(v, 6))
                    for v, i in zip(vals, idx)])
    return out
