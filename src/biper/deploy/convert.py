"""Turn a trained binary model into a packed one: find Binary -> BatchNorm pairs, fold, swap.

`pack_model(model)` returns a copy of ``model`` (eval mode) in which every `BinaryConv2d` /
`BinaryLinear` with binary weights is replaced by a `PackedConv2d` / `PackedLinear`. When the
layer's output feeds a BatchNorm and nothing else, the BatchNorm is folded into the packed
layer's per-channel affine and replaced by `nn.Identity`::

    z = BN(acc * s + b) = acc * (s g) + ((b - mu) g + beta),    g = gamma / sqrt(var + eps)

Pairs are found with a `torch.fx` symbolic trace in which binary layers, quantizers and
``torch.nn`` modules are leaves; a pair is folded only when the binary layer is called once,
its single user is that BatchNorm and the BatchNorm is called once on it. A model that cannot
be traced may define ``conv_bn_pairs() -> list[(layer_name, bn_name)]`` (the model zoo's
`BiperModel` does); otherwise BatchNorms
are left unfused (still exact, only slower) and a notice is logged. Never silently wrong.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from biper.nn import BinaryConv2d
    >>> from biper.deploy import pack_model
    >>> model = nn.Sequential(BinaryConv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
    >>> packed, report = pack_model(model.eval())
    >>> report.folded
    [('0', '1')]
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import BiperError
from ..nn import BinaryConv2d, BinaryLinear, is_binary_layer, set_submodule
from ..quantizers import Quantizer
from .modules import PACKED_TYPES, PackedConv2d, PackedLinear, conv_padding

__all__ = ["PackReport", "pack_model", "find_binary_bn_pairs", "find_bn_pairs", "apply_structure", "Tracer"]

log = logging.getLogger("biper.deploy")
_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class PackReport:
    """What `pack_model` did: packed layers (name, type), folded (layer, bn) pairs, and layers
    left as they were with the reason."""

    packed: list[tuple[str, str]] = field(default_factory=list)
    folded: list[tuple[str, str]] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)
    fold_method: str = "fx"


class Tracer(torch.fx.Tracer):
    """fx tracer for which binary and packed layers and quantizers are leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, (BinaryConv2d, BinaryLinear, Quantizer, PackedConv2d, PackedLinear)):
            return True
        return super().is_leaf_module(m, qualname)


def _is_binary(m: nn.Module) -> bool:
    return is_binary_layer(m)


def _foldable(bn: nn.Module) -> bool:
    return (isinstance(bn, _BN_TYPES) and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None)


def find_binary_bn_pairs(model: nn.Module) -> tuple[list[tuple[str, str]], str]:
    """[(binary_layer_name, batchnorm_name)] that can be folded, and how they were found."""
    return find_bn_pairs(model, _is_binary)


