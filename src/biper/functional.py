"""Pure tensor math shared by quantizers, layers, analysis and deployment.

The one definition of `sign` used everywhere in biper pins ``sign(0) = sign(-0.0) = +1``
(``torch.sign(0) = 0`` is the classic BNN bug). The bit packer uses the same predicate,
``bit = (x < 0)``, so training, analysis and deployment agree on every value.

SignSwish (Darabi et al., "BNN+: Improved binary network training", 2018)::

    SS_b(x)  = 2 sigmoid(b x) [1 + b x (1 - sigmoid(b x))] - 1
    SS_b'(x) = b [2 - b x tanh(b x / 2)] / (1 + cosh(b x))

Example::

    >>> import torch
    >>> from biper.functional import sign
    >>> sign(torch.tensor([-1.5, -0.0, 0.0, 2.0]))
    tensor([-1.,  1.,  1.,  1.])
"""

from __future__ import annotations

import torch

__all__ = ["sign", "negative_bits", "signswish", "signswish_grad"]


def negative_bits(x: torch.Tensor) -> torch.Tensor:
    """The bit predicate of biper: True where ``x < 0`` (so 0 and -0.0 map to +1)."""
    return x < 0


def sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x >= 0`` (including -0.0), -1 where ``x < 0``; keeps dtype and device.

    Computed as ``sign(sign(x) + 1/2)``: {-1, 0, +1} -> {-1/2, 1/2, 3/2} -> {-1, +1, +1}. Two
    cheap element-wise passes; ``torch.where`` was 7x slower on bf16 channels-last activations.
    """
    return torch.sign(torch.sign(x) + 0.5)


def signswish(x: torch.Tensor, beta: float) -> torch.Tensor:
    """SignSwish ``SS_beta(x) = 2 sigmoid(beta x)[1 + beta x (1 - sigmoid(beta x))] - 1``."""
    bx = beta * x
    s = torch.sigmoid(bx)
    return 2.0 * s * (1.0 + bx * (1.0 - s)) - 1.0


def signswish_grad(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Derivative of SignSwish: ``beta (2 - beta x tanh(beta x / 2)) / (1 + cosh(beta x))``.

    Written with ``s = sigmoid(beta x)`` (``1/(1+cosh) = 2 s (1-s)``, ``tanh(bx/2) = 2s - 1``) so
    that it never overflows for large ``|beta x|``.
    """
    bx = beta * x
    s = torch.sigmoid(bx)
    return beta * (2.0 - bx * (2.0 * s - 1.0)) * 2.0 * s * (1.0 - s)
