"""Check that a packed model gives the same predictions as the model it was exported from.

`compare_models(reference, packed, input_size)` runs both on the same seeded random inputs and
reports how many top-1 predictions agree and the largest absolute logit difference. Top-1 is
taken over dimension 1 (the classes); for dense outputs ``(B, K, H, W)`` a sample agrees when
its top-1 class agrees at every position. The
reference runs with its weights as deployed, ``weight_quantizer.binary(w)``: for most methods
that is what training computes with, while ``bnn++`` and BiPer's ``sine`` stage train with soft
weights (``soft_weights`` in the result says whether any layer does). Packed layers are then
bit-exact in their integer accumulations, and the logits differ only by the float rounding of
the folded BatchNorm affine.

Example::

    >>> import torch, biper
    >>> from biper.deploy import pack_model
    >>> from biper.deploy.verify import compare_models
    >>> model = biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval()
    >>> compare_models(model, pack_model(model)[0], (3, 8, 8))["agree"]
    8
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..errors import BiperError
from ..nn import is_binary_layer

__all__ = ["compare_models", "deployed_copy"]


@torch.no_grad()
def deployed_copy(model: nn.Module) -> tuple[nn.Module, bool]:
    """A copy of ``model`` whose binary layers compute with ``binary(w)``, and whether any
    layer's training forward differed from that (soft weights)."""
    model = copy.deepcopy(model).eval()
    soft = False
    for layer in model.modules():
        if is_binary_layer(layer) and layer.weight_quantizer is not None:
            q = layer.weight_quantizer
            soft = soft or not torch.equal(layer.quantized_weight(), q.binary(layer.weight))
            layer.quantized_weight = lambda layer=layer: layer.weight_quantizer.binary(layer.weight)
    return model, soft


@torch.no_grad()
def compare_models(reference: nn.Module, packed: nn.Module, input_size: Sequence[int] | None,
                   samples: int = 8, seed: int = 0) -> dict:
    """{"samples", "agree", "max_abs_diff", "soft_weights"} on ``samples`` N(0, 1) inputs."""
    if not input_size:
        raise BiperError("the model's input size is unknown; cannot verify the export")
    deployed, soft = deployed_copy(reference)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *input_size, generator=gen)
    a, b = deployed(x), packed.eval()(x)
    same = (a.argmax(1) == b.argmax(1)).reshape(samples, -1).all(1)  # (B,): every position agrees
    return {"samples": samples, "agree": int(same.sum()),
            "max_abs_diff": float((a - b).abs().max()), "soft_weights": soft}
