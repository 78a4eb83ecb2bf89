"""biper: binary neural networks in PyTorch.

BiPer's periodic binarization and the ProxConnect++ family of forward/backward quantizer pairs,
binary layers, ``binarize_`` for any model, training recipes, quantization-error analysis and
bit-packed deployment. ``import biper`` stays light: no matplotlib, torchvision or compiler.

Example::

    >>> import torch, biper
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.Conv2d(16, 16, 3),
    ...                             torch.nn.Flatten(), torch.nn.LazyLinear(10))
    >>> report = biper.binarize_(model, biper.BinarizeConfig(weight_quantizer="biper"))
"""

from __future__ import annotations

from .errors import BiperError
from .quantizers import get_quantizer, list_quantizers
from .transform import BinarizeConfig, BinarizeReport, binarize_
from .version import __version__

__all__ = [
    "BiperError",
    "BinarizeConfig",
    "BinarizeReport",
    "binarize_",
    "get_quantizer",
    "list_quantizers",
    "create_model",
    "list_models",
    "load_packed",
    "__version__",
]


def __getattr__(name: str):
    # Heavier parts load on first use so that `import biper` stays fast and lean.
    if name in ("create_model", "list_models"):
        from . import models

        return getattr(models, name)
    if name == "load_packed":
        from .deploy import load_packed

        return load_packed
    raise AttributeError(f"module 'biper' has no attribute {name!r}")
