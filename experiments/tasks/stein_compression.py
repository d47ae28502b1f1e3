"""Experiment: debiased compression of a biased sample toward a target known by its score.

The sample is biased, the target p is known only through its score s = grad log p, and the
coreset of sqrt(n) points must represent p, not the sample (Riabiz et al., 2022; Li, Dwivedi &
Mackey, 2024). For each target, n and method we report the kernel Stein discrepancy of the
coreset to p (`coreset_ksd`: `kmethods.ksd2` V-statistic with the coreset's weights, Langevin
Stein kernel on the IMQ base (1 + r^2 / h^2)^(-1/2), float64), its time, and, for the
mixtures, the fraction of the coreset's mass on the left mode (x_1 < 0; 0.5 under p).

Targets (the first two on the 2-d mixture p = 0.5 N((-2, 0), I) + 0.5 N((2, 0), I), h = 1):

- `mixture`: n i.i.d. points of the same mixture with the wrong weights (`sample_weights`,
  0.8 / 0.2 by default);
- `mcmc`: a random-walk Metropolis chain on p (`rwm_chain`, one jitted `lax.scan`) of n steps
  started far out at `mcmc_start`, kept whole: its burn-in contaminates the sample;
- `lotka_volterra`: the posterior over the 4 log-parameters of a Lotka-Volterra ODE
  (`experiments.tasks.ode_posterior`, after Riabiz et al., 2022), scores by autodiff through
  RK4, sampled by a random-walk Metropolis chain of n steps (`ode_step`) from theta = 1,
  burn-in kept; h = `ode_bandwidth`.

Methods (`methods`, a list; any subset): `uniform` (a uniform subsample without replacement),
`standard` (every (n / s)-th point), `stein_thin` (greedy Stein thinning), `skt` (Stein kernel
thinning), `lskt` (its low-rank form, rank ceil(n^`rank_exponent`)) and, where this kmethods
has it, `stein_cholesky` (SC, simplex weights on its points) and `lsc` (low-rank SC, the same
rank), and `sc_cp`, `lsc_cp` (the same with the paper's constant-preserving, signed weights);
`input` is the whole biased sample itself (no compression, up to
`input_max_n`: its KSD is an n^2 sum).

All computations run in float64 on precomputed scores. Each (target, n) is a resumable unit
over `repeats` seeds (keys fixed by the config's seed); KSDs and mode masses are medians over
the seeds; times are the first call (compilation included) and the median of the later seeds'
calls. Slopes are least-squares fits of log KSD on log n over all n.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least
from experiments.plots import style_axis
from experiments.tasks.kt_mmd_rate import fitted_slope
from experiments.tasks.ode_posterior import (
    lotka_volterra_chain,
    lotka_volterra_data,
    lotka_volterra_scores,
    random_walk_chain,
)
from experiments.timing import timed
from kmethods import debias, thinning

Target = Literal["mixture", "mcmc", "lotka_volterra"]

# Methods that return a coreset; `input` (the whole sample) is a baseline row, not a method.
KSEQ_METHODS = (
    "uniform",
    "standard",
    "stein_thin",
    "skt",
    "lskt",
    "stein_cholesky",
    "lsc",
    "sc_cp",
    "lsc_cp",
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      sample_sizes: n; the coreset has floor(sqrt(n)) points.
      targets: `mixture` (i.i.d. with wrong weights) and/or `mcmc` (a random-walk chain with
        burn-in).
      methods: compression methods: uniform, standard, stein_thin, skt, lskt, stein_cholesky,
        lsc, sc_cp, lsc_cp (the last four where `kmethods.debias` has them).
      repeats: seeds per (target, n); medians are reported.
      rank_exponent: LSKT's rank is ceil(n^rank_exponent).
      sample_weights: the biased sample's weights of the modes (-2, 0) and (2, 0).
      mcmc_start: the chain's first point.
      mcmc_step: the standard deviation of the random walk's Gaussian proposals.
      ode_step: that of the `lotka_volterra` chain, in log-parameter space.
      ode_bandwidth: the IMQ base kernel's length scale for `lotka_volterra` (the posterior's
        median interpoint distance is about 0.2; the mixtures use 1).
      input_max_n: largest n whose whole biased sample's KSD is reported (an n^2 sum).
    """

    sample_sizes: tuple[int, ...] = (256, 1024, 4096, 16384)
    targets: tuple[Target, ...] = ("mixture", "mcmc")
    methods: tuple[str, ...] = ("uniform", "standard", "stein_thin", "skt", "lskt")
    repeats: int = 3
    rank_exponent: float = 0.5
    sample_weights: tuple[float, float] = (0.8, 0.2)
    mcmc_start: tuple[float, float] = (5.0, 5.0)
    mcmc_step: float = 0.5
    ode_step: float = 0.03
    ode_bandwidth: float = 0.2
    input_max_n: int = 16384

    def __post_init__(self):
        if not self.sample_sizes or min(self.sample_sizes) < 16:
            raise ConfigError("`params.sample_sizes` must be a non-empty list of n >= 16.")
        unknown = set(self.methods) - set(KSEQ_METHODS)
        if unknown or not self.methods:
            raise ConfigError(
                f"`params.methods` must be a non-empty subset of {list(KSEQ_METHODS)}, got "
                f"unknown {sorted(unknown)}."
            )
        if {"stein_cholesky", "lsc", "sc_cp", "lsc_cp"} & set(self.methods) and not hasattr(
            debias, "stein_cholesky"
        ):
            raise ConfigError(
                "`params.methods`: stein_cholesky is not in this kmethods.debias; drop it and lsc."
            )
        if not 0.0 < self.rank_exponent <= 1.0:
            raise ConfigError("`params.rank_exponent` must lie in (0, 1].")
        if min(self.sample_weights) < 0 or not sum(self.sample_weights) > 0:
            raise ConfigError("`params.sample_weights` must be two nonnegative weights.")
        for name in ("mcmc_step", "ode_step", "ode_bandwidth"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"`params.{name}` must be positive.")
        require_at_least(self, ("repeats",))
        require_at_least(self, ("input_max_n",), minimum=0)


