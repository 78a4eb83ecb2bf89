"""The standalone C export, compiled and run with the system C compiler, against the
training-time model: every W1A1 layer's integer sums equal the integer convolution of the
training-time +-1 tensors bit for bit, logits agree within float rounding, argmax equal.
Cross builds (Cortex-M4 sizes, aarch64 under qemu-user) skip when their tools are absent."""

import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import biper
from biper.cli import main
from biper.deploy.cemit import export_c
from biper.deploy.cverify import build_demo, build_mps2, find_cc, run_demo, run_mps2
from biper.errors import BiperError
from biper.nn import BinaryConv2d, BinaryLinear

CC = find_cc()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc, gcc or clang) on PATH")


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Spread BatchNorm statistics, binary scales and RSign thresholds (every other channel's
    threshold stays 0, so that exact zeros meet sign(0) = +1) so that every layer matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.randn(n, generator=g) * 0.5 + 1.0)
                m.bias.copy_(torch.randn(n, generator=g) * 0.3)
            for name, p in m.named_parameters(recurse=False):
                if name == "threshold" or (name == "alpha" and p.numel() > 1):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2 + (name == "alpha"))
                    if name == "threshold":
                        p[::2] = 0.0
    return model.eval()


def _reference_acc(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The training-time integer sums of a W1A1 layer on its input ``x``: the convolution of
    the quantizers' +-1 values (pad_value around the binarized input), in float64 (exact)."""
    xq = layer.input_quantizer.binary(x).double()
    wq = layer.weight_quantizer.binary(layer.weight.detach()).double()
    if isinstance(layer, BinaryLinear):
        return (xq @ wq.t()).round().long()
    ph, pw = layer.padding
    y = F.conv2d(F.pad(xq, (pw, pw, ph, ph), value=layer.pad_value), wq, None, layer.stride, 0, layer.dilation)
    return y.round().long()


def _binary_inputs(model, x):
    """{layer name: its input} for every W1A1 layer of the PyTorch model."""
    seen, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)) and m.input_quantizer is not None:
            hooks.append(m.register_forward_pre_hook(lambda mod, a, n=name: seen.__setitem__(n, a[0].detach())))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return logits, seen


def _check(model, x, tmp_path, logit_tol=1e-4):
    """Export, build with -DBIPER_DUMP, run, and compare with the training-time model."""
    info = export_c(model, tmp_path / "c", tuple(x.shape[1:]))
    exe = build_demo(str(tmp_path / "c"), str(tmp_path / "demo"), defines=("BIPER_DUMP",),
                     flags=("-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"))
    logits, dump = run_demo(exe, x, dump=True)
    ref_logits, torch_inputs = _binary_inputs(model, x)
    modules = dict(model.named_modules())
    assert len(info.program.binary_layers) == len(torch_inputs) > 0
    for entry in info.program.binary_layers:
        layer, lid = modules[entry["name"]], entry["id"]
        c, h, w = entry["in_shape"]
        co, oh, ow = entry["out_shape"]
        x_c = torch.from_numpy(np.stack(dump[(1, lid)])).view(-1, c, h, w)
        acc_c = torch.from_numpy(np.stack(dump[(2, lid)])).view(-1, oh, ow, co).permute(0, 3, 1, 2).long()
        x_t = torch_inputs[entry["name"]].reshape(x_c.shape)
        # 1) the C integer sums are the training-time integer convolution of the C layer input
        ref_c = _reference_acc(layer, x_c if isinstance(layer, BinaryConv2d) else x_c.flatten(1))
        assert torch.equal(acc_c, ref_c.view(acc_c.shape)), entry["name"]
        # 2) end to end: the C layer input has the PyTorch signs except where float rounding
        #    upstream decides (|x - t| within the measured difference), and then equal sums
        thr = getattr(layer.input_quantizer, "threshold", None)
        t = thr.detach().view(1, -1, 1, 1) if isinstance(thr, torch.Tensor) else 0.0
        diff = (x_c - x_t).abs()
        assert float(diff.max()) < 1e-4, entry["name"]
        flips = ((x_c - t) < 0) != ((x_t - t) < 0)
        assert bool(((x_t - t).abs()[flips] <= diff[flips]).all()), entry["name"]
        if not bool(flips.any()):
            ref_t = _reference_acc(layer, x_t if isinstance(layer, BinaryConv2d) else x_t.flatten(1))
            assert torch.equal(acc_c, ref_t.view(acc_c.shape)), entry["name"]
    assert float((ref_logits - ref_logits[:1]).abs().max()) > 1e-3  # the inputs matter
    scale = max(1.0, float(ref_logits.abs().max()))
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=0, atol=logit_tol * scale)
    assert (logits.argmax(1) == ref_logits.numpy().argmax(1)).all()
    return info, logits


