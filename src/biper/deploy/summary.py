"""Larq-style summary of a binary model: parameters by precision, memory and operations.

For every layer that has parameters or multiply-accumulates (one forward pass on a zero input
of ``input_size`` records the shapes):

- ``# 1-bit``: binary weights (``BinaryConv2d``/``BinaryLinear`` with a weight quantizer, or
  their packed forms); ``# 32-bit``: every other parameter (scales, biases, BatchNorm, float
  layers; for packed layers the folded per-channel affine and RSign thresholds);
- memory ``= # 1-bit + 32 * # 32-bit`` bits, also in KiB;
- MACs per sample: convolutions ``OH*OW*Cout*Cin/groups*KH*KW``, linears ``out*in`` per
  token. A MAC is binary (a BOP) when both weights and inputs are 1-bit (W1A1), else float.

Totals follow the BNN papers: ``OPs = BOPs / 64 + FLOPs`` (Bi-Real Net, ReActNet, BiPer), and
the compression ratio is the float32 size of all parameters over the model size above.

Example::

    >>> import biper
    >>> from biper.deploy import summarize
    >>> s = summarize(biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()), (3, 32, 32))
    >>> s.binary_params > 0 and s.bops > 0
    True
    >>> print(s.table())  # doctest: +ELLIPSIS
    Layer ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import BiperError
from ..nn import BinaryConv2d, BinaryLinear, is_binary_layer
from .modules import PackedConv2d, PackedLinear

__all__ = ["LayerSummary", "ModelSummary", "summarize", "resolve_target"]

_CONVS = (nn.Conv2d, PackedConv2d)
_LINEARS = (nn.Linear, PackedLinear)


@dataclass
class LayerSummary:
    name: str
    kind: str
    input_bits: int | None  # 1, 32 or None (no MACs)
    output_shape: tuple[int, ...]
    binary_params: int
    float_params: int
    binary_macs: int
    float_macs: int

    @property
    def memory_bits(self) -> int:
        return self.binary_params + 32 * self.float_params


@dataclass
class ModelSummary:
    name: str
    input_size: tuple[int, ...]
    layers: list[LayerSummary] = field(default_factory=list)

    binary_params = property(lambda self: sum(layer.binary_params for layer in self.layers))
    float_params = property(lambda self: sum(layer.float_params for layer in self.layers))
    bops = property(lambda self: sum(layer.binary_macs for layer in self.layers))
    flops = property(lambda self: sum(layer.float_macs for layer in self.layers))

    @property
    def memory_bits(self) -> int:
        return self.binary_params + 32 * self.float_params

    @property
    def float32_bits(self) -> int:
        return 32 * (self.binary_params + self.float_params)

    @property
    def compression(self) -> float:
        return self.float32_bits / max(self.memory_bits, 1)

    @property
    def ops(self) -> float:
        """BOPs / 64 + FLOPs."""
        return self.bops / 64 + self.flops

    def table(self) -> str:
        """The per-layer table and the totals, as printed by ``biper summary``."""
        head = ("Layer", "Type", "In bits", "Output", "# 1-bit", "# 32-bit", "Mem (bit)",
                "Mem (KiB)", "1-bit MACs", "32-bit MACs")
        rows = [(l.name, l.kind, "-" if l.input_bits is None else str(l.input_bits),
                 "x".join(map(str, l.output_shape)), f"{l.binary_params:,}", f"{l.float_params:,}",
                 f"{l.memory_bits:,}", f"{l.memory_bits / 8192:.2f}", f"{l.binary_macs:,}",
                 f"{l.float_macs:,}") for l in self.layers]
        total = ("Total", "", "", "", f"{self.binary_params:,}", f"{self.float_params:,}",
                 f"{self.memory_bits:,}", f"{self.memory_bits / 8192:.2f}", f"{self.bops:,}",
                 f"{self.flops:,}")
        widths = [max(len(r[i]) for r in [head, *rows, total]) for i in range(len(head))]
        fmt = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(r, widths)))
        rule = "-" * len(fmt(head))
        lines = [fmt(head), rule, *map(fmt, rows), rule, fmt(total), ""]
        kib = lambda bits: f"{bits / 8192:,.2f} KiB"  # noqa: E731
        lines += [
            f"Model: {self.name}   input: {'x'.join(map(str, self.input_size))} (per-sample counts)",
            f"Parameters: {self.binary_params + self.float_params:,} "
            f"({self.binary_params:,} 1-bit, {self.float_params:,} 32-bit)",
            f"Model size: {kib(self.memory_bits)}   float32 equivalent: {kib(self.float32_bits)}   "
            f"compression ratio: {self.compression:.2f}x",
            f"BOPs (1-bit MACs): {self.bops:,}   FLOPs (32-bit MACs): {self.flops:,}",
            f"OPs = BOPs/64 + FLOPs = {self.ops:,.0f}",
        ]
        return "\n".join(lines)


def _params(module: nn.Module) -> tuple[int, int]:
    """(1-bit, 32-bit) parameter counts of one module (its own, not its children's)."""
    own = list(module.parameters(recurse=False))
    if is_binary_layer(module):  # with its quantizers' parameters
        nbin = module.weight.numel() if module.weight_quantizer is not None else 0
        return nbin, sum(p.numel() for p in module.parameters()) - nbin
    if isinstance(module, (PackedConv2d, PackedLinear)):
        nfloat = module.out_scale.numel() + module.out_shift.numel()
        if module.in_threshold is not None:
            nfloat += module.in_threshold.numel()
        return module.n_binary_weights, nfloat
    return 0, sum(p.numel() for p in own)


def _macs(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, _CONVS):
        groups = getattr(module, "groups", 1)
        kh, kw = module.kernel_size
        return out[0].numel() * (module.in_channels // groups) * kh * kw
    if isinstance(module, _LINEARS):
        return out[0].numel() * module.in_features
    return 0


def _binary_input(module: nn.Module) -> bool:
    if is_binary_layer(module):
        return module.weight_quantizer is not None and module.input_quantizer is not None
    if isinstance(module, (PackedConv2d, PackedLinear)):
        return module.binary_input
    return False


@torch.no_grad()
def summarize(model: nn.Module, input_size: tuple[int, ...], name: str | None = None) -> ModelSummary:
    """Per-layer parameters, memory and MACs of ``model`` for one sample of ``input_size``."""
    if not input_size or not all(isinstance(s, int) and s > 0 for s in input_size):
        if input_size is None:
            raise BiperError("the model's input size is unknown; pass --input-size C,H,W")
        raise BiperError(f"input_size must be positive integers like 3,32,32, got {input_size!r}")
    leaf_types = (BinaryConv2d, BinaryLinear, PackedConv2d, PackedLinear)
    summary = ModelSummary(name or type(model).__name__, tuple(input_size))
    records: dict[str, LayerSummary] = {}
    hooks = []

    def hook(name):
        def fn(module, _inputs, out):
            if name in records or not isinstance(out, torch.Tensor):
                return
            macs = _macs(module, out)
            nbin, nfloat = _params(module)
            binary = _binary_input(module)
            records[name] = LayerSummary(name, type(module).__name__, (1 if binary else 32) if macs else None,
                                         tuple(out.shape[1:]), nbin, nfloat,
                                         macs if binary else 0, 0 if binary else macs)
        return fn

    order = []
    for mname, module in model.named_modules():
        inside = any(mname.startswith(p + ".") for p in order if isinstance(model.get_submodule(p), leaf_types))
        if inside or not mname:
            continue
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own or isinstance(module, leaf_types + _CONVS + _LINEARS):
            order.append(mname)
            hooks.append(module.register_forward_hook(hook(mname)))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size))
    except Exception as exc:
        raise BiperError(f"cannot run {summary.name} on input {tuple(input_size)}: {str(exc).splitlines()[0]}") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    root = sum(p.numel() for p in model.parameters(recurse=False))
    if root:  # e.g. a ViT's class token and position embedding
        summary.layers.append(LayerSummary("(model)", type(model).__name__, None, (), 0, root, 0, 0))
    for mname in order:
        if mname in records:
            summary.layers.append(records[mname])
        else:  # a module with parameters that the forward pass did not call
            nbin, nfloat = _params(model.get_submodule(mname))
            summary.layers.append(LayerSummary(mname, type(model.get_submodule(mname)).__name__,
                                               None, (), nbin, nfloat, 0, 0))
    return summary


