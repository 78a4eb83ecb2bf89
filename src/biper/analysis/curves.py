"""Training curves of several methods over seeds: mean line with a min-max band per method.

Example::

    >>> plot_accuracy_curves("curves.png", {"biper": [[40.0, 55.0], [42.0, 53.0]],
    ...                                     "bnn": [[35.0, 50.0], [36.0, 49.0]]})
    'curves.png'
"""

from __future__ import annotations

import os

from .plots import _pyplot, _save

__all__ = ["plot_accuracy_curves"]


def plot_accuracy_curves(path: str | os.PathLike, curves: dict[str, list[list[float]]], *,
                         title: str = "", ylabel: str = "test accuracy (%)") -> str:
    """``curves[method]`` is one list of per-epoch values per seed; seeds of different length
    are cut to the shortest. Mean over seeds as a line, min..max over seeds as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    palette = plt.get_cmap("tab20" if len(curves) > 10 else "tab10").colors  # one colour per method
    for k, (name, runs) in enumerate(curves.items()):
        n = min(len(r) for r in runs) if runs else 0
        if n == 0:
            continue
        cols = [[r[i] for r in runs] for i in range(n)]
        xs = list(range(1, n + 1))
        mean = [sum(c) / len(c) for c in cols]
        line, = ax.plot(xs, mean, marker="o", markersize=3, color=palette[k % len(palette)],
                        label=f"{name} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], alpha=0.2,
                            color=line.get_color(), linewidth=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
