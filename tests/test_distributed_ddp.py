"""Data-parallel training on CPU: 2 processes, gloo over 127.0.0.1.

References: a one-process run with the same global batch (a model without BatchNorm, no
augmentation: the averaged gradient of two half batches is the gradient of the whole batch),
the single-process evaluation of the saved model, and an uninterrupted two-process run that a
killed or signalled run must end on bit for bit. Ranks are forked from a fork server that
imported torch once, except in the torchrun / ``--nproc`` test, which starts real launchers.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from biper.cli import main
from biper.train import build_model_from_config, evaluate, load_checkpoint, load_run_config, model_spec
from biper.data.loader import derive_seed
from biper.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]
DATA = {"dataset": "synthetic", "batch_size": 16, "eval_batch_size": 40, "augment": False,
        "options": {"size": 8, "length": 96, "num_classes": 4}}
BINARIZE = {"weight_quantizer": "biper",
            "weight_params": {"omega0": {"schedule": "linear", "start": 15.0, "end": 25.0}},
            "input_quantizer": "rsign", "input_params": {"channels": 32}}
# BatchNorm MLP, BiPer weights with an annealed omega0, RSign thresholds, learnable alpha,
# the sin^2 regulariser; two stages. 95 examples: an odd count, so shards need padding.
BN_RUN = {"model": {"name": "mlp", "kwargs": {"hidden": 32}}, "threads": 1, "seed": 3,
          "checkpoint_every_steps": 1, "keep_checkpoints": 2, "binarize": BINARIZE,
          "data": dict(DATA, subset=95),
          "stages": [{"name": "sine", "epochs": 2, "lr": 0.1, "tau": 0.037,
                      "binarize": {"weight_params": {"stage": "sine"}}},
                     {"name": "square", "epochs": 2, "lr": 0.02, "tau": 0.0468}]}
STEPS = 24  # 2 stages x 2 epochs x 6 batches (48 examples per rank, 8 per batch)
# the same without BatchNorm (registered in the worker processes only)
PLAIN_RUN = dict(BN_RUN, model={"name": "plain_mlp_test"}, data=DATA, checkpoint_every_steps=None,
                 stages=[dict(s, epochs=1) for s in BN_RUN["stages"]])


def register_plain_mlp() -> None:
    """A BatchNorm-free MLP (3x8x8 -> 32 -> 32 -> 32 -> classes, Hardtanh), in this process."""
    from torch import nn

    from biper.models import register_model
    from biper.models.common import BiperModel

    class PlainMLP(BiperModel):
        def __init__(self, num_classes: int):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(192, 32), nn.Hardtanh(), nn.Linear(32, 32),
                                      nn.Hardtanh(), nn.Linear(32, 32), nn.Hardtanh())
            self.head = nn.Linear(32, num_classes)

        def forward(self, x):  # (B, 3, 8, 8) -> (B, K)
            return self.head(self.body(x))

    @register_model(dataset="any", input_size=(3, 8, 8), num_classes=4, params=0)
    def plain_mlp_test(*, num_classes: int = 4):
        """Test-only MLP without BatchNorm."""
        return PlainMLP(num_classes)


def record_rank_state(out: Path, rank: int) -> None:
    """In a worker: after every step measure the parameter drift between ranks and note which
    examples the step used (a checksum per image); note the evaluation shard sizes; at the end
    save this rank's final state and the record next to the run."""
    from biper.train import engine, tasks
    from biper.train.distributed import rank_divergence

    record = {"drift": [], "batches": [], "eval": []}
    step, finish, evaluate = engine.Trainer._step, engine.Trainer._finish, tasks.evaluate  # the classifier's

    def _step(self, s, index, x, y, acc):
        lr = step(self, s, index, x, y, acc)
        record["batches"].append(x.flatten(1).double().sum(1).tolist())     # (B,)
        record["drift"].append(max(rank_divergence(s["model"], buffers=False).values(), default=0.0))
        return lr

    def _evaluate(model, loader, **kwargs):
        record["eval"].append([loader.num_real, loader.num_samples])
        return evaluate(model, loader, **kwargs)

    def _finish(self, final_state):
        torch.save(final_state, out.with_name(f"{out.name}.rank{rank}.pt"))
        out.with_name(f"{out.name}.rank{rank}.json").write_text(json.dumps(record))
        return finish(self, final_state)

    engine.Trainer._step, engine.Trainer._finish, tasks.evaluate = _step, _finish, _evaluate


def recorded(out: Path, rank: int) -> dict:
    return json.loads(out.with_name(f"{out.name}.rank{rank}.json").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, env: dict, log: Path, argv: list[str], out: Path, plain: bool, record: bool) -> None:
    """One rank of a `Job` (runs in a process forked by the fork server)."""
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout, sys.stderr = os.fdopen(1, "w", buffering=1), os.fdopen(2, "w", buffering=1)
        for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(key, None)
        os.environ.update(env)
        torch.set_num_threads(1)
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # stacks on a timeout
        if plain:
            register_plain_mlp()
        if record:
            record_rank_state(out, rank)
        code = main(argv)
    except BaseException:  # noqa: BLE001  (reported through the log)
        traceback.print_exc()
    finally:
        os._exit(code)


