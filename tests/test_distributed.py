"""`biper.train.distributed` in one process: the torchrun environment, devices, the global ->
per-rank batch, preflight errors, the launcher's argument checks, the shard arithmetic that
makes a W-process step equal a one-process step, and sharded evaluation without padding."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from biper.cli import build_parser, main
from biper.data.loader import TensorLoader
from biper.data.synthetic import make_synthetic
from biper.errors import BiperError
from biper.train import ConfigError, evaluate, load_run_config
from biper.train import distributed as ddp

TINY = {"model": {"name": "mlp"}, "threads": 1,
        "data": {"dataset": "synthetic", "batch_size": 16, "options": {"size": 8, "length": 64}},
        "stages": [{"epochs": 1, "lr": 0.1}]}
ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch):
    """A clean torchrun environment to fill in."""
    for key in ENV:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def torchrun_env(env, rank=1, world=2, local=1):
    for key, value in zip(ENV, (rank, local, world, "127.0.0.1", 29999)):
        env.setenv(key, str(value))


@pytest.mark.parametrize("batch, world, expected", [(512, 8, 64), (256, 1, 256), (16, 2, 8), (6, 6, 1)])
def test_per_rank_batch_is_the_global_batch_split_evenly(batch, world, expected):
    assert ddp.per_rank_batch(batch, world) == expected


def test_uneven_global_batch_is_a_clear_error():
    with pytest.raises(BiperError, match=r"data.batch_size=100 .*3 processes.*99 or 102"):
        ddp.per_rank_batch(100, 3)
    with pytest.raises(BiperError, match="multiple of 8 such as 8"):
        ddp.per_rank_batch(4, 8)


def test_backend_is_nccl_on_gpus_and_gloo_on_cpu():
    assert ddp.backend_for(torch.device("cuda", 3)) == "nccl"
    assert ddp.backend_for(torch.device("cpu")) == "gloo"


def test_environment_is_read_and_checked(env):
    assert ddp.env_world() == (0, 0, 1)
    torchrun_env(env, rank=3, world=4, local=1)
    assert ddp.env_world() == (3, 1, 4)
    env.setenv("RANK", "4")
    with pytest.raises(BiperError, match=r"RANK must be in \[0, 3\]"):
        ddp.env_world()
    env.setenv("RANK", "x")
    with pytest.raises(BiperError, match="RANK must be an integer"):
        ddp.env_world()
    env.setenv("RANK", "0")
    env.delenv("MASTER_PORT")
    with pytest.raises(BiperError, match="MASTER_PORT not set.*torchrun"):
        ddp.env_world()


def test_one_process_needs_no_group_and_every_helper_is_the_identity(env):
    with ddp.process_group("cpu") as info:
        assert info == ddp.DistInfo(0, 0, 1, torch.device("cpu"), None)
        assert not dist.is_initialized()
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        assert ddp.wrap_model(model, info.device, sync_bn=True) is model
        assert ddp.all_reduce_sums([1.5, 2, 3]) == [1.5, 2.0, 3.0]
        assert ddp.agree_signal(None) is None and ddp.agree_signal(15) == 15
        assert ddp.broadcast_object({"a": 1}) == {"a": 1}
        assert ddp.run_on_main(lambda: 7) == 7 and ddp.main_first(lambda: 8) == 8
        assert ddp.rank_divergence(model) == {}
        ddp.check_in_sync(model, "here")
        ddp.sync_buffers(model)
        ddp.barrier()
    with pytest.raises(BiperError, match="boom"):
        ddp.run_on_main(lambda: (_ for _ in ()).throw(BiperError("boom")))


def test_sync_bn_on_cpu_fails_before_any_process_waits(env):
    torchrun_env(env)  # rank 1 of 2: joining the group would block until a rank 0 appears
    with pytest.raises(BiperError, match="sync_bn: SyncBatchNorm needs CUDA"):
        with ddp.process_group("cpu", sync_bn=True):
            pass
    assert not dist.is_initialized()


def test_devices_under_torchrun(env):
    torchrun_env(env)
    assert ddp.rank_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert ddp.rank_device("auto") == torch.device("cpu")
        with pytest.raises(BiperError, match="CUDA is not available"):
            ddp.rank_device("cuda")


def test_preflight_reports_what_the_workers_would_hit():
    cfg = load_run_config(TINY)
    ddp.preflight(cfg, 2)
    ddp.preflight(load_run_config(TINY, ["sync_bn=true"]), 1)  # one process: plain BatchNorm
    with pytest.raises(BiperError, match="does not split over 3 processes"):
        ddp.preflight(cfg, 3)
    with pytest.raises(BiperError, match="sync_bn: SyncBatchNorm needs CUDA"):
        ddp.preflight(load_run_config(TINY, ["sync_bn=true", "device=cpu"]), 2)


def test_sync_bn_is_a_validated_config_key():
    assert load_run_config(TINY).sync_bn is False
    assert load_run_config(TINY, ["sync_bn=true"]).to_dict()["sync_bn"] is True
    with pytest.raises(ConfigError, match="sync_bn"):
        load_run_config(dict(TINY, sync_bn="yes"))


def test_launcher_argument_checks(env):
    with pytest.raises(BiperError, match="nproc must be a positive integer"):
        ddp.launch(0, ["train", "x"])
    torchrun_env(env)
    with pytest.raises(BiperError, match="already runs under torchrun"):
        ddp.launch(2, ["train", "x"])


def test_cli_nproc_checks_the_config_before_starting_workers(tmp_path, capsys, env):
    import yaml

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    assert main(["train", str(recipe), "--out", str(tmp_path / "r"), "--nproc", "3"]) == 2
    assert "does not split over 3 processes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cli_worker_command_line_round_trips():
    from biper.cli.train import _worker_argv

    parser = build_parser()
    argv = ["train", "r.yaml", "stages.0.lr=0.5", "seed=3", "--data-dir", "d", "--out", "o", "--resume",
            "--max-steps", "3", "--subset", "5", "--quiet", "--nproc", "2"]
    args = parser.parse_args(argv)
    again = parser.parse_args(_worker_argv(args))
    assert again.nproc is None and vars(again) == dict(vars(args), nproc=None)


@pytest.mark.parametrize("n, world", [(96, 2), (95, 2), (100, 4)])
def test_shards_of_a_global_batch_are_the_one_process_batch(n, world):
    """Step b on rank r uses positions r, r + W, ... of the one-process batch b: together the
    ranks see exactly that batch (the padding duplicates aside), so DDP's averaged gradient is
    the one-process gradient; the order changes every epoch and is the same in every rank."""
    ds = make_synthetic("train", num_classes=4, size=4, length=n)
    batch = 8 * world
    single = TensorLoader(ds, batch, train=True, seed=5)
    ranks = [TensorLoader(ds, batch // world, train=True, seed=5, rank=r, world_size=world) for r in range(world)]
    assert all(len(r) == len(single) for r in ranks)
    orders = []
    for epoch in (0, 1):
        for loader in [single, *ranks]:
            loader.set_epoch(epoch)
        whole = single.indices()
        shards = [r.indices() for r in ranks]
        for b in range(len(single)):
            parts = torch.cat([s[b * 8:(b + 1) * 8] for s in shards])   # padding (one sample) last
            real = whole[b * batch:(b + 1) * batch]
            assert sorted(parts[: len(real)].tolist()) == sorted(real.tolist())
            assert len(parts) - len(real) == (-n % world if b == len(single) - 1 else 0)
        flat = torch.cat([s[: r.num_real] for s, r in zip(shards, ranks)])
        assert sorted(flat.tolist()) == list(range(n))  # disjoint, complete without padding
        orders.append(whole)
    assert not torch.equal(orders[0], orders[1])


def test_evaluation_of_each_shard_skips_the_padding():
    torch.manual_seed(0)
    ds = make_synthetic("test", num_classes=4, size=8, length=95)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    cpu = torch.device("cpu")
    full_loss, full_acc = evaluate(model, TensorLoader(ds, 32, train=False), device=cpu)
    parts = [(evaluate(model, loader, device=cpu), loader.num_real)
             for loader in (TensorLoader(ds, 16, train=False, rank=r, world_size=2) for r in (0, 1))]
    assert [n for _, n in parts] == [48, 47]
    loss = sum(metrics[0] * n for metrics, n in parts) / 95
    acc = sum(metrics[1] * n for metrics, n in parts) / 95
    assert loss == pytest.approx(full_loss, rel=1e-6) and acc == pytest.approx(full_acc, rel=1e-12)