# ------------------------------------------------------------------ target and samples

MODES = ((-2.0, 0.0), (2.0, 0.0))


def mixture_log_prob(x):
    """log p(x) + const of the target 0.5 N((-2, 0), I) + 0.5 N((2, 0), I), one point (2,)."""
    means = jnp.asarray(MODES, x.dtype)
    return jax.nn.logsumexp(-0.5 * jnp.sum((x[None, :] - means) ** 2, axis=-1))


def mixture_scores(x):
    """The target's score grad log p at each row of x (n, 2)."""
    return jax.vmap(jax.grad(mixture_log_prob))(x)


def biased_mixture_sample(key, n: int, weights=(0.8, 0.2), dtype=jnp.float64):
    """n i.i.d. points of the target's two Gaussians with mixture weights `weights`."""
    k_mode, k_noise = jax.random.split(key)
    right = jax.random.uniform(k_mode, (n,), dtype) < weights[1] / sum(weights)
    means = jnp.asarray(MODES, dtype)[right.astype(jnp.int32)]
    return means + jax.random.normal(k_noise, (n, 2), dtype)


@partial(jax.jit, static_argnames=("log_prob", "n"))
def rwm_chain(key, start, step, *, log_prob, n: int):
    """n states of a random-walk Metropolis chain on exp(log_prob) from `start` (d,), with
    Gaussian proposals of standard deviation `step`; the start is the first state."""
    return random_walk_chain(key, start, step, log_prob, n)[0]


def target_sample(key, target: str, n: int, cfg: Config):
    """The biased float64 sample (n, d) of `target` and the target's scores at it."""
    if target == "lotka_volterra":
        # fixed observations; the chain starts at theta = (1, 1, 1, 1), in the posterior's far
        # tail (log density about 240 below the truth's), and keeps its burn-in
        data = lotka_volterra_data(jax.random.key(0))
        x, _ = lotka_volterra_chain(key, data, n, start=jnp.zeros(4), step=cfg.ode_step)
        return x, lotka_volterra_scores(x, data)
    if target == "mixture":
        x = biased_mixture_sample(key, n, cfg.sample_weights)
    else:
        start = jnp.asarray(cfg.mcmc_start, jnp.float64)
        step = jnp.asarray(cfg.mcmc_step, jnp.float64)
        x = rwm_chain(key, start, step, log_prob=mixture_log_prob, n=n)
    return x, mixture_scores(x)


# ------------------------------------------------------------------ the shared metric


def base_kernel(bandwidth: float = 1.0):
    """The base kernel of every Stein kernel here: IMQ (1 + r^2 / h^2)^(-1/2), h = 1 for the
    mixtures."""
    return km.IMQ(c=1.0, beta=-0.5, bandwidth=bandwidth)


