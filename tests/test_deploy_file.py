"""The packed-model file: round trip, export/load of registry and custom models, size, and
refusal of malicious or malformed files without running anything."""

import json
import os
import pickle
import struct

import pytest
import torch
from torch import nn

import biper
from biper.deploy import export_model, load_packed
from biper.deploy.fileformat import MAGIC, read_file, write_file
from biper.deploy.modules import PackedConv2d, PackedLinear
from biper.errors import BiperError
from biper.nn import BinaryConv2d, BinaryLinear


def _randomize_bn_(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.2, generator=gen)
    return model.eval()


def test_container_round_trip_all_dtypes(tmp_path):
    tensors = {
        "f32": torch.randn(3, 4), "f64": torch.randn(2, dtype=torch.float64),
        "f16": torch.randn(5).half(), "bf16": torch.randn(5).bfloat16(),
        "i64": torch.tensor([-2 ** 63, -1, 0, 2 ** 63 - 1]), "i32": torch.arange(7, dtype=torch.int32),
        "u8": torch.arange(256, dtype=torch.uint8), "b": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 3), "scalar": torch.tensor(2.5),
        "strided": torch.arange(12.0).view(3, 4).t(),
    }
    meta = {"model": {"name": "x"}, "nested": [1, 2.5, None, "s"]}
    write_file(tmp_path / "t.biper", tensors, meta)
    got_meta, got = read_file(tmp_path / "t.biper")
    assert got_meta == meta
    assert set(got) == set(tensors)
    for k, t in tensors.items():
        assert got[k].dtype == t.dtype and torch.equal(got[k], t), k
    raw = (tmp_path / "t.biper").read_bytes()
    assert raw.startswith(MAGIC)


def test_registry_model_round_trip_same_predictions(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn_(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()))
    info = export_model(model, tmp_path / "r20.biper")
    assert len(info.report.packed) == 18 and len(info.report.folded) == 18
    packed = load_packed(tmp_path / "r20.biper")
    assert not packed.training
    assert sum(isinstance(m, PackedConv2d) for m in packed.modules()) == 18
    assert not any(isinstance(m, BinaryConv2d) for m in packed.modules())
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        ref, out = model(x), packed(x)
    assert torch.equal(ref.argmax(1), out.argmax(1))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    header = packed.packed_meta
    assert header["model"]["name"] == "resnet20_cifar" and header["biper_version"] == biper.__version__
    assert header["meta"]["input_size"] == [3, 32, 32]


def test_custom_model_needs_a_skeleton(tmp_path):
    torch.manual_seed(1)
    net = _randomize_bn_(nn.Sequential(BinaryConv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                       nn.Flatten(), BinaryLinear(8 * 16, 4, input_quantizer="rsign")))
    net[3].input_quantizer.threshold.data.normal_()
    export_model(net, tmp_path / "c.biper")
    with pytest.raises(BiperError, match="model=..."):
        load_packed(tmp_path / "c.biper")
    skeleton = nn.Sequential(BinaryConv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                             nn.Flatten(), BinaryLinear(8 * 16, 4, input_quantizer="rsign"))
    packed = load_packed(tmp_path / "c.biper", model=skeleton)
    assert isinstance(skeleton[0], BinaryConv2d), "the skeleton is copied, not modified"
    head = packed.get_submodule("3")
    assert isinstance(head, PackedLinear) and head.in_threshold is not None
    assert isinstance(load_packed(tmp_path / "c.biper", model=skeleton, optimize=False), nn.Sequential)
    x = torch.randn(3, 3, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), net(x), rtol=1e-5, atol=1e-5)
    wrong = nn.Sequential(BinaryConv2d(3, 8, 5, padding=2, bias=False), nn.BatchNorm2d(8),
                          nn.Flatten(), BinaryLinear(8 * 16, 4, input_quantizer="rsign"))
    with pytest.raises(BiperError, match="kernel_size"):
        load_packed(tmp_path / "c.biper", model=wrong)