def _context():
    """Ranks fork from a fork server: a fresh interpreter that imported torch and biper once
    (so a rank starts in milliseconds) but never ran an OpenMP region, unlike this process (a
    fork taken after OpenMP ran can hang in the child's teardown)."""
    ctx = torch.multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "biper.cli", "biper.train", __name__])
    return ctx


@pytest.fixture(scope="module", autouse=True)
def _stop_fork_server():
    """The fork server (a whole torch import) does not outlive this module."""
    yield
    from multiprocessing import forkserver

    stop = getattr(forkserver._forkserver, "_stop", None)
    if stop is not None:
        stop()


class Job:
    """``biper train`` in ``world`` ranks joined by gloo (``world`` 1: no process group)."""

    def __init__(self, world: int, recipe: Path, out: Path, *extra: str, plain: bool = False, record: bool = False):
        port, self.logs, self.procs = free_port(), [], []
        argv = ["train", str(recipe), "--out", str(out), "--quiet", *extra]
        for rank in range(world):
            log = out.with_name(f"{out.name}.{time.monotonic_ns()}.rank{rank}.log")
            env = {} if world == 1 else dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            proc = _context().Process(target=_rank_main, args=(rank, env, log, argv, out, plain, record))
            proc.start()
            self.logs.append(log)
            self.procs.append(proc)
        self.pids = [p.pid for p in self.procs]

    def poll(self) -> bool:
        return all(p.exitcode is not None for p in self.procs)

    def wait(self, timeout: float = 60.0) -> list[int]:
        end = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > end:
                for sig in (signal.SIGUSR1, signal.SIGKILL):
                    for p in self.procs:
                        if p.exitcode is None:
                            os.kill(p.pid, sig)
                    time.sleep(0.5)
                self.wait(10.0)
                raise TimeoutError(f"ranks did not finish:\n{self.output()}")
            time.sleep(0.005)
        return [p.exitcode for p in self.procs]

    def output(self, rank: int | None = None) -> str:
        ranks = range(len(self.logs)) if rank is None else [rank]
        return "\n".join(f"--- rank {r} ---\n{self.logs[r].read_text()}" for r in ranks)


def write_recipe(folder: Path, config: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metric_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("epoch_time", "wall_time")} for r in rows]


def assert_rows_close(a: list[dict], b: list[dict], rel: float = 1e-9) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(y[key], dict):  # per-layer diagnostics: {layer: {metric: value}}
                assert_rows_close([x[key]], [y[key]], rel)
                continue
            assert x[key] == (pytest.approx(y[key], rel=rel, abs=1e-12) if isinstance(y[key], float) else y[key]), key


def newest_step(out: Path) -> int:
    found = ck.list_checkpoints(out / "checkpoints")
    return found[-1][0] if found else -1


