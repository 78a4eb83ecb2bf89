"""ONNX export of the deployed network: standard operators only, binary weights stored at 1 bit.

`export_onnx(model, path)` writes the network that the packed model computes (sign activations
``Where(Less(x, t), -1, 1)`` with ``sign(0) = +1``, the deployed +-1 weights, scale and
BatchNorm folded into one per-channel affine ``acc * s + b``) as an ONNX model (opset 18)
with one float32 NCHW input ``input`` (dynamic batch dimension) and one output ``logits``.

Each binary weight tensor is stored as a ``uint8`` initializer of ``ceil(N / 8)`` bytes (bit
``i`` of byte ``j`` is weight ``8 j + i`` of the flattened tensor, set for -1) and unpacked in
the graph with ``BitShift`` / ``BitwiseAnd`` / ``Cast`` / ``Where``; runtimes fold that
sub-graph into constants when the session is created. Binary convolutions and linears then run
as float ``Conv`` / ``MatMul`` on exact +-1 operands, so their accumulations are the integers
of the training-time model.

The graph is read from a `torch.fx` trace of the packed model (`biper.deploy.convert.Tracer`).
Supported: packed binary layers, ``Conv2d`` (zero padding), ``Linear``, ``BatchNorm1d/2d``,
``ReLU``, ``ReLU6``, ``Hardtanh``, ``LeakyReLU``, ``Sigmoid``, ``Tanh``, ``Identity``,
``Dropout``, ``Flatten``, average / max / global average pooling, ``F.pad`` (constant),
``+``, ``*``, ``torch.flatten``, ``clamp``; anything else is a `BiperError` naming it.
"""

from __future__ import annotations

import operator
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError
from ..nn import is_binary_layer
from .convert import Tracer, pack_model
from .modules import PackedConv2d, PackedLinear, conv_padding

__all__ = ["OPSET", "export_onnx", "export_file_onnx", "verify_onnx", "pack_sign_bits"]

OPSET = 18  # BitwiseAnd needs 18


def _onnx():
    try:
        import onnx
    except ImportError:
        raise BiperError("ONNX export needs the onnx package: pip install 'biper[onnx]'") from None
    return onnx


def pack_sign_bits(w: torch.Tensor) -> np.ndarray:
    """The flattened signs of ``w`` at 1 bit each (set for ``w < 0``), little-endian bit order."""
    return np.packbits((w.detach().reshape(-1) < 0).numpy().astype(np.uint8), bitorder="little")


