"""Per-layer quantization-error report of a model, a state dict or a checkpoint file.

For every binary layer (a module with a weight quantizer; in a state dict, a prefix with a
``<layer>.weight_quantizer._extra_state`` entry) the report gives:

- the latent weights' Laplace fit: location (median) and scale ``b`` (maximum likelihood);
- BiPer and its periodic surrogates (their current omega0, which a schedule or an epoch-end
  re-targeting may have moved; for a surrogate F, gamma*, QE(gamma=1), QE* are F's own from
  `biper.theory.surrogates`): ``omega0``, ``x = omega0 b`` and the closed forms at x (`biper.theory`):
  E[sin^2], gamma*, QE(gamma=1), QE*, the fraction of weights beyond the first lobe
  (``e^{-pi/x}``) and with a flipped sign (``1/(e^{pi/x}+1)``);
- measured on the layer's own weights (`biper.analysis.measure`): QE at gamma = 1, QE at gamma*
  (BiPer: the analytic gamma*; other pairs: the least-squares optimum), the least-squares gamma,
  the fraction of weights with ``|w| > pi/omega0`` and with ``binary(w) != sign(w)``;
- the learned per-channel scale ``alpha`` (mean, min, max) where the layer has one.

A Laplace layer matches the theory up to sampling noise; the gap between the measured and the
theoretical columns shows how far a trained layer is from the Laplace model.

Example::

    >>> import torch
    >>> from biper.nn import BinaryLinear
    >>> model = torch.nn.Sequential(BinaryLinear(256, 256, weight_params={"omega0": 20.0}))
    >>> [r.name for r in analyze_model(model)]
    ['0']
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BiperError, did_you_mean
from ..nn import binary_layers
from ..quantizers import Quantizer, get_quantizer, list_quantizers
from .. import theory
from .measure import laplace_b, qe_target, resolve_gamma

__all__ = [
    "LayerSpec",
    "LayerReport",
    "layer_report",
    "layers_from_model",
    "layers_from_state_dict",
    "load_layers",
    "analyze_model",
    "analyze_state_dict",
    "analyze_checkpoint",
    "format_table",
]

_EXTRA = ".weight_quantizer._extra_state"


@dataclass
class LayerSpec:
    """What the report needs about one binary layer: latent weights, quantizer, learned alpha."""

    name: str
    weight: torch.Tensor
    quantizer: Quantizer
    alpha: torch.Tensor | None = None


@dataclass
class LayerReport:
    """One row of the per-layer table (None where a column does not apply)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    quantizer: str
    omega0: float | None
    loc: float
    b: float
    x: float | None
    theory: dict[str, float] | None
    qe_gamma1: float
    qe_gamma_opt: float
    gamma_opt: float
    gamma_emp: float
    frac_beyond_first_lobe: float | None
    frac_sign_flip: float
    alpha: dict[str, float] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def _is_biper(q: Quantizer) -> bool:
    return q.name == "biper" or hasattr(q, "theory_spec")  # BiPer or one of its periodic surrogates


@torch.no_grad()
def layer_report(spec: LayerSpec) -> LayerReport:
    """The report row of one layer (see module docs)."""
    q = spec.quantizer
    w = spec.weight.detach().double().flatten()
    loc = float(w.median())
    b = laplace_b(w)
    binary = q.binary(w).double()
    t = qe_target(q, w, "forward" if hasattr(q, "theory_spec") else "auto")
    g_emp = resolve_gamma(q, w, "emp", t, binary)
    g_opt = resolve_gamma(q, w, "opt", t, binary)
    omega0 = x = beyond = th = None
    if _is_biper(q):
        omega0 = float(q.omega0)
        x = omega0 * b
        beyond = float((w.abs() > math.pi / omega0).double().mean())
        th = {
            "e_sin2": float(theory.e_sin2(x)),
            "gamma_opt": float(theory.gamma_opt(x)),
            "qe_gamma1": float(theory.qe(x, 1.0)),
            "qe_opt": float(theory.qe_opt(x)),
            "frac_beyond_first_lobe": float(theory.frac_beyond_first_lobe(x)),
            "frac_sign_flip": float(theory.frac_sign_flip(x)),
        }
        if hasattr(q, "theory_spec"):  # a surrogate F: its own E[F S] and QE (biper.theory.surrogates)
            from ..theory import surrogates

            name, param = q.theory_spec()
            m = surrogates.moments(name, x, **param)
            th.update(gamma_opt=m["e_fs"], qe_gamma1=m["e_f2"] - 2.0 * m["e_fs"] + 1.0,
                      qe_opt=m["e_f2"] - m["e_fs"] ** 2)
    plain_sign = torch.where(w >= 0, 1.0, -1.0).double()
    alpha = None
    if spec.alpha is not None:
        a = spec.alpha.detach().double().flatten()
        alpha = {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}
    return LayerReport(
        name=spec.name,
        shape=tuple(spec.weight.shape),
        numel=w.numel(),
        quantizer=q.name,
        omega0=omega0,
        loc=loc,
        b=b,
        x=x,
        theory=th,
        qe_gamma1=float((t - binary).pow(2).mean()),
        qe_gamma_opt=float((t - g_opt * binary).pow(2).mean()),
        gamma_opt=g_opt,
        gamma_emp=g_emp,
        frac_beyond_first_lobe=beyond,
        frac_sign_flip=float((binary != plain_sign).double().mean()),
        alpha=alpha,
    )


