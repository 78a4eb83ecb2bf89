"""The scene generator and the dense dataset: deterministic per seed, masks, boxes and pixels
agree with where each object was pasted, splits stay apart, augmentation moves image, mask and
boxes together, the loader replays batches, and the cache round-trips.

References: the recorded placement of every object (resized source re-pasted by hand), tight
boxes from ``nonzero``, per-sample numpy pad/crop/flip, scipy's connected components, replay.
"""

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from biper.data import TensorLoader, load_dataset
from biper.data.dataset import CIFAR10_CLASSES
from biper.data.scenes import SceneParams, foreground_masks, generate_scenes
from biper.data.scenes_load import scenes_from_arrays

Image = pytest.importorskip("PIL.Image")

P = SceneParams(image_size=32, min_objects=1, max_objects=3, min_scale=8, max_scale=20,
                min_visible=6)


def _blob_images(n, seed, size=32):
    """Uniform backgrounds with one disc each (distinct colours), uint8 (n, 3, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = rng.integers(0, 256, 3)
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(5, 10)
        out[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 256, 3)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _objects(n=40, seed=0):
    return _blob_images(n, seed), torch.arange(n) % 10


@pytest.fixture(scope="module")
def tar(tmp_path_factory):
    """A fake CIFAR-10 JPEG tar: 3 train and 2 test images per class, different per split."""
    path = tmp_path_factory.mktemp("cifar") / "cifar10-jpeg.tar"
    with tarfile.open(path, "w") as tf:
        for s, (split, count) in enumerate((("train", 3), ("test", 2))):
            imgs = _blob_images(10 * count, seed=10 + s).permute(0, 2, 3, 1).numpy()
            for i, img in enumerate(imgs):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="JPEG", quality=95)
                info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{CIFAR10_CLASSES[i % 10]}/"
                                       f"{i // 10:04d}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tf.addfile(info, buf)
    return path


def _scenes(count=40, seed=0, target="mask", pad=0, params=P, objects=None):
    imgs, labels = objects or _objects()
    arrays = generate_scenes(imgs, labels, count, params, seed=seed, split="train")
    return scenes_from_arrays(arrays, target=target, pad=pad), imgs


def _tight(sel):
    ys, xs = np.nonzero(sel)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_generator_is_deterministic_per_seed_and_split():
    imgs, labels = _objects()
    a = generate_scenes(imgs, labels, 30, P, seed=1, split="train")
    b = generate_scenes(imgs, labels, 30, P, seed=1, split="train")
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    for other in (dict(seed=2, split="train"), dict(seed=1, split="test")):
        c = generate_scenes(imgs, labels, 30, P, **other)
        assert a["images"].tobytes() != c["images"].tobytes()
    # the rendering chunk does not change the output
    big = generate_scenes(imgs, labels, 1100, P, seed=1, split="train", chunk=1024)
    ref = generate_scenes(imgs, labels, 1100, P, seed=1, split="train", chunk=4096)
    assert all(big[k].tobytes() == ref[k].tobytes() for k in big)


def test_masks_boxes_and_pixels_agree_with_the_recorded_placement():
    ds, imgs = _scenes(60)
    fg = foreground_masks(imgs)
    counts = []
    for i in range(len(ds)):
        inst, mask = ds.instances[i].numpy(), ds.masks[i].numpy()
        assert ((inst > 0) == (mask > 0)).all()
        rows = ds.boxes[i]
        n = int((rows[:, 0] >= 0).sum())
        counts.append(n)
        assert (rows[n:] == torch.tensor([-1.0, 0, 0, 0, 0])).all()      # padding after
        assert set(np.unique(inst)) <= set(range(n + 1))
        for r in range(n):
            cls, src, x0, y0, x1, y1, x, y, s = ds.objects[i, r].tolist()
            sel = inst == r + 1
            assert sel.sum() >= P.min_visible
            assert rows[r].tolist() == [cls, x0, y0, x1, y1] == [cls] + _tight(sel)
            assert (mask[sel] == cls + 1).all() and cls == src % 10
            assert P.min_scale <= s <= P.max_scale and 0 <= x <= 32 - s and 0 <= y <= 32 - s
            ref = F.interpolate(imgs[src:src + 1].float(), size=(s, s), mode="bilinear",
                                align_corners=False, antialias=True)[0].round().to(torch.uint8)
            ref_fg = F.interpolate(fg[src:src + 1, None].float(), size=(s, s), mode="bilinear",
                                   align_corners=False, antialias=True)[0, 0] > 0.5
            ys, xs = np.nonzero(sel)
            assert (ys >= y).all() and (ys < y + s).all() and (xs >= x).all() and (xs < x + s).all()
            assert ref_fg[ys - y, xs - x].all()
            assert torch.equal(ds.images[i][:, ys, xs], ref[:, ys - y, xs - x])
            if r == n - 1:                          # pasted last: nothing covers it
                assert sel[y:y + s, x:x + s].sum() == int(ref_fg.sum())
    assert min(counts) >= 1 and max(counts) <= P.max_objects and len(set(counts)) > 1
    assert ds.labels.tolist() == counts


def test_square_masks_cover_the_pasted_square():
    ds, _ = _scenes(20, params=SceneParams(image_size=32, max_objects=2, min_scale=8,
                                            max_scale=16, mask="square"))
    for i in range(len(ds)):
        n = int(ds.labels[i])
        _, _, x0, y0, x1, y1, x, y, s = ds.objects[i, n - 1].tolist()
        assert [x0, y0, x1, y1] == [x, y, x + s, y + s]
        assert (ds.instances[i, y:y + s, x:x + s] == n).all()


@pytest.mark.parametrize("use_scipy", [False, True])
def test_foreground_estimate_hand_cases(use_scipy):
    if use_scipy:
        pytest.importorskip("scipy.ndimage", reason="the scipy path needs scipy")
    img = np.full((4, 32, 32, 3), 100, np.uint8)
    yy, xx = np.mgrid[:32, :32]
    d2 = (yy - 16) ** 2 + (xx - 16) ** 2
    img[0][(d2 <= 100) & (d2 >= 25)] = 250                             # a ring: hole is filled
    img[1][(d2 <= 4)] = 250                                            # tiny: whole square
    img[2][(d2 <= 100)] = 250                                          # disc + a far speck
    img[2][2, 2] = 0
    first, second = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    first[4:17, 18:31] = True                                          # starts on row 4
    second[18:31, 2:15] = True                                         # same size, row 18
    img[3][first | second] = 250
    fg = foreground_masks(torch.from_numpy(img).permute(0, 3, 1, 2).contiguous(),
                          use_scipy=use_scipy).numpy()
    assert (fg[0] == (d2 <= 100)).all()
    assert fg[1].all()
    assert (fg[2] == (d2 <= 100)).all()
    assert (fg[3] == first).all()


def test_foreground_estimate_matches_scipy_per_image():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is the reference here")
    imgs = _blob_images(200, seed=3)
    noise = torch.from_numpy(np.random.default_rng(4).integers(-60, 61, imgs.shape))
    speckle = torch.from_numpy(np.random.default_rng(5).random((200, 1, 32, 32)) < 0.1)
    imgs = (imgs.to(torch.int64) + noise * speckle).clamp(0, 255).to(torch.uint8)
    ours = foreground_masks(imgs, 40, use_scipy=False).numpy()
    assert (foreground_masks(imgs, 40, use_scipy=True).numpy() == ours).all()
    x = imgs.to(torch.int16)
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], 2)
    raw = ((x - border.median(2).values[:, :, None, None]).abs().amax(1) > 40).numpy()
    for i in range(len(raw)):
        lab, k = ndimage.label(raw[i], structure=np.ones((3, 3)))     # raster-order labels
        sizes = np.bincount(lab.ravel())[1:]
        ref = ndimage.binary_fill_holes(lab == sizes.argmax() + 1) if k else raw[i]
        if ref.sum() < 0.15 * 1024:
            ref = np.ones_like(ref)
        assert (ours[i] == ref).all(), i


def test_train_and_test_scenes_paste_their_own_split(tar):
    for split, other in (("train", "test"), ("test", "train")):
        ds = load_dataset("scenes", tar, split, cache_dir=False, progress=False, image_size=32,
                          min_scale=8, max_scale=20, train_size=30, test_size=20, min_visible=6)
        own = load_dataset("cifar10", tar, split, cache_dir=False, progress=False).images
        alien = load_dataset("cifar10", tar, other, cache_dir=False, progress=False).images
        assert len(ds) == (30 if split == "train" else 20)
        assert ds.meta["num_sources"] == len(own) and ds.meta["split"] == split
        for i in range(len(ds)):
            for r in range(int(ds.labels[i])):
                _, src, *_, x, y, s = ds.objects[i, r].tolist()
                ys, xs = np.nonzero(ds.instances[i].numpy() == r + 1)
                for pool, same in ((own, True), (alien, False)):
                    if src >= len(pool):
                        continue
                    ref = F.interpolate(pool[src:src + 1].float(), size=(s, s), mode="bilinear",
                                        align_corners=False, antialias=True)[0].round()
                    match = torch.equal(ds.images[i][:, ys, xs].float(), ref[:, ys - y, xs - x])
                    assert match == same


def _draws(seed, b, pad):
    g = torch.Generator().manual_seed(seed)
    top = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    flip = torch.randint(0, 2, (b,), generator=g).bool()
    return top.tolist(), left.tolist(), flip.tolist()


def _by_hand(a, top, left, flip, pad):
    """numpy reference of the translation + flip of one (..., H, W) array, zero fill."""
    h, w = a.shape[-2:]
    widths = [(0, 0)] * (a.ndim - 2) + [(pad, pad), (pad, pad)]
    out = np.pad(a, widths)[..., top:top + h, left:left + w]
    return out[..., ::-1] if flip else out


@pytest.mark.parametrize("pad", [0, 3])
def test_augmentation_moves_image_mask_and_boxes_together(pad):
    seg, _ = _scenes(24, pad=pad)
    det, _ = _scenes(24, target="boxes", pad=pad)
    idx = torch.arange(3, 19)
    x, y = seg.fetch_pair(idx, augment=True, generator=torch.Generator().manual_seed(7))
    xd, yd = det.fetch_pair(idx, augment=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(x, xd) and y.dtype == torch.int64 and yd.dtype == torch.float32
    top, left, flip = _draws(7, len(idx), pad)
    assert any(flip) and not all(flip)
    w = h = 32
    for b, i in enumerate(idx.tolist()):
        args = (top[b], left[b], flip[b], pad)
        assert (x[b].numpy() == _by_hand(seg.images[i].numpy(), *args)).all()
        assert (y[b].numpy() == _by_hand(seg.masks[i].numpy(), *args)).all()
        inst = _by_hand(seg.instances[i].numpy(), *args)
        moved = []                                  # per original row: its box, or None
        for cls, x0, y0, x1, y1 in seg.boxes[i].tolist():
            if cls < 0:
                continue
            if flip[b]:
                x0, x1 = w - x1, w - x0
            dx = (left[b] - pad) if flip[b] else (pad - left[b])
            dy = pad - top[b]
            box = [min(max(v, 0), lim) for v, lim in
                   ((x0 + dx, w), (y0 + dy, h), (x1 + dx, w), (y1 + dy, h))]
            moved.append([cls] + box if box[2] > box[0] and box[3] > box[1] else None)
        got = [row for row in yd[b].tolist() if row[0] >= 0]
        assert got == [m for m in moved if m is not None]
        assert all(row == [-1, 0, 0, 0, 0] for row in yd[b].tolist()[len(got):])
        # the visible pixels of every object lie in its box; without translation it is tight
        for r, box in enumerate(moved):
            sel = inst == r + 1
            if sel.any():
                tight = _tight(sel)
                assert box is not None and box[1] <= tight[0] and box[2] <= tight[1] \
                    and tight[2] <= box[3] and tight[3] <= box[4]
                if pad == 0:
                    assert box[1:] == tight


def test_loader_replays_batches_and_serves_dense_targets():
    seg, _ = _scenes(40, pad=2)
    det, _ = _scenes(40, target="boxes", pad=2)
    for ds, shape, dtype in ((seg, (8, 32, 32), torch.int64), (det, (8, 3, 5), torch.float32)):
        loader = TensorLoader(ds, 8, train=True, seed=3)
        loader.set_epoch(1)
        full = list(loader)
        again = TensorLoader(ds, 8, train=True, seed=3)
        again.set_epoch(1)
        tail = list(again.iter_from(2))
        assert len(full) == 5 and len(tail) == 3
        for (xa, ya), (xb, yb) in zip(full[2:], tail):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert full[0][1].shape == shape and full[0][1].dtype == dtype
        assert full[0][0].shape == (8, 3, 32, 32) and full[0][0].dtype == torch.float32
        ev = TensorLoader(ds, 8, train=False)
        _, y0 = next(iter(ev))
        ref = ds.masks[:8].to(torch.int64) if ds.target == "mask" else ds.boxes[:8]
        assert torch.equal(y0, ref)


def test_dataset_attributes_and_subset():
    seg, _ = _scenes(20)
    det, _ = _scenes(20, target="boxes")
    assert seg.classes == ["background", *CIFAR10_CLASSES] and seg.num_classes == 11
    assert det.classes == list(CIFAR10_CLASSES) and det.num_classes == 10
    assert (seg.task, det.task) == ("segmentation", "detection")
    assert seg.max_objects == 3 and seg.image_size == (32, 32)
    assert len(seg.mean) == 3 and all(0 < s < 1 for s in seg.std)
    sub = seg.subset(7)
    assert len(sub) == 7 and torch.equal(sub.images, seg.images[:7])
    assert torch.equal(sub.masks, seg.masks[:7]) and torch.equal(sub.objects, seg.objects[:7])
    assert seg.subset(100) is seg


def test_cache_round_trip_is_keyed_by_the_parameters(tar, tmp_path, monkeypatch):
    kw = dict(cache_dir=tmp_path, progress=False, image_size=32, min_scale=8, max_scale=20,
              test_size=12)
    a = load_dataset("scenes", tar, "test", **kw)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("scenes"))
    assert [f.rsplit(".", 2)[-2:] for f in files if f.endswith(".npy")] and \
        {Path(f).suffix for f in files} == {".npy", ".json"}
    import biper.data.scenes_load as sl

    def boom(*args, **kwargs):
        raise AssertionError("generated again")

    monkeypatch.setattr(sl, "generate_scenes", boom)
    b = load_dataset("scenes", tar, "test", **kw)
    c = load_dataset("scenes", tar, "test", target="boxes", **kw)
    for name in ("images", "masks", "boxes", "instances", "objects"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(c.boxes, a.boxes) and a.mean == b.mean
    with pytest.raises(AssertionError, match="generated again"):
        load_dataset("scenes", tar, "test", seed=1, **kw)


def test_shared_cifar_tar_end_to_end():
    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "cifar10-jpeg.tar").is_file():
        data = Path("/work/shared/data")
    if not (data / "cifar10-jpeg.tar").is_file():
        pytest.skip("shared CIFAR-10 JPEG tar not found (../shared/data/cifar10-jpeg.tar)")
    ds = load_dataset("scenes", data, "test", test_size=64, cache_dir=False, progress=False)
    assert ds.images.shape == (64, 3, 64, 64) and ds.masks.shape == (64, 64, 64)
    assert (ds.labels >= 1).all() and ds.boxes.shape == (64, 4, 5)
    for i in range(0, 64, 7):
        for r in range(int(ds.labels[i])):
            assert ds.boxes[i, r, 1:].tolist() == _tight(ds.instances[i].numpy() == r + 1)
