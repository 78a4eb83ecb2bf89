"""Model zoo details: registry errors and options, block wiring against the SPEC's formulas,
option-A shortcut, VGG pool/BN order, ViT attention against a naive reference."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biper import BiperError, BinarizeConfig, BinarizeReport
from biper.models import PadShortcut, create_model, list_models, model_info
from biper.models.resnet_cifar import BasicBlock, BiRealBlock
from biper.models.resnet_imagenet import BiRealBasicBlock
from biper.models.vit import Attention
from biper.nn import BinaryConv2d, BinaryLinear, is_binary_layer


pytestmark = pytest.mark.usefixtures("one_thread")


def _binary_names(model):
    return {n for n, m in model.named_modules() if is_binary_layer(m)}


def _randomize_bn_(module, seed=0, positive=True):
    """Random affine parameters and running statistics for every BatchNorm (eval-mode tests)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5 if positive else torch.randn(c, generator=g))
                m.bias.copy_(0.3 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return module


# -- registry -------------------------------------------------------------------------------

def test_unknown_model_lists_the_valid_names_with_a_suggestion():
    with pytest.raises(BiperError, match=r"unknown model 'resnet20_cifr'.*did you mean 'resnet20_cifar'.*valid: "):
        create_model("resnet20_cifr")
    with pytest.raises(BiperError, match="unknown model"):
        model_info("resnet50")


def test_bad_options_are_one_line_errors():
    with pytest.raises(BiperError, match=r"no option 'actt'.*did you mean 'act'"):
        create_model("resnet20_cifar", actt="relu")
    with pytest.raises(BiperError, match="act must be one of hardtanh, relu"):
        create_model("resnet20_cifar", act="gelu")
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(BiperError, match="num_classes must be a positive integer"):
            create_model("mlp", num_classes=bad)
    with pytest.raises(BiperError, match="binarize must be None, True, a BinarizeConfig or a dict"):
        create_model("mlp", binarize="biper")
    with pytest.raises(BiperError, match="unknown binarize config key 'weight_quantiser'"):
        create_model("mlp", binarize={"weight_quantiser": "bc"})
    with pytest.raises(BiperError, match="img_size 30 must be a multiple of patch_size 4"):
        create_model("vit_tiny", img_size=30, patch_size=4)


def test_model_info_and_default_classes():
    info = model_info("resnet18_imagenet")
    assert (info.dataset, info.input_size, info.num_classes) == ("imagenet", (3, 224, 224), 1000)
    assert model_info("vgg_small_cifar").input_size == (3, 32, 32)
    assert all(model_info(n).description for n in list_models())
    model = create_model("resnet20_cifar")
    assert model.fc.out_features == model_info("resnet20_cifar").num_classes == 10
    assert create_model("resnet20_cifar", num_classes=100).fc.out_features == 100


def test_binarize_accepts_true_dict_and_config_alike():
    reference = create_model("resnet20_cifar", binarize=BinarizeConfig())
    for spec in (True, {}, BinarizeConfig().to_dict()):
        model = create_model("resnet20_cifar", binarize=spec)
        assert isinstance(model.binarize_report, BinarizeReport)
        assert _binary_names(model) == _binary_names(reference)


def test_user_patterns_merge_with_the_models_fp_patterns():
    config = BinarizeConfig(exclude=("layer1.*",))
    model = create_model("resnet18_imagenet", binarize=config)
    assert config.exclude == ("layer1.*",)  # the caller's config is untouched
    binary = _binary_names(model)
    assert not any(n.startswith("layer1.") or "downsample" in n for n in binary)
    assert len(binary) == 16 - 4
    assert model.model_config["binarize"]["exclude"] == ["layer1.*", "*downsample*"]


def test_keep_first_false_binarizes_the_stem_too():
    model = create_model("resnet20_cifar", binarize=BinarizeConfig(keep_first=False))
    assert isinstance(model.conv1, BinaryConv2d) and type(model.fc) is nn.Linear
    assert len(_binary_names(model)) == 19


def test_model_config_rebuilds_the_same_model():
    torch.manual_seed(0)
    model = create_model("resnet20_cifar", binarize=BinarizeConfig(weight_params={"omega0": 30.0}),
                         num_classes=4, act="relu")
    spec = model.model_config
    assert spec["name"] == "resnet20_cifar" and spec["kwargs"] == {"act": "relu"}
    again = create_model(spec["name"], binarize=spec["binarize"], num_classes=spec["num_classes"],
                         **spec["kwargs"])
    again.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(again.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert again.layer1[0].conv1.weight_quantizer.omega0 == 30.0


def test_act_switches_every_block_nonlinearity():
    relu = create_model("resnet20_cifar", act="relu")
    kinds = {type(m) for m in relu.modules()}
    assert nn.ReLU in kinds and nn.Hardtanh not in kinds
    assert isinstance(create_model("resnet20_cifar").act, nn.Hardtanh)       # stem activation
    assert isinstance(create_model("resnet18_cifar").act, nn.Identity)       # none after stem


# -- blocks against the SPEC's formulas ---------------------------------------------------------

def test_pad_shortcut_is_avgpool_plus_zero_channels():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    pooled = (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) / 4
    zeros = torch.zeros(2, 8, 4, 4)
    torch.testing.assert_close(y, torch.cat([zeros, pooled, zeros], 1))
    odd = PadShortcut(3, 8, stride=1)(x[:, :3])
    assert odd.shape == (2, 8, 8, 8) and torch.equal(odd[:, 2:5], x[:, :3])
    assert not list(PadShortcut(16, 32).parameters())
    with pytest.raises(BiperError, match="cannot shrink"):
        PadShortcut(32, 16)


def _bn(bn, x):
    return (x - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps) \
        * bn.weight[:, None, None] + bn.bias[:, None, None]


def _conv(conv, x):
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding)


def test_resnet20_block_has_a_shortcut_around_each_conv():
    block = _randomize_bn_(BiRealBlock(16, 32, stride=2)).eval()
    x = torch.randn(2, 16, 8, 8)
    short = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 8, 8))
    h = F.hardtanh(_bn(block.bn1, _conv(block.conv1, x)) + short)
    y = F.hardtanh(_bn(block.bn2, _conv(block.conv2, h)) + h)
    torch.testing.assert_close(block(x), y)


