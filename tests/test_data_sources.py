"""Reading data sources built by the tests: class-folder tars and folders, the official CIFAR-10
python archive (a hand-written Python 2 pickle, like the real one), download with md5 checks,
refusal of malicious pickles, CIFAR-10 auto-detection and lazy ImageNet folders.

The reference for decoded pixels is Pillow applied to each file on its own.
"""

import hashlib
import io
import pickle
import struct
import sys
import tarfile

import numpy as np
import pytest
import torch

from biper.data import find_cifar10, load_dataset, read_cifar10
from biper.data.cifar import ARCHIVE_NAME, download_cifar10
from biper.data.safe_pickle import safe_load
from biper.errors import BiperError

Image = pytest.importorskip("PIL.Image")

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _encode(arr, fmt):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _image_set(classes, per_class, size=(8, 8), seed=0, fmts=("PNG", "JPEG")):
    """{relative path: encoded bytes} in class folders, plus the expected pixels per path."""
    rng = np.random.default_rng(seed)
    files, pixels = {}, {}
    for c in classes:
        for i in range(per_class):
            fmt = fmts[i % len(fmts)]
            arr = rng.integers(0, 256, size + (3,), dtype=np.uint8)
            data = _encode(arr, fmt)
            path = f"{c}/{i:04d}.{'png' if fmt == 'PNG' else 'jpg'}"
            files[path] = data
            pixels[path] = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
    return files, pixels


def _write_tar(path, files, mode="w"):
    with tarfile.open(path, mode) as tf:
        for name, data in sorted(files.items(), key=lambda kv: hash(kv[0]) % 97):  # scrambled order
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def _write_tree(root, files):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_folder_tar_with_splits_matches_pillow_and_extracted_folder(tmp_path):
    train, train_px = _image_set(["cat", "ant", "bee"], 3, seed=1)
    test, test_px = _image_set(["cat", "ant", "bee"], 2, seed=2)
    files = {f"top/train/{k}": v for k, v in train.items()}
    files.update({f"top/val/{k}": v for k, v in test.items()})
    _write_tar(tmp_path / "d.tar", files)
    _write_tree(tmp_path / "tree", files)
    for split, px in (("train", train_px), ("test", test_px)):
        ds = load_dataset("folder", tmp_path / "d.tar", split, cache_dir=False, progress=False)
        assert ds.classes == ["ant", "bee", "cat"]
        names = sorted(px, key=lambda p: (p.split("/")[0], p))            # class, then path
        ref = np.stack([px[n] for n in names]).transpose(0, 3, 1, 2)
        assert torch.equal(ds.images, torch.from_numpy(ref))
        assert ds.labels.tolist() == [ds.classes.index(n.split("/")[0]) for n in names]
        flat = torch.from_numpy(ref).double() / 255
        torch.testing.assert_close(torch.tensor(ds.mean, dtype=torch.float64),
                                   flat.mean(dim=(0, 2, 3)))
        tree = load_dataset("folder", tmp_path / "tree" / "top", split, cache_dir=False,
                            progress=False)
        assert torch.equal(tree.images, ds.images) and torch.equal(tree.labels, ds.labels)
    split_root = load_dataset("folder", tmp_path / "tree/top/train", "train", cache_dir=False,
                              progress=False)
    assert len(split_root) == 9


def test_gzipped_tar_of_a_single_split_with_progress_line(tmp_path, capsys):
    files, px = _image_set(["x", "y"], 2, seed=3, fmts=("PNG",))
    _write_tar(tmp_path / "s.tar.gz", files, mode="w:gz")
    ds = load_dataset("folder", tmp_path / "s.tar.gz", "train", cache_dir=False, progress=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "decode" in err[0] and "4 img in" in err[0]
    assert ds.class_counts() == [2, 2]
    assert torch.equal(ds.images[0], torch.from_numpy(px["x/0000.png"]).permute(2, 0, 1))


# ---- the official python archive -------------------------------------------------------------

def _py2_str(b: bytes) -> bytes:
    return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)


