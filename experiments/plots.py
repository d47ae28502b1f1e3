"""Figures for the experiment tasks (matplotlib with the Agg backend, imported lazily)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def binomial_halfwidth(rate: float, replicates: int, z: float = 1.96) -> float:
    """Half-width of the normal-approximation 95% interval of a binomial proportion."""
    return z * math.sqrt(max(rate * (1.0 - rate), 1e-12) / replicates)


def style_axis(
    ax,
    xlabel: str,
    ylabel: str,
    title: str = "",
    *,
    xlog: float | None = None,
    ylog: float | None = None,
    ylim: tuple[float, float] | None = None,
    legend: bool = True,
    legend_size: float | None = 7,
    legend_title: str | None = None,
) -> None:
    """The set-up every task figure gives an axis, after its lines are drawn: log scales,
    y limits, labels, title and legend.

    Args:
      ax: the matplotlib axis.
      xlabel, ylabel: the axis labels.
      title: the axis title (none when empty).
      xlog, ylog: the base of a log scale on that axis (10, 2, 4); None keeps it linear.
      ylim: (bottom, top) of the y axis; None keeps matplotlib's.
      legend: whether to draw a legend of the labelled lines.
      legend_size: the legend's font size (None: matplotlib's default).
      legend_title: the legend's title.
    """
    if xlog is not None:
        ax.set_xscale("log", base=xlog)
    if ylog is not None:
        ax.set_yscale("log", base=ylog)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=legend_size, title=legend_title)


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
    plt = pyplot()
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
    style_axis(
        ax, "sample size n", "rejection rate", title, xlog=10, ylim=(-0.02, 1.02), legend_size=8
    )
    # after the log scale, which would reset them
    ax.set_xticks(list(sample_sizes), [str(n) for n in sample_sizes])
    ax.minorticks_off()
    return fig


_BET_LABELS = {"ons": "ONS", "agrapa": "aGRAPA"}


def rate_bars(ax, xs, rows, rate, halfwidth, label, **style):
    """The rates `r[rate]` of `rows` against `xs` with error bars `r[halfwidth]` (a 95%
    binomial half-width), circles joined by a line; `style` adds to or overrides it."""
    ys, err = [r[rate] for r in rows], [r[halfwidth] for r in rows]
    return ax.errorbar(xs, ys, yerr=err, **{"marker": "o", "capsize": 3, "label": label, **style})


def sequential_rate_plot(rows, x_key, *, bets, alpha, x_label, title, reference=()):
    """Rejection rate (95% binomial bars) and mean normalised stopping time against `x_key`.

    One line per betting strategy; `reference` holds (x, rate) points drawn as stars. Shared by
    the sequential-test experiments (skit_power, seq_two_sample).
    """
    plt = pyplot()
    fig, (ax_rate, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for bet in bets:
        pts = [r for r in rows if r["bet"] == bet]
        xs = [r[x_key] for r in pts]
        rate_bars(ax_rate, xs, pts, "rejection_rate", "rate_halfwidth95", _BET_LABELS[bet])
        ax_time.plot(xs, [r["stopping_time_mean"] for r in pts], "o-", label=_BET_LABELS[bet])
    if reference:
        ax_rate.plot(*zip(*reference, strict=True), "k*", ms=9, label="authors' code")
    ax_rate.axhline(alpha, color="grey", linestyle="--", linewidth=1, label=f"alpha = {alpha}")
    style_axis(ax_rate, x_label, "rejection rate", title, ylim=(-0.02, 1.02), legend_size=8)
    style_axis(
        ax_time,
        x_label,
        "mean stopping time / T",
        "normalised stopping time (T if never rejected)",
        ylim=(0, 1.05),
        legend_size=8,
    )
    return fig
