"""Export a trained binary model to a packed file, and load it back as a runnable module.

`export_model(model, path)` packs the model (`pack_model`: 1 bit per binary weight, scale and
BatchNorm folded into one per-channel affine), and writes the packed state with
`fileformat.write_file`: full-precision layers as float32 tensors, and in the JSON header the
model's `biper.models.ModelSpec` (key ``model``), the layer swaps, the training config and the
library version.
`export_checkpoint` does the same from a training checkpoint.

`load_packed(path)` rebuilds the architecture from the registry, redoes the swaps and loads the
tensors with ``strict=True``: nothing in the file is ever executed. For a model outside the
registry, pass a freshly built (unpacked) instance as ``model=``.

Size accounting follows the BNN papers: 1 bit per binary weight, 32 bits per other parameter.

Example::

    >>> import os, tempfile, torch, biper
    >>> from biper.deploy import export_model, load_packed
    >>> model = biper.create_model("resnet20_cifar", binarize=biper.BinarizeConfig()).eval()
    >>> path = os.path.join(tempfile.mkdtemp(), "r20.biper")
    >>> info = export_model(model, path)
    >>> packed = load_packed(path)
    >>> x = torch.randn(2, 3, 32, 32)
    >>> bool(torch.allclose(packed(x), model(x), atol=1e-4))
    True
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BiperError
from ..models import ModelSpec
from ..nn import is_binary_layer
from .convert import PackReport, apply_structure, pack_model, structure
from .fileformat import FORMAT_VERSION, read_file, write_file

__all__ = ["ExportInfo", "export_model", "export_checkpoint", "load_packed", "model_spec_from_checkpoint",
           "default_meta"]

FORMAT_NAME = "biper-packed"


@dataclass
class ExportInfo:
    """Result of an export: file size next to the papers' theoretical size."""

    path: str
    file_bytes: int
    binary_weights: int
    other_params: int
    report: PackReport

    @property
    def theoretical_bytes(self) -> float:
        """1 bit per binary weight + 32 bits per other parameter, in bytes."""
        return (self.binary_weights + 32 * self.other_params) / 8

    @property
    def size_ratio(self) -> float:
        """File size over the theoretical size (1.0 = exactly the theory)."""
        return self.file_bytes / self.theoretical_bytes


def _count(model: nn.Module) -> tuple[int, int]:
    """(binary weights, other parameters) of an unpacked binary model."""
    binary = {id(m.weight) for m in model.modules()
              if is_binary_layer(m) and m.weight_quantizer is not None}
    nbin = sum(p.numel() for p in model.parameters() if id(p) in binary)
    nother = sum(p.numel() for p in model.parameters() if id(p) not in binary)
    return nbin, nother


def _version() -> str:
    from ..version import __version__

    return __version__


def export_model(model: nn.Module, path: str | os.PathLike, *, model_config: ModelSpec | dict | None = None,
                 config: dict | None = None, meta: dict | None = None) -> ExportInfo:
    """Pack ``model`` and write it to ``path``; returns an `ExportInfo`.

    ``model_config`` (default ``model.model_config``) lets `load_packed` rebuild the model from
    the registry; without it the file loads only with ``load_packed(path, model=...)``.
    ``config`` (the training config) and ``meta`` are stored as given (JSON-able).
    """
    model_config = model_config if model_config is not None else getattr(model, "model_spec", None)
    if isinstance(model_config, ModelSpec):
        model_config = model_config.to_dict()
    packed, report = pack_model(model)
    tensors, extra = {}, {}
    for key, value in packed.state_dict().items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value.float() if value.is_floating_point() else value
        else:
            extra[key] = value  # quantizers' extra state: dicts of numbers
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "biper_version": _version(),
        "model": model_config,
        "structure": structure(packed, report),
        "extra_state": extra,
        "config": config,
        "meta": meta if meta is not None else default_meta(model_config, config),
    }
    size = write_file(path, tensors, header)
    nbin, nother = _count(model)
    return ExportInfo(str(path), size, nbin, nother, report)


def model_spec_from_checkpoint(ckpt: dict) -> ModelSpec:
    """The `ModelSpec` stored in a training checkpoint."""
    spec = ModelSpec.from_checkpoint(ckpt)
    if spec is None:
        raise BiperError("checkpoint has no model config (expected 'model_config' with a 'name')")
    return spec


def _spec(header_model: Any) -> ModelSpec:
    """The `ModelSpec` of a packed file's header."""
    if not isinstance(header_model, dict) or not isinstance(header_model.get("name"), str):
        raise BiperError("the file has no registry model config; load it with load_packed(path, model=...)")
    return ModelSpec.from_dict(header_model)


