"""Model files are recognised by their first bytes; other files are reported as what they are."""

import doctest
import pickle

import numpy as np
import pytest
import torch

import biper
from biper.cli import main
from biper.deploy import export_model
from biper.deploy import filetype
from biper.deploy.filetype import require_model_file, sniff
from biper.errors import BiperError


def test_kinds(tmp_path):
    export_model(biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval(), tmp_path / "m.biper")
    torch.save({"a": torch.ones(2)}, tmp_path / "zip.pt")
    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    zipped = (tmp_path / "zip.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(zipped[: len(zipped) // 2])
    np.save(tmp_path / "a.npy", np.zeros(3))
    np.savez(tmp_path / "a.npz", x=np.zeros(3))
    import zipfile

    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.pt").write_text("model: mlp\n")
    (tmp_path / "img.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 16)
    (tmp_path / "m.onnx").write_bytes(b"\x08\x08\x12\x05biper\x3a\x10")
    (tmp_path / "blob").write_bytes(bytes([0x00, 0xff, 0x13, 0x37]) * 8)
    (tmp_path / "dir").mkdir()
    expected = {
        "m.biper": "packed", "zip.pt": "torch", "legacy.pt": "torch", "truncated.pt": "torch",
        "a.npy": "a NumPy array (.npy)", "a.npz": "a NumPy archive (.npz)",
        "plain.zip": "a ZIP archive without torch data", "empty.pt": "an empty file",
        "notes.pt": "a text file", "img.pt": "a PNG image", "m.onnx": "an ONNX model",
        "blob": "an unrecognised binary file (starts with 00 ff 13 37 00 ff 13 37)", "dir": "a folder",
    }
    assert {name: sniff(tmp_path / name) for name in expected} == expected
    with pytest.raises(BiperError, match="does not exist"):
        sniff(tmp_path / "nope")


def test_require_model_file_names_what_it_got(tmp_path):
    torch.save({"a": 1}, tmp_path / "c.pt")
    assert require_model_file(tmp_path / "c.pt") == "torch"
    with pytest.raises(BiperError, match=r"c.pt is a torch file \(a checkpoint\? `biper export` packs one\); "
                                         r"expected a packed model \(.biper\)$"):
        require_model_file(tmp_path / "c.pt", ("packed",))


def test_eval_of_a_packed_model_is_not_reported_as_a_corrupt_checkpoint(tmp_path, capsys):
    # the symptom before: "checkpoint ... is corrupt: not a torch file (Unsupported operand 66)"
    export_model(biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval(), tmp_path / "m.biper")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "m.biper")]) == 2
    err = capsys.readouterr().err
    assert "corrupt" not in err and "Unsupported operand" not in err
    assert "holds no training config" in err
    # a truncated checkpoint still reaches the checkpoint loader, which says what is wrong
    torch.save({"format": "biper-checkpoint", "x": torch.ones(1000)}, tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    assert main(["eval", str(tmp_path / "c.pt")]) == 2
    assert "is corrupt" in capsys.readouterr().err


def test_docstring_example():
    assert doctest.testmod(filetype).failed == 0
