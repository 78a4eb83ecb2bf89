"""Figures of the periodic surrogates: QE against omega0 b, and flip-rate / |B'| curves of runs.

matplotlib (the ``plot`` extra) is imported inside each function, as in `biper.analysis.plots`.

- `plot_surrogate_qe`: QE(gamma = 1) and QE* of every surrogate (sine, tanh at several beta,
  Fourier at several K, triangle) for Laplace(0, b) weights against ``x = omega0 b``, theory
  lines (`biper.theory.surrogates`) with Monte Carlo points of the quantizers themselves;
- `plot_flips`: per-epoch flip rate, mean |B'| and test accuracy of one or more run folders
  (their ``metrics.jsonl``), one line per run.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import BiperError
from ..theory import surrogates
from .plots import _pyplot, _save

__all__ = ["plot_surrogate_qe", "plot_flips", "CURVES", "read_metrics"]

CURVES = (("sine", {}), ("tanh", {"beta": 2.0}), ("tanh", {"beta": 10.0}), ("tanh", {"beta": 100.0}),
          ("fourier", {"K": 3.0}), ("fourier", {"K": 16.0}), ("triangle", {}))


def _label(name: str, param: dict) -> str:
    return name + "".join(f" {k}={v:g}" for k, v in param.items())


def plot_surrogate_qe(path: str | os.PathLike, *, x_range: tuple[float, float] = (0.05, 50.0),
                      mc_n: int = 20_000, mc_points: int = 7, b: float = 0.05, seed: int = 0) -> str:
    """QE(1) (left) and QE* (right) against x for every curve of `CURVES`; returns the path."""
    lo, hi = x_range
    if not (0 < lo < hi and math.isfinite(hi)):
        raise BiperError(f"x_range must satisfy 0 < low < high, got {x_range!r}")
    plt = _pyplot()
    from ..analysis.measure import qe_monte_carlo
    from ..quantizers.periodic import surrogate_quantizer

    xs = np.logspace(math.log10(lo), math.log10(hi), 120)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    for i, (name, param) in enumerate(CURVES):
        m = [surrogates.moments(name, float(x), **param) for x in xs]
        q1 = [d["e_f2"] - 2.0 * d["e_fs"] + 1.0 for d in m]
        qs = [d["e_f2"] - d["e_fs"] ** 2 for d in m]
        color = f"C{i}"
        left.plot(xs, q1, color=color, lw=1.8, label=_label(name, param))
        right.plot(xs, qs, color=color, lw=1.8, label=_label(name, param))
        if mc_n:
            spec = name + (f":{next(iter(param.values())):g}" if param else "")
            for x in np.logspace(math.log10(lo * 2), math.log10(hi / 2), mc_points):
                qz = surrogate_quantizer(spec, float(x) / b)
                mc1 = qe_monte_carlo(qz, "laplace", scale=b, n=mc_n, gamma=1.0, seed=seed, target="forward")
                g = surrogates.gamma_opt(name, float(x), **param)
                mcs = qe_monte_carlo(qz, "laplace", scale=b, n=mc_n, gamma=g, seed=seed, target="forward")
                left.plot([x], [mc1.qe], marker="o", ms=3.5, color=color, ls="none")
                right.plot([x], [mcs.qe], marker="o", ms=3.5, color=color, ls="none")
    for a, title in ((left, r"QE($\gamma$ = 1) = E[(F $-$ S)$^2$]"), (right, r"QE* = E[(F $-$ $\gamma^*$ S)$^2$]")):
        a.set_xscale("log")
        a.set_xlim(lo, hi)
        a.set_xlabel(r"$x = \omega_0 b$ (weights $w \sim$ Laplace(0, $b$))", fontsize=9)
        a.set_title(title + ", S = sign sin($\\omega_0 w$)" + (f"; dots: Monte Carlo n = {mc_n}" if mc_n else ""),
                    fontsize=9)
        a.grid(True, which="both", alpha=0.25)
    left.set_ylim(0.0, 1.02)
    right.set_ylim(0.0, 0.14)
    left.set_ylabel("quantization error (dimensionless)", fontsize=9)
    right.legend(fontsize=7, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The rows of ``RUN/metrics.jsonl`` (a BiperError when it is missing or unreadable)."""
    path = Path(run) / "metrics.jsonl"
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise BiperError(f"cannot read {path}: {exc}") from None


def plot_flips(path: str | os.PathLike, runs: Sequence[str | os.PathLike], labels: Sequence[str] | None = None) -> str:
    """Flip rate (log scale), mean |B'| and test accuracy per epoch of each run; returns the path."""
    if not runs:
        raise BiperError("plot_flips needs at least one run folder")
    labels = list(labels) if labels else [Path(r).name for r in runs]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for i, (run, label) in enumerate(zip(runs, labels)):
        rows = read_metrics(run)
        epochs = np.arange(1, len(rows) + 1)
        color = f"C{i % 10}"
        flips = [np.nan if r.get("flip_rate") is None else max(r["flip_rate"], 1e-7) for r in rows]
        axes[0].plot(epochs, flips, marker="o", ms=3, color=color, label=label)
        axes[1].plot(epochs, [np.nan if r.get("mean_abs_bprime") is None else r["mean_abs_bprime"] for r in rows],
                     marker="o", ms=3, color=color, label=label)
        axes[2].plot(epochs, [r.get("test_acc") for r in rows], marker="o", ms=3, color=color, label=label)
    axes[0].set_yscale("log")
    for a, title in zip(axes, ("fraction of deployed weight signs flipped since the previous epoch",
                               "mean |B'(w)| over binary weights", "test accuracy (%)")):
        a.set_xlabel("epoch (over all stages)", fontsize=9)
        a.set_title(title, fontsize=9)
        a.grid(True, alpha=0.25)
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7, framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)
