"""Experiment: KSD against perturbed KSD (spKSD, ospKSD) on a bimodal target, against Δ.

The setting of Liu, Duncan & Gandy (ICML 2023, Section 6.1, and their `run_bimodal.sh`): the
target is p = ½ N(0, I_d) + ½ N(Δ e_1, I_d) and the sample is drawn from N(0, I_d), the left
component alone, so q and p share their modes but not their weights. The KSD test (IMQ kernel
(1 + r²/h²)^(-1/2), h the median distance, multinomial bootstrap) loses its power as Δ grows,
because the score of p near 0 is nearly that of N(0, I); pKSD (`kmethods.pksd_test`, with
its defaults: BFGS mode finding, the mode-jumping MH kernel, θ ∈ linspace(0.5, 1.5, 21),
T = 10, the IMQ kernel with the median bandwidth of each sample) keeps it. The paper reports at
n = 1000 a KSD power of about 1.0 / 0.35 / 0.05 at Δ = 4 / 5 / 6 and spKSD, ospKSD power near 1
for every Δ (`published_*`, drawn on the plot).

For every (method, Δ), `replicates` samples are tested, `batch_size` at once (`jax.vmap`, one
compilation per method, Δ being a traced argument); the same draws serve every Δ and method.
With `null_delta` set, each method also runs under the null (the sample drawn from the mixture
itself at that Δ), which estimates its level. Reported: rejection rates with 95% binomial
half-widths, the number of tests whose statistic or p-value was not finite (`num_nonfinite`;
they count as not rejecting), and the seconds each (method, Δ) took (the first Δ of a method
includes its compilation).
"""

from __future__ import annotations

import dataclasses
import time
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_non_empty, require_probability
from experiments.plots import binomial_halfwidth, pyplot, rate_bars, style_axis
from experiments.tasks import nonfinite