def _py2_int(v: int) -> bytes:
    return b"K" + bytes([v]) if 0 <= v < 256 else (b"M" + struct.pack("<H", v) if 0 <= v < 65536
                                                   else b"J" + struct.pack("<i", v))


def py2_batch_pickle(data: np.ndarray, labels: list) -> bytes:
    """A CIFAR batch written opcode by opcode the way Python 2 cPickle (protocol 2) wrote it."""
    n = data.shape[0]
    arr = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
           + _py2_str(b"b") + b"\x87R" + b"(" + _py2_int(1) + _py2_int(n) + _py2_int(3072) + b"\x86"
           + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
           + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
           + _py2_int(0) + b"tb" + b"\x89" + _py2_str(data.tobytes()) + b"tb")
    lab = b"](" + b"".join(_py2_int(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + _py2_str(b"batch_label") + _py2_str(b"training batch 1 of 5")
            + _py2_str(b"labels") + lab + _py2_str(b"data") + arr + b"u.")


def _official_archive(path, per_batch=6, seed=0, pickler=py2_batch_pickle):
    rng = np.random.default_rng(seed)
    expected = {}
    with tarfile.open(path, "w:gz") as tf:
        def add(name, blob):
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch).tolist()
            add(name, pickler(data, labels))
            expected[name] = (data, labels)
        meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": per_batch}
        add("batches.meta", pickle.dumps(meta, protocol=2))
    return expected


def test_hand_written_py2_pickle_is_a_valid_pickle():
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    out = pickle.loads(py2_batch_pickle(data, [3, 700]), encoding="bytes")
    assert np.array_equal(out[b"data"], data) and out[b"labels"] == [3, 700]


@pytest.mark.parametrize("pickler", [py2_batch_pickle,
                                     lambda d, y: pickle.dumps({b"data": d, b"labels": y}, 2),
                                     lambda d, y: pickle.dumps({"data": d, "labels": y}, 4)],
                         ids=["py2", "py3-protocol2", "py3-protocol4"])