def _registry_input_size(name: str | None):
    from ..models import list_models, model_info

    return tuple(model_info(name).input_size) if name in list_models() else None


def _from_recipe(target: str) -> tuple[nn.Module, str, tuple | None]:
    from ..train import load_run_config, model_spec

    cfg = load_run_config(target)
    spec = model_spec(cfg, len(cfg.stages) - 1)
    return spec.build(), f"{Path(str(target)).stem} ({spec.name})", _registry_input_size(spec.name)


def resolve_target(target: str, *, binarize: bool = True) -> tuple[nn.Module, str, tuple | None]:
    """(model, display name, default input size) for a packed file, a checkpoint, a recipe
    (name or YAML path) or a registered model name."""
    from ..models import create_model, list_models
    from ..recipes import list_recipes
    from ..transform import BinarizeConfig
    from .fileformat import is_packed_file

    path = Path(target)
    if path.is_file():
        if is_packed_file(path):
            from .export import load_packed

            model = load_packed(path, optimize=False)
            size = (model.packed_meta.get("meta") or {}).get("input_size")
            return model, f"{path.name} (packed)", tuple(size) if size else None
        if path.suffix in (".yaml", ".yml"):
            return _from_recipe(str(path))
        from ..train import build_model_from_config, load_checkpoint

        ckpt = load_checkpoint(path)
        model = build_model_from_config(ckpt)
        name = model.model_spec.name
        return model, f"{path.name} ({name})", _registry_input_size(name)
    if target in list_models():
        model = create_model(target, binarize=BinarizeConfig() if binarize else None)
        return model, target, _registry_input_size(target)
    if target in list_recipes():
        return _from_recipe(target)
    raise BiperError(f"{target!r} is not a file, a model ({', '.join(list_models())}) "
                     f"or a recipe ({', '.join(list_recipes())})")
