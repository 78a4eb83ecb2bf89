"""A deterministic scene generator: CIFAR-10 objects pasted on procedural textures.

A scene is an ``image_size`` x ``image_size`` RGB image holding ``min_objects..max_objects``
objects. Each object is one 32x32 source image (of the given split only), resized (bilinear,
antialiased) to a random side in ``[min_scale, max_scale]`` and placed at a random position
fully inside the frame; objects are pasted in order, so later ones occlude earlier ones.

Backgrounds (``background="texture"``) are procedural, never CIFAR pixels: one of smooth noise
(two octaves of bilinearly upsampled random values), stripes (a sinusoid of random frequency,
angle and phase) or a linear gradient, mapping [0, 1] between two random colours, plus Gaussian
pixel noise (sigma 6, from a torch generator seeded by the block's numpy generator). ``background="plain"`` is one random colour.

Object masks (``mask="estimate"``, the default) are a simple foreground estimate on the 32x32
source: the border colour is the per-channel median of the 124 border pixels; a pixel is
foreground when one of its channels differs from it by more than ``threshold`` (40 of 255); of
that, the largest 8-connected blob is kept (of equally large ones, the one whose first pixel
comes first in raster order) and its holes (background regions not 4-connected to the border)
are filled. When the result covers less than 15% of the image, the whole square is used
instead. ``scipy.ndimage`` does the labelling when installed (extra ``dense``), else torch label
propagation does, with the same result. The mask is resized like the image (bilinear, then > 0.5). ``mask="square"`` uses
the full pasted square. Only mask pixels are pasted, so the instance map is exactly what is
visible. After occlusion, objects with fewer than ``min_visible`` visible pixels are dropped
(and the scene re-rendered without them). Boxes are the tight boxes of the visible pixels of
each remaining object, so masks and boxes agree by construction.

Randomness: layouts (object count, source index, side, position) come from one
``numpy.random.Generator`` seeded with (seed, split); textures from one per block of 1024 scenes
seeded with (seed, split, block). The output depends on nothing else (not on the chunking of the
rendering), so the same parameters and source images give identical bytes.

Example::

    >>> out = generate_scenes(images, labels, 100, SceneParams(image_size=64), seed=0, split="train")
    >>> out["images"].shape, out["instances"].shape, out["objects"].shape
    ((100, 3, 64, 64), (100, 64, 64), (100, 4, 9))
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from biper.data.loader import derive_seed

__all__ = ["SceneParams", "GENERATOR_VERSION", "foreground_masks", "textures", "generate_scenes"]

GENERATOR_VERSION = 2
_BLOCK = 1024                     # scenes per texture seed block (part of the output definition)
_MIN_FRACTION = 0.15


@dataclass(frozen=True)
class SceneParams:
    """Parameters of the generator (all part of the cache key)."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_scale: int = 16
    max_scale: int = 40
    background: str = "texture"
    mask: str = "estimate"
    threshold: int = 40
    min_visible: int = 24

    def to_dict(self) -> dict:
        return asdict(self)