Method = Literal["ksd", "spksd", "ospksd"]
_LABELS = {"ksd": "KSD", "spksd": "spKSD", "ospksd": "ospKSD"}
# Row blocks of the KSD baseline's Stein matrix (blocks that stay in cache are faster on a CPU
# than kmethods.pairwise's default; see kmethods.pksd_test).
_KSD_BLOCK = 256
# The KSD baseline's median heuristic, on a subset of this many points as pKSD's default kernel
# (an XLA:CPU sort of all n(n-1)/2 distances at n = 1000 took longer than the test itself).
_MEDIAN_POINTS = 256


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      sample_size: n, points per sample.
      dim: dimension d (the modes are separated along the first axis).
      deltas: mode separations Δ of the target; the sample is N(0, I_d) for each.
      null_delta: Δ of the level check, where the sample is drawn from the target (None: skip).
      methods: tests compared: "ksd", "spksd", "ospksd".
      replicates: samples tested per (method, Δ).
      batch_size: replicates vmapped at once (memory grows with it).
      num_bootstrap: multinomial bootstrap draws per test (800 as the authors').
      num_steps: T, transitions per perturbation.
      theta_min, theta_max, num_thetas: the grid of jump scales θ (linspace).
      alpha: level.
      published_ksd, published_pksd: (Δ, rejection rate) read from the paper at n = 1000,
        drawn on the plot.
    """

    sample_size: int = 1000
    dim: int = 1
    deltas: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
    null_delta: float | None = 6.0
    methods: tuple[Method, ...] = ("ksd", "spksd", "ospksd")
    replicates: int = 80
    batch_size: int = 20
    num_bootstrap: int = 800
    num_steps: int = 10
    theta_min: float = 0.5
    theta_max: float = 1.5
    num_thetas: int = 21
    alpha: float = 0.05
    published_ksd: tuple[tuple[float, float], ...] = ((4.0, 1.0), (5.0, 0.35), (6.0, 0.05))
    published_pksd: tuple[tuple[float, float], ...] = ((4.0, 1.0), (5.0, 1.0), (6.0, 1.0))

    def __post_init__(self):
        if self.sample_size < 4:
            raise ConfigError("`params.sample_size` must be >= 4 (ospKSD splits it in two).")
        require_non_empty(self, ("deltas", "methods"))
        require_at_least(self, ("dim", "replicates", "batch_size", "num_bootstrap", "num_steps"))
        require_at_least(self, ("num_thetas",))
        require_probability(self)
        if not 0.0 < self.theta_min <= self.theta_max:
            raise ConfigError("`params.theta_min` must be positive and <= `params.theta_max`.")
        if self.replicates % self.batch_size:
            raise ConfigError("`params.replicates` must be a multiple of `params.batch_size`.")


def bimodal_log_prob(z, delta):
    """log(½ N(z; 0, I) + ½ N(z; delta e_1, I)) up to a constant, for one point z of shape (d,)."""
    shifted = z.at[0].add(-delta)
    return jnp.logaddexp(-0.5 * jnp.sum(z**2), -0.5 * jnp.sum(shifted**2))


@partial(jax.jit, static_argnums=(1, 2, 3))
def draw_samples(key, replicates, n, dim, delta=None):
    """(replicates, n, dim) draws from N(0, I), or from the target at `delta` when given."""
    k_normal, k_coin = jax.random.split(key)
    z = jax.random.normal(k_normal, (replicates, n, dim))
    if delta is None:
        return z
    right = jax.random.bernoulli(k_coin, 0.5, (replicates, n))
    return z.at[..., 0].add(jnp.where(right, jnp.asarray(delta, z.dtype), 0.0))


def rejections(key, samples, delta, thetas, *, method, alpha, num_bootstrap, num_steps):
    """Tests every sample of the batch (R, n, d) against the bimodal target at `delta`
    (traced, so one compilation serves every Δ); returns (reject, p_value), each (R,)."""
    reject, p_value, _ = outcomes(
        key,
        samples,
        delta,
        thetas,
        method=method,
        alpha=alpha,
        num_bootstrap=num_bootstrap,
        num_steps=num_steps,
    )
    return reject, p_value


@partial(jax.jit, static_argnames=("method", "alpha", "num_bootstrap", "num_steps"))
def outcomes(key, samples, delta, thetas, *, method, alpha, num_bootstrap, num_steps):
    """`rejections` and, per sample, whether its statistic or p-value was not finite:
    (reject, p_value, nonfinite), each (R,)."""

    def log_prob(z):
        return bimodal_log_prob(z, delta)

    def one(key, x):
        if method == "ksd":
            kernel = km.IMQ(bandwidth=km.median_bandwidth(x, max_points=_MEDIAN_POINTS))
            return km.ksd_test(
                key,
                x,
                jax.grad(log_prob),
                kernel,
                num_bootstrap=num_bootstrap,
                alpha=alpha,
                block_size=_KSD_BLOCK,
            )
        return km.pksd_test(
            key,
            x,
            log_prob,
            method=method,
            thetas=thetas,
            num_steps=num_steps,
            num_bootstrap=num_bootstrap,
            alpha=alpha,
        )

    res = jax.vmap(one)(jax.random.split(key, samples.shape[0]), samples)
    return res.reject, res.p_value, nonfinite(res)


def run(cfg: Config, ctx) -> dict:
    """Rejection rate of every method at every Δ (and under the null)."""
    root = ctx.key()
    n, d, reps = cfg.sample_size, cfg.dim, cfg.replicates
    thetas = jnp.linspace(cfg.theta_min, cfg.theta_max, cfg.num_thetas)
    alternative = draw_samples(jax.random.fold_in(root, 0), reps, n, d)
    cases = [("alternative", delta) for delta in cfg.deltas]
    if cfg.null_delta is not None:
        cases.append(("null", cfg.null_delta))
    units = [(m, h, delta) for m in cfg.methods for h, delta in cases]

    rows = []
    for i, (method, hypothesis, delta) in enumerate(
        ctx.progress(units, desc="pksd_bimodal", total=len(units))
    ):
        if hypothesis == "null":
            samples = draw_samples(jax.random.fold_in(root, 1), reps, n, d, delta)
        else:
            samples = alternative
        # The same test keys for every method and Δ (common random numbers).
        key = jax.random.fold_in(root, 2)

        def compute(samples=samples, method=method, hypothesis=hypothesis, delta=delta, key=key):
            start = time.perf_counter()
            rejects, bad = [], []
            for b in range(0, reps, cfg.batch_size):
                reject, _, nonfinite_b = outcomes(
                    jax.random.fold_in(key, b),
                    ctx.shard(samples[b : b + cfg.batch_size]),
                    jnp.asarray(delta, samples.dtype),
                    thetas,
                    method=method,
                    alpha=cfg.alpha,
                    num_bootstrap=cfg.num_bootstrap,
                    num_steps=cfg.num_steps,
                )
                rejects.append(np.asarray(reject))
                bad.append(np.asarray(nonfinite_b))
            rate = float(np.mean(np.concatenate(rejects)))
            return {
                "method": method,
                "hypothesis": hypothesis,
                "delta": float(delta),
                "rejection_rate": rate,
                "rate_halfwidth95": binomial_halfwidth(rate, reps),
                # tests whose statistic or p-value was not finite (they never reject)
                "num_nonfinite": int(np.sum(np.concatenate(bad))),
                "seconds": time.perf_counter() - start,
            }

        rows.append(ctx.unit(f"{i:02d}-{method}-{hypothesis}-delta{delta:g}", compute))

    _plot(rows, cfg, ctx)
    power = {m: {} for m in cfg.methods}
    for r in rows:
        if r["hypothesis"] == "alternative":
            power[r["method"]][r["delta"]] = r["rejection_rate"]
    level = {r["method"]: r["rejection_rate"] for r in rows if r["hypothesis"] == "null"}
    return {
        "sample_size": n,
        "dim": d,
        "replicates": reps,
        "alpha": cfg.alpha,
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "seconds_total": sum(r["seconds"] for r in rows),
        "power": {m: {f"{k:g}": v for k, v in p.items()} for m, p in power.items()},
        "level": level,
        "records": rows,
    }


def _plot(rows, cfg, ctx):
    fig, ax = pyplot().subplots(figsize=(6, 4))
    # Curves offset a little along Δ, so that equal rates (all at 1) stay visible.
    offsets = {m: 0.06 * (k - (len(cfg.methods) - 1) / 2) for k, m in enumerate(cfg.methods)}
    for m in cfg.methods:
        pts = [r for r in rows if r["method"] == m and r["hypothesis"] == "alternative"]
        rate = ("rejection_rate", "rate_halfwidth95")
        xs = [r["delta"] + offsets[m] for r in pts]
        bars = rate_bars(ax, xs, pts, *rate, f"{_LABELS[m]} (power)", ms=4)
        for r in rows:
            if r["method"] == m and r["hypothesis"] == "null":
                rate_bars(
                    ax,
                    [r["delta"] + offsets[m]],
                    [r],
                    *rate,
                    f"{_LABELS[m]} (level: sample from p)",
                    marker="x",
                    ms=8,
                    linestyle="none",
                    color=bars.lines[0].get_color(),
                )
    if cfg.published_ksd:
        ax.plot(*zip(*cfg.published_ksd, strict=True), "k*", ms=10, label="paper: KSD")
    if cfg.published_pksd:
        ax.plot(*zip(*cfg.published_pksd, strict=True), "kD", ms=6, mfc="none", label="paper: pKSD")
    ax.axhline(cfg.alpha, color="grey", linestyle="--", linewidth=1, label=f"alpha = {cfg.alpha}")
    title = (
        f"½N(0,1) + ½N(Δ,1) vs N(0,1), n = {cfg.sample_size}, d = {cfg.dim}, "
        f"{cfg.replicates} replicates"
    )
    style_axis(ax, "mode separation Δ", "rejection rate", title, ylim=(-0.02, 1.05))
    ctx.save_figure(fig, "pksd_bimodal")
