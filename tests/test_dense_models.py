"""Dense models (`segnet_resnet20`, `centernet_resnet20`): shapes, gradients, every weight
quantizer, and deployment.

The packed model is checked like the W1A1 classifiers in test_deploy_equivalence.py: each
packed layer, fed the input the training-time layer saw, gives integer accumulations equal
(atol=0) to an independent float64 convolution of the +-1 tensors from the layer's own
quantizers, and the whole packed model's output equals the training model's up to the float
rounding of the folded BatchNorms.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from biper import BinarizeConfig
from biper.checkpoint_file import save_checkpoint
from biper.cli import main
from biper.deploy import export_model, load_packed, pack_model
from biper.deploy.modules import PackedConv2d
from biper.deploy.verify import compare_models, deployed_copy
from biper.models import create_model, model_info
from biper.models.detection import centernet_loss
from biper.nn import BinaryConv2d, is_binary_layer
from biper.quantizers import list_quantizers

DENSE = ["segnet_resnet20", "centernet_resnet20"]
W1A1 = BinarizeConfig(weight_quantizer="biper", input_quantizer="recu_sign")

pytestmark = pytest.mark.usefixtures("one_thread")


def _boxes(b):
    rows = torch.tensor([[1, 2, 3, 14, 12], [4, 6, 1, 16, 9], [-1, 0, 0, 0, 0]], dtype=torch.float32)
    return rows.expand(b, 3, 5).clone()


def _loss(name, model, x):
    out = model(x)
    if name == "segnet_resnet20":
        y = torch.randint(0, out.shape[1], (x.shape[0], *x.shape[2:]), generator=torch.Generator().manual_seed(0))
        return F.cross_entropy(out, y)
    return centernet_loss(out, _boxes(x.shape[0]), stride=model.stride)[0]


@pytest.mark.parametrize("name", DENSE)
def test_output_layout(name):
    info = model_info(name)
    assert info.dataset == "scenes" and info.input_size == (3, 64, 64)
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 48))
    if name == "segnet_resnet20":
        assert out.shape == (2, 5, 32, 48)
    else:
        assert model.stride == 4 and out.shape == (2, 9, 8, 12)
        heads = model.heads
        assert torch.all(heads["heatmap"][2].bias == -2.19) and torch.all(heads["size"][2].bias == 0)
    assert sum(p.numel() for p in create_model(name).parameters()) == info.params


@pytest.mark.parametrize("binary", [False, True], ids=["float", "w1a1"])
@pytest.mark.parametrize("name", DENSE)
def test_task_loss_reaches_every_parameter(name, binary):
    torch.manual_seed(0)
    model = create_model(name, binarize=W1A1 if binary else None).train()
    x = torch.randn(2, 3, 32, 32)
    _loss(name, model, x).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("weight", list_quantizers("weight"))
@pytest.mark.parametrize("name", DENSE)
def test_every_weight_quantizer_builds_w1a1(name, weight):
    model = create_model(name, binarize=BinarizeConfig(weight_quantizer=weight, input_quantizer="ste_sign"))
    binary = [n for n, m in model.named_modules() if is_binary_layer(m)]
    assert len(binary) == (22 if name == "segnet_resnet20" else 20)
    assert not any(n.startswith(("head", "encoder.conv1")) for n in binary)
    x = torch.randn(2, 3, 16, 16)
    loss = _loss(name, model, x)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(model.get_submodule(n).weight.grad is not None for n in binary)


def _randomized(name, weight, act, seed=0):
    """A W1A1 model with random BatchNorm statistics, affines and scales (eval mode)."""
    torch.manual_seed(seed)
    model = create_model(name, binarize=BinarizeConfig(weight_quantizer=weight, input_quantizer=act))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.normal_(1, 0.3, generator=gen)
                m.bias.normal_(0, 0.3, generator=gen)
            elif is_binary_layer(m):
                if m.alpha is not None:
                    m.alpha.uniform_(0.2, 2.0, generator=gen)
                if hasattr(m.input_quantizer, "threshold"):
                    m.input_quantizer.threshold.normal_(0, 0.2, generator=gen)
    return model.eval()


def _inputs_of(model, names, x):
    seen = {}
    hooks = [model.get_submodule(n).register_forward_hook(
        lambda m, args, out, n=n: seen.__setitem__(n, args[0].detach().clone())) for n in names]
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    return seen, out


CASES = [("segnet_resnet20", "biper", "recu_sign"), ("segnet_resnet20", "bc", "rsign"),
         ("segnet_resnet20", "bnn++", "ste_sign"), ("centernet_resnet20", "biper", "approx_sign")]


@pytest.mark.parametrize("name,weight,act", CASES)
def test_packed_model_equals_training_model(name, weight, act):
    model = _randomized(name, weight, act)
    reference, _ = deployed_copy(model)
    packed, report = pack_model(model)
    binary = [n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
    assert sorted(n for n, _ in report.packed) == sorted(binary) and len(report.folded) == len(binary)
    # same module tree: binary convs became packed ones, their BatchNorms identities, nothing else
    trained = {n: m for n, m in model.named_modules() if not n.startswith(tuple(b + "." for b in binary))}
    deployed = dict(packed.named_modules())  # (the binary layers' quantizer submodules are gone)
    assert set(trained) == set(deployed)
    folded = {bn for _, bn in report.folded}
    for n, m in trained.items():
        want = PackedConv2d if n in binary else nn.Identity if n in folded else type(m)
        assert type(deployed[n]) is want, n
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    inputs, want = _inputs_of(reference, binary, x)
    for n in binary:
        layer, xin = reference.get_submodule(n), inputs[n]
        xq = F.pad(layer.input_quantizer.binary(xin).double(), (1, 1, 1, 1))  # zero padding
        acc = F.conv2d(xq, layer.weight_quantizer.binary(layer.weight).double(), stride=layer.stride)
        got = packed.get_submodule(n).accumulate(xin)
        assert got.dtype == torch.int32
        torch.testing.assert_close(got.double(), acc, atol=0, rtol=0, msg=n)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", DENSE)
def test_export_load_packed_round_trip(name, tmp_path):
    model = _randomized(name, "biper", "recu_sign", seed=3)
    info = export_model(model, tmp_path / "m.biper")
    assert len(info.report.packed) == (22 if name == "segnet_resnet20" else 20)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    plain = load_packed(tmp_path / "m.biper", optimize=False)
    fast = load_packed(tmp_path / "m.biper")
    assert fast.packed_meta["meta"]["input_size"] == [3, 64, 64]
    with torch.no_grad():
        assert torch.equal(plain(x), pack_model(model)[0](x))  # same operations, same bits
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(fast(x), deployed_copy(model)[0](x), rtol=1e-5, atol=1e-4)
    check = compare_models(model, fast, (3, 64, 64), samples=3)
    assert check["agree"] == 3 and check["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("fmt", ["c", "onnx"])
def test_c_and_onnx_export_refuse_upsampling(fmt, tmp_path, capsys):
    model = create_model("segnet_resnet20", binarize=W1A1).eval()
    ckpt = tmp_path / "seg.pt"
    save_checkpoint(ckpt, {"model": copy.deepcopy(model.state_dict()), "model_config": model.model_config})
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(tmp_path / f"out.{fmt}"), "--format", fmt]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Upsample" in err and "decoder.0.up" in err
