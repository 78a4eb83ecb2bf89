"""`ModelSpec`: frozen, JSON round trip, builds the same model as `create_model`, written into
checkpoints and packed files, and derived from the older checkpoint layouts in one place."""

import dataclasses
import json

import pytest
import torch

from biper import BiperError, BinarizeConfig
from biper.analysis.report import load_layers
from biper.deploy import export_checkpoint, export_model, load_packed
from biper.models import ModelSpec, create_model, list_models
from biper.train import build_model_from_config, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name", list_models())
def test_json_round_trip_and_build_over_the_registry(name):
    spec = ModelSpec(name, 5, {}, BinarizeConfig(weight_quantizer="bc"))
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and isinstance(again.binarize, BinarizeConfig)
    with torch.device("meta"):
        built, direct = spec.build(), create_model(name, num_classes=5, binarize=BinarizeConfig(weight_quantizer="bc"))
    assert built.model_config == direct.model_config == built.model_spec.to_dict()
    assert list(built.state_dict()) == list(direct.state_dict())


def test_frozen_and_validated():
    spec = ModelSpec("mlp", 3, {"hidden": 8})
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "vit_tiny"
    with pytest.raises(BiperError, match="num_classes must be a positive integer"):
        ModelSpec("mlp", 0)
    with pytest.raises(BiperError, match="kwargs must be a mapping"):
        ModelSpec("mlp", 3, [1])
    with pytest.raises(BiperError, match="unknown model spec key 'nmae'"):
        ModelSpec.from_dict({"name": "mlp", "nmae": 1})
    with pytest.raises(BiperError, match="not valid JSON"):
        ModelSpec.from_json("{")


def test_rebuilt_spec_is_idempotent():
    # create_model adds the model's fp_patterns to exclude; rebuilding from that spec adds nothing
    model = create_model("resnet18_imagenet", binarize=BinarizeConfig(), num_classes=4)
    again = model.model_spec.build()
    assert again.model_spec == model.model_spec


def _mlp():
    torch.manual_seed(0)
    return create_model("mlp", num_classes=3, binarize=BinarizeConfig(weight_quantizer="pc"),
                        in_features=48, hidden=8)


@pytest.mark.parametrize("layout", ["current", "config.model_config", "config.model"])
def test_old_checkpoint_layouts_still_rebuild(tmp_path, layout):
    model = _mlp()
    spec = model.model_spec.to_dict()
    if layout == "current":
        payload = {"model": model.state_dict(), "model_config": spec, "config": {}}
    elif layout == "config.model_config":
        payload = {"model": model.state_dict(), "config": {"model_config": spec}}
    else:  # the run config's model section, with the run's binarize beside it
        payload = {"model": model.state_dict(),
                   "config": {"model": {k: spec[k] for k in ("name", "num_classes", "kwargs")},
                              "binarize": spec["binarize"]}}
    assert ModelSpec.from_checkpoint(payload) == model.model_spec
    path = save_checkpoint(tmp_path / "c.pt", payload)
    rebuilt = build_model_from_config(load_checkpoint(path)).eval()
    x = torch.randn(4, 3, 4, 4)
    torch.testing.assert_close(rebuilt(x), model.eval()(x), rtol=0, atol=0)
    info = export_checkpoint(path, tmp_path / "m.biper")
    header = load_packed(info.path).packed_meta
    assert ModelSpec.from_dict(header["model"]) == model.model_spec
    specs, where = load_layers(path)
    assert where["source"] == "model" and [s.quantizer.name for s in specs] == ["pc", "pc"]


def test_packed_file_stores_the_spec(tmp_path):
    model = _mlp()
    export_model(model, tmp_path / "m.biper")
    assert ModelSpec.from_dict(load_packed(tmp_path / "m.biper").packed_meta["model"]) == model.model_spec
    assert json.loads(model.model_spec.to_json())["binarize"]["weight_quantizer"] == "pc"


def test_analysis_verifies_the_checksum(tmp_path):
    model = _mlp()
    path = save_checkpoint(tmp_path / "c.pt", {"model": model.state_dict(), "model_config": model.model_config})
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"][next(iter(ckpt["model"]))] += 1.0          # tamper, keep the old checksum
    torch.save(ckpt, path)
    with pytest.raises(BiperError, match="checksum mismatch"):
        load_layers(path)