def test_resnet18_file_size_within_two_percent_of_theory(tmp_path):
    model = biper.create_model("resnet18_imagenet", binarize=biper.BinarizeConfig()).eval()
    info = export_model(model, tmp_path / "r18.biper")
    binary = sum(m.weight.numel() for m in model.modules() if isinstance(m, BinaryConv2d))
    other = sum(p.numel() for p in model.parameters()) - binary
    assert (info.binary_weights, info.other_params) == (binary, other)
    theory = (binary + 32 * other) / 8
    assert os.path.getsize(tmp_path / "r18.biper") == info.file_bytes
    assert abs(info.file_bytes / theory - 1) < 0.02, info.file_bytes / theory


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def _write_raw(path, header: dict | bytes, data: bytes = b"", version=1, hlen=None):
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<8sIIQ", MAGIC, version, 0, len(body) if hlen is None else hlen))
        f.write(body)
        f.write(b"\0" * (-(24 + len(body)) % 64))
        f.write(data)


def test_pickles_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    _Payload.marker = marker
    torch.save({"model": _Payload()}, tmp_path / "evil.pt")
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(_Payload()))
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(BiperError, match="magic"):
            load_packed(tmp_path / name)
    assert not marker.exists()


@pytest.mark.parametrize("header,message", [
    ({"tensors": {"w": {"dtype": "object", "shape": [1], "offset": 0, "nbytes": 8}}}, "dtype"),
    ({"tensors": {"w": {"dtype": "float32", "shape": [10 ** 9], "offset": 0, "nbytes": 4 * 10 ** 9}}}, "does not fit"),
    ({"tensors": {"w": {"dtype": "float32", "shape": [-1], "offset": 0, "nbytes": 4}}}, "malformed"),
    ({"tensors": {"w": {"dtype": "float32", "shape": [2], "offset": 0, "nbytes": 4}}}, "does not fit"),
    ({"no_table": 1}, "tensor table"),
    (b"\x80\x04not json", "not JSON"),
])
def test_malformed_headers_are_refused(tmp_path, header, message):
    _write_raw(tmp_path / "bad.biper", header, b"\0" * 64)
    with pytest.raises(BiperError, match=message):
        load_packed(tmp_path / "bad.biper")


def test_bad_version_length_and_names_are_refused(tmp_path):
    _write_raw(tmp_path / "v.biper", {"tensors": {}}, version=99)
    with pytest.raises(BiperError, match="version 99"):
        read_file(tmp_path / "v.biper")
    _write_raw(tmp_path / "l.biper", {"tensors": {}}, hlen=1 << 40)
    with pytest.raises(BiperError, match="header length"):
        read_file(tmp_path / "l.biper")
    for model, structure, message in [
        ({"name": "__import__('os').system('touch x')"}, {}, "unknown model"),
        ({"name": "mlp"}, {"packed": [{"name": "fc1", "type": "subprocess.Popen", "config": {}}]}, "types allowed"),
        ({"name": "mlp"}, {"packed": [{"name": "nope", "type": "PackedLinear", "config": {}}]}, "does not exist"),
        ({"name": "mlp", "binarize": {}}, {"packed": [{"name": "body.3", "type": "PackedLinear", "config": {
            "in_features": 10 ** 12, "out_features": 10 ** 12}}]}, "in the file but"),  # no huge allocation
        ({"name": "mlp", "binarize": {}}, {"packed": "body.3"}, "must list"),
        ({"name": "resnet18_imagenet", "num_classes": 10 ** 9}, {}, "tensors do not match"),  # no 2 TB fc
    ]:
        _write_raw(tmp_path / "n.biper", {"format": "biper-packed", "model": model, "structure": structure,
                                          "tensors": {}})
        with pytest.raises(BiperError, match=message):
            load_packed(tmp_path / "n.biper")


def test_truncated_file_is_refused(tmp_path):
    model = biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval()
    export_model(model, tmp_path / "m.biper")
    data = (tmp_path / "m.biper").read_bytes()
    (tmp_path / "t.biper").write_bytes(data[: len(data) - 100])
    with pytest.raises(BiperError, match="does not fit"):
        load_packed(tmp_path / "t.biper")
    with pytest.raises(BiperError, match="cannot read"):
        load_packed(tmp_path / "missing.biper")