class _Builder:
    """Nodes and initializers of one ONNX graph, with unique names and shared constants."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits, self._used, self._consts = onnx, [], [], set(), {}

    def name(self, base: str) -> str:
        base = base.replace(".", "_") or "v"
        name, i = base, 1
        while name in self._used:
            name, i = f"{base}_{i}", i + 1
        self._used.add(name)
        return name

    def init(self, base: str, array) -> str:
        array = np.ascontiguousarray(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array)
        name = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        key = (repr(value), np.dtype(dtype).str)
        if key not in self._consts:
            self._consts[key] = self.init("c", np.array(value, dtype=dtype))
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], base: str = "", **attrs) -> str:
        """Append one node; its output gets a short name (names cost bytes in every node)."""
        out = self.name(f"t{len(self.nodes)}")
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def sign(self, x: str, threshold: torch.Tensor | None, view, base: str) -> str:
        """+-1 with sign(0) = +1: Where(x < t, -1, 1)."""
        t = self.const(0.0) if threshold is None else self.init(f"{base}.threshold", threshold.reshape(view))
        return self.op("Where", [self.op("Less", [x, t], f"{base}.less"), self.const(-1.0), self.const(1.0)],
                       f"{base}.sign")

    def binary_weight(self, pm1: torch.Tensor, base: str) -> str:
        """The +-1 float tensor ``pm1``, stored at 1 bit per value and unpacked in the graph."""
        n = pm1.numel()
        packed = self.init(f"{base}.bits", pack_sign_bits(pm1)[:, None])  # (ceil(n/8), 1)
        shifted = self.op("BitShift", [packed, self.const(list(range(8)), np.uint8)], f"{base}.shift",
                          direction="RIGHT")  # (ceil(n/8), 8): bit i of byte j at [j, i]
        bits = self.op("BitwiseAnd", [shifted, self.const(1, np.uint8)], f"{base}.and")
        if n % 8:
            flat = self.op("Reshape", [bits, self.const([-1], np.int64)], f"{base}.flat")
            bits = self.op("Slice", [flat, self.const([0], np.int64), self.const([n], np.int64)], f"{base}.slice")
        shaped = self.op("Reshape", [bits, self.const(list(pm1.shape), np.int64)], f"{base}.reshape")
        neg = self.op("Cast", [shaped], f"{base}.cast", to=self.onnx.TensorProto.BOOL)
        return self.op("Where", [neg, self.const(-1.0), self.const(1.0)], f"{base}.weight")

    def affine(self, y: str, scale: torch.Tensor, shift: torch.Tensor, view, base: str) -> str:
        y = self.op("Mul", [y, self.init(f"{base}.scale", scale.reshape(view))], f"{base}.mul")
        return self.op("Add", [y, self.init(f"{base}.shift", shift.reshape(view))], f"{base}.add")

    def clip(self, x: str, lo, hi, base: str) -> str:
        inputs = [x, self.const(float(lo)) if lo is not None else "", self.const(float(hi)) if hi is not None else ""]
        return self.op("Clip", inputs, base)


def _pair(v) -> list[int]:
    return [int(i) for i in (v if isinstance(v, (tuple, list)) else (v, v))]


def _packed_conv(g: _Builder, m: PackedConv2d, x: str, base: str) -> str:
    if m.binary_input:
        x = g.sign(x, m.in_threshold, (1, -1, 1, 1), base)
    ph, pw = m.padding
    pads = [ph, pw, ph, pw]
    if m.pad_value != 0.0 and any(m.padding):
        x = g.op("Pad", [x, g.const(pads, np.int64), g.const(m.pad_value), g.const([2, 3], np.int64)],
                 f"{base}.pad", mode="constant")
        pads = [0, 0, 0, 0]
    w = g.binary_weight(m.weight_pm1(), base)
    y = g.op("Conv", [x, w], f"{base}.conv", kernel_shape=list(m.kernel_size), strides=list(m.stride),
             pads=pads, dilations=list(m.dilation))
    return g.affine(y, m.out_scale, m.out_shift, (1, -1, 1, 1), base)


def _packed_linear(g: _Builder, m: PackedLinear, x: str, base: str) -> str:
    if m.binary_input:
        x = g.sign(x, m.in_threshold, (-1,), base)
    y = g.op("MatMul", [x, g.binary_weight(m.weight_pm1().t().contiguous(), base)], f"{base}.matmul")
    return g.affine(y, m.out_scale, m.out_shift, (-1,), base)


def _module(g: _Builder, m: nn.Module, x: str, base: str) -> str:
    """ONNX for one leaf module applied to ``x``."""
    if isinstance(m, PackedConv2d):
        return _packed_conv(g, m, x, base)
    if isinstance(m, PackedLinear):
        return _packed_linear(g, m, x, base)
    if is_binary_layer(m):
        raise BiperError(f"layer {base!r} ({type(m).__name__}) has real-valued weights with binary inputs; "
                         "ONNX export supports packed binary layers and plain float layers")
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise BiperError(f"layer {base!r}: ONNX export supports zero padding, got {m.padding_mode!r}")
        ph, pw = conv_padding(m)
        inputs = [x, g.init(f"{base}.weight", m.weight)] + ([g.init(f"{base}.bias", m.bias)] if m.bias is not None else [])
        return g.op("Conv", inputs, base, kernel_shape=list(m.kernel_size), strides=list(m.stride),
                    pads=[ph, pw, ph, pw], dilations=list(m.dilation), group=m.groups)
    if isinstance(m, nn.Linear):
        y = g.op("MatMul", [x, g.init(f"{base}.weight", m.weight.t())], base)
        return g.op("Add", [y, g.init(f"{base}.bias", m.bias)], f"{base}.bias") if m.bias is not None else y
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None:
            raise BiperError(f"layer {base!r}: a BatchNorm without running statistics cannot be exported")
        c = m.num_features
        weight = m.weight if m.weight is not None else torch.ones(c)
        bias = m.bias if m.bias is not None else torch.zeros(c)
        return g.op("BatchNormalization", [x, g.init(f"{base}.weight", weight), g.init(f"{base}.bias", bias),
                                           g.init(f"{base}.mean", m.running_mean), g.init(f"{base}.var", m.running_var)],
                    base, epsilon=float(m.eps))
    if isinstance(m, (nn.Identity, nn.Dropout)):
        return x
    if isinstance(m, nn.ReLU):
        return g.op("Relu", [x], base)
    if isinstance(m, nn.ReLU6):
        return g.clip(x, 0.0, 6.0, base)
    if isinstance(m, nn.Hardtanh):
        return g.clip(x, m.min_val, m.max_val, base)
    if isinstance(m, nn.LeakyReLU):
        return g.op("LeakyRelu", [x], base, alpha=float(m.negative_slope))
    if isinstance(m, (nn.Sigmoid, nn.Tanh)):
        return g.op(type(m).__name__, [x], base)
    if isinstance(m, nn.Flatten):
        return _flatten(g, x, m.start_dim, m.end_dim, base)
    if isinstance(m, nn.AdaptiveAvgPool2d) and _pair(m.output_size) == [1, 1]:
        return g.op("GlobalAveragePool", [x], base)
    if isinstance(m, nn.AvgPool2d):
        return _avg_pool(g, x, m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, base)
    if isinstance(m, nn.MaxPool2d) and _pair(m.dilation) == [1, 1]:
        p = _pair(m.padding)
        return g.op("MaxPool", [x], base, kernel_shape=_pair(m.kernel_size), strides=_pair(m.stride or m.kernel_size),
                    pads=p + p, ceil_mode=int(m.ceil_mode))
    raise BiperError(f"ONNX export does not support layer {base!r} ({type(m).__name__})")


def _flatten(g: _Builder, x: str, start: int, end: int, base: str) -> str:
    if end != -1 or start < 0:
        raise BiperError(f"{base}: ONNX export supports flatten(start_dim >= 0, end_dim=-1) only")
    return g.op("Flatten", [x], base, axis=int(start))


def _avg_pool(g, x, kernel, stride, padding, ceil_mode, count_include_pad, base):
    p = _pair(padding)
    return g.op("AveragePool", [x], base, kernel_shape=_pair(kernel), strides=_pair(stride or kernel),
                pads=p + p, ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))


def _bind(node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    """A call's positional and keyword arguments by name."""
    out = dict(defaults)
    out.update(zip(names, node.args))
    out.update(node.kwargs)
    return out