def test_resnet18_cifar_block_has_one_shortcut():
    block = _randomize_bn_(BasicBlock(64, 128, stride=2)).eval()
    x = torch.randn(2, 64, 8, 8)
    short = F.pad(F.avg_pool2d(x, 2), (0, 0, 0, 0, 32, 32))
    h = F.hardtanh(_bn(block.bn1, _conv(block.conv1, x)))
    y = F.hardtanh(_bn(block.bn2, _conv(block.conv2, h)) + short)
    torch.testing.assert_close(block(x), y)


def test_imagenet_block_downsample_is_a_1x1_stride2_conv_with_bn():
    block = _randomize_bn_(BiRealBasicBlock(64, 128, stride=2)).eval()
    down_conv, down_bn = block.downsample
    assert down_conv.kernel_size == (1, 1) and down_conv.stride == (2, 2)
    x = torch.randn(2, 64, 8, 8)
    h = F.hardtanh(_bn(block.bn1, _conv(block.conv1, x)) + _bn(down_bn, _conv(down_conv, x)))
    y = F.hardtanh(_bn(block.bn2, _conv(block.conv2, h)) + h)
    torch.testing.assert_close(block(x), y)
    assert isinstance(BiRealBasicBlock(64, 64).downsample, nn.Identity)


def test_imagenet_resnet_keeps_downsample_stem_and_fc_full_precision():
    model = create_model("resnet18_imagenet", binarize=True)
    downsample = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" in n]
    assert len(downsample) == 3
    assert all(type(model.get_submodule(n)) is nn.Conv2d for n in downsample)
    assert type(model.conv1) is nn.Conv2d and type(model.fc) is nn.Linear
    assert isinstance(model.bn2, nn.BatchNorm1d)


@pytest.mark.parametrize("positive", [True, False])
def test_vgg_pool_and_bn_orders_agree_exactly_when_bn_scales_are_positive(positive):
    torch.manual_seed(0)
    bn_first = _randomize_bn_(create_model("vgg_small_cifar"), positive=positive).eval()
    pool_first = create_model("vgg_small_cifar", pool_before_bn=True).eval()
    pool_first.load_state_dict(bn_first.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        same = torch.allclose(bn_first(x), pool_first(x), rtol=1e-4, atol=1e-5)
    assert same == positive
    assert ("conv1", "bn1") not in pool_first.conv_bn_pairs()
    assert [c for c, _ in pool_first.conv_bn_pairs()] == ["conv0", "conv2", "conv4"]


# -- ViT --------------------------------------------------------------------------------------

def test_attention_matches_a_naive_softmax_reference():
    torch.manual_seed(0)
    attn = Attention(12, num_heads=3)
    x = torch.randn(2, 5, 12)  # (B, N, D)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    heads = []
    for h in range(3):
        s = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(4), dim=-1)
        heads.append(weights @ v[..., s])
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, -1)), rtol=1e-5, atol=1e-6)


def test_vit_binarizes_only_block_linears_weight_only():
    config = dataclasses.replace(BinarizeConfig(), input_quantizer=None)
    vit = create_model("vit_tiny", binarize=config, num_classes=10, img_size=32, patch_size=4)
    binary = _binary_names(vit)
    assert len(binary) == 48
    assert {n.split(".", 2)[2] for n in binary} == {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}
    assert all(isinstance(vit.get_submodule(n), BinaryLinear) for n in binary)
    assert all(vit.get_submodule(n).input_quantizer is None for n in binary)
    assert type(vit.patch_embed) is nn.Conv2d and type(vit.head) is nn.Linear
    assert sum(isinstance(m, nn.LayerNorm) for m in vit.modules()) == 25
    assert vit.pos_embed.shape == (1, 65, 192)
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 10)