def test_official_archive_reads_channel_major_rows(tmp_path, pickler):
    expected = _official_archive(tmp_path / ARCHIVE_NAME, pickler=pickler)
    images, labels, classes = read_cifar10(tmp_path / ARCHIVE_NAME, "train")
    data = np.concatenate([expected[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert images.shape == (30, 3, 32, 32) and classes == CLASSES
    # pixel (c, i, j) of row r is data[r, 1024 c + 32 i + j]
    r, c, i, j = 7, 2, 5, 31
    assert images[r, c, i, j] == data[r, 1024 * c + 32 * i + j]
    assert np.array_equal(images.reshape(30, -1), data)
    assert labels.tolist() == sum((expected[f"data_batch_{i}"][1] for i in range(1, 6)), [])


def test_cifar10_autodetects_archive_extracted_folder_and_jpeg_tar(tmp_path):
    for sub in ("a", "j"):
        (tmp_path / sub).mkdir()
    expected = _official_archive(tmp_path / "a" / ARCHIVE_NAME)
    assert find_cifar10(tmp_path / "a") == ("official", tmp_path / "a" / ARCHIVE_NAME)
    ds = load_dataset("cifar10", tmp_path / "a", "test", cache_dir=tmp_path / "c", progress=False)
    assert torch.equal(ds.images.reshape(6, -1), torch.from_numpy(expected["test_batch"][0]))
    assert ds.mean == (0.4914, 0.4822, 0.4465)
    with tarfile.open(tmp_path / "a" / ARCHIVE_NAME) as tf:
        tf.extractall(tmp_path / "b", filter="data")
    assert find_cifar10(tmp_path / "b")[0] == "official"
    ds_b = load_dataset("cifar10", tmp_path / "b", "val", cache_dir=False, progress=False)
    assert torch.equal(ds_b.images, ds.images) and torch.equal(ds_b.labels, ds.labels)
    files, _ = _image_set(CLASSES, 1, size=(32, 32), fmts=("JPEG",))
    jfiles = {f"cifar10-jpeg/{s}/{k}": v for s in ("train", "test") for k, v in files.items()}
    _write_tar(tmp_path / "j" / "cifar10-jpeg.tar", jfiles)
    assert find_cifar10(tmp_path / "j")[0] == "jpeg"
    dj = load_dataset("cifar10", tmp_path / "j", "train", cache_dir=False, progress=False)
    assert dj.classes == CLASSES and dj.class_counts() == [1] * 10
    _write_tar(tmp_path / "k.tar", {f"cifar10-jpeg/test/{k}": v for k, v in
                                    _image_set(["cat", "dog"], 1, size=(32, 32))[0].items()})
    with pytest.raises(BiperError, match="not CIFAR-10"):
        load_dataset("cifar10", tmp_path / "k.tar", "test", cache_dir=False, progress=False)
    with pytest.raises(BiperError, match="no CIFAR-10 found.*download=True"):
        load_dataset("cifar10", tmp_path / "c", "test", cache_dir=False)


def test_download_verifies_md5_with_file_url(tmp_path, monkeypatch):
    src = tmp_path / "src.tar.gz"
    _official_archive(src)
    digest = hashlib.md5(src.read_bytes()).hexdigest()
    got = download_cifar10(tmp_path / "dl", url=src.as_uri(), md5=digest, progress=False)
    assert got == tmp_path / "dl" / ARCHIVE_NAME and got.read_bytes() == src.read_bytes()
    with pytest.raises(BiperError, match="checksum mismatch.*" + digest):
        download_cifar10(tmp_path / "bad", url=src.as_uri(), md5="0" * 32, progress=False)
    assert list((tmp_path / "bad").iterdir()) == []                     # nothing left behind
    # load_dataset(download=True) with the module defaults pointed at the local file
    monkeypatch.setattr("biper.data.cifar.CIFAR10_URL", src.as_uri())
    monkeypatch.setattr("biper.data.cifar.CIFAR10_MD5", digest)
    ds = load_dataset("cifar10", tmp_path / "auto", "test", download=True, cache_dir=False,
                      progress=False)
    assert len(ds) == 6


def test_download_through_a_replaced_opener_reports_network_errors(tmp_path):
    payload = b"not really an archive"

    class Response(io.BytesIO):
        headers = {"Content-Length": str(len(payload))}

    got = download_cifar10(tmp_path, url="https://example.invalid/x", progress=False,
                           md5=hashlib.md5(payload).hexdigest(),
                           opener=lambda url, timeout: Response(payload))
    assert got.read_bytes() == payload

    def offline(url, timeout):
        raise OSError("network is unreachable")
    with pytest.raises(BiperError, match="cannot download.*unreachable"):
        download_cifar10(tmp_path / "o", url="https://example.invalid/x", opener=offline)


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        import os
        return (os.system, (self.cmd,))


def test_malicious_pickle_in_fake_archive_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Evil(f"touch {marker}"), b"labels": [0]}, protocol=2)
    with tarfile.open(tmp_path / ARCHIVE_NAME, "w:gz") as tf:
        for name in ["test_batch"]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(evil)
            tf.addfile(info, io.BytesIO(evil))
    with pytest.raises(BiperError, match=r"refusing to load .*test_batch.*'(posix|os|nt)\.system'"):
        load_dataset("cifar10", tmp_path, "test", cache_dir=False)
    assert not marker.exists()
    # a global naming an importable module is refused before the module is imported
    (tmp_path / "biper_probe_mod.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w')\nf = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BiperError, match="biper_probe_mod.f"):
        safe_load(b"\x80\x02cbiper_probe_mod\nf\n.", "probe")
    assert not (tmp_path / "imported").exists() and "biper_probe_mod" not in sys.modules
    with pytest.raises(BiperError, match="refusing"):
        safe_load(pickle.dumps(np.array([1, "x"], dtype=object), protocol=2), "objects")
    with pytest.raises(BiperError, match="refusing"):
        safe_load(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00rot_13\x86R.", "c")
    assert safe_load(pickle.dumps({"a": [1, 2.5, b"x"], "b": np.eye(2)}, 4), "ok")["a"] == [1, 2.5, b"x"]


def test_imagenet_lazy_folder_transforms(tmp_path):
    rng = np.random.default_rng(0)
    for split, sizes in (("train", [(40, 30), (50, 64), (33, 33)]), ("val", [(48, 36), (20, 80)])):
        for k, (w, h) in enumerate(sizes):
            cls = ["n01", "n02"][k % 2]
            p = tmp_path / split / cls / f"img{k}.JPEG"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p, "JPEG")
    train = load_dataset("imagenet", tmp_path, "train", image_size=16, resize_size=20, workers=2)
    val = load_dataset("imagenet", tmp_path, "val", image_size=16, resize_size=20, workers=1)
    assert train.classes == val.classes == ["n01", "n02"] and len(train) == 3 and len(val) == 2
    # eval: torchvision's Resize(20) (long side truncated) + CenterCrop(16), done with Pillow
    for k in range(2):
        im = Image.open(val.paths[k]).convert("RGB")
        w, h = im.size
        big = im.resize((20, int(20 * h / w)) if w <= h else (int(20 * w / h), 20), Image.BILINEAR)
        left, top = round((big.size[0] - 16) / 2), round((big.size[1] - 16) / 2)
        ref = np.asarray(big.crop((left, top, left + 16, top + 16)))
        got = val.fetch(torch.tensor([k]), augment=False)[0].permute(1, 2, 0).numpy()
        assert np.array_equal(got, ref)
        assert torch.equal(val[k][0], torch.from_numpy(ref.copy()).permute(2, 0, 1))
    # train: deterministic per generator, flips mirror, shapes fixed
    a = train.fetch(torch.tensor([0, 1, 2]), augment=True, generator=torch.Generator().manual_seed(1))
    b = train.fetch(torch.tensor([0, 1, 2]), augment=True, generator=torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 16, 16) and a.dtype == torch.uint8 and torch.equal(a, b)
    from biper.data.imagenet import _rrc_box
    g = torch.Generator().manual_seed(1)                                # replay the same draws
    u = torch.rand(3, 10, 4, generator=g, dtype=torch.float64).numpy()
    flips = torch.randint(0, 2, (3,), generator=g).tolist()
    for k in range(3):
        im = Image.open(train.paths[k]).convert("RGB")
        ref = np.asarray(im.crop(_rrc_box(*im.size, u[k])).resize((16, 16), Image.BILINEAR))
        ref = ref[:, ::-1] if flips[k] else ref
        assert np.array_equal(a[k].permute(1, 2, 0).numpy(), ref)
    from biper.data import TensorLoader
    x, y = next(iter(TensorLoader(train, 2, train=True)))
    assert x.shape == (2, 3, 16, 16) and y.dtype == torch.int64
    with pytest.raises(BiperError, match="unknown option.*allowed: image_size"):
        load_dataset("imagenet", tmp_path, "train", size=3)


def test_rrc_boxes_respect_scale_and_ratio_limits():
    from biper.data.imagenet import _rrc_box
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        u = torch.rand(10, 4, generator=g, dtype=torch.float64).numpy()
        left, top, right, bottom = _rrc_box(120, 80, u)
        cw, ch = right - left, bottom - top
        assert 0 <= left and right <= 120 and 0 <= top and bottom <= 80
        assert 0.08 * 9600 * 0.9 <= cw * ch <= 9600
        assert 3 / 4 * 0.9 <= cw / ch <= 4 / 3 * 1.1