class _ConvNet(nn.Module):
    """Float stem, W1A1 convs with strides, paddings (0, +1, -1), dilation, odd channel counts,
    an RSign threshold, a W1A32 conv, max/avg pooling, a residual add, a W1A1 linear layer."""

    def __init__(self):
        super().__init__()
        b = {"weight_quantizer": "bnn", "scaling": "learnable"}
        self.stem, self.bn0 = nn.Conv2d(3, 20, 3, padding=1, bias=True), nn.BatchNorm2d(20)
        self.c1, self.bn1 = BinaryConv2d(20, 70, 3, stride=2, padding=1, bias=False, **b), nn.BatchNorm2d(70)
        self.c2, self.bn2 = BinaryConv2d(70, 70, 3, padding=2, dilation=2, pad_value=-1.0, **b,
                                         input_quantizer="rsign"), nn.BatchNorm2d(70)
        self.c3 = BinaryConv2d(70, 33, (3, 1), stride=(1, 2), padding=(1, 0), pad_value=1.0, bias=True, **b,
                               input_quantizer="rsign")  # after a ReLU: thresholds make its signs vary
        self.c4 = BinaryConv2d(33, 17, 1, input_quantizer=None, bias=False, **b)  # W1A32
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.bnf = BinaryLinear(17 * 3 * 1, 37, bias=False, **b), nn.BatchNorm1d(37)
        self.fc = nn.Linear(37, 10)

    def forward(self, x):
        x = F.hardtanh(self.bn0(self.stem(x)))
        x = F.hardtanh(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x)) + x)
        x = self.c4(self.c3(x))
        x = F.avg_pool2d(self.pool(x), 1).flatten(1)
        return self.fc(torch.relu(self.bnf(self.fc1(x))))


@needs_cc
@pytest.mark.parametrize("seed", [0, 1])
def test_random_convnet_exact(tmp_path, seed):
    model = _randomize(_ConvNet(), seed)
    x = torch.randn(3, 3, 13, 11, generator=torch.Generator().manual_seed(10 + seed))
    info, _ = _check(model, x, tmp_path)
    kinds = [op.kind for op in info.program.ops]
    assert kinds.count("bconv") == 4 and "pool" in kinds and kinds.count("fconv") == 3


@needs_cc
def test_mlp_exact(tmp_path):
    model = _randomize(biper.create_model("mlp", binarize=biper.BinarizeConfig(), hidden=100, depth=4), 2)
    _check(model, torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3)), tmp_path)


@needs_cc
def test_resnet20_exact_and_sizes(tmp_path):
    model = _randomize(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()), 4)
    info, _ = _check(model, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)), tmp_path)
    assert len(info.program.binary_layers) == 18
    # the memory plan: the largest live set is one 16x32x32 map, one 32x16x16 map and bits
    assert info.arena_bytes == 4 * (16 * 32 * 32 + 32 * 16 * 16) + 2 * 32 * 32