def default_meta(model_config: ModelSpec | dict | None, config: dict | None) -> dict:
    """Input size, normalisation and class names for `biper infer`, from the registry and the
    run config (dataset) when they are known."""
    meta: dict[str, Any] = {}
    if isinstance(model_config, ModelSpec):
        model_config = model_config.to_dict()
    if isinstance(model_config, dict) and isinstance(model_config.get("name"), str):
        from ..models import model_info

        try:
            meta["input_size"] = list(model_info(model_config["name"]).input_size)
        except BiperError:
            pass
    data = (config or {}).get("data") if isinstance(config, dict) else None
    dataset = data.get("dataset") if isinstance(data, dict) else None
    if dataset in ("cifar10", "imagenet"):
        from ..data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

        cifar = dataset == "cifar10"
        meta["dataset"] = dataset
        meta["mean"] = list(CIFAR10_MEAN if cifar else IMAGENET_MEAN)
        meta["std"] = list(CIFAR10_STD if cifar else IMAGENET_STD)
        if cifar:
            meta["classes"] = list(CIFAR10_CLASSES)
    return meta


def checkpoint_model(checkpoint: str | os.PathLike) -> tuple[dict, ModelSpec, nn.Module]:
    """Read a training checkpoint (checksum verified, weights-only load), rebuild its model from
    the stored `ModelSpec` and load its weights; returns (checkpoint dict, spec, model)."""
    from ..train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    spec = model_spec_from_checkpoint(ckpt)
    model = spec.build()
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:])[:300]
        raise BiperError(f"{checkpoint}: weights do not match model {spec.name!r}: {detail}") from None
    return ckpt, spec, model


def export_checkpoint(checkpoint: str | os.PathLike, path: str | os.PathLike, **kwargs) -> ExportInfo:
    """Rebuild the model of a training checkpoint (checksum verified, weights-only load) from its
    ``model_config``, load its weights and export it to ``path``."""
    ckpt, spec, model = checkpoint_model(checkpoint)
    config = kwargs.pop("config", ckpt.get("config"))
    meta = {**default_meta(spec, config), "checkpoint_version": ckpt.get("version"),
            "stage": ckpt.get("stage_name"),
            "global_step": (ckpt.get("progress") or {}).get("global_step"), **(kwargs.pop("meta", None) or {})}
    return export_model(model.eval(), path, model_config=spec, config=config, meta=meta, **kwargs)


def _check_shapes(path, model_spec: ModelSpec, structure_spec: dict, tensors: dict) -> None:
    """Build the described model on the meta device (no memory) and compare every tensor shape
    with the file's before building it for real: a header cannot make loading allocate more
    than the tensors the file actually holds."""
    with torch.device("meta"):
        ghost = apply_structure(model_spec.build(), structure_spec)
    expected = {k: tuple(v.shape) for k, v in ghost.state_dict().items() if isinstance(v, torch.Tensor)}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        unexpected = sorted(set(found) - set(expected))[:3]
        shapes = [f"{k} {found[k]} vs {expected[k]}" for k in sorted(set(expected) & set(found))
                  if found[k] != expected[k]][:3]
        raise BiperError(f"{path}: tensors do not match model {model_spec.name!r}: missing {missing}, "
                         f"unexpected {unexpected}, shapes (file vs model) {shapes}")


def load_packed(path: str | os.PathLike, model: nn.Module | None = None, *,
                optimize: bool = True) -> nn.Module:
    """The runnable packed model stored at ``path`` (eval mode), its header as ``.packed_meta``.

    ``model``: an unpacked instance of the architecture, needed only for models that are not
    in the registry (it is copied, not modified). ``optimize`` applies
    `biper.deploy.optimize.optimize` (float Conv+BN folding, fused residual tails, NHWC); the
    result is then a `torch.fx.GraphModule` when the model can be traced. With
    ``optimize=False`` the model keeps its own class and module tree.
    """
    header, tensors = read_file(path)
    if header.get("format") != FORMAT_NAME:
        raise BiperError(f"{path}: not a biper packed model (format {header.get('format')!r})")
    spec = header.get("structure")
    if not isinstance(spec, dict):
        raise BiperError(f"{path}: header has no layer structure")
    if model is None:
        model_spec = _spec(header.get("model"))
        _check_shapes(path, model_spec, spec, tensors)
    skeleton = copy.deepcopy(model) if model is not None else model_spec.build()
    apply_structure(skeleton, spec)
    extra = header.get("extra_state") or {}
    if not isinstance(extra, dict):
        raise BiperError(f"{path}: extra_state must be a mapping")
    try:
        skeleton.load_state_dict({**tensors, **extra}, strict=True)
    except (RuntimeError, ValueError, TypeError, AttributeError, KeyError) as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:])[:300]
        raise BiperError(f"{path}: tensors do not match the model: {detail or exc}") from None
    skeleton.eval()
    if optimize:
        from .optimize import optimize as _optimize

        skeleton = _optimize(skeleton)
    skeleton.packed_meta = header
    return skeleton
