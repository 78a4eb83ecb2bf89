"""Bad data gives one clear BiperError naming the path and what is allowed; corrupt images are
reported or skipped and counted; the decode cache round-trips without pickle and rebuilds itself
when corrupt or stale."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch

from biper.data import load_dataset
from biper.errors import BiperError

Image = pytest.importorskip("PIL.Image")


def _png(seed=0, size=(6, 6)):
    arr = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue(), arr


def _jpeg(seed=0, size=(16, 16)):
    arr = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tree(root, files):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _load(path, split="train", **kw):
    kw.setdefault("cache_dir", False)
    return load_dataset("folder", path, split, progress=False, **kw)


def test_missing_empty_and_misplaced_folders_name_the_path(tmp_path):
    with pytest.raises(BiperError, match=f"{tmp_path / 'nope'} does not exist.*<class>"):
        _load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BiperError, match=f"{tmp_path / 'empty'} is empty.*\\.jpg"):
        _load(tmp_path / "empty")
    _tree(tmp_path / "flat", {"a.png": _png()[0]})
    with pytest.raises(BiperError, match="holds images but no class sub-folders"):
        _load(tmp_path / "flat")
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(BiperError, match="not a tar archive"):
        _load(tmp_path / "file.txt")
    _tree(tmp_path / "only_train", {"train/a/x.png": _png()[0]})
    with pytest.raises(BiperError, match="no 'test' folder.*found train.*allowed for test: test, val"):
        _load(tmp_path / "only_train", "test")


def test_class_with_zero_images_is_named(tmp_path):
    root = _tree(tmp_path / "d", {"cat/1.png": _png()[0], "dog/readme.txt": b"no images here"})
    with pytest.raises(BiperError, match=f"class folder {root / 'dog'} has no images.*\\.png"):
        _load(root)
    buf = tmp_path / "z.tar"
    with tarfile.open(buf, "w") as tf:
        data = _png()[0]
        info = tarfile.TarInfo("r/cat/1.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("r/dog")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    with pytest.raises(BiperError, match=f"class folder {buf}:r/dog has no images"):
        _load(buf)


def test_unknown_name_split_and_options_list_the_valid_ones(tmp_path):
    with pytest.raises(BiperError, match="unknown dataset 'cifar'.*did you mean 'cifar10'.*valid: "
                                         "cifar10, folder, imagenet, synthetic"):
        load_dataset("cifar", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split 'dev'; valid: train, test, val"):
        load_dataset("synthetic", None, "dev")
    with pytest.raises(BiperError, match="unknown option.*allowed: none"):
        load_dataset("folder", tmp_path, "train", size=3)
    with pytest.raises(BiperError, match="subset must be a positive integer"):
        load_dataset("synthetic", None, "train", subset=0)
    with pytest.raises(BiperError, match="needs a data folder"):
        load_dataset("folder", None, "train")


def test_mixed_image_sizes_are_refused_with_both_paths(tmp_path):
    root = _tree(tmp_path / "d", {"a/1.png": _png(0, (6, 6))[0], "a/2.png": _png(1, (7, 6))[0]})
    with pytest.raises(BiperError, match=r"2\.png is 6x7 but .*1\.png is 6x6.*'imagenet'"):
        _load(root)


@pytest.mark.parametrize("container", ["dir", "tar"])
def test_corrupt_and_truncated_images_are_reported_or_skipped(tmp_path, container, capsys):
    good = _jpeg(0)
    files = {"a/0.jpg": good, "a/1.jpg": _jpeg(1)[: len(good) // 2],   # truncated JPEG
             "b/0.jpg": _jpeg(2), "b/1.png": b"\x89PNG garbage",      # not an image
             "b/2.png": _png(3, (16, 16))[0][:-30]}                   # truncated PNG
    if container == "dir":
        src = _tree(tmp_path / "d", files)
        where = str(src / "a" / "1.jpg")
    else:
        src = tmp_path / "d.tar"
        with tarfile.open(src, "w") as tf:
            for name, data in files.items():
                info = tarfile.TarInfo(f"d/{name}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        where = f"{src}:d/a/1.jpg"
    with pytest.raises(BiperError, match=f"cannot decode image {where}.*skip_corrupt=True"):
        _load(src)
    capsys.readouterr()
    ds = _load(src, skip_corrupt=True)
    assert len(ds) == 2 and ds.class_counts() == [1, 1] and len(ds.skipped) == 3
    assert "skipped 3 unreadable image(s)" in capsys.readouterr().err
    assert where in ds.skipped
    ref = np.asarray(Image.open(io.BytesIO(good)).convert("RGB"))
    assert torch.equal(ds.images[0], torch.from_numpy(ref.copy()).permute(2, 0, 1))
    # skipping every image of a class is still an error
    files["b/0.jpg"] = b"broken"
    src2 = _tree(tmp_path / "e", files)
    with pytest.raises(BiperError, match="class folder .*b has no readable images"):
        _load(src2, skip_corrupt=True)


def test_cache_round_trip_is_exact_and_pickle_free(tmp_path, capsys):
    files = {f"{c}/{i}.png": _png(10 * k + i)[0] for k, c in enumerate("xyz") for i in range(3)}
    root = _tree(tmp_path / "d", files)
    first = _load(root, cache_dir=tmp_path / "cache")
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 3 and sum(e.endswith(".npy") for e in entries) == 2
    for name in entries:
        if name.endswith(".npy"):
            np.load(tmp_path / "cache" / name, allow_pickle=False)      # would raise on pickle
    side = json.loads((tmp_path / "cache" / [e for e in entries if e.endswith(".json")][0]).read_text())
    assert side["source"]["path"] == str(root.resolve()) and side["source"]["files"] == 9
    assert set(side["arrays"]) == {"images", "labels"} and len(side["arrays"]["images"]["sha256"]) == 64
    # a second load comes from the cache: break decoding to prove it
    import biper.data.load as load_mod
    real = load_mod.read_folder
    load_mod.read_folder = lambda *a, **k: pytest.fail("decoded again instead of using the cache")
    try:
        second = _load(root, cache_dir=tmp_path / "cache")
    finally:
        load_mod.read_folder = real
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    assert second.classes == first.classes and second.mean == first.mean
    assert capsys.readouterr().err == ""


def test_corrupt_or_stale_cache_is_rebuilt_with_one_notice(tmp_path, capsys):
    files = {f"{c}/{i}.png": _png(10 * k + i)[0] for k, c in enumerate("xy") for i in range(2)}
    root = _tree(tmp_path / "d", files)
    cache = tmp_path / "cache"
    first = _load(root, cache_dir=cache)
    npy = [p for p in cache.iterdir() if p.name.endswith(".images.npy")][0]
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF                                                     # flip one pixel's bits
    npy.write_bytes(bytes(raw))
    capsys.readouterr()
    again = _load(root, cache_dir=cache)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is corrupt" in err[0] and "sha256" in err[0] and "rebuilding" in err[0]
    assert torch.equal(again.images, first.images)
    assert _load(root, cache_dir=cache) is not None and capsys.readouterr().err == ""  # repaired
    npy.write_bytes(b"\x93NUMPY garbage")                               # unreadable array file
    _load(root, cache_dir=cache)
    assert "is corrupt" in capsys.readouterr().err
    _tree(root, {"y/9.png": _png(99)[0]})                              # the source changes
    grown = _load(root, cache_dir=cache)
    assert "changed since cache" in capsys.readouterr().err and len(grown) == 5


def test_skipped_images_recorded_in_cache_still_need_skip_corrupt(tmp_path):
    root = _tree(tmp_path / "d", {"a/0.png": _png(0)[0], "a/1.png": b"junk", "b/0.png": _png(1)[0]})
    assert len(_load(root, cache_dir=tmp_path / "c", skip_corrupt=True)) == 2
    with pytest.raises(BiperError, match="cannot decode image .*1.png.*skip_corrupt=True"):
        _load(root, cache_dir=tmp_path / "c")
    assert _load(root, cache_dir=tmp_path / "c", skip_corrupt=True).skipped == [str(root / "a/1.png")]


def test_default_cache_dir_falls_back_when_data_dir_is_unusable(tmp_path, monkeypatch):
    from biper.data.cache import default_cache_dir
    (tmp_path / "data").mkdir()
    assert default_cache_dir(tmp_path / "data") == tmp_path / "data" / ".biper-cache"
    (tmp_path / "data" / "x.tar").write_bytes(b"")
    assert default_cache_dir(tmp_path / "data" / "x.tar") == tmp_path / "data" / ".biper-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / ".biper-cache").write_text("a file where the folder should go")
    assert default_cache_dir(tmp_path / "blocked") == tmp_path / "xdg" / "biper"
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)                      # read-only by mode, even for root
    try:
        assert default_cache_dir(tmp_path / "ro") == tmp_path / "xdg" / "biper"
        assert not (tmp_path / "ro" / ".biper-cache").exists()
    finally:
        (tmp_path / "ro").chmod(0o755)


SCENE_CASES = [
    ({"image_size": 8}, "scenes option image_size must be an integer >= 16, got 8"),
    ({"min_scale": 30, "max_scale": 20}, r"scenes option min_scale \(30\) must be <= max_scale \(20\)"),
    ({"max_scale": 80}, r"scenes option max_scale must be an integer in \[4, 64\], got 80"),
    ({"max_objects": 0}, r"scenes option max_objects must be an integer in \[1, 255\], got 0"),
    ({"min_objects": 3, "max_objects": 2}, r"min_objects \(3\) must be <= max_objects \(2\)"),
    ({"target": "points"}, "scenes option target must be one of mask, boxes, got 'points'"),
    ({"background": "cifar"}, "scenes option background must be one of texture, plain"),
    ({"mask": "box"}, "scenes option mask must be one of estimate, square"),
    ({"train_size": 0}, "scenes option train_size must be an integer >= 1, got 0"),
    ({"seed": 1.5}, "scenes option seed must be an integer >= 0, got 1.5"),
    ({"pad": 40}, r"scenes option pad must be an integer in \[0, 32\], got 40"),
    ({"colour": 3}, "unknown option.*colour for dataset 'scenes'"),
]


@pytest.mark.parametrize("options,message", SCENE_CASES, ids=[str(o) for o, _ in SCENE_CASES])
def test_bad_scene_options_are_named_before_any_reading(tmp_path, options, message):
    with pytest.raises(BiperError, match=message):
        load_dataset("scenes", tmp_path / "absent", "train", cache_dir=False, **options)


def test_scenes_without_cifar_say_where_they_looked(tmp_path):
    with pytest.raises(BiperError, match=f"no CIFAR-10 found at {tmp_path}"):
        load_dataset("scenes", tmp_path, "test", cache_dir=False)
