"""binarize_ on a ResNet-like model, an MLP and a ViT-like block; BinarizeConfig round trips."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import biper
from biper.errors import BiperError
from biper.nn import BinaryConv2d, BinaryLinear, binary_layers


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.act = nn.Hardtanh()

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)) + x)
        return self.act(self.bn2(self.conv2(x)) + x)


class TinyResNet(nn.Module):
    def __init__(self, c=8, classes=4):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.layer1 = nn.Sequential(Block(c), Block(c))
        self.downsample = nn.Conv2d(c, 2 * c, 1, stride=2, bias=False)
        self.layer2 = Block(2 * c)
        self.fc = nn.Linear(2 * c, classes)

    def forward(self, x):
        x = self.layer2(self.downsample(self.layer1(self.bn(self.stem(x)))))
        return self.fc(x.mean(dim=(2, 3)))


def mlp():
    layers = []
    for fan_in in (20, 64, 64):
        layers += [nn.Linear(fan_in, 64), nn.BatchNorm1d(64), nn.Hardtanh()]
    return nn.Sequential(*layers, nn.Linear(64, 3))


def one_step_lowers_loss(model, x, y, lr):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    loss0 = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = nn.functional.cross_entropy(model(x), y)
    return loss0.item(), loss1.item()


@pytest.mark.parametrize("wq", ["biper", "bc", "bnn++"])
def test_resnet_like_converts_the_right_layers_and_trains(wq):
    torch.manual_seed(0)
    model = TinyResNet()
    report = biper.binarize_(model, biper.BinarizeConfig(weight_quantizer=wq, exclude=("downsample",)))
    converted = [n for n, *_ in report.converted]
    assert converted == [f"layer1.{i}.conv{j}" for i in (0, 1) for j in (1, 2)] + ["layer2.conv1", "layer2.conv2"]
    assert type(model.stem) is nn.Conv2d and type(model.fc) is nn.Linear and type(model.downsample) is nn.Conv2d
    assert dict(report.skipped)["downsample"] == "excluded by 'downsample'"
    assert all(isinstance(m, BinaryConv2d) for _, m in binary_layers(model))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))
    before, after = one_step_lowers_loss(model, x, y, lr=0.05)
    assert after < before


def test_mlp_keeps_first_and_last_and_trains():
    torch.manual_seed(0)
    model = mlp()
    report = biper.binarize_(model, {"weight_quantizer": "biper", "input_quantizer": "approx_sign"})
    assert [n for n, *_ in report.converted] == ["3", "6"]
    assert type(model[0]) is nn.Linear and type(model[9]) is nn.Linear
    assert isinstance(model[3], BinaryLinear) and model[3].input_quantizer.name == "approx_sign"
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    before, after = one_step_lowers_loss(model, x, y, lr=0.01)
    assert after < before


def test_binarize_is_in_place_and_keeps_latent_weights():
    model = mlp()
    w = model[3].weight.detach().clone()
    out = biper.binarize_(model, biper.BinarizeConfig(keep_first=False, keep_last=False))
    assert isinstance(out, biper.BinarizeReport)
    assert isinstance(model[0], BinaryLinear) and isinstance(model[9], BinaryLinear)
    assert torch.equal(model[3].weight, w)


def test_vit_like_linears_with_include_patterns():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 16), layer, nn.Linear(16, 5))
    report = biper.binarize_(model, biper.BinarizeConfig(include=("1.linear*",), input_quantizer=None))
    assert [n for n, *_ in report.converted] == ["1.linear1", "1.linear2"]
    assert model(torch.randn(2, 7, 8)).shape == (2, 7, 5)


def test_patterns_that_match_nothing_are_errors():
    with pytest.raises(BiperError, match="pattern 'layer9.*' matched no Conv2d/Linear layer"):
        biper.binarize_(TinyResNet(), biper.BinarizeConfig(include=("layer9.*",)))
    with pytest.raises(BiperError, match="no layer to convert"):
        biper.binarize_(nn.Sequential(nn.Linear(3, 3)), biper.BinarizeConfig())


def test_config_round_trips_through_json():
    cfg = biper.BinarizeConfig(weight_quantizer="bnn++", weight_params={"mu": {"schedule": "exp", "start": 2, "end": 50}},
                               input_quantizer="rsign", scaling="mean_abs", pad_value=1.0,
                               include=("layer*",), exclude=("*.downsample*",), keep_last=False)
    text = cfg.to_json()
    back = biper.BinarizeConfig.from_json(text)
    assert back == cfg and json.loads(text)["include"] == ["layer*"]
    with pytest.raises(Exception):
        cfg.scaling = "none"  # frozen


@pytest.mark.parametrize(
    "data,message",
    [
        ({"weight_quantiser": "bc"}, "unknown binarize config key 'weight_quantiser'.*did you mean 'weight_quantizer'"),
        ({"weight_quantizer": "sign"}, "unknown quantizer 'sign'"),
        ({"weight_quantizer": "approx_sign"}, "is an activation quantizer"),
        ({"input_quantizer": "biper"}, "is a weight quantizer"),
        ({"weight_params": {"omega0": 0}}, "omega0 must be > 0"),
        ({"scaling": "learned"}, "scaling must be one of"),
        ({"keep_first": "yes"}, "keep_first must be true or false"),
        ({"include": [1]}, "include must be a list of strings"),
        ({"layer_types": ["conv1d"]}, "layer_types entries must be in conv2d, linear"),
        ({"input_quantizer": None, "input_params": {"clip": 1}}, "input_params given but input_quantizer is null"),
    ],
)
def test_config_validation_messages(data, message):
    with pytest.raises(BiperError, match=message):
        biper.BinarizeConfig.from_dict(data)