def _function(g: _Builder, node, val, base: str) -> str:
    """ONNX for a call_function / call_method node; ``val`` maps fx arguments to values."""
    fn = node.target
    if fn in (operator.add, torch.add, "add", operator.mul, torch.mul, "mul"):
        a, b = (val(v) for v in node.args[:2])
        return g.op("Add" if fn in (operator.add, torch.add, "add") else "Mul", [a, b], base)
    if fn in (torch.flatten, "flatten"):
        a = _bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        return _flatten(g, val(a["input"]), a["start_dim"], a["end_dim"], base)
    if fn in (F.relu, torch.relu, "relu"):
        return g.op("Relu", [val(node.args[0])], base)
    if fn in (F.hardtanh, torch.clamp, torch.clip, "clamp", "clip"):
        lo, hi = ("min_val", "max_val") if fn is F.hardtanh else ("min", "max")
        a = _bind(node, ("input", lo, hi), {lo: -1.0 if fn is F.hardtanh else None, hi: 1.0 if fn is F.hardtanh else None})
        return g.clip(val(a["input"]), a[lo], a[hi], base)
    if fn is F.avg_pool2d:
        a = _bind(node, ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
                  {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True})
        return _avg_pool(g, val(a["input"]), a["kernel_size"], a["stride"], a["padding"], a["ceil_mode"],
                         a["count_include_pad"], base)
    if fn is F.adaptive_avg_pool2d and _pair(node.args[1] if len(node.args) > 1 else node.kwargs["output_size"]) == [1, 1]:
        return g.op("GlobalAveragePool", [val(node.args[0])], base)
    if fn is F.pad:
        a = _bind(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        pad = [int(p) for p in a["pad"]]
        if a["mode"] != "constant":
            raise BiperError(f"{base}: ONNX export supports constant padding, got mode={a['mode']!r}")
        axes = [-1 - i for i in range(len(pad) // 2)]  # F.pad lists the last dim first
        pads = pad[0::2] + pad[1::2]
        return g.op("Pad", [val(a["input"]), g.const(pads, np.int64), g.const(float(a["value"] or 0.0)),
                            g.const(axes, np.int64)], base, mode="constant")
    name = getattr(fn, "__name__", str(fn))
    raise BiperError(f"ONNX export does not support the operation {name!r} (at {base!r})")


def _to_graph(g: _Builder, model: nn.Module) -> tuple[str, str]:
    """Translate the fx trace of ``model``; returns (input name, output name)."""
    try:
        graph = Tracer().trace(model)
    except Exception as exc:
        raise BiperError(f"ONNX export cannot trace {type(model).__name__}: {str(exc).splitlines()[0]}") from None
    env: dict[Any, str] = {}
    inputs, output = [], None

    def val(v):
        if isinstance(v, torch.fx.Node):
            return env[v]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return g.const(float(v))
        raise BiperError(f"ONNX export does not support the argument {v!r}")

    for node in graph.nodes:
        if node.op == "placeholder":
            env[node] = g.name("input")
            inputs.append(env[node])
        elif node.op == "call_module":
            m = model.get_submodule(node.target)
            kwargs = dict(node.kwargs)
            y = _module(g, m, val(node.args[0]), node.target)
            if kwargs.get("residual") is not None:  # fused tails of optimized packed layers
                y = g.op("Add", [y, val(kwargs["residual"])], f"{node.target}.residual")
            if kwargs.get("clamp") is not None:
                y = g.clip(y, *kwargs["clamp"], f"{node.target}.clamp")
            env[node] = y
        elif node.op in ("call_function", "call_method"):
            env[node] = _function(g, node, val, node.name)
        elif node.op == "output":
            if not isinstance(node.args[0], torch.fx.Node):
                raise BiperError("ONNX export needs a model with a single tensor output")
            output = env[node.args[0]]
        else:
            raise BiperError(f"ONNX export does not support fx node {node.op} {node.target}")
    if len(inputs) != 1 or output is None:
        raise BiperError(f"ONNX export needs a model with one input and one output, got {len(inputs)} inputs")
    return inputs[0], output


def _deployed(model: nn.Module) -> nn.Module:
    """The packed (deployed) form of ``model``: packed as is, or packed here."""
    if any(isinstance(m, (PackedConv2d, PackedLinear)) for m in model.modules()):
        return model.eval()
    return pack_model(model.eval())[0]


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | os.PathLike, input_size, *, producer: str = "biper") -> dict:
    """Write the deployed ``model`` (packed, or a binary model packed here) to ``path`` as ONNX.

    ``input_size``: (C, H, W) of one input. Returns ``{"path", "file_bytes", "opset",
    "num_outputs"}``. The file is written atomically and checked with ``onnx.checker``.
    """
    onnx = _onnx()
    model = _deployed(model)
    input_size = [int(s) for s in input_size]
    try:
        k = model(torch.zeros(1, *input_size)).shape[-1]
    except (RuntimeError, ValueError) as exc:
        raise BiperError(f"the model cannot run on input {tuple(input_size)}: {str(exc).splitlines()[0]}") from None
    g = _Builder(onnx)
    x, y = _to_graph(g, model)
    g.nodes.append(onnx.helper.make_node("Identity", [y], ["logits"], name="logits"))
    if x != "input":
        raise BiperError(f"the graph's input is named {x!r}; expected 'input'")
    f32 = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        g.nodes, type(model).__name__,
        [onnx.helper.make_tensor_value_info("input", f32, ["batch", *input_size])],
        [onnx.helper.make_tensor_value_info("logits", f32, ["batch", int(k)])], g.inits)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   producer_name=producer)
    proto.ir_version = min(proto.ir_version, 9)  # readable by runtimes of the last years
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file, not mkstemp's owner-only mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return {"path": str(path), "file_bytes": len(data), "opset": OPSET, "num_outputs": int(k)}


