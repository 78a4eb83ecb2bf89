"""Lower a packed binary model to a list of C layer calls with a static memory plan.

`lower(model, input_size)` packs the model exactly as `biper.deploy.load_packed` runs it
(`pack_model`, float Conv+BatchNorm folding, fused residual tails), traces it with torch.fx and
turns each node into one call of the C runtime (``csrc/cexport_runtime.c``):

- full-precision ``Conv2d`` / ``Linear`` and W1A32 packed layers: ``fconv`` (plain float loops);
- W1A1 ``PackedConv2d`` / ``PackedLinear``: ``pack`` (``bit = x - t < 0``) then ``bconv``
  (integer XNOR-popcount, the layer's folded per-channel affine, fused residual and clamp);
- BatchNorm (eval), Hardtanh / ReLU, ``+``, average / max pooling, global average pooling,
  channel zero padding (option-A shortcuts), flatten.

Every tensor gets a place in one of two static arenas (float values, 16-bit sign words) chosen
at export time from the tensors' lifetimes; an output may replace an input that is not read
again (in place). Anything else raises a one-line `BiperError` naming the node.
`biper.deploy.cemit` writes the C files from the result.

Example::

    >>> import biper
    >>> from biper.deploy.cexport import lower
    >>> model = biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()).eval()
    >>> prog = lower(model, (3, 32, 32))
    >>> len(prog.binary_layers), prog.arena   # float values and 16-bit sign words
    (18, {'f': 24576, 'b': 1024})
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BiperError
from .convert import pack_model
from .modules import PackedConv2d, PackedLinear
from .optimize import fold_float_bn_, fuse_epilogues

__all__ = ["Tensor", "Op", "Program", "lower"]

_ADD = (operator.add, torch.add)


@dataclass
class Tensor:
    """A (C, H, W) tensor (vectors are (N, 1, 1)): float values or 16-bit sign words."""

    shape: tuple[int, int, int]
    kind: str = "f"                 # "f": float32 values, "b": uint16 sign words
    layout: str = "hwc"             # "hwc" or "chw" (the caller's input)
    buf: int | None = None          # buffer number; None: the caller's input array

    @property
    def strides(self) -> tuple[int, int, int]:
        c, h, w = self.shape
        return (h * w, w, 1) if self.layout == "chw" else (1, w * c, c)

    @property
    def elems(self) -> int:
        c, h, w = self.shape
        return c * h * w if self.kind == "f" else h * w * ((c + 15) // 16)


@dataclass
class Op:
    """One runtime call: ``kind`` (fconv, pack, bconv, affine, clamp, add, pool, gap, shortcut,
    relayout), input / output tensor numbers and the call's parameters."""

    kind: str
    ins: list[int]
    out: int
    params: dict = field(default_factory=dict)
    name: str = ""


@dataclass
class Program:
    """The lowered model: tensors, ops in order, the output tensor and the arena plan."""

    input_size: tuple[int, int, int]
    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    output: int = -1
    offsets: dict[int, int] = field(default_factory=dict)   # buffer -> element offset
    arena: dict[str, int] = field(default_factory=dict)     # "f" / "b" -> elements
    binary_layers: list[dict] = field(default_factory=list)  # W1A1 layers in dump order

    def new(self, shape, kind="f") -> int:
        self.tensors.append(Tensor(tuple(int(s) for s in shape), kind, "hwc", len(self.tensors)))
        return len(self.tensors) - 1

    def emit(self, kind, ins, out, name="", **params) -> int:
        self.ops.append(Op(kind, list(ins), out, params, name))
        return out


def _shape(node: torch.fx.Node) -> tuple[int, int, int]:
    meta = node.meta.get("tensor_meta")
    shape = tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
    if shape is None or shape[0] != 1 or len(shape) not in (2, 4):
        raise BiperError(f"C export: node {node.name!r} does not produce one (N, C, H, W) or (N, F) tensor")
    return tuple(shape[1:]) if len(shape) == 4 else (shape[1], 1, 1)


