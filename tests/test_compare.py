"""`biper compare` on a tiny synthetic dataset: files written, every seed's number equal to
its run's summary.json, resume after an interruption repeats nothing; method resolution and
the budget split."""

from __future__ import annotations

import csv
import json
import os
import signal

import pytest
import yaml

from biper.cli import main
from biper.errors import BiperError
from biper.train import load_run_config
from biper.train import compare as cmp
from biper.train.stops import TrainingInterrupted

TINY = {"model": {"name": "mlp"}, "threads": 1, "checkpoint_every_steps": 1,
        "data": {"dataset": "synthetic", "batch_size": 32, "eval_batch_size": 128, "augment": False,
                 "options": {"size": 8, "length": 128, "num_classes": 4}},
        "binarize": {"weight_quantizer": "bc"},
        "stages": [{"name": "train", "epochs": 10, "lr": 0.05, "warmup_epochs": 1}]}


@pytest.fixture()
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


def _summary(out, name):
    return json.loads((out / "runs" / name / "summary.json").read_text())


def test_two_methods_two_seeds_report_matches_runs(recipe, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(recipe), "--methods", "bnn,fp", "--seeds", "0,1", "--epochs", "2",
                 "--out", str(out), "--quiet", "stages.0.lr=0.02"])
    assert code == 0
    printed = capsys.readouterr().out
    for i, (m, s) in enumerate([("bnn", 0), ("fp", 0), ("bnn", 1), ("fp", 1)], 1):
        assert f"run {i}/4: {m} seed {s}" in printed
    for name in ("results.md", "results.csv", "results.json", "curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4
    for row in rows:
        summary = _summary(out, f"{row['method']}-seed{row['seed']}")
        assert float(row["final_test_acc"]) == summary["final_test_acc"]
        assert float(row["best_test_acc"]) == summary["best_test_acc"]
        m = results["methods"][row["method"]]
        assert m["final_test_acc"]["seeds"][row["seed"]] == summary["final_test_acc"]
        assert m["best_test_acc"]["seeds"][row["seed"]] == summary["best_test_acc"]
        assert summary["epochs"] == 2
        cfg = yaml.safe_load((out / "runs" / f"{row['method']}-seed{row['seed']}" / "config.yaml").read_text())
        assert cfg["seed"] == int(row["seed"]) and cfg["stages"][0]["lr"] == 0.02
        assert (cfg["binarize"] is None) == (row["method"] == "fp")
    for name, m in results["methods"].items():
        vals = list(m["final_test_acc"]["seeds"].values())
        assert m["final_test_acc"]["mean"] == pytest.approx(sum(vals) / 2)
        assert m["final_test_acc"]["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
        md = (out / "results.md").read_text()
        assert f"{m['final_test_acc']['mean']:.2f} ± {m['final_test_acc']['std']:.2f}" in md
    # seeds differ, methods differ: the runs are not copies of each other
    assert len({_summary(out, f"{m}-seed{s}")["weights_sha256"] for m in ("bnn", "fp") for s in (0, 1)}) == 4
    # the packed size: 1 bit per binary weight, float for the rest; fp is 32 bits everywhere
    assert results["methods"]["bnn"]["size_kib"] < results["methods"]["fp"]["size_kib"]


def test_interrupted_comparison_resumes_and_repeats_nothing(recipe, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cmp"
    args = (str(recipe), ["bnn", "bc"], [0, 1], out)
    reference = cmp.compare(*args, epochs=2, plot=False, quiet=True, overrides=[])
    ref_sha = {r["run_dir"].rsplit("/", 1)[-1]: _summary(out, r["run_dir"].rsplit("/", 1)[-1])["weights_sha256"]
               for r in reference["runs"]}

    out2 = tmp_path / "cmp2"
    real_train, calls = cmp.train, []

    def interrupting_train(cfg, folder, *, resume, quiet):
        calls.append((folder.name, resume))
        if len(calls) == 3:  # third run: stop after a few steps as a SIGINT would
            from biper.train import engine

            real_step = engine.Trainer._step
            def step(self, s, step, *a):
                if self.global_step == 3:
                    self.signals.signum = signal.SIGINT
                return real_step(self, s, step, *a)
            monkeypatch.setattr(engine.Trainer, "_step", step)
            try:
                return real_train(cfg, folder, resume=resume, quiet=quiet)
            finally:
                monkeypatch.setattr(engine.Trainer, "_step", real_step)
        return real_train(cfg, folder, resume=resume, quiet=quiet)

    monkeypatch.setattr(cmp, "train", interrupting_train)
    with pytest.raises(TrainingInterrupted):
        cmp.compare(str(recipe), ["bnn", "bc"], [0, 1], out2, epochs=2, plot=False, quiet=True)
    assert calls == [("bnn-seed0", False), ("bc-seed0", False), ("bnn-seed1", False)]
    calls.clear()
    capsys.readouterr()
    again = cmp.compare(str(recipe), ["bnn", "bc"], [0, 1], out2, epochs=2, plot=False, quiet=True)
    # finished runs are read, the interrupted one resumes, the last one starts fresh
    assert calls == [("bnn-seed1", True), ("bc-seed1", False)]
    assert "run 1/4: bnn seed 0 (finished earlier, not repeated)" in capsys.readouterr().out
    for run in again["runs"]:
        name = run["run_dir"].rsplit("/", 1)[-1]
        assert _summary(out2, name)["weights_sha256"] == ref_sha[name]  # resume is exact
    calls.clear()
    cmp.compare(str(recipe), ["bnn", "bc"], [0, 1], out2, epochs=2, plot=False, quiet=True)
    assert calls == []
    with pytest.raises(BiperError, match="finished run of another config"):
        cmp.compare(str(recipe), ["bnn"], [0], out2, epochs=2, plot=False, quiet=True,
                    overrides=["stages.0.lr=0.5"])


def test_split_budget():
    assert cmp.split_budget([600, 300], 6) == [4, 2]
    assert cmp.split_budget([600, 300], 5) == [3, 2]
    assert cmp.split_budget([8, 5], 13) == [8, 5]
    assert cmp.split_budget([1], 7) == [7]
    assert cmp.split_budget([600, 300], 2) == [1, 1]
    for total in range(2, 40):
        parts = cmp.split_budget([600, 300], total)
        assert sum(parts) == total and min(parts) >= 1
    with pytest.raises(BiperError, match="cannot be split over 2 stages"):
        cmp.split_budget([600, 300], 1)


def test_methods_on_the_resnet20_baseline_recipe():
    base = "cifar10-resnet20-bc"
    biper, source = cmp.method_config(base, cmp.resolve_method("biper"))
    assert "cifar10-resnet20-biper" in source and [s["name"] for s in biper["stages"]] == ["sine", "square"]
    cmp._apply_budget(biper, 6, None)
    cfg = load_run_config(biper)
    assert [s.epochs for s in cfg.stages] == [4, 2]
    assert cfg.stages[0].warmup_epochs == pytest.approx(5 * 4 / 600)
    bop, source = cmp.method_config(base, cmp.resolve_method("bop"))
    assert load_run_config(bop).stages[0].optimizer == "bop"
    q, _ = cmp.method_config("cifar10-resnet20-biper-cpu", cmp.resolve_method("bnn++"))
    cfg = load_run_config(q)
    assert cfg.binarize.weight_quantizer == "bnn++"
    assert cfg.stage_binarize(0).weight_quantizer == "bnn++" and cfg.stage_binarize(1).weight_params == {}
    same, source = cmp.method_config("cifar10-resnet20-biper-cpu", cmp.resolve_method("biper"))
    assert "biper-cpu" in source and [s["epochs"] for s in same["stages"]] == [10, 3]
    fp, _ = cmp.method_config(base, cmp.resolve_method("fp"))
    assert load_run_config(fp).binarize is None
    with pytest.raises(BiperError, match="unknown method 'bnnn'.*did you mean"):
        cmp.resolve_method("bnnn")


def test_deployed_bits_equal_the_summary_memory():
    import biper
    from biper.deploy import summarize

    model = biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig())
    assert cmp.deployed_bits(model) == summarize(model, (3, 32, 32)).memory_bits
