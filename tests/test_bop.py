"""Bop: the update against a sequence computed by hand, the split between Bop and the float
optimizer, the gamma schedule, and exact save / resume (optimizer alone and through the engine)."""

from __future__ import annotations

import io

import pytest
import torch
import yaml

from biper.errors import BiperError
from biper.train import ConfigError, build_optimizer, load_run_config, train
from biper.train import checkpoint as ck
from biper.train.bop import Bop, BopWithFloat, binary_weights
from biper.train.config import StageConfig


def test_update_matches_a_hand_computed_sequence():
    # gamma 1/4, threshold 0.1: m <- 3/4 m + 1/4 g; flip where |m| > 0.1 and sign(m) == sign(w)
    w = torch.nn.Parameter(torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64))
    opt = Bop([w], gamma=0.25, threshold=0.1)
    grads = [[1.0, 1.0, -1.0, 0.2], [0.0, 1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, 1.0]]
    # by hand:
    # 1: m = [.25, .25, -.25, .05]            flip 0 (m+, w+)        -> w = [-1, -1, 1, -1]
    # 2: m = [.1875, .4375, -.4375, -.2125]   flip 3 (m-, w-)        -> w = [-1, -1, 1, 1]
    # 3: m = [-.109375, .078125, -.578125, .090625]  flip 0 (|m| > .1, m-, w-); 1 and 3 under
    #    the threshold, 2 has m- w+                                 -> w = [1, -1, 1, 1]
    expected_m = [[0.25, 0.25, -0.25, 0.05], [0.1875, 0.4375, -0.4375, -0.2125],
                  [-0.109375, 0.078125, -0.578125, 0.090625]]
    expected_w = [[-1.0, -1.0, 1.0, -1.0], [-1.0, -1.0, 1.0, 1.0], [1.0, -1.0, 1.0, 1.0]]
    for g, m, ww in zip(grads, expected_m, expected_w):
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        assert torch.allclose(opt.state[w]["m"], torch.tensor(m, dtype=torch.float64), rtol=0, atol=1e-15)
        assert w.tolist() == ww


def test_flip_keeps_magnitude_and_zero_stays():
    w = torch.nn.Parameter(torch.tensor([0.3, -0.7, 0.0]))
    opt = Bop([w], gamma=1.0, threshold=0.0)
    w.grad = torch.tensor([1.0, -1.0, 1.0])
    opt.step()
    assert w.tolist() == pytest.approx([-0.3, 0.7, 0.0])


def test_gamma_follows_the_lr_schedule():
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = Bop([w], gamma=0.5, threshold=1.0, gamma_schedule="lr", base_lr=0.2)
    opt.param_groups[0]["lr"] = 0.05  # a quarter of the base lr: gamma 0.125
    w.grad = torch.tensor([2.0])
    opt.step()
    assert opt.state[w]["m"].item() == pytest.approx(0.25)
    const = Bop([torch.nn.Parameter(torch.tensor([1.0]))], gamma=0.5, base_lr=0.2)
    const.param_groups[0]["lr"] = 0.05
    assert const.current_gamma(const.param_groups[0]) == 0.5


def _model():
    from biper.models import create_model
    from biper.transform import BinarizeConfig

    torch.manual_seed(0)
    return create_model("mlp", binarize=BinarizeConfig(weight_quantizer="bc"), num_classes=4,
                        in_features=3 * 8 * 8)


def _stage(**kw):
    return StageConfig(epochs=1, lr=0.01, optimizer="bop", weight_decay=1e-4,
                       bop={"gamma": 1e-2, "threshold": 1e-6, **kw})


def test_binary_weights_go_to_bop_and_the_rest_to_the_float_optimizer():
    model = _model()
    opt = build_optimizer(model, _stage())
    assert isinstance(opt, BopWithFloat) and isinstance(opt.float, torch.optim.Adam)
    bop_ids = {id(p) for g in opt.bop.param_groups for p in g["params"]}
    float_ids = {id(p) for g in opt.float.param_groups for p in g["params"]}
    assert bop_ids == {id(p) for p in binary_weights(model)} and bop_ids
    assert not bop_ids & float_ids
    assert bop_ids | float_ids == {id(p) for p in model.parameters()}
    assert isinstance(build_optimizer(model, _stage(float_optimizer="sgd")).float, torch.optim.SGD)


def test_bop_config_errors():
    with pytest.raises(ConfigError, match="bop.gama"):
        _stage(gama=1.0)
    with pytest.raises(ConfigError, match="need optimizer bop"):
        StageConfig(epochs=1, lr=0.1, bop={"gamma": 1e-3})
    with pytest.raises(ConfigError, match="float_optimizer"):
        _stage(float_optimizer="lion")
    from biper.models import create_model

    with pytest.raises(BiperError, match="bop needs binary layers"):
        build_optimizer(create_model("mlp", num_classes=4, in_features=12), _stage())


def _steps(model, opt, batches):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_save_and_resume_equal_an_uninterrupted_run():
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g))
               for _ in range(8)]
    ref_model = _model()
    ref_opt = build_optimizer(ref_model, _stage())
    _steps(ref_model, ref_opt, batches)

    model = _model()
    opt = build_optimizer(model, _stage())
    _steps(model, opt, batches[:4])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _model()
    model2.load_state_dict(saved["model"])
    opt2 = build_optimizer(model2, _stage())
    opt2.load_state_dict(saved["optimizer"])
    _steps(model2, opt2, batches[4:])
    flips = sum(int((a.sign() != b.sign()).sum()) for a, b in zip(binary_weights(_model()), binary_weights(model2)))
    assert flips > 0  # Bop did flip weights
    ref = ref_model.state_dict()
    for key, value in model2.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(ref[key], value), key


TINY = {"model": {"name": "mlp"}, "threads": 1, "checkpoint_every_steps": 1, "keep_checkpoints": 100,
        "data": {"dataset": "synthetic", "batch_size": 16, "eval_batch_size": 128,
                 "options": {"size": 8, "length": 96, "num_classes": 4}},
        "binarize": {"weight_quantizer": "bc"},
        "stages": [{"epochs": 2, "lr": 0.01, "optimizer": "bop", "warmup_epochs": 1,
                    "bop": {"gamma": 1e-3, "gamma_schedule": "lr"}}]}


def test_engine_resume_from_a_mid_run_checkpoint_is_exact(tmp_path):
    path = tmp_path / "bop.yaml"
    path.write_text(yaml.safe_dump(TINY))
    cfg = load_run_config(path)
    out = tmp_path / "run"
    reference = train(cfg, out, quiet=True)
    saved = ck.list_checkpoints(out / "checkpoints")
    assert len(saved) == 12  # 2 epochs x 6 steps
    for _, _, p in saved[5:]:  # as if killed after step 5
        p.unlink()
    (out / "summary.json").unlink()
    (out / "final.pt").unlink()
    resumed = train(cfg, out, resume=True, quiet=True)
    assert resumed["weights_sha256"] == reference["weights_sha256"]
    assert resumed["steps"] == 12


def test_bop_recipe_loads():
    cfg = load_run_config("cifar10-resnet20-bop")
    stage = cfg.stages[0]
    assert stage.optimizer == "bop" and cfg.binarize.weight_quantizer == "bc"
    assert stage.bop["gamma"] == 1e-4 and stage.bop["threshold"] == 1e-8