def layers_from_model(model: nn.Module) -> list[LayerSpec]:
    """A `LayerSpec` for every binary layer of ``model`` that has a weight quantizer."""
    specs = [LayerSpec(n, m.weight, m.weight_quantizer, getattr(m, "alpha", None))
             for n, m in binary_layers(model) if m.weight_quantizer is not None]
    if not specs:
        raise BiperError("the model has no binary layer with a weight quantizer to analyse")
    return specs


def _infer_quantizer(extra: dict, layer: str) -> str:
    keys = set(extra)
    names = [n for n in list_quantizers("weight") if set(get_quantizer(n).get_extra_state()) == keys]
    if len(names) == 1:
        return names[0]
    if not names:
        raise BiperError(f"layer {layer!r}: no weight quantizer has parameters {sorted(keys)}; "
                         f"pass the quantizer name (valid: {', '.join(list_quantizers('weight'))})")
    raise BiperError(f"layer {layer!r}: parameters {sorted(keys)} fit several quantizers "
                     f"({', '.join(names)}); pass the quantizer name (--quantizer)")


def layers_from_state_dict(state: dict[str, Any], weight_quantizer: str | None = None) -> list[LayerSpec]:
    """`LayerSpec` for every ``<layer>.weight_quantizer._extra_state`` entry of a state dict.

    The quantizer is ``weight_quantizer`` when given, else inferred from the names of the stored
    parameters (``omega0`` -> biper, ``clip`` -> bnn, ``{}`` -> bc, ...).
    """
    if not isinstance(state, dict):
        raise BiperError(f"a state dict must be a mapping, got {type(state).__name__}")
    if weight_quantizer is not None and weight_quantizer not in list_quantizers("weight"):
        raise BiperError(f"unknown weight quantizer {weight_quantizer!r}"
                         f"{did_you_mean(weight_quantizer, list_quantizers('weight'))}; "
                         f"valid: {', '.join(list_quantizers('weight'))}")
    specs = []
    for key, extra in state.items():
        if not key.endswith(_EXTRA):
            continue
        prefix = key[: -len(_EXTRA)]
        weight = state.get(f"{prefix}.weight")
        if not isinstance(weight, torch.Tensor):
            raise BiperError(f"state dict has {key!r} but no tensor {prefix + '.weight'!r}")
        extra = dict(extra or {})
        q = get_quantizer(weight_quantizer or _infer_quantizer(extra, prefix))
        q.set_extra_state({k: v for k, v in extra.items() if k in q.defaults})
        specs.append(LayerSpec(prefix, weight, q, state.get(f"{prefix}.alpha")))
    if not specs:
        raise BiperError("no binary layer found: the state dict has no '<layer>.weight_quantizer._extra_state' entry")
    return specs