def target_kernel(target: str, cfg: Config):
    """The base kernel of `target`'s Stein kernel (methods and metric alike)."""
    return base_kernel(cfg.ode_bandwidth if target == "lotka_volterra" else 1.0)


def coreset_ksd(x, scores, support, weights=None, kernel=None) -> float:
    """KSD to the target of the coreset sum_j w_j delta_{x[support_j]} (w uniform when None;
    repeated indices count as often as they appear), in float64: the V-statistic of
    `kmethods.ksd2` with `weights` (Langevin Stein kernel on `base_kernel()`). Signed weights
    (constant-preserving coresets) are evaluated as w^T K_p w through the same Stein kernel's
    Gram product, which `ksd2` (nonnegative weights) refuses."""
    support = np.asarray(support)
    with jax.enable_x64(True):
        xs = jnp.asarray(np.asarray(x, np.float64)[support])
        ss = jnp.asarray(np.asarray(scores, np.float64)[support])
        if weights is None:
            w = jnp.full(support.shape[0], 1.0 / support.shape[0], jnp.float64)
        else:
            w = jnp.asarray(np.asarray(weights, np.float64) / np.sum(weights))
        kernel = base_kernel() if kernel is None else kernel
        if bool(jnp.all(w >= 0)):
            value = km.ksd2(xs, ss, kernel, weights=w, unbiased=False)
        else:
            stein = km.SteinKernel(kernel, ss)
            z = stein.augment(xs)
            value = jnp.dot(w, km.pairwise.kernel_matvec(stein, z, z, w))
        return float(jnp.sqrt(jnp.maximum(value, 0.0)))


def left_mass(x, support, weights=None) -> float:
    """The coreset's mass on the left mode's half-plane x_1 < 0 (0.5 under the target)."""
    left = np.asarray(x)[np.asarray(support), 0] < 0
    w = np.ones(left.shape) if weights is None else np.asarray(weights, np.float64)
    return float(np.sum(w * left) / np.sum(w))


# ------------------------------------------------------------------ the methods


def lskt_rank(n: int, exponent: float) -> int:
    """LSKT's rank, ceil(n^exponent) (at most n)."""
    return min(n, math.ceil(n**exponent))


def kseq_method(method: str, *, out_size: int, rank: int, swap_passes: int = 1, kernel=None):
    """kseq's `method` as a function of (key, x, scores) -> (support indices, weights or None).
    `sc_cp` and `lsc_cp` are SC and LSC with the paper's constant-preserving (signed) weights;
    `swap_passes` is `stein_cholesky`'s (all four Stein Cholesky methods)."""
    kernel = base_kernel() if kernel is None else kernel
    if method == "uniform":
        return lambda k, x, s: (thinning.iid_thin(k, x, out_size=out_size), None)
    if method == "standard":
        return lambda k, x, s: (thinning.standard_thin(None, x, out_size=out_size), None)
    if method == "stein_thin":
        return lambda k, x, s: (km.stein_thin(x, s, kernel, out_size=out_size), None)
    if method == "skt":
        return lambda k, x, s: (km.stein_kernel_thin(k, x, s, kernel, out_size=out_size), None)
    if method == "lskt":
        return lambda k, x, s: (
            km.stein_kernel_thin(k, x, s, kernel, out_size=out_size, rank=rank),
            None,
        )
    if method in ("stein_cholesky", "lsc", "sc_cp", "lsc_cp"):
        low_rank = rank if method in ("lsc", "lsc_cp") else None
        fn = partial(
            debias.stein_cholesky,
            out_size=out_size,
            rank=low_rank,
            constant_preserving=method.endswith("_cp"),
            swap_passes=swap_passes,
        )
        return lambda k, x, s: _support_and_weights(fn(k, x, s, kernel))
    raise ValueError(f"unknown method {method!r}")


def _support_and_weights(result):
    """(indices, weights) from a method returning indices or an (indices, weights) pair."""
    if isinstance(result, tuple):
        return result[0], result[1]
    return result, None


# ------------------------------------------------------------------ the experiment