def test_unsupported_layer_is_one_line_error(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    with pytest.raises(BiperError, match=r"unsupported layer '1' \(Sigmoid\)") as err:
        export_c(model, tmp_path / "c", (3, 8, 8))
    assert "\n" not in str(err.value)


@needs_cc
def test_cli_export_c(tmp_path, capsys):
    """A checkpoint written by the real CLI exports to C; the demo agrees with the checkpoint."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--max-steps", "2", "--quiet", "cifar10-resnet20-biper-cpu",
                 "model.name=mlp", "data.dataset=synthetic", "data.options={size: 8, length: 64}",
                 "data.batch_size=32", "data.eval_batch_size=64", "stages.*.epochs=1", "precision=fp32",
                 "channels_last=false"]) == 0
    capsys.readouterr()
    assert main(["export", str(out / "final.pt"), "--format", "c", "-o", str(tmp_path / "c"), "--json"]) == 0
    assert '"agree": 8' in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path / "c")) == ["README.md", "demo.c", "model.c", "model.h"]
    src = (tmp_path / "c" / "model.c").read_text()
    assert "malloc" not in src and "#include <std" in src
    assert main(["export", str(out / "final.pt"), "--format", "c", "-o", str(tmp_path / "c" / "model.c")]) == 2


def _cross(tool, *probe):
    """Skip unless ``tool`` is installed (and, for a compiler, builds a C99 program with ``probe``
    flags: its C library may be missing)."""
    why = (f"{tool} not installed (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi "
           "gcc-aarch64-linux-gnu libc6-dev-arm64-cross gcc-s390x-linux-gnu libc6-dev-s390x-cross qemu-user)")
    ok = shutil.which(tool) is not None
    if ok and probe:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "t.c")
            with open(src, "w") as f:
                f.write("#include <stdint.h>\n#include <stdio.h>\n"
                        "int main(void) { return (int)sizeof(uint16_t) - 2; }\n")
            done = subprocess.run([tool, *probe, src, "-o", os.path.join(tmp, "t.o")], capture_output=True)
            ok = done.returncode == 0
            why = f"{tool} cannot build a C program with {' '.join(probe)} (its C library is missing)"
    return pytest.mark.skipif(not ok, reason=why)


@_cross("arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-c")
def test_cortex_m4_sizes(tmp_path):
    """ResNet-20 W1A1 fits a Cortex-M4: under 48 KB of flash and 128 KB of RAM."""
    model = _randomize(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()), 6)
    export_c(model, tmp_path, (3, 32, 32))
    obj = str(tmp_path / "model.o")
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16",
                    "-Os", "-std=c99", "-Wall", "-Werror", "-fstack-usage", "-c", str(tmp_path / "model.c"),
                    "-o", obj], check=True, cwd=tmp_path)
    text, data, bss = (int(v) for v in subprocess.run(["arm-none-eabi-size", obj], capture_output=True, text=True,
                                                      check=True).stdout.splitlines()[1].split()[:3])
    frames = [int(line.split()[1]) for line in (tmp_path / "model.su").read_text().splitlines()]
    assert text + data < 48_000 and data + bss + sum(frames) < 128_000


def _foreign(name, cc, qemu, make_model, shape, seeds):
    return pytest.param(cc, qemu, make_model, shape, seeds, id=name,
                        marks=[_cross(cc, "-static"), _cross(qemu)])


@needs_cc
@pytest.mark.parametrize("cc, qemu, make_model, shape, seeds", [
    # another ISA, with fused multiply-add available
    _foreign("aarch64", "aarch64-linux-gnu-gcc", "qemu-aarch64",
             lambda: biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()), (3, 32, 32), (7, 8)),
    # big-endian: the demo must read and write the same little-endian files
    _foreign("s390x_big_endian", "s390x-linux-gnu-gcc", "qemu-s390x", lambda: _ConvNet(), (3, 13, 11), (11, 11)),
])
def test_foreign_target_same_logits(tmp_path, cc, qemu, make_model, shape, seeds):
    """The same C code built for another target and run under qemu-user gives the host's logits
    bit for bit."""
    model = _randomize(make_model(), seeds[0])
    export_c(model, tmp_path / "c", shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(seeds[1]))
    host = run_demo(build_demo(str(tmp_path / "c"), str(tmp_path / "host")), x)
    assert np.ptp(host, axis=0).max() > 1e-3  # the logits depend on the input
    foreign = build_demo(str(tmp_path / "c"), str(tmp_path / "foreign"), cc=[cc], flags=("-O2", "-static"))
    assert np.array_equal(run_demo([qemu, foreign], x), host)


@needs_cc
@_cross("arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "--specs=rdimon.specs")
@_cross("qemu-system-arm")
def test_cortex_m4_board_same_logits(tmp_path):
    """On qemu's emulated Cortex-M4F board (mps2-an386) the demo gives the host's logits bit for bit."""
    model = _randomize(_ConvNet(), 9)
    export_c(model, tmp_path / "c", (3, 13, 11))
    x = torch.randn(3, 3, 13, 11, generator=torch.Generator().manual_seed(9))
    host = run_demo(build_demo(str(tmp_path / "c"), str(tmp_path / "host")), x)
    assert np.ptp(host, axis=0).max() > 1e-3  # the logits depend on the input
    assert np.array_equal(run_mps2(build_mps2(str(tmp_path / "c"), str(tmp_path / "m4.elf")), x), host)


@pytest.mark.parametrize("module", ["cexport", "cemit"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"biper.deploy.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