def load_layers(source: str | os.PathLike | dict, weight_quantizer: str | None = None
                ) -> tuple[list[LayerSpec], dict[str, Any]]:
    """Layers of a checkpoint (path or loaded dict) or plain state dict, and where they came from.

    A checkpoint with a model spec (see `biper.models.ModelSpec.from_checkpoint`) is rebuilt
    from it; when that fails, and for plain state dicts, the binary layers are read from the
    state dict directly. Files are read by `biper.checkpoint_file.read_checkpoint` (weights-only
    load, checksum verified for biper checkpoints).
    """
    from ..checkpoint_file import CheckpointError, read_checkpoint
    from ..models import ModelSpec

    info: dict[str, Any] = {"source": "state_dict"}
    obj = source
    if not isinstance(source, dict):
        path = os.fspath(source)
        try:
            obj = read_checkpoint(path)
        except CheckpointError as err:
            raise BiperError(f"cannot read checkpoint: {err}") from None
        info["path"] = path
    if not isinstance(obj, dict):
        raise BiperError(f"a checkpoint must hold a dict, got {type(obj).__name__}")
    state, found = obj, None
    if isinstance(obj.get("model"), dict):
        state = obj["model"]
        for key in ("version", "stage_name"):
            if obj.get(key) is not None:
                info[key] = obj[key]
        try:
            found = ModelSpec.from_checkpoint(obj)
        except BiperError as exc:
            info["rebuild_error"] = str(exc).strip().splitlines()[0]
    if found is not None:
        if weight_quantizer is None and found.binarize is not None:
            weight_quantizer = found.binarize.weight_quantizer
        try:
            model = found.build()
            model.load_state_dict(state)
        except (BiperError, RuntimeError, ImportError, TypeError, KeyError) as exc:
            info["rebuild_error"] = str(exc).strip().splitlines()[0]
        else:
            info.update(source="model", model=found.name)
            return layers_from_model(model), info
    return layers_from_state_dict(state, weight_quantizer), info


def analyze_model(model: nn.Module) -> list[LayerReport]:
    """Per-layer report of every binary layer of ``model``."""
    return [layer_report(s) for s in layers_from_model(model)]


def analyze_state_dict(state: dict[str, Any], weight_quantizer: str | None = None) -> list[LayerReport]:
    """Per-layer report read from a state dict (no model needed)."""
    return [layer_report(s) for s in layers_from_state_dict(state, weight_quantizer)]


def analyze_checkpoint(source: str | os.PathLike | dict, weight_quantizer: str | None = None) -> list[LayerReport]:
    """Per-layer report of a checkpoint file, loaded checkpoint or state dict (see `load_layers`)."""
    return [layer_report(s) for s in load_layers(source, weight_quantizer)[0]]


def _fmt(value: float | None, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'-':>{width}}" if value is None else format(value, spec)


def format_table(reports: list[LayerReport]) -> str:
    """The per-layer report as a fixed-width text table with a weighted-mean footer."""
    head = (f"{'layer':<24} {'quant':<6} {'n':>8} {'omega0':>7} {'b':>8} {'w0*b':>6} {'gamma*':>6} "
            f"{'QE1 th':>7} {'QE1':>7} {'QE* th':>7} {'QE*':>7} {'alpha':>6} {'>lobe%':>6} {'flip%':>6}")
    lines = [head, "-" * len(head)]
    for r in reports:
        th = r.theory or {}
        name = r.name if len(r.name) <= 24 else "..." + r.name[-21:]
        lines.append(
            f"{name:<24} {r.quantizer:<6} {r.numel:>8} {_fmt(r.omega0, '7.3g')} {r.b:>8.2e} "
            f"{_fmt(r.x, '6.3f')} {r.gamma_opt:>6.3f} {_fmt(th.get('qe_gamma1'), '7.4f')} "
            f"{r.qe_gamma1:>7.4f} {_fmt(th.get('qe_opt'), '7.4f')} {r.qe_gamma_opt:>7.4f} "
            f"{_fmt(r.alpha and r.alpha['mean'], '6.3f')} "
            f"{_fmt(None if r.frac_beyond_first_lobe is None else 100 * r.frac_beyond_first_lobe, '6.2f')} "
            f"{100 * r.frac_sign_flip:>6.2f}")
    n = sum(r.numel for r in reports)
    mean = lambda key: sum(getattr(r, key) * r.numel for r in reports) / n  # noqa: E731
    lines.append("-" * len(head))
    lines.append(f"{len(reports)} binary layer(s), {n} weights; weighted mean measured QE(gamma=1) "
                 f"{mean('qe_gamma1'):.4f}, QE(gamma*) {mean('qe_gamma_opt'):.4f}")
    return "\n".join(lines)
