"""One way to write a file: all or nothing, permissions from the umask, one-line errors."""

import os
import stat

import pytest

from biper.cli import main
from biper.deploy import export_model
from biper.files import FileWriteError, atomic_path, atomic_write, is_temp_name
from biper.models import create_model
from biper.train import save_checkpoint
from biper.transform import BinarizeConfig


@pytest.fixture
def umask():
    def set_umask(mask):
        os.umask(mask)
    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_permissions(tmp_path, umask, mask):
    umask(mask)
    reference = tmp_path / "plain.bin"
    reference.write_bytes(b"x")                       # a file created the ordinary way
    assert _mode(reference) == 0o666 & ~mask
    atomic_write(tmp_path / "a.bin", b"abc")
    assert _mode(tmp_path / "a.bin") == _mode(reference)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_packed_file_and_checkpoint_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    model = create_model("mlp", num_classes=3, binarize=BinarizeConfig(), in_features=48, hidden=8)
    export_model(model, tmp_path / "m.biper")
    save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict()})
    assert _mode(tmp_path / "m.biper") == 0o666 & ~mask
    assert _mode(tmp_path / "c.pt") == 0o666 & ~mask


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")

    def boom(f):
        f.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(target, writer=boom)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.bin"]


def test_temp_names_are_recognised(tmp_path):
    with atomic_path(tmp_path / "x.pt") as tmp:
        assert tmp.parent == tmp_path and is_temp_name(tmp.name, pid=os.getpid())
        assert not is_temp_name(tmp.name, pid=os.getpid() + 1)
        tmp.write_bytes(b"1")
    assert (tmp_path / "x.pt").read_bytes() == b"1" and not is_temp_name("x.pt")


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(FileWriteError, match=r"^could not write .*: the folder .*missing does not exist"):
        atomic_write(tmp_path / "missing" / "x.bin", b"abc")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(FileWriteError, match="could not write .*Permission denied"):
            atomic_write(folder / "x.bin", b"abc")
    finally:
        folder.chmod(0o755)


def test_export_into_missing_folder_exits_2(tmp_path, capsys):
    model = create_model("mlp", num_classes=3, binarize=BinarizeConfig(), in_features=48, hidden=8)
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_config": model.model_config, "config": {}})
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(tmp_path / "missing-folder" / "m.biper")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing-folder does not exist" in err, err
    assert "Traceback" not in err
