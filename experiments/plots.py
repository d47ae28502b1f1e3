"""Figures for the experiment tasks (matplotlib with the Agg backend, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def binomial_halfwidth(rate: float, replicates: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation 95% interval of a binomial proportion."""
    return z * math.sqrt(max(rate * (1.0 - rate), 1e-12) / replicates)


def rejection_plot(
    sample_sizes: Sequence[int],
    rates: Mapping[str, Sequence[float]],
    *,
    alpha: float,
    title: str = "",
    replicates: int | None = None,
    ax=None,
):
    """Rejection rate against sample size, one line per test, with the level alpha dashed.

    Args:
      sample_sizes: the x values.
      rates: label -> rejection rate at each sample size.
      alpha: the nominal level, drawn as a dashed line.
      title: axis title.
      replicates: when given, 95% binomial error bars.
      ax: an existing axis to draw on; a new figure otherwise.

    Returns:
      The figure.
    """
    plt = _pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3.5))
    else:
        fig = ax.figure
    for label, values in rates.items():
        err = None
        if replicates:
            err = [binomial_halfwidth(r, replicates) for r in values]
        ax.errorbar(sample_sizes, values, yerr=err, marker="o", capsize=3, label=label)
    ax.axhline(alpha, color="grey", linestyle="--", linewidth=1, label=f"alpha = {alpha}")
    ax.set_xscale("log")
    ax.set_xticks(list(sample_sizes), [str(n) for n in sample_sizes])
    ax.minorticks_off()
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("sample size n")
    ax.set_ylabel("rejection rate")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
