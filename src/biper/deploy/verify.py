"""Check that a packed model gives the same predictions as the model it was exported from.

`compare_models(reference, packed, input_size)` runs both on the same seeded random inputs and
reports how many top-1 predictions agree and the largest absolute logit difference. Packed
layers are bit-exact in their integer accumulations; the logits differ only by the float
rounding of the folded BatchNorm affine.

Example::

    >>> import torch, biper
    >>> from biper.deploy import pack_model
    >>> from biper.deploy.verify import compare_models
    >>> model = biper.create_model("mlp", binarize=biper.BinarizeConfig()).eval()
    >>> compare_models(model, pack_model(model)[0], (3, 8, 8))["agree"]
    8
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import BiperError

__all__ = ["compare_models"]


@torch.no_grad()
def compare_models(reference: nn.Module, packed: nn.Module, input_size: Sequence[int] | None,
                   samples: int = 8, seed: int = 0) -> dict:
    """{"samples", "agree", "max_abs_diff"} on ``samples`` random N(0, 1) inputs."""
    if not input_size:
        raise BiperError("the model's input size is unknown; cannot verify the export")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, *input_size, generator=gen)
    a, b = reference.eval()(x), packed.eval()(x)
    return {"samples": samples, "agree": int((a.argmax(-1) == b.argmax(-1)).sum()),
            "max_abs_diff": float((a - b).abs().max())}
