"""Figures of the QE analysis. matplotlib (the ``plot`` extra) is imported inside each function.

- `plot_qe_curve`: BiPer's QE against ``x = omega0 b`` on a log axis: the closed forms for
  gamma = 1 and gamma = gamma*, their limits, and Monte Carlo points drawn at several ``b`` with
  ``omega0 = x / b`` (the points fall on one curve because QE depends on the product only).
- `plot_weight_histograms`: one panel per binary layer: histogram of the latent weights, the
  fitted Laplace density, and BiPer's square wave ``sign(sin(omega0 w))`` with the first-lobe
  edges ``+-pi/omega0``.

Example::

    >>> from biper.analysis.plots import plot_qe_curve
    >>> plot_qe_curve("qe.png", mc_n=2000)      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ..errors import BiperError
from .. import theory

__all__ = ["plot_qe_curve", "plot_weight_histograms"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise BiperError("plotting needs matplotlib: pip install 'biper[plot]'") from None
    import sys

    if "matplotlib.pyplot" not in sys.modules:  # headless unless the caller already chose a backend
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> str:
    plt = _pyplot()
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        fig.savefig(path, dpi=120, metadata={"Software": None} if path.lower().endswith(".png") else None)
    except ValueError as exc:
        raise BiperError(f"cannot save plot {path!r}: {exc}") from None
    finally:
        plt.close(fig)
    return path


def _draw_monte_carlo(axes, handles, xs, mc_n: int, bs, seed: int) -> None:
    """Monte Carlo QE points at each x for every b (omega0 = x / b), gamma = 1 and gamma*."""
    import torch
    from matplotlib.lines import Line2D

    from ..quantizers import get_quantizer
    from .measure import qe_monte_carlo

    ax, zoom = axes
    markers = "osD^v"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small estimates: extra threads only add overhead
    try:
        for k, b in enumerate(bs):
            shift = 1.0 + 0.07 * (k - (len(bs) - 1) / 2)  # side by side, each at its own exact x
            for gamma, color in ((1.0, "C0"), ("opt", "C1")):
                xk, ys, es = xs * shift, [], []
                for xv in xk:
                    q = get_quantizer("biper", omega0=float(xv / b))
                    mc = qe_monte_carlo(q, "laplace", scale=b, n=mc_n, gamma=gamma, seed=seed + k)
                    ys.append(mc.qe)
                    es.append(2 * mc.stderr)
                for a in (ax, zoom) if gamma == "opt" else (ax,):
                    a.errorbar(xk, ys, yerr=es, fmt=markers[k % len(markers)], ms=4, mfc="none",
                               color=color, lw=0.8, capsize=2)
            handles.append(Line2D([], [], marker=markers[k % len(markers)], mfc="none", color="0.2",
                                  ls="none", label=f"Monte Carlo, b = {b:g}, omega0 = x/b"))
    finally:
        torch.set_num_threads(threads)
    handles.append(Line2D([], [], color="none", label=f"(n = {mc_n} draws per point, bars = ±2 s.e.)"))


def plot_qe_curve(path: str | os.PathLike, *, x_range: tuple[float, float] = (0.03, 100.0),
                  mc_n: int = 20_000, mc_points: int = 11, bs: Sequence[float] = (0.01, 0.05, 0.2),
                  seed: int = 0, mark_x: float | None = None) -> str:
    """Draw QE(x, 1), QE*(x) and E[sin^2](x) with Monte Carlo points; returns the path written.

    ``mc_n = 0`` draws the theory only; ``mark_x`` adds a vertical line (e.g. a layer's x).
    """
    lo, hi = x_range
    if not (0 < lo < hi and math.isfinite(hi)):
        raise BiperError(f"x_range must satisfy 0 < low < high, got {x_range!r}")
    plt = _pyplot()
    from matplotlib.lines import Line2D

    x = np.logspace(math.log10(lo), math.log10(hi), 400)
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1.25, 1]})
    for a in (ax, zoom):
        a.plot(x, theory.qe(x, 1.0), color="C0", lw=2)
        a.plot(x, theory.qe_opt(x), color="C1", lw=2)
    ax.plot(x, theory.e_sin2(x), color="0.45", lw=1.2, ls="--")
    ax.axhline(theory.LIMITS["qe_gamma1"], color="C0", lw=0.8, ls=":")
    for a in (ax, zoom):
        a.axhline(theory.LIMITS["qe_opt"], color="C1", lw=0.8, ls=":")
    ax.text(lo * 1.1, theory.LIMITS["qe_gamma1"], r"limit 3/2 $-$ 4/$\pi$", ha="left", va="bottom", color="C0", fontsize=8)
    zoom.text(lo * 1.1, theory.LIMITS["qe_opt"], r"limit 1/2 $-$ 4/$\pi^2$", ha="left", va="bottom", color="C1", fontsize=8)
    px, py = theory.QE_OPT_PEAK
    zoom.plot([px], [py], marker="*", color="k", ms=8, ls="none")
    zoom.annotate(f"max QE* = {py:.4f} at x = {px:.3f}", (px, py), (px * 0.12, py * 1.04), fontsize=8,
                  arrowprops={"arrowstyle": "->", "lw": 0.7})
    handles = [Line2D([], [], color="C0", lw=2, label=r"QE($\gamma$ = 1), closed form"),
               Line2D([], [], color="C1", lw=2, label=r"QE($\gamma^*$) = QE*, closed form"),
               Line2D([], [], color="0.45", lw=1.2, ls="--", label=r"E[sin$^2(\omega_0 w)$] = QE($\gamma$ = 0)"),
               Line2D([], [], color="0.3", lw=0.8, ls=":", label="limits as x → ∞")]
    if mc_n:
        _draw_monte_carlo((ax, zoom), handles, np.logspace(math.log10(lo), math.log10(hi / 2.0), mc_points),
                          mc_n, bs, seed)  # stop at hi/2 to keep the limit labels clear
    if mark_x is not None:
        for a in (ax, zoom):
            a.axvline(mark_x, color="k", lw=0.8, ls="-.")
        handles.append(Line2D([], [], color="k", lw=0.8, ls="-.", label=f"requested x = {mark_x:g}"))
    xlabel = r"$x = \omega_0 b$ (dimensionless: $\omega_0$ in rad per weight unit, $b$ in weight units)"
    for a in (ax, zoom):
        a.set_xscale("log")
        a.set_xlim(lo, hi)
        a.set_xlabel(xlabel, fontsize=9)
        a.grid(True, which="both", alpha=0.25)
    ax.set_ylim(0.0, 1.02)
    zoom.set_ylim(0.0, 0.125)
    ax.set_ylabel(r"QE = E[(sin $\omega_0 w$ $-$ $\gamma$ sign sin $\omega_0 w$)$^2$] (dimensionless)", fontsize=9)
    zoom.set_ylabel("QE* (dimensionless)", fontsize=9)
    ax.set_title(r"BiPer quantization error, latent weights $w \sim$ Laplace(0, $b$)", fontsize=10)
    zoom.set_title(r"Zoom on QE* (optimal scale $\gamma^* = $E|sin $\omega_0 w$|)", fontsize=10)
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.9)
    fig.tight_layout()
    return _save(fig, path)


def plot_weight_histograms(path: str | os.PathLike, layers, *, max_layers: int = 12, bins: int = 100) -> str:
    """Histogram of each layer's latent weights with the Laplace fit and the square wave.

    ``layers`` is a list of `biper.analysis.report.LayerSpec` (as returned by ``load_layers``);
    at most ``max_layers`` panels are drawn.
    """
    from .measure import laplace_b

    if not layers:
        raise BiperError("no layer to plot")
    if max_layers < 1:
        raise BiperError(f"max_layers must be >= 1, got {max_layers!r}")
    plt = _pyplot()
    layers = list(layers)[:max_layers]
    cols = min(3, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    handles = {}
    for ax, spec in zip(axes.flat, layers):
        w = spec.weight.detach().double().flatten().cpu().numpy()
        loc, b = float(np.median(w)), laplace_b(spec.weight)
        span = max(float(np.abs(w).max()), 1e-12)
        grid = np.linspace(-span, span, 1001)
        h = ax.hist(w, bins=bins, range=(-span, span), density=True, color="C0", alpha=0.55,
                    label="latent weights w")[2][0]
        (fit,) = ax.plot(grid, np.exp(-np.abs(grid - loc) / b) / (2 * b), color="C3", lw=1.2,
                         label="Laplace fit (ML)")
        handles.setdefault("hist", h)
        handles.setdefault("fit", fit)
        title = f"{spec.name} [{spec.quantizer.name}]\nb = {b:.3g}"
        omega0 = getattr(spec.quantizer, "omega0", None)
        if spec.quantizer.name == "biper" and omega0:
            title += f", $\\omega_0$ = {omega0:.3g}, $\\omega_0 b$ = {omega0 * b:.3g}"
            twin = ax.twinx()
            wave = np.where(np.sin(omega0 * grid) >= 0, 1.0, -1.0)
            (sq,) = twin.plot(grid, wave, color="C2", lw=1.0, label=r"sign(sin($\omega_0 w$))")
            twin.set_ylim(-1.6, 1.6)
            twin.set_yticks([-1, 0, 1])
            twin.set_ylabel("binary weight (±1)", fontsize=8)
            edge = math.pi / omega0
            if edge < span:
                for e in (-edge, edge):
                    lobe = ax.axvline(e, color="k", lw=0.7, ls=":", label=r"first lobe $\pm\pi/\omega_0$")
                handles.setdefault("lobe", lobe)
            handles.setdefault("wave", sq)
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("latent weight w (dimensionless)", fontsize=8)
        ax.set_ylabel("density (per unit of w)", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.legend(list(handles.values()), [hd.get_label() for hd in handles.values()],
               loc="lower center", ncol=len(handles), fontsize=8)
    fig.suptitle("Latent weight distributions of the binary layers", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    return _save(fig, path)
