"""Inference-time rewrites of a packed model that change float rounding only, never its logic.

`optimize(model)` (called by `load_packed` unless ``optimize=False``):

1. folds each full-precision ``nn.Conv2d`` -> BatchNorm2d pair (stem, downsample; found with
   the same torch.fx analysis as the binary layers) into one convolution with a bias;
2. fuses the tail of residual blocks into the packed convolution's output loop: with torch.fx,
   ``act(packed_conv(x) + r)`` (``act`` = Hardtanh / ReLU, or none) becomes one call
   ``packed_conv(x, r, clamp=(lo, hi))`` doing the same float operations in the same order,
   saving two passes over the activations per block; the result is a `torch.fx.GraphModule`
   (models that cannot be traced are left as they are);
3. moves a clamp-like activation behind a following max-pool, ``maxpool(act(x))`` ->
   ``act(maxpool(x))`` (exact: a non-decreasing function commutes with max), so that it runs
   on the 4x smaller pooled tensor (the ResNet stem);
4. switches to ``channels_last`` (NHWC) memory format: 4-D weights are converted and a
   forward pre-hook converts 4-D inputs. Packed convolutions read and write NHWC rows
   natively, and PyTorch's pooling and element-wise kernels are faster on it (docs/deploy.md).

Packed layers keep their exact integer accumulations; outputs change only by the rounding of
the folded float affine terms of step 1 (relative differences ~1e-6).

Example::

    >>> import torch, biper
    >>> from biper.deploy import pack_model
    >>> from biper.deploy.optimize import optimize
    >>> model = biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()).eval()
    >>> fast = optimize(pack_model(model)[0])
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool(torch.allclose(fast(x), model(x), atol=1e-4))
    True
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..nn import set_submodule
from .convert import Tracer, find_bn_pairs
from .modules import PackedConv2d

__all__ = ["optimize", "fold_float_bn_", "fuse_epilogues", "to_channels_last_"]

log = logging.getLogger("biper.deploy")
_ADDS = (operator.add, torch.add)


@torch.no_grad()
def fold_float_bn_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold full-precision Conv2d -> BatchNorm2d pairs in place; returns the folded pairs."""
    pairs, _ = find_bn_pairs(model, lambda m: type(m) is nn.Conv2d)
    done = []
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        set_submodule(model, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        set_submodule(model, bn_name, nn.Identity())
        done.append((conv_name, bn_name))
    return done


def _nhwc_input(module, args):
    if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
        return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
    return None


def to_channels_last_(model: nn.Module) -> nn.Module:
    """NHWC weights and a pre-hook making 4-D inputs NHWC (idempotent)."""
    model.to(memory_format=torch.channels_last)
    if not getattr(model, "_biper_nhwc_hook", False):
        model.register_forward_pre_hook(_nhwc_input)
        model._biper_nhwc_hook = True
    return model


def _clamp_of(node: torch.fx.Node, modules: dict) -> tuple[float, float] | None:
    """(lo, hi) when ``node`` is a clamp-like activation of one tensor, else None."""
    if node.op == "call_module" and len(node.args) == 1 and not node.kwargs:
        m = modules.get(node.target)
        if isinstance(m, nn.Hardtanh):
            return float(m.min_val), float(m.max_val)
        if type(m) is nn.ReLU:
            return 0.0, float("inf")
    if node.op == "call_function" and node.target in (torch.relu, F.relu) and len(node.args) == 1:
        return 0.0, float("inf")
    return None


def fuse_epilogues(model: nn.Module) -> nn.Module:
    """``act(packed_conv(x) + r)`` -> ``packed_conv(x, r, clamp=...)`` (a GraphModule), or the
    model unchanged when it cannot be traced."""
    try:
        gm = torch.fx.GraphModule(model, Tracer().trace(model))
    except Exception as exc:
        log.info("biper: %s not traced (%s); residual tails are not fused", type(model).__name__, exc)
        return model
    graph, modules = gm.graph, dict(gm.named_modules())
    for node in list(graph.nodes):  # folded BatchNorms left identities behind
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    fused = 0
    for node in list(graph.nodes):
        m = modules.get(node.target) if node.op == "call_module" else None
        if not (isinstance(m, PackedConv2d) and m.binary_input and len(node.args) == 1
                and not node.kwargs and len(node.users) == 1):
            continue
        add = next(iter(node.users))
        if not (add.op == "call_function" and add.target in _ADDS and len(add.args) == 2 and not add.kwargs):
            continue
        other = add.args[1] if add.args[0] is node else add.args[0]
        if not isinstance(other, torch.fx.Node) or other is node:
            continue
        tail, clamp = add, None
        if len(add.users) == 1:
            act = next(iter(add.users))
            clamp = _clamp_of(act, modules)
            tail = act if clamp is not None else add
        with graph.inserting_before(add):  # x and r are both defined before the add
            new = graph.call_module(node.target, (node.args[0], other), {"clamp": clamp} if clamp else {})
        tail.replace_all_uses_with(new)
        for dead in ([tail, add] if tail is not add else [add]) + [node]:
            graph.erase_node(dead)
        fused += 1
    for node in list(graph.nodes):  # maxpool(act(x)) -> act(maxpool(x))
        pool = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(pool, nn.MaxPool2d) or pool.return_indices or len(node.args) != 1:
            continue
        act = node.args[0]
        if not isinstance(act, torch.fx.Node) or len(act.users) != 1 or _clamp_of(act, modules) is None:
            continue
        node.args = (act.args[0],)
        with graph.inserting_after(node):
            moved = graph.node_copy(act, lambda n: node if n is act.args[0] else n)
        node.replace_all_uses_with(moved, delete_user_cb=lambda user: user is not moved)
        graph.erase_node(act)
    graph.lint()
    gm.recompile()
    gm.fused_epilogues = fused
    return gm


def optimize(model: nn.Module) -> nn.Module:
    """Apply the rewrites above to a packed model (eval mode); returns the optimized model
    (a GraphModule when fusion applied; ``model`` itself is modified by steps 1 and 3)."""
    model.eval()
    fold_float_bn_(model)
    return to_channels_last_(fuse_epilogues(model))