def find_bn_pairs(model: nn.Module, is_layer) -> tuple[list[tuple[str, str]], str]:
    """[(layer_name, batchnorm_name)] for layers ``is_layer(module)`` whose output feeds only a
    BatchNorm that is called once on it, and how they were found."""
    modules = dict(model.named_modules())
    try:
        graph = Tracer().trace(model)
    except Exception as exc:  # data-dependent control flow, unsupported ops, ...
        if hasattr(model, "conv_bn_pairs"):
            pairs = [tuple(p) for p in model.conv_bn_pairs()]
            for layer, bn in pairs:
                if layer not in modules or bn not in modules:
                    raise BiperError(f"conv_bn_pairs() names a missing module in ({layer!r}, {bn!r})")
            pairs = [(a, b) for a, b in pairs if is_layer(modules[a]) and _foldable(modules[b])]
            return pairs, "model.conv_bn_pairs()"
        log.warning("biper: cannot trace %s (%s); BatchNorms are kept unfused",
                    type(model).__name__, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return [], "none (model not traceable)"
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not is_layer(modules.get(node.target)):
            continue
        users = list(node.users)
        if len(users) != 1 or calls[node.target] != 1:
            continue
        user = users[0]
        if (user.op == "call_module" and _foldable(modules.get(user.target))
                and calls[user.target] == 1 and len(user.args) == 1 and user.args[0] is node
                and not user.kwargs):
            pairs.append((node.target, user.target))
    return pairs, "fx"


@torch.no_grad()
def pack_model(model: nn.Module, *, fold_bn: bool = True) -> tuple[nn.Module, PackReport]:
    """A packed copy of ``model`` (eval mode) and a `PackReport`; ``model`` is not modified."""
    model = copy.deepcopy(model).eval()
    report = PackReport()
    pairs, report.fold_method = find_binary_bn_pairs(model) if fold_bn else ([], "disabled")
    bn_of = dict(pairs)
    modules = dict(model.named_modules())
    for name, layer in list(modules.items()):
        if not is_binary_layer(layer):
            continue
        if layer.weight_quantizer is None:
            report.kept.append((name, "real-valued weights"))
            continue
        bn = modules[bn_of[name]] if name in bn_of else None
        cls = PackedConv2d if isinstance(layer, BinaryConv2d) else PackedLinear
        packed = cls.from_binary(layer, bn)
        set_submodule(model, name, packed)
        report.packed.append((name, cls.__name__))
        if bn is not None:
            set_submodule(model, bn_of[name], nn.Identity())
            report.folded.append((name, bn_of[name]))
    return model, report


def structure(model: nn.Module, report: PackReport) -> dict:
    """The JSON description of the swaps, stored in exported files (see `apply_structure`)."""
    return {
        "packed": [{"name": n, "type": t, "config": model.get_submodule(n).config()}
                   for n, t in report.packed],
        "folded": [bn for _, bn in report.folded],
    }


def _check_config(name: str, old: nn.Module, cfg: dict) -> None:
    """The file's layer must have the rebuilt binary layer's hyper-parameters; checked before
    anything is allocated, so a crafted header cannot ask for huge buffers."""
    if isinstance(old, BinaryConv2d):
        expected = {"in_channels": old.in_channels, "out_channels": old.out_channels,
                    "kernel_size": list(old.kernel_size), "stride": list(old.stride),
                    "padding": list(conv_padding(old)), "dilation": list(old.dilation)}
    else:
        expected = {"in_features": old.in_features, "out_features": old.out_features}
    for key, want in expected.items():
        got = cfg.get(key)
        if (list(got) if isinstance(got, (list, tuple)) else got) != want:
            raise BiperError(f"packed layer {name!r}: {key}={got!r} in the file but {want!r} in the model")


def apply_structure(skeleton: nn.Module, spec: dict) -> nn.Module:
    """Redo the swaps of `structure` on a freshly built (unpacked) model, in place."""
    packed, folded = spec.get("packed", []), spec.get("folded", [])
    if not isinstance(packed, list) or not isinstance(folded, list) or not all(isinstance(f, str) for f in folded):
        raise BiperError("the layer structure must list packed layers and folded BatchNorm names")
    for entry in packed:
        if not isinstance(entry, dict):
            raise BiperError(f"bad packed-layer entry {entry!r}")
        name, kind, cfg = entry.get("name"), entry.get("type"), entry.get("config")
        if kind not in PACKED_TYPES or not isinstance(name, str) or not isinstance(cfg, dict):
            raise BiperError(f"bad packed-layer entry {entry!r}; types allowed: {', '.join(PACKED_TYPES)}")
        try:
            old = skeleton.get_submodule(name)
        except AttributeError:
            raise BiperError(f"packed layer {name!r} does not exist in the rebuilt model") from None
        expected = {BinaryConv2d: "PackedConv2d", BinaryLinear: "PackedLinear"}.get(type(old))
        if expected != kind:
            raise BiperError(f"packed layer {name!r} ({kind}) replaces a {type(old).__name__}")
        _check_config(name, old, cfg)
        try:
            new = PACKED_TYPES[kind](**cfg)
        except (TypeError, ValueError) as exc:
            raise BiperError(f"bad configuration for packed layer {name!r}: {exc}") from None
        set_submodule(skeleton, name, new)
    for name in folded:
        try:
            old = skeleton.get_submodule(name)
        except AttributeError:
            raise BiperError(f"folded BatchNorm {name!r} does not exist in the rebuilt model") from None
        if not isinstance(old, _BN_TYPES):
            raise BiperError(f"folded layer {name!r} is a {type(old).__name__}, expected a BatchNorm")
        set_submodule(skeleton, name, nn.Identity())
    return skeleton.eval()