def _pair(v) -> tuple[int, int]:
    return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _conv_geometry(x: Tensor, out_shape, k, s, p, d) -> dict:
    c, h, w = x.shape
    isc, ish, isw = x.strides
    return {"cin": c, "h": h, "w": w, "cout": out_shape[0], "oh": out_shape[1], "ow": out_shape[2],
            "kh": k[0], "kw": k[1], "sh": s[0], "sw": s[1], "ph": p[0], "pw": p[1], "dh": d[0],
            "dw": d[1], "isc": isc, "ish": ish, "isw": isw}


class _Lowering:
    def __init__(self, gm: torch.fx.GraphModule, input_size):
        self.gm, self.prog = gm, Program(tuple(input_size))
        self.modules = dict(gm.named_modules())
        self.env: dict[torch.fx.Node, int] = {}

    def hwc(self, t: int) -> int:
        """The tensor in HWC order (a copy of the caller's CHW input when needed)."""
        x = self.prog.tensors[t]
        if x.layout == "hwc" or x.shape[1] * x.shape[2] == 1:
            return t
        out = self.prog.new(x.shape)
        return self.prog.emit("relayout", [t], out, "input to HWC", to_hwc=1)

    def run(self) -> Program:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.env:
                    raise BiperError("C export: the model must take exactly one input tensor")
                self.prog.tensors.append(Tensor(tuple(self.prog.input_size), "f", "chw", None))
                self.env[node] = 0
            elif node.op == "output":
                arg = node.args[0]
                if not isinstance(arg, torch.fx.Node) or self.prog.tensors[self.env[arg]].shape[1:] != (1, 1):
                    raise BiperError("C export: the model must return one (N, classes) logits tensor")
                self.prog.output = self.hwc(self.env[arg])
            elif node.op in ("call_module", "call_function", "call_method"):
                self.env[node] = self.lower_node(node)
            else:
                raise BiperError(f"C export: unsupported graph node {node.name!r} ({node.op})")
        return self.prog

    def arg(self, node, i=0) -> int:
        a = node.args[i] if len(node.args) > i else None
        if not isinstance(a, torch.fx.Node):
            raise BiperError(f"C export: {node.name!r} expects a tensor as argument {i}, got {a!r}")
        return self.env[a]

    def unsupported(self, node, what) -> BiperError:
        name = node.target if node.op == "call_module" else node.name
        return BiperError(f"C export: unsupported layer {name!r} ({what}); supported: Conv2d, Linear, "
                          "packed binary Conv2d/Linear, BatchNorm, Hardtanh, ReLU, +, AvgPool2d, MaxPool2d, "
                          "global average pooling, channel zero padding, flatten, Identity, Dropout")

    def lower_node(self, node: torch.fx.Node) -> int:
        p, target = self.prog, node.target
        m = self.modules.get(node.target) if node.op == "call_module" else None
        if m is not None and isinstance(m, (nn.Identity, nn.Dropout)) or (
                node.op == "call_function" and target is F.dropout):
            return self.arg(node)
        out_shape = _shape(node)
        if isinstance(m, (PackedConv2d, PackedLinear)):
            return self.packed(node, m, out_shape)
        if type(m) is nn.Conv2d:
            if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise self.unsupported(node, "Conv2d with groups, string padding or non-zero padding mode")
            x = p.tensors[self.arg(node)]
            w = m.weight.detach().float().permute(0, 2, 3, 1).contiguous()
            geo = _conv_geometry(x, out_shape, m.kernel_size, m.stride, m.padding, m.dilation)
            bias = m.bias.detach().float() if m.bias is not None else None
            return p.emit("fconv", [self.arg(node)], p.new(out_shape), node.target, **geo, padv=0.0,
                          wf=w, wb=None, scale=None, shift=bias)
        if type(m) is nn.Linear:
            return self.linear(node, m.weight.detach().float(), m.bias, out_shape)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if m.running_mean is None or m.running_var is None:
                raise self.unsupported(node, "BatchNorm without running statistics")
            inv = (m.weight.detach().double() if m.weight is not None else 1.0) / torch.sqrt(
                m.running_var.double() + m.eps)
            b = (m.bias.detach().double() if m.bias is not None else 0.0) - m.running_mean.double() * inv
            return self.inplace("affine", node, a=inv.float().expand(out_shape[0]),
                                b=b.float().expand(out_shape[0]))
        clamp = self.clamp_of(node, m)
        if clamp is not None:
            return self.inplace("clamp", node, lo=clamp[0], hi=clamp[1])
        if node.op == "call_function" and target in _ADD and len(node.args) == 2 and not node.kwargs:
            a, b = self.hwc(self.arg(node, 0)), self.hwc(self.arg(node, 1))
            if p.tensors[a].shape != p.tensors[b].shape:
                raise self.unsupported(node, "addition with broadcasting")
            return p.emit("add", [a, b], p.new(out_shape), node.name)
        if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)) or (
                node.op == "call_function" and target in (F.avg_pool2d, F.max_pool2d)):
            return self.pool(node, m, out_shape)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            x = p.tensors[self.arg(node)]
            if out_shape[1:] == x.shape[1:]:
                return self.arg(node)
            if out_shape[1:] != (1, 1):
                raise self.unsupported(node, f"adaptive average pooling to {out_shape[1:]}")
            t = self.hwc(self.arg(node))
            return p.emit("gap", [t], p.new(out_shape), node.name)
        if node.op == "call_function" and target is F.pad:
            return self.chpad(node, out_shape)
        if isinstance(m, nn.Flatten) or (node.op == "call_function" and target is torch.flatten) or (
                node.op == "call_method" and target == "flatten"):
            start = m.start_dim if m is not None else (node.args[1] if len(node.args) > 1
                                                       else node.kwargs.get("start_dim", 0))
            if start != 1 or (m is not None and m.end_dim != -1) or len(node.args) > 2:
                raise self.unsupported(node, "flatten other than flatten(1)")
            t = self.arg(node)
            x = p.tensors[t]
            if x.layout == "chw" or x.shape[1] * x.shape[2] == 1:  # same memory order: a view
                p.tensors.append(Tensor(out_shape, "f", "hwc", x.buf))
                return len(p.tensors) - 1
            return p.emit("relayout", [t], p.new(out_shape), node.name, to_hwc=0)
        what = type(m).__name__ if m is not None else getattr(target, "__name__", str(target))
        raise self.unsupported(node, what)

    def inplace(self, kind: str, node, **params) -> int:
        t = self.hwc(self.arg(node))
        return self.prog.emit(kind, [t], self.prog.new(self.prog.tensors[t].shape), node.name, **params)

    @staticmethod
    def clamp_of(node, m):
        if isinstance(m, nn.Hardtanh):
            return float(m.min_val), float(m.max_val)
        if type(m) is nn.ReLU or (node.op == "call_function" and node.target in (torch.relu, F.relu)):
            return 0.0, float("inf")
        if node.op == "call_function" and node.target is F.hardtanh:
            return float(node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)), \
                float(node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0))
        return None

    def linear(self, node, weight, bias, out_shape, wb=None, scale=None) -> int:
        t = self.arg(node)
        x = self.prog.tensors[t]
        if x.shape[1:] != (1, 1):
            raise self.unsupported(node, "linear layer on a tensor that is not flat")
        geo = _conv_geometry(x, out_shape, (1, 1), (1, 1), (0, 0), (1, 1))
        shift = bias.detach().float() if isinstance(bias, torch.Tensor) else bias
        return self.prog.emit("fconv", [t], self.prog.new(out_shape), node.target, **geo, padv=0.0,
                              wf=weight if wb is None else None, wb=wb, scale=scale, shift=shift)

    def packed(self, node, m, out_shape) -> int:
        p = self.prog
        conv = isinstance(m, PackedConv2d)
        w = m.weight_pm1()  # (Cout, Cin, KH, KW) or (Cout, Cin)
        w = w.permute(0, 2, 3, 1) if conv else w.view(*w.shape, 1, 1).permute(0, 2, 3, 1)
        bits = w.contiguous()  # (Cout, KH, KW, Cin) +-1, packed to words by the writer
        scale, shift = m.out_scale.detach().float(), m.out_shift.detach().float()
        t = self.arg(node)
        x = p.tensors[t]
        if not conv and x.shape[1:] != (1, 1):
            raise self.unsupported(node, "linear layer on a tensor that is not flat")
        k, s, pd, d = ((m.kernel_size, m.stride, m.padding, m.dilation) if conv
                       else ((1, 1), (1, 1), (0, 0), (1, 1)))
        geo = _conv_geometry(x, out_shape, k, s, pd, d)
        residual = self.arg(node, 1) if len(node.args) > 1 else None
        clamp = node.kwargs.get("clamp")
        if set(node.kwargs) - {"clamp"} or len(node.args) > 2:
            raise self.unsupported(node, "packed layer call with extra arguments")
        if not m.binary_input:
            out = p.emit("fconv", [t], p.new(out_shape), node.target, **geo, padv=float(m.pad_value) if conv
                         else 0.0, wf=None, wb=bits, scale=scale, shift=shift)
        else:
            lid = len(p.binary_layers)
            thr = m.in_threshold.detach().float() if m.in_threshold is not None else None
            c, h, wd = x.shape
            sc, sh, sw = x.strides
            bt = p.emit("pack", [t], p.new(x.shape, "b"), node.target, c=c, h=h, w=wd, sc=sc, sh=sh, sw=sw,
                        thr=thr, id=lid)
            p.binary_layers.append({"id": lid, "name": node.target, "in_shape": x.shape,
                                    "out_shape": tuple(out_shape), "type": type(m).__name__})
            ins = [bt] + ([self.hwc(residual)] if residual is not None else [])
            if residual is not None and p.tensors[ins[1]].shape != tuple(out_shape):
                raise self.unsupported(node, "residual of another shape")
            lo, hi = clamp if clamp is not None else (float("-inf"), float("inf"))
            geo = {k_: v for k_, v in geo.items() if k_ not in ("isc", "ish", "isw")}
            return p.emit("bconv", ins, p.new(out_shape), node.target, **geo,
                          pad=int(m.pad_value) if conv else 0, wb=bits, scale=scale, shift=shift,
                          lo=float(lo), hi=float(hi), id=lid, residual=residual is not None)
        if residual is not None:
            out = p.emit("add", [self.hwc(out), self.hwc(residual)], p.new(out_shape), node.name)
        if clamp is not None:
            out = p.emit("clamp", [out], p.new(out_shape), node.name, lo=float(clamp[0]), hi=float(clamp[1]))
        return out

    def pool(self, node, m, out_shape) -> int:
        if m is not None:
            k, s, pd = m.kernel_size, m.stride, m.padding
            extra = (getattr(m, "ceil_mode", False) or getattr(m, "dilation", 1) not in (1, (1, 1))
                     or getattr(m, "return_indices", False))
            mode = 1 if isinstance(m, nn.MaxPool2d) else 0
        else:
            k = node.args[1] if len(node.args) > 1 else node.kwargs.get("kernel_size")
            s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride")
            pd, extra = 0, len(node.args) > 3 or bool(set(node.kwargs) - {"kernel_size", "stride"})
            mode = 1 if node.target is F.max_pool2d else 0
        k = _pair(k)
        s = _pair(s) if s not in (None, ()) else k
        if extra or _pair(pd) != (0, 0) or k[0] != k[1] or s[0] != s[1]:
            raise self.unsupported(node, "pooling with padding, dilation, ceil_mode or a non-square window")
        t = self.hwc(self.arg(node))
        return self.prog.emit("pool", [t], self.prog.new(out_shape), node.name, k=k[0], s=s[0], mode=mode)

    def chpad(self, node, out_shape) -> int:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        pad = tuple(pad) if isinstance(pad, (tuple, list)) else ()
        if mode != "constant" or value not in (None, 0, 0.0) or len(pad) != 6 or any(pad[:4]):
            raise self.unsupported(node, "padding other than zero channels")
        t, stride, ops = self.hwc(self.arg(node)), 1, self.prog.ops
        src = node.args[0]
        last = ops[-1] if ops else None
        if (last is not None and last.out == t and last.kind == "pool" and last.params["mode"] == 0
                and last.params["k"] == last.params["s"] and len(src.users) == 1):
            ops.pop()  # average pooling then channel padding: one pass (the option-A shortcut)
            t, stride = last.ins[0], last.params["s"]
        return self.prog.emit("shortcut", [t], self.prog.new(out_shape), node.name, s=stride,
                              front=int(pad[4]), back=int(pad[5]))