@pytest.fixture(scope="module")
def bn_reference(tmp_path_factory):
    """The uninterrupted two-process run of ``BN_RUN``, recording each rank's final state."""
    folder = tmp_path_factory.mktemp("ddp-ref")
    recipe, out = write_recipe(folder, BN_RUN), folder / "run"
    job = Job(2, recipe, out, record=True)
    assert job.wait() == [0, 0], job.output()
    return recipe, out, json.loads((out / "summary.json").read_text()), job.output(0)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    recipe = write_recipe(tmp_path, PLAIN_RUN)
    one, two = tmp_path / "one", tmp_path / "two"
    single, pair = Job(1, recipe, one, plain=True, record=True), Job(2, recipe, two, plain=True, record=True)
    assert single.wait() == [0], single.output()
    assert pair.wait() == [0, 0], pair.output()
    assert "6 steps of batch 16 (2 processes x 8)" in pair.output(0)
    a, b = load_checkpoint(one / "final.pt")["model"], load_checkpoint(two / "final.pt")["model"]
    start = load_checkpoint(sorted((two / "checkpoints").glob("stage1-final-*"))[0])["model"]
    assert a.keys() == b.keys()
    moved = 0.0
    for key, value in a.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(b[key], value, rtol=1e-5, atol=1e-6, msg=key)
            moved = max(moved, float((value - start[key]).abs().max()) if key in start else 0.0)
        else:
            assert b[key] == value if not isinstance(value, torch.Tensor) else torch.equal(b[key], value), key
    assert moved > 1e-3  # stage 2 trained the weights: the comparison is not of two initial states
    assert_rows_close(metric_rows(two), metric_rows(one), rel=1e-5)
    # each step: the two ranks took disjoint halves (8 + 8) of the one-process batch of 16
    whole, halves = recorded(one, 0)["batches"], [recorded(two, r)["batches"] for r in (0, 1)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 12
    for b, full in enumerate(whole):
        assert len(halves[0][b]) == len(halves[1][b]) == 8
        assert sorted(halves[0][b] + halves[1][b]) == pytest.approx(sorted(full), rel=1e-12)
    assert whole[0] != whole[6] and sorted(whole[0]) != sorted(whole[6])  # stage 2 reshuffled
    assert recorded(two, 1)["drift"] == [0.0] * 12


def test_all_ranks_hold_identical_parameters_buffers_and_quantizer_state(bn_reference):
    _, out, summary, log = bn_reference
    assert summary["world_size"] == 2 and summary["steps"] == STEPS
    assert "steps of batch 16 (2 processes x 8)" in log
    states = [torch.load(out.with_name(f"run.rank{r}.pt"), weights_only=True) for r in (0, 1)]
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        other = states[1][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    for r in (0, 1):  # after every one of the 24 steps, not only at the end
        assert recorded(out, r)["drift"] == [0.0] * STEPS
    assert ck.weights_digest(states[0]) == summary["weights_sha256"]
    assert ck.weights_digest(load_checkpoint(out / "final.pt")["model"]) == summary["weights_sha256"]
    # the learnable scale, the RSign thresholds and the annealed omega0 took part
    cfg = load_run_config(BN_RUN)
    torch.manual_seed(derive_seed(cfg.seed, "stage", 0))  # the engine's initialisation of stage 1
    init = build_model_from_config(model_spec(cfg, 0, num_classes=4)).state_dict()
    for key in ("body.3.alpha", "body.6.alpha", "body.3.input_quantizer.threshold",
                "body.6.input_quantizer.threshold"):
        assert not torch.equal(states[0][key], init[key]), key  # trained, and equal on both ranks
    omega0 = states[0]["body.3.weight_quantizer._extra_state"]["omega0"]
    assert omega0 == pytest.approx(15.0 + 10.0 * 11 / 12)  # linear schedule at the last step of stage 2
    rows = metric_rows(out)
    assert all(row["reg"] > 0 for row in rows)  # the sin^2 regulariser was on


def test_sharded_evaluation_counts_each_test_example_once(bn_reference):
    recipe, out, summary, _ = bn_reference
    ckpt = load_checkpoint(out / "final.pt")
    model = build_model_from_config(ckpt)
    from biper.data import load_dataset
    from biper.data.loader import TensorLoader

    test_set = load_dataset("synthetic", None, "test", subset=95, **DATA["options"])
    assert len(test_set) == 95  # 48 + 48 across two ranks: one padding duplicate to skip
    assert recorded(out, 0)["eval"] == [[48, 48]] * 4 and recorded(out, 1)["eval"] == [[47, 48]] * 4
    loss, acc = evaluate(model, TensorLoader(test_set, 40, train=False), device=torch.device("cpu"))
    assert summary["final_test_acc"] == pytest.approx(acc, abs=1e-9)
    assert summary["final_test_loss"] == pytest.approx(loss, rel=1e-6)


def test_sigterm_on_one_rank_stops_both_at_the_same_step_and_resume_matches(bn_reference, tmp_path):
    recipe, ref_out, ref, _ = bn_reference
    out = tmp_path / "run"
    job = Job(2, recipe, out)
    while not job.poll() and newest_step(out) < 7:
        time.sleep(0.002)
    assert not job.poll(), "the run finished before the signal"
    os.kill(job.pids[1], signal.SIGTERM)  # rank 1 only: rank 0 learns it from the agreement
    assert job.wait() == [128 + signal.SIGTERM] * 2, job.output()
    stopped = newest_step(out)
    assert 7 <= stopped < STEPS and "checkpoint saved to" in job.output(0)
    assert "SIGTERM received" in job.output(1) and "SIGTERM received" not in job.output(0)
    resumed = Job(2, recipe, out, "--resume")
    assert resumed.wait() == [0, 0], resumed.output()
    assert "resuming" in resumed.output(0) and "resuming" not in resumed.output(1)
    assert json.loads((out / "summary.json").read_text())["weights_sha256"] == ref["weights_sha256"]
    assert_rows_close(metric_rows(out), metric_rows(ref_out))


def _descendants(pid: int) -> list[int]:
    found = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [child] + _descendants(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_torchrun_sigkill_then_resume_with_nproc_is_bit_identical(bn_reference, tmp_path):
    recipe, _, ref, _ = bn_reference
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    agent = subprocess.Popen([*launcher, "-m", "biper", "train", str(recipe), "--out", str(out), "--quiet"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while agent.poll() is None and newest_step(out) < 5 and time.monotonic() < deadline:
            time.sleep(0.002)
        victims = _descendants(agent.pid)
        for pid in victims + [agent.pid]:  # the whole job dies at once, as in a power cut
            os.kill(pid, signal.SIGKILL)
    finally:
        if agent.poll() is None:
            agent.kill()
        text = agent.communicate(timeout=30)[0].decode(errors="replace")
    assert len(victims) >= 2 and 5 <= newest_step(out) < STEPS, text
    assert not (out / "summary.json").exists()
    end = time.monotonic() + 10
    while any(_alive(pid) for pid in victims) and time.monotonic() < end:
        time.sleep(0.01)
    resumed = subprocess.run([sys.executable, "-m", "biper", "train", str(recipe), "--out", str(out),
                              "--quiet", "--resume", "--nproc", "2"], env=env, capture_output=True,
                             text=True, timeout=90)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["weights_sha256"] == ref["weights_sha256"]
