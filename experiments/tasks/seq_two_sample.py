"""Experiment: the sequential two-sample test by betting against a mean shift.

P = N(0, I_d) and Q = N(delta e_1, I_d); at each step one point of each arrives, and
`kmethods.mmd_betting_test` (Shekhar & Ramdas, 2023: the plug-in MMD witness of the past as
payoff, ONS or aGRAPA betting) bets on it with a Gaussian kernel of fixed bandwidth
(sqrt(d) unless set). For every delta and betting strategy, `num_streams` streams of
`num_steps` steps run at once (`jax.vmap`); the same draws serve every delta. Reported: the
rejection rate (95% binomial half-width), the number of streams whose wealth became NaN
(`num_nonfinite`; they never reject) and the mean normalised stopping time tau / T (tau = T
when a stream never rejects) against delta. At delta = 0 the rate is the test's
false-alarm rate under continuous monitoring, at most alpha. `seconds` is the wall time of all
streams of one (delta, bet); the first delta of each bet includes compilation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_non_empty, require_probability
from experiments.plots import binomial_halfwidth, sequential_rate_plot
from experiments.tasks import nonfinite_streams

Bet = Literal["ons", "agrapa"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      num_steps: observations of each sample per stream, T.
      dim: dimension d.
      shifts: mean shifts delta of Q along the first axis.
      bets: betting strategies compared.
      num_streams: streams per (delta, bet).
      alpha: level.
      bandwidth: Gaussian kernel bandwidth (None: sqrt(d)).
    """

    num_steps: int = 1000
    dim: int = 5
    shifts: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
    bets: tuple[Bet, ...] = ("ons", "agrapa")
    num_streams: int = 200
    alpha: float = 0.05
    bandwidth: float | None = None

    def __post_init__(self):
        if self.num_steps < 2:
            raise ConfigError("`params.num_steps` must be >= 2.")
        require_non_empty(self, ("shifts", "bets"))
        require_at_least(self, ("dim", "num_streams"))
        require_probability(self)
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ConfigError("`params.bandwidth` must be positive (or null for sqrt(dim)).")


def _batched_test(key, alpha, bet):
    def one(x, y, kernel):
        return km.mmd_betting_test(key, x, y, kernel, alpha=alpha, bet=bet)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


def run(cfg: Config, ctx) -> dict:
    """Rejection rate and stopping time for every (delta, bet)."""
    root = ctx.key()
    shape = (cfg.num_streams, cfg.num_steps, cfg.dim)
    kx, ky = jax.random.split(jax.random.fold_in(root, 0))
    # the streams split over the run's devices (each device runs its share of the vmap)
    x, noise = ctx.shard((jax.random.normal(kx, shape), jax.random.normal(ky, shape)))
    direction = jnp.zeros((1, 1, cfg.dim), x.dtype).at[0, 0, 0].set(1.0)
    bandwidth = cfg.bandwidth if cfg.bandwidth is not None else math.sqrt(cfg.dim)
    kernel = km.Gaussian(bandwidth)
    tests = {bet: _batched_test(jax.random.fold_in(root, 1), cfg.alpha, bet) for bet in cfg.bets}

    rows = []
    units = [(delta, bet) for delta in cfg.shifts for bet in cfg.bets]
    for delta, bet in ctx.progress(units, desc="seq_two_sample", total=len(units)):
        y = noise + delta * direction
        start = time.perf_counter()
        res = jax.block_until_ready(tests[bet](x, y, kernel))
        seconds = time.perf_counter() - start
        rate = float(jnp.mean(res.reject))
        normalised = np.asarray(res.stopping_time, np.float64) / cfg.num_steps
        row = {
            "shift": delta,
            "bet": bet,
            "rejection_rate": rate,
            "rate_halfwidth95": binomial_halfwidth(rate, cfg.num_streams),
            # streams whose wealth became NaN (they never reject)
            "num_nonfinite": nonfinite_streams(res),
            "stopping_time_mean": float(np.mean(normalised)),
            "stopping_time_median": float(np.median(normalised)),
            "seconds": seconds,
        }
        ctx.log_metrics(**row)
        rows.append(row)
        ctx.write_json("partial_rows.json", rows)  # nothing lost if interrupted

    _plot(rows, cfg, bandwidth, ctx)
    return {
        "num_steps": cfg.num_steps,
        "dim": cfg.dim,
        "bandwidth": bandwidth,
        "num_streams": cfg.num_streams,
        "records": rows,
    }


def _plot(rows, cfg, bandwidth, ctx):
    title = (
        f"N(0, I) vs N(delta e1, I), d = {cfg.dim}, T = {cfg.num_steps}, "
        f"bw = {bandwidth:.2g}, {cfg.num_streams} streams"
    )
    fig = sequential_rate_plot(
        rows, "shift", bets=cfg.bets, alpha=cfg.alpha, x_label="mean shift delta", title=title
    )
    ctx.save_figure(fig, "seq_two_sample")
