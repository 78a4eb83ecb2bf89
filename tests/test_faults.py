"""Fault injection: SIGKILL at random moments, SIGINT, corrupt / truncated / malicious checkpoints,
a NaN loss, a failed checkpoint write. Every recovery must end on the uninterrupted run's weights."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from biper.cli import main
from biper.train import CheckpointError, load_checkpoint, load_run_config, train
from biper.train import checkpoint as ck

TINY = {"model": {"name": "mlp"}, "threads": 1, "checkpoint_every_steps": 1, "keep_checkpoints": 3,
        "data": {"dataset": "synthetic", "batch_size": 16, "eval_batch_size": 128,
                 "options": {"size": 8, "length": 128, "num_classes": 4}},
        "binarize": {"weight_quantizer": "biper", "weight_params": {"omega0": 20.0}},
        "stages": [{"name": "sine", "epochs": 2, "lr": 0.1, "tau": 0.037, "warmup_epochs": 1,
                    "binarize": {"weight_params": {"stage": "sine"}}},
                   {"name": "square", "epochs": 2, "lr": 0.02, "tau": 0.0468}]}
TOTAL_STEPS = 32  # 2 stages x 2 epochs x 8 batches


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    return train(load_run_config(recipe), out, quiet=True)["weights_sha256"]


class Run:
    """``biper train`` in a forked child process (no second torch import: each run starts in
    milliseconds); ``returncode`` and ``stderr`` once it ended. Fork is safe here because the
    runs use one intra-op thread, as DataLoader workers do."""

    def __init__(self, recipe, out, *extra):
        self.err_path = Path(out).with_name(Path(out).name + f".{time.monotonic_ns()}.err")
        self.err_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid = os.fork()
        if self.pid == 0:  # child
            code = 1
            try:
                fd = os.open(self.err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                sys.stdout = os.fdopen(1, "w", buffering=1)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                code = main(["train", str(recipe), "--out", str(out), "--quiet", *extra])
            finally:
                os._exit(code)
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float = 120.0) -> int:
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                raise TimeoutError("training child did not finish")
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, sig) -> None:
        os.kill(self.pid, sig)

    @property
    def output(self) -> str:
        """stdout and stderr of the child."""
        return self.err_path.read_text()


def cli(recipe, out, *extra) -> Run:
    return Run(recipe, out, *extra)


def newest_step(out) -> int:
    found = ck.list_checkpoints(Path(out) / "checkpoints")
    return found[-1][0] if found else -1


def kill_at(proc, out, step: int, delay: float, sig=signal.SIGKILL) -> bool:
    """Send ``sig`` once a checkpoint of ``step`` exists (plus ``delay``); False if it finished first."""
    while proc.poll() is None and newest_step(out) < step:
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    proc.wait()
    return True


def test_sigkill_at_random_moments_then_resume_is_bit_identical(recipe, reference, tmp_path):
    rng = random.Random(1234)
    killed, resumed_from_checkpoint = 0, 0
    for trial in range(8):
        out = tmp_path / f"trial{trial}"
        step, delay = rng.randrange(0, TOTAL_STEPS - 2), rng.uniform(0.0, 0.03)
        killed += kill_at(cli(recipe, out), out, step, delay)
        if trial == 7:  # kill the resumed process as well
            kill_at(cli(recipe, out, "--resume"), out, min(step + 6, TOTAL_STEPS - 1), delay)
        resumed = cli(recipe, out, "--resume")
        assert resumed.wait() == 0, resumed.output
        resumed_from_checkpoint += "resuming" in resumed.output
        summary = json.loads((out / "summary.json").read_text())
        assert summary["weights_sha256"] == reference, f"trial {trial}: killed after step {step} + {delay:.3f}s"
    assert killed >= 6 and resumed_from_checkpoint >= 6  # the kills landed while training ran


def test_sigint_writes_a_checkpoint_exits_130_and_resumes(recipe, reference, tmp_path):
    out = tmp_path / "run"
    proc = cli(recipe, out)
    assert kill_at(proc, out, 5, 0.0, sig=signal.SIGINT)
    err = proc.output
    assert proc.returncode == 130 and "interrupted by SIGINT; checkpoint saved to" in err and "Traceback" not in err
    assert cli(recipe, out, "--resume").wait() == 0
    assert json.loads((out / "summary.json").read_text())["weights_sha256"] == reference


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip bits inside the largest tensor record: the zip stays readable, the checksum does not
        i = len(data) // 2
        data[i:i + 8] = bytes(b ^ 0xFF for b in data[i:i + 8])
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(recipe, reference, tmp_path, capsys, how):
    out = tmp_path / "run"
    cfg = load_run_config(recipe, ["stages.1.max_steps=3"])
    train(cfg, out, quiet=True)
    newest = ck.list_checkpoints(out / "checkpoints")[-1][2]
    corrupt(newest, how)
    with pytest.raises(CheckpointError, match="truncated or corrupt" if how == "truncate" else "checksum mismatch"):
        load_checkpoint(newest)
    (out / "summary.json").unlink()
    capsys.readouterr()
    summary = train(cfg, out, resume=True, quiet=True)
    err = capsys.readouterr().err
    assert newest.name in err and "falling back to the previous checkpoint" in err
    assert summary["steps"] == 16 + 3
    fresh = train(cfg, tmp_path / "fresh", quiet=True)
    assert summary["weights_sha256"] == fresh["weights_sha256"]


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"format": ck.FORMAT, "model": Evil()}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pt: unpickling it would import or run code"):
        load_checkpoint(path)
    assert main(["eval", str(path)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(recipe), "stages.*.lr=1.0e38", "binarize=null", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "loss is nan" in err and "stopped before updating the weights" in err
    last = ck.list_checkpoints(out / "checkpoints")[-1][2]
    assert str(last) in err
    state = load_checkpoint(last)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def test_failed_write_is_reported_and_leaves_checkpoints_intact(recipe, reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    writes = {"n": 0}
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        writes["n"] += 1
        if writes["n"] == 6:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    rc = main(["train", str(recipe), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "existing files were left untouched" in err
    left = ck.list_checkpoints(out / "checkpoints")
    assert [s for s, _, _ in left] == [3, 4, 5]
    assert not list((out / "checkpoints").glob(".*tmp*"))
    for _, _, path in left:
        load_checkpoint(path)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert main(["train", str(recipe), "--out", str(out), "--quiet", "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["weights_sha256"] == reference
