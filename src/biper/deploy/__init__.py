"""Deployment: bit-packed export and fast XNOR-popcount inference, bit-exact with training.

- `bitpack`: 1 bit per +-1 value (``bit = x < 0``, the predicate of `biper.functional.sign`);
- `kernels`: C kernels compiled on first use (AVX-512 VPOPCNTDQ / AVX2 / portable, chosen at
  run time, OpenMP threads) and the pure-PyTorch reference path they are tested against;
- `modules`: `PackedConv2d` / `PackedLinear` (W1A1 XNOR-popcount with an exact zero-padding
  correction; W1A32 float path with +-1 weights);
- `convert`: `pack_model` finds Binary -> BatchNorm pairs (torch.fx) and folds them;
- `fileformat` / `export`: the versioned, pickle-free file, `export_model`,
  `export_checkpoint`, `load_packed`;
- `summary`: Larq-style per-layer table of parameters, memory and MACs.

A round trip (export, load, same predictions) is the example of `biper.deploy.export`.
"""

from __future__ import annotations

from .bitpack import pack_bits, unpack_bits
from .convert import PackReport, pack_model
from .export import ExportInfo, export_checkpoint, export_model, load_packed
from .modules import PackedConv2d, PackedLinear
from .summary import LayerSummary, ModelSummary, summarize

__all__ = [
    "pack_bits",
    "unpack_bits",
    "pack_model",
    "PackReport",
    "PackedConv2d",
    "PackedLinear",
    "export_model",
    "export_checkpoint",
    "load_packed",
    "ExportInfo",
    "summarize",
    "ModelSummary",
    "LayerSummary",
]
