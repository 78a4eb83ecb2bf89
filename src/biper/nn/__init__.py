"""Binary layers and the model-wide hooks the training engine calls.

`clip_latent_weights_` applies each weight quantizer's latent clipping (BNN) after an optimizer
step; `regularization` sums each weight quantizer's regulariser (BiPer's mean sin^2) over the
binary layers of a model.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import ALPHA_INITS, SCALINGS, BinaryConv2d, BinaryLinear, is_binary_layer, set_submodule

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "SCALINGS",
    "ALPHA_INITS",
    "is_binary_layer",
    "set_submodule",
    "binary_layers",
    "clip_latent_weights_",
    "regularization",
]


def binary_layers(model: nn.Module):
    """(name, layer) for every binary layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if is_binary_layer(m)]


@torch.no_grad()
def clip_latent_weights_(model: nn.Module) -> None:
    """Clamp latent weights to [-c, c] for every weight quantizer with ``latent_clip = c``."""
    for _, layer in binary_layers(model):
        q = layer.weight_quantizer
        if q is not None and q.latent_clip is not None:
            layer.weight.clamp_(-q.latent_clip, q.latent_clip)


def regularization(model: nn.Module) -> torch.Tensor:
    """Sum over binary layers of the weight quantizer's regulariser (0 when none defines one)."""
    terms = [layer.weight_quantizer.regularizer(layer.weight)
             for _, layer in binary_layers(model) if layer.weight_quantizer is not None]
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return torch.stack(terms).sum()