def _unit_rows(cfg: Config, key, target: str, n: int) -> list[dict]:
    out_size = math.isqrt(n)
    rank = lskt_rank(n, cfg.rank_exponent)
    kernel = target_kernel(target, cfg)
    calls = {m: kseq_method(m, out_size=out_size, rank=rank, kernel=kernel) for m in cfg.methods}
    modes = target != "lotka_volterra"  # the mixtures' left-mode mass
    ksd = {m: [] for m in (*cfg.methods, "input")}
    mass = {m: [] for m in cfg.methods}
    seconds = {m: [] for m in cfg.methods}
    for r in range(cfg.repeats):
        k_data, k_method = jax.random.split(jax.random.fold_in(key, r))
        x, scores = target_sample(k_data, target, n, cfg)
        if n <= cfg.input_max_n:
            ksd["input"].append(coreset_ksd(x, scores, np.arange(n), kernel=kernel))
        for j, method in enumerate(cfg.methods):
            k = jax.random.fold_in(k_method, j)
            t, (support, weights) = timed(partial(calls[method], k, x, scores))
            seconds[method].append(t)
            ksd[method].append(coreset_ksd(x, scores, support, weights, kernel=kernel))
            if modes:
                mass[method].append(left_mass(x, support, weights))
    rows = []
    for method in (*cfg.methods, "input"):
        if not ksd[method]:
            continue
        row = {
            "target": target,
            "n": n,
            "method": method,
            "out_size": n if method == "input" else out_size,
            "ksd_median": statistics.median(ksd[method]),
            "ksd": ksd[method],
        }
        if method != "input":
            later = seconds[method][1:] or seconds[method]
            row |= {
                "left_mass_median": statistics.median(mass[method]) if modes else None,
                "first_s": seconds[method][0],
                "seconds_median": statistics.median(later),
            }
            if method in ("lskt", "lsc", "lsc_cp"):
                row["rank"] = rank
        rows.append(row)
    return rows


def slopes_of(rows) -> list[dict]:
    """Least-squares slope of log median KSD on log n, per (target, method) with >= 2 n."""
    out = []
    for target, method in dict.fromkeys((r["target"], r["method"]) for r in rows):
        pts = sorted(
            (r["n"], r["ksd_median"])
            for r in rows
            if (r["target"], r["method"])
            == (
                target,
                method,
            )
        )
        if len(pts) >= 2:
            slope = fitted_slope(*zip(*pts, strict=True))
            out.append({"target": target, "method": method, "slope": slope})
    return out


def run(cfg: Config, ctx) -> dict:
    """KSD to the target, time and mode mass of every method's coreset, medians and slopes."""
    units = [(t, n) for t in cfg.targets for n in cfg.sample_sizes]
    root = ctx.key()
    rows = []
    for i, (target, n) in enumerate(ctx.progress(units, desc="stein_compression")):
        key = jax.random.fold_in(root, i)

        def compute(key=key, target=target, n=n):
            with jax.enable_x64(True):
                unit_rows = _unit_rows(cfg, key, target, n)
            for row in unit_rows:
                ctx.log_metrics(**{k: v for k, v in row.items() if k != "ksd"})
            return unit_rows

        # one resumable unit per (target, n): `kseq run --resume` reuses the finished ones
        rows += ctx.unit(f"{target}-n{n}", compute, log=False)
    slopes = slopes_of(rows)
    _plot(rows, slopes, cfg.targets, ctx)
    table = [{k: v for k, v in r.items() if k != "ksd"} for r in rows]
    return {
        "kernel": "Langevin Stein kernel, IMQ base (1 + r^2 / h^2)^(-1/2)",
        "slopes": slopes,
        "ksd": table,
    }


def _plot(rows, slopes, targets, ctx):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(targets), figsize=(5 * len(targets), 7.5), squeeze=False)
    for col, target in enumerate(targets):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = sorted(
                (r for r in rows if (r["target"], r["method"]) == (target, method)),
                key=lambda r: r["n"],
            )
            slope = next(
                (s["slope"] for s in slopes if (s["target"], s["method"]) == (target, method)),
                None,
            )
            label = method if slope is None else f"{method} ({slope:.2f})"
            ns = [r["n"] for r in pts]
            axes[0, col].plot(ns, [r["ksd_median"] for r in pts], "o-", label=label)
            if method != "input":
                axes[1, col].plot(ns, [r["seconds_median"] for r in pts], "o-", label=method)
        style_axis(
            axes[0, col],
            "n (coreset sqrt(n))",
            "KSD to the target",
            target,
            xlog=2,
            ylog=10,
            legend_title="fitted slope",
        )
        style_axis(axes[1, col], "n", f"seconds (median), {target}", xlog=2, ylog=10)
    fig.tight_layout()
    ctx.save_figure(fig, "stein_compression")