def _run_max(lab: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Every pixel of a horizontal run of ``allowed`` pixels gets the run's max of ``lab``
    (N, H, W); pixels outside ``allowed`` get 0."""
    n, h, w = lab.shape
    run = torch.cumsum(~allowed, 2)                                    # run id within a row
    key = (torch.arange(n * h).view(n, h, 1) * (w + 1) + run).flatten()
    buf = torch.zeros(n * h * (w + 1), dtype=lab.dtype)
    buf.scatter_reduce_(0, key, lab.flatten(), "amax")
    return buf[key].view(n, h, w) * allowed


def _spread(lab: torch.Tensor, allowed: torch.Tensor, diagonal: bool) -> torch.Tensor:
    """Propagate the max of ``lab`` over connected regions of ``allowed`` (4-connected, or
    8-connected with ``diagonal``) until stable: whole row and column runs per step."""
    todo = None
    while todo is None or todo.numel():
        sub, ok = (lab, allowed) if todo is None else (lab[todo], allowed[todo])
        new = _run_max(sub, ok)
        new = _run_max(new.transpose(1, 2), ok.transpose(1, 2)).transpose(1, 2)
        if diagonal:
            new = F.max_pool2d(new[:, None].to(torch.float32), 3, 1, 1)[:, 0].to(lab.dtype) * ok
        changed = (new != sub).flatten(1).any(1)
        if todo is None:
            lab, todo = new, torch.nonzero(changed)[:, 0]
        else:
            lab[todo] = new
            todo = todo[changed]
    return lab


def _raw_foreground(images: torch.Tensor, threshold: int) -> torch.Tensor:
    x = images.to(torch.int16)
    border = torch.cat([x[:, :, 0, :], x[:, :, -1, :], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], 2)
    ref = border.median(dim=2).values                                  # (N, 3)
    return (x - ref[:, :, None, None]).abs().amax(1) > threshold       # (N, H, W)


def _largest_and_filled_torch(fg: torch.Tensor) -> torch.Tensor:
    n, h, w = fg.shape
    hw = h * w
    # component label = hw - (its first pixel in raster order), spread over the component
    ids = hw - torch.arange(hw, dtype=torch.float32).view(1, h, w)
    lab = _spread(torch.where(fg, ids, 0.0), fg, diagonal=True).flatten(1).to(torch.int64)
    counts = torch.zeros(n, hw + 1, dtype=torch.int64)
    counts.scatter_add_(1, lab, torch.ones_like(lab))
    counts[:, 0] = 0
    best = (counts * (hw + 1) + torch.arange(hw + 1)).argmax(1)       # ties: earliest first
    fg = ((lab == best[:, None]) & (counts.amax(1, keepdim=True) > 0)).view(n, h, w)
    edge = torch.zeros_like(fg)
    edge[:, 0, :] = edge[:, -1, :] = edge[:, :, 0] = edge[:, :, -1] = True
    return ~(_spread((edge & ~fg).to(torch.float32), ~fg, diagonal=False) > 0)


def _largest_and_filled_scipy(fg: torch.Tensor, ndimage) -> torch.Tensor:
    """Same result as the torch path, with scipy.ndimage on the whole stack at once (the
    structuring elements do not connect neighbouring images)."""
    raw = np.pad(fg.numpy(), ((1, 1), (0, 0), (0, 0)))              # empty image at both ends
    eight = np.zeros((3, 3, 3), bool)
    eight[1] = True
    lab, count = ndimage.label(raw, structure=eight)                  # labels in raster order
    sizes = np.bincount(lab.ravel(), minlength=count + 1)
    image_of = np.zeros(count + 1, np.int64)
    image_of[lab[lab > 0]] = np.nonzero(lab)[0]                      # same (C) order
    best = np.zeros(raw.shape[0], np.int64)
    labels = np.arange(1, count + 1)
    order = np.lexsort((labels, -sizes[1:], image_of[1:]))           # per image: biggest, first
    firsts = labels[order]
    imgs = image_of[firsts]
    keep = np.ones(len(firsts), bool)
    keep[1:] = imgs[1:] != imgs[:-1]
    best[imgs[keep]] = firsts[keep]
    largest = (lab == best[:, None, None]) & (best[:, None, None] > 0)
    cross = np.zeros((3, 3, 3), bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    back, count = ndimage.label(~largest, structure=cross)            # 4-connected background
    edge = np.concatenate([back[:, 0].ravel(), back[:, -1].ravel(), back[:, :, 0].ravel(),
                           back[:, :, -1].ravel()])
    outside = np.zeros(count + 1, bool)
    outside[edge] = True
    outside[0] = False
    return torch.from_numpy(~outside[back[1:-1]])


def foreground_masks(images: torch.Tensor, threshold: int = 40, *,
                     use_scipy: bool | None = None) -> torch.Tensor:
    """Foreground estimate (N, H, W) bool of uint8 images (N, 3, H, W); see the module docstring.

    The connected components and hole filling use ``scipy.ndimage`` when it is installed
    (``use_scipy=None``), else torch label propagation; both give the same masks (ties between
    equally large blobs go to the one whose first pixel comes first in raster order).
    """
    fg = _raw_foreground(images, threshold)
    ndimage = None
    if use_scipy is not False:
        try:
            from scipy import ndimage
        except ImportError:
            if use_scipy:
                raise
    if fg.shape[0] == 0:
        return fg
    filled = _largest_and_filled_scipy(fg, ndimage) if ndimage is not None \
        else _largest_and_filled_torch(fg)
    h, w = fg.shape[1:]
    filled[filled.flatten(1).sum(1) < _MIN_FRACTION * h * w] = True
    return filled


def textures(n: int, size: int, rng: np.random.Generator, kind: str = "texture") -> torch.Tensor:
    """``n`` procedural backgrounds, uint8 (n, 3, size, size), drawn from ``rng``."""
    c0 = torch.from_numpy(rng.uniform(0, 255, (n, 3, 1, 1)).astype(np.float32))
    if kind == "plain":
        return c0.expand(n, 3, size, size).round().to(torch.uint8).contiguous()
    c1 = torch.from_numpy(rng.uniform(0, 255, (n, 3, 1, 1)).astype(np.float32))
    which = rng.integers(0, 3, n)                                      # noise, stripes, gradient
    coarse1 = torch.from_numpy(rng.random((n, 1, 5, 5), dtype=np.float32))
    coarse2 = torch.from_numpy(rng.random((n, 1, 11, 11), dtype=np.float32))
    freq = torch.from_numpy(rng.uniform(1.5, 6.0, n).astype(np.float32))[:, None, None]
    angle = torch.from_numpy(rng.uniform(0, math.pi, n).astype(np.float32))[:, None, None]
    phase = torch.from_numpy(rng.uniform(0, 2 * math.pi, n).astype(np.float32))[:, None, None]
    noise = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(
        int(rng.integers(0, 2**62))))
    t = torch.empty(n, size, size)
    sel = torch.from_numpy(np.nonzero(which == 0)[0])
    up = {"size": (size, size), "mode": "bilinear", "align_corners": False}
    smooth = (F.interpolate(coarse1[sel], **up) + 0.5 * F.interpolate(coarse2[sel], **up))[:, 0]
    lo, hi = smooth.flatten(1).amin(1)[:, None, None], smooth.flatten(1).amax(1)[:, None, None]
    t[sel] = (smooth - lo) / (hi - lo).clamp_min(1e-6)
    coord = torch.arange(size, dtype=torch.float32) / size
    proj = coord[None, None, :] * torch.cos(angle) + coord[None, :, None] * torch.sin(angle)
    sel = torch.from_numpy(np.nonzero(which == 1)[0])
    t[sel] = 0.5 + 0.5 * torch.sin(2 * math.pi * freq[sel] * proj[sel] + phase[sel])
    sel = torch.from_numpy(np.nonzero(which == 2)[0])
    g = proj[sel]
    lo, hi = g.flatten(1).amin(1)[:, None, None], g.flatten(1).amax(1)[:, None, None]
    t[sel] = (g - lo) / (hi - lo).clamp_min(1e-6)
    img = noise.mul_(6.0).add_(c0).add_((c1 - c0) * t[:, None])
    return img.round_().clamp_(0, 255).to(torch.uint8)


def _layout(count: int, num_sources: int, p: SceneParams, rng: np.random.Generator) -> dict:
    m = p.max_objects
    nobj = rng.integers(p.min_objects, p.max_objects + 1, count)
    src = rng.integers(0, num_sources, (count, m))
    side = rng.integers(p.min_scale, p.max_scale + 1, (count, m))
    fx = rng.random((count, m))
    fy = rng.random((count, m))
    x = np.floor(fx * (p.image_size - side + 1)).astype(np.int64)
    y = np.floor(fy * (p.image_size - side + 1)).astype(np.int64)
    active = np.arange(m)[None, :] < nobj[:, None]
    return {"src": src, "side": side, "x": x, "y": y, "active": active}


def _resized(objects: torch.Tensor, fg: torch.Tensor, src: torch.Tensor, side: torch.Tensor,
             active: torch.Tensor, smax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per slot, the resized object (n, M, smax, smax, 3) uint8 and its mask (n, M, smax, smax)."""
    n, m = src.shape
    obj = torch.zeros(n, m, smax, smax, 3, dtype=torch.uint8)
    msk = torch.zeros(n, m, smax, smax, dtype=torch.bool)
    for s in torch.unique(side[active]).tolist():
        sel = active & (side == s)
        ids = src[sel]
        img = F.interpolate(objects[ids].to(torch.float32), size=(s, s), mode="bilinear",
                            align_corners=False, antialias=True)
        mk = F.interpolate(fg[ids, None].to(torch.float32), size=(s, s), mode="bilinear",
                           align_corners=False, antialias=True)[:, 0] > 0.5
        o = torch.zeros(ids.numel(), smax, smax, 3, dtype=torch.uint8)
        o[:, :s, :s] = img.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        k = torch.zeros(ids.numel(), smax, smax, dtype=torch.bool)
        k[:, :s, :s] = mk
        obj[sel] = o
        msk[sel] = k
    return obj, msk


def _paste(obj: torch.Tensor, msk: torch.Tensor, lay: dict, active: torch.Tensor, size: int,
           background: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Paste the mask pixels of the active slots in order (later ones on top): the instance map
    (n, H, W) uint8 and, given ``background`` (n, 3, H, W), the image (n, 3, H, W) uint8."""
    n, m = active.shape
    smax = msk.shape[-1]
    inst = torch.zeros(n * size * size, dtype=torch.uint8)
    img = None
    if background is not None:
        img = background.permute(0, 2, 3, 1).reshape(-1, 3).clone()  # (n*H*W, 3)
    pixels = obj.reshape(-1, 3)
    for k in range(m):
        b, i, j = torch.nonzero(msk[:, k] & active[:, k, None, None], as_tuple=True)
        canvas = (b * size + lay["y"][b, k] + i) * size + lay["x"][b, k] + j
        inst[canvas] = k + 1
        if img is not None:
            img[canvas] = pixels[((b * m + k) * smax + i) * smax + j]
    inst = inst.view(n, size, size)
    if img is not None:
        img = img.view(n, size, size, 3).permute(0, 3, 1, 2).contiguous()
    return inst, img


def _tight_boxes(inst: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, M, 4) int64 tight boxes [x0, y0, x1, y1] of each instance id 1..M of ``inst``
    (n, H, W) and their pixel counts (n, M); boxes of absent ids are meaningless."""
    n, h, w = inst.shape
    key = (torch.arange(n).view(n, 1, 1) * (m + 1) + inst).flatten()
    ys = torch.arange(h).view(1, h, 1).expand(n, h, w).flatten()
    xs = torch.arange(w).view(1, 1, w).expand(n, h, w).flatten()
    out = []
    for v, how, init in ((xs, "amin", w), (ys, "amin", h), (xs, "amax", -1), (ys, "amax", -1)):
        buf = torch.full((n * (m + 1),), init, dtype=torch.int64)
        out.append(buf.scatter_reduce_(0, key, v, how).view(n, m + 1)[:, 1:])
    counts = torch.bincount(key, minlength=n * (m + 1)).view(n, m + 1)[:, 1:]
    boxes = torch.stack([out[0], out[1], out[2] + 1, out[3] + 1], -1)
    return boxes, counts


def generate_scenes(objects: torch.Tensor, labels: torch.Tensor, count: int, params: SceneParams,
                    *, seed: int, split: str, chunk: int = 2048) -> dict[str, np.ndarray]:
    """``count`` scenes from source images ``objects`` uint8 (S, 3, h, w) with ``labels`` (S,).

    Returns numpy arrays ``images`` uint8 (count, 3, H, W), ``instances`` uint8 (count, H, W)
    (0 = background, k + 1 = slot k) and ``objects`` int32 (count, M, 9) rows
    ``[cls, source index, x0, y0, x1, y1, x, y, side]``: the tight box of the visible pixels and
    where the ``side`` x ``side`` square was pasted (all -1 for empty or dropped slots).
    """
    p = params
    size, m = p.image_size, p.max_objects
    labels = torch.as_tensor(labels, dtype=torch.int64)
    rng = np.random.default_rng(derive_seed("scenes-layout", seed, split, GENERATOR_VERSION))
    lay = {k: torch.from_numpy(v) for k, v in _layout(count, objects.shape[0], p, rng).items()}
    fg = torch.ones(objects.shape[0], objects.shape[2], objects.shape[3], dtype=torch.bool)
    if p.mask == "estimate":                    # only for the source images that are used
        used = torch.unique(lay["src"][lay["active"]])
        fg[used] = foreground_masks(objects[used], p.threshold)
    images = np.empty((count, 3, size, size), np.uint8)
    insts = np.empty((count, size, size), np.uint8)
    table = np.full((count, m, 9), -1, np.int32)
    chunk = max(_BLOCK, chunk - chunk % _BLOCK)
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        sub = {k: v[start:stop] for k, v in lay.items()}
        active = sub["active"].clone()
        obj, msk = _resized(objects, fg, sub["src"], sub["side"], active, p.max_scale)
        inst, _ = _paste(obj, msk, sub, active, size)
        key = (torch.arange(stop - start).view(-1, 1, 1) * (m + 1) + inst).flatten()
        counts = torch.bincount(key, minlength=(stop - start) * (m + 1)).view(-1, m + 1)[:, 1:]
        active &= counts >= p.min_visible
        bg = torch.cat([textures(min(_BLOCK, count - b), size, np.random.default_rng(
            derive_seed("scenes-texture", seed, split, b // _BLOCK, GENERATOR_VERSION)),
            p.background) for b in range(start, stop, _BLOCK)])
        inst, img = _paste(obj, msk, sub, active, size, bg)
        boxes, _ = _tight_boxes(inst, m)
        images[start:stop] = img.numpy()
        insts[start:stop] = inst.numpy()
        cls = torch.where(active, labels[sub["src"]], -1)
        src = torch.where(active, sub["src"], -1)
        rows = torch.cat([cls[..., None], src[..., None], boxes, sub["x"][..., None],
                          sub["y"][..., None], sub["side"][..., None]], -1)
        rows[~active] = -1
        table[start:stop] = rows.numpy().astype(np.int32)
    return {"images": images, "instances": insts, "objects": table}
