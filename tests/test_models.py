"""Every registered model: shapes, gradients, parameter counts, binarization, state dicts.

The registry is the test matrix: each test is parametrized over `list_models()`, so a new model
is tested automatically (and fails loudly until its expectations below are written down).
Parameter counts are checked against closed forms written from SPEC section 2 and against the
papers' figures (within 1%).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.fx as fx
from torch import nn

from biper import BinarizeConfig
from biper.models import create_model, list_models, model_info
from biper.nn import BinaryConv2d, BinaryLinear, is_binary_layer

MODELS = list_models()
BIPER = BinarizeConfig(weight_quantizer="biper", input_quantizer="recu_sign")
SMALL = {"vit_tiny": {"img_size": 16, "patch_size": 4}}
NUM_CLASSES = 7

# Figures of the papers (SPEC section 2; DeiT-Ti: the standard timm/DeiT count).
PAPER_PARAMS = {
    "resnet20_cifar": 0.27e6, "resnet18_cifar": 11.01e6, "vgg_small_cifar": 4.66e6,
    "resnet18_imagenet": 11.69e6, "resnet34_imagenet": 21.81e6,
    "vit_tiny": 5.72e6,
}


def _conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def _resnet_cifar(depths, widths, classes=10):
    n, cin = _conv(3, widths[0], 3) + 2 * widths[0], widths[0]
    for depth, width in zip(depths, widths):
        for _ in range(depth):  # two 3x3 convs + two BNs; option-A shortcut has no parameters
            n += _conv(cin, width, 3) + _conv(width, width, 3) + 4 * width
            cin = width
    return n + 2 * cin + cin * classes + classes  # BN1d + FC


def _resnet_imagenet(depths, classes=1000):
    widths = (64, 128, 256, 512)
    n, cin = _conv(3, 64, 7) + 2 * 64, 64
    for depth, width in zip(depths, widths):
        for _ in range(depth):
            n += _conv(cin, width, 3) + _conv(width, width, 3) + 4 * width
            if cin != width:  # FP 1x1 downsample conv + BN
                n += _conv(cin, width, 1) + 2 * width
            cin = width
    return n + 2 * cin + cin * classes + classes


def _vgg_small(classes=10):
    widths, cin, n = (128, 128, 256, 256, 512, 512), 3, 0
    for w in widths:
        n, cin = n + _conv(cin, w, 3) + 2 * w, w
    return n + 512 * 4 * 4 * classes + classes


def _dense(decoder, head):
    """ResNet-20 encoder (no pool, BN1d, FC) + U-Net up blocks [(Cx, Cs)] + head convs [(cin, cout, k)]."""
    n = _resnet_cifar((3, 3, 3), (16, 32, 64)) - (2 * 64 + 64 * 10 + 10)
    for cx, cs in decoder:  # conv(Cx + Cs -> Cs) + conv(Cs -> Cs), two BNs
        n += _conv(cx + cs, cs, 3) + _conv(cs, cs, 3) + 4 * cs
    return n + sum(_conv(cin, cout, k, bias=True) for cin, cout, k in head)


def _vit(dim, depth, tokens=197, patch=16, classes=1000):
    block = 2 * 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * (dim * 4 * dim) + 4 * dim + dim
    return _conv(3, dim, patch, bias=True) + dim + tokens * dim + depth * block + 2 * dim + dim * classes + classes


CLOSED_FORM = {
    "resnet20_cifar": _resnet_cifar((3, 3, 3), (16, 32, 64)),
    "resnet18_cifar": _resnet_cifar((2, 2, 2, 2), (64, 128, 256, 512)),
    "vgg_small_cifar": _vgg_small(),
    "resnet18_imagenet": _resnet_imagenet((2, 2, 2, 2)),
    "resnet34_imagenet": _resnet_imagenet((3, 4, 6, 3)),
    "vit_tiny": _vit(192, 12),
    "vit_mini": _vit(128, 6, tokens=65, patch=4, classes=10),
    "mlp": 192 * 64 + 2 * 64 * 64 + 3 * 2 * 64 + 64 * 10 + 10,
    "segnet_resnet20": _dense([(64, 32), (32, 16)], [(16, 11, 1)]),
    "centernet_resnet20": _dense([(64, 32)], [(32, 32, 3), (32, 10, 1), (32, 32, 3), (32, 2, 1),
                                              (32, 32, 3), (32, 2, 1)]),
}

# Output shape per sample for the dense models (classifiers: (num_classes,)).
DENSE_OUT = {
    "segnet_resnet20": lambda k, h, w: (k, h, w),
    "centernet_resnet20": lambda k, h, w: (k + 4, h // 4, w // 4),
}


def out_shape(name, x):
    if name in DENSE_OUT:
        return (x.shape[0], *DENSE_OUT[name](NUM_CLASSES, *x.shape[2:]))
    return (x.shape[0], NUM_CLASSES)


def _is_block_3x3(name, m):
    return isinstance(m, nn.Conv2d) and name.startswith("layer") and m.kernel_size == (3, 3)


# Which float layers the papers binarize, written independently of the models' fp_patterns.
INTENDED = {
    "resnet20_cifar": (18, _is_block_3x3),
    "resnet18_cifar": (16, _is_block_3x3),
    "resnet18_imagenet": (16, _is_block_3x3),
    "resnet34_imagenet": (32, _is_block_3x3),
    "vgg_small_cifar": (5, lambda n, m: isinstance(m, nn.Conv2d) and n in {f"conv{i}" for i in range(1, 6)}),
    "vit_tiny": (48, lambda n, m: isinstance(m, nn.Linear) and n.startswith("blocks.")),
    "vit_mini": (24, lambda n, m: isinstance(m, nn.Linear) and n.startswith("blocks.")),
    "mlp": (2, lambda n, m: isinstance(m, nn.Linear) and n in ("body.3", "body.6")),
    "segnet_resnet20": (22, lambda n, m: isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
                        and n.startswith(("encoder.layer", "decoder."))),
    "centernet_resnet20": (20, lambda n, m: isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
                           and n.startswith(("encoder.layer", "up."))),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def input_for(name):
    """Batch 2 (8 for the MLP, whose BN1d sees one value per sample) at a small resolution.

    ImageNet ResNets run at 64x64 so that the last stage is 2x2: at 1x1 with batch 2 every
    BatchNorm sees two values and some BN biases get an exactly zero gradient.
    """
    info = model_info(name)
    side = SMALL[name]["img_size"] if name in SMALL else min(info.input_size[1], 64)
    torch.manual_seed(1)
    return torch.randn(8 if info.dataset == "any" else 2, info.input_size[0], side, side)


@functools.lru_cache(maxsize=None)
def _build(name, binary):
    torch.manual_seed(0)
    return create_model(name, binarize=BIPER if binary else None, num_classes=NUM_CLASSES,
                        **SMALL.get(name, {}))


def built(name, binary):
    """A cached model in training mode with cleared gradients (tests must not mutate it)."""
    model = _build(name, binary)
    model.train()
    model.zero_grad(set_to_none=True)
    return model


def test_registry_has_the_papers_models():
    for name in ("resnet20_cifar", "resnet18_cifar", "vgg_small_cifar", "resnet18_imagenet",
                 "resnet34_imagenet", "vit_tiny"):
        assert name in MODELS
    assert MODELS == sorted(MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count(name):
    assert name in CLOSED_FORM, f"write the closed-form parameter count of {name}"
    model = create_model(name)  # the default configuration (ViTs at 224x224, patch 16)
    count = sum(p.numel() for p in model.parameters())
    assert count == CLOSED_FORM[name]
    assert count == pytest.approx(model_info(name).params, rel=0.01)
    if name in PAPER_PARAMS:
        assert count == pytest.approx(PAPER_PARAMS[name], rel=0.01)


@pytest.mark.parametrize("binary", [False, True], ids=["float", "binary"])
@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_every_parameter_gets_a_gradient(name, binary):
    model = built(name, binary)
    x = input_for(name)
    out = model(x)
    assert out.shape == out_shape(name, x)
    (out * torch.randn_like(out)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_float_model_has_no_binary_layer(name):
    model = built(name, False)
    assert not [n for n, m in model.named_modules() if is_binary_layer(m)]
    assert model.binarize_report is None


@pytest.mark.parametrize("name", MODELS)
def test_binarize_converts_exactly_the_intended_layers(name):
    assert name in INTENDED, f"write down which layers of {name} the papers binarize"
    count, intended = INTENDED[name]
    float_model, binary_model = built(name, False), built(name, True)
    expected = {n for n, m in float_model.named_modules() if intended(n, m)}
    assert len(expected) == count
    got = {n for n, m in binary_model.named_modules() if is_binary_layer(m)}
    assert got == expected
    assert {n for n, *_ in binary_model.binarize_report.converted} == expected
    # Nothing else changed: same module names, and non-binary modules keep their type.
    float_modules, binary_modules = dict(float_model.named_modules()), dict(binary_model.named_modules())
    assert set(float_modules) <= set(binary_modules)
    for n, m in float_modules.items():
        b = binary_modules[n]
        if n in expected:
            assert isinstance(b, BinaryConv2d if isinstance(m, nn.Conv2d) else BinaryLinear)
            assert b.weight.shape == m.weight.shape
        elif n:
            assert type(b) is type(m), n


@pytest.mark.parametrize("name", MODELS)
def test_binarized_state_dict_loads_strictly_into_a_fresh_model(name):
    source = copy.deepcopy(built(name, True))
    x = input_for(name)
    with torch.no_grad():
        source(x)  # move BN running statistics away from their initial values
        for n, p in source.named_parameters():
            if n.endswith("alpha"):
                p.mul_(0.5).add_(0.25)
    torch.manual_seed(123)
    fresh = create_model(name, binarize=BIPER, num_classes=NUM_CLASSES, **SMALL.get(name, {}))
    result = fresh.load_state_dict(source.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    source.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), source(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_does_not_change_the_float_model(name):
    model = copy.deepcopy(built(name, False)).eval()
    x = input_for(name)
    with torch.no_grad():
        reference = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    scale = reference.abs().max().item()
    torch.testing.assert_close(out, reference, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("name", MODELS)
def test_binary_model_trains_in_channels_last_under_bf16_autocast(name):
    model = copy.deepcopy(built(name, True)).to(memory_format=torch.channels_last)
    x = input_for(name).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == out_shape(name, x) and out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    out.float().sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


class _Tracer(fx.Tracer):
    """Symbolic tracer that keeps binary layers as leaves (their quantizers are not traced)."""

    def is_leaf_module(self, m, qualname):
        return is_binary_layer(m) or super().is_leaf_module(m, qualname)


@pytest.mark.parametrize("binary", [False, True], ids=["float", "binary"])
@pytest.mark.parametrize("name", MODELS)
def test_conv_bn_pairs_match_the_traced_graph(name, binary):
    """Reference: in the fx graph, every conv/linear whose single user is a BatchNorm."""
    model = built(name, binary)
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    found = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], (nn.Conv2d, nn.Linear)):
            continue
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module" and \
                isinstance(modules[users[0].target], nn.modules.batchnorm._BatchNorm):
            found.add((node.target, users[0].target))
    pairs = model.conv_bn_pairs()
    assert len(pairs) == len(set(pairs))
    assert set(pairs) == found
    binary_convs = {n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)}
    assert binary_convs <= {c for c, _ in pairs}  # every binary conv folds into its BN