@torch.no_grad()
def verify_onnx(path: str | os.PathLike, model: nn.Module, input_size, samples: int = 8, seed: int = 0) -> dict | None:
    """Run the ONNX file with onnxruntime and the deployed PyTorch ``model`` on the same random
    inputs: ``{"samples", "agree", "max_abs_diff"}``, or None when onnxruntime is absent."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(samples, *[int(s) for s in input_size], generator=torch.Generator().manual_seed(seed))
    got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    want = _deployed(model)(x).float()
    return {"samples": samples, "agree": int((got.argmax(1) == want.argmax(1)).sum()),
            "max_abs_diff": float((got - want).abs().max())}


def export_file_onnx(source: str | os.PathLike, path: str | os.PathLike, verify: bool = True) -> dict:
    """Export a training checkpoint or a packed model file to ONNX; adds the size of the packed
    file (``biper_bytes``, written to a temporary folder for a checkpoint), the ratio
    ``onnx_bytes / biper_bytes`` and, when ``verify``, the onnxruntime check."""
    from .export import export_checkpoint, load_packed
    from .filetype import require_model_file

    _onnx()
    if require_model_file(source) == "packed":
        model = load_packed(source, optimize=False)
        biper_bytes = Path(source).stat().st_size
    else:
        with tempfile.TemporaryDirectory() as folder:
            info = export_checkpoint(source, Path(folder) / "model.biper")
            model = load_packed(info.path, optimize=False)
            biper_bytes = info.file_bytes
    meta = model.packed_meta.get("meta") or {}
    if not meta.get("input_size"):
        raise BiperError(f"{source}: the model's input size is unknown, so the ONNX input cannot be declared")
    result = export_onnx(model, path, meta["input_size"])
    result.update(biper_bytes=biper_bytes, size_ratio=round(result["file_bytes"] / biper_bytes, 4),
                  input_size=list(meta["input_size"]))
    if verify:
        result["verify"] = verify_onnx(path, model, meta["input_size"])
    return result