def _lifetimes(prog: Program) -> tuple[dict[int, int], dict[int, int]]:
    """First op writing or reading each buffer and the last one reading it (the output is read
    after the last op)."""
    first, last = {}, {}
    for i, op in enumerate(prog.ops):
        for t in [op.out, *op.ins]:
            b = prog.tensors[t].buf
            if b is not None:
                first.setdefault(b, i)
                last[b] = i
    last[prog.tensors[prog.output].buf] = len(prog.ops)
    return first, last


def _plan(prog: Program) -> None:
    """In-place reuse, then first-fit offsets for every arena buffer by lifetime."""
    _, last = _lifetimes(prog)
    for i, op in enumerate(prog.ops):
        which = {"clamp": 0, "affine": 0, "add": 0}.get(op.kind, 1 if op.params.get("residual") else None)
        if which is None:
            continue
        src, dst = prog.tensors[op.ins[which]], prog.tensors[op.out]
        if src.buf is None or src.shape != dst.shape or src.kind != dst.kind or last.get(src.buf) != i:
            continue
        old = dst.buf
        for t in prog.tensors:  # the output (and any view of it) lives in the input's buffer
            if t.buf == old:
                t.buf = src.buf
        last[src.buf] = last.pop(old, i)
        op.params["inplace"] = True
    first, last = _lifetimes(prog)
    sizes, kinds = {}, {}
    for t in prog.tensors:
        if t.buf is not None and t.buf in first:  # (tensors of fused-away ops have no buffer)
            sizes[t.buf] = max(sizes.get(t.buf, 0), t.elems)
            kinds[t.buf] = t.kind
    placed: dict[str, list] = {"f": [], "b": []}
    for b in sorted(sizes, key=lambda b: (-sizes[b], first[b])):
        busy = sorted((o, s) for o, s, other in placed[kinds[b]]
                      if first[other] <= last[b] and first[b] <= last[other])
        off = 0
        for o, s in busy:
            if off + sizes[b] <= o:
                break
            off = max(off, o + s)
        placed[kinds[b]].append((off, sizes[b], b))
        prog.offsets[b] = off
    prog.arena = {k: max((o + s for o, s, _ in v), default=0) for k, v in placed.items()}


@torch.no_grad()
def lower(model: nn.Module, input_size) -> Program:
    """The `Program` of ``model`` (an unpacked binary model, eval mode) for one (C, H, W) input."""
    if len(input_size) != 3:
        raise BiperError(f"C export needs a (C, H, W) input size, got {tuple(input_size)}")
    packed, _ = pack_model(model.eval())
    fold_float_bn_(packed)
    gm = fuse_epilogues(packed)
    if not isinstance(gm, torch.fx.GraphModule):
        raise BiperError(f"C export: {type(model).__name__} cannot be traced with torch.fx")
    from torch.fx.passes.shape_prop import ShapeProp

    ShapeProp(gm).propagate(torch.zeros(1, *input_size))
    prog = _Lowering(gm, input_size).run()
    _plan(prog)
    return prog
