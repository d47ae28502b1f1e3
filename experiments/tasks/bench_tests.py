"""Benchmark: kseq's HSIC and MMD tests side by side with hyppo's, in one process.

For each n and each test, on d-dimensional data with a moderate dependence (HSIC) or mean
shift (MMD):

- permutation tests: `kmethods.hsic_test` / `mmd_test` (B permutations) against
  `hyppo.independence.Hsic().test(x, y, reps=B, auto=False)` and
  `hyppo.ksample.MMD().test(x, y, reps=B, auto=False)`;
- fast nulls: kseq's `null="gamma"` against hyppo's default `test(x, y)` (a chi-square
  approximation for n > 20).

kseq is timed on its first call (compilation included) and warm (median of `repeats` calls
with new keys; `kseq_num_nonfinite` counts those calls whose statistic or p-value was not
finite); hyppo once per repeat, median. Above `hyppo_permutation_max_n` hyppo's
permutation test runs `hyppo_reps_large` permutations and its time is scaled linearly to B
(flagged `extrapolated`).

How hyppo's statistics map onto kseq's (read from hyppo 0.5's source; checked in `run`):

- `Hsic().statistic(x, y)`: both Gram matrices use a Gaussian kernel whose bandwidth is the
  median pairwise distance of **x** (y reuses x's bandwidth); kernels become distances
  D = 1 - K / max K and Dcorr's unbiased statistic is taken. U-centring kills the constant, so
  it equals the normalised unbiased HSIC
      hsic_u(x, y) / sqrt(hsic_u(x, x) hsic_u(y, y)),
  with `kmethods.hsic(..., unbiased=True)` and `Gaussian(median distance of x)` on both sides.
- `MMD().statistic(x, y)`: the k-sample transform (pooled sample u, 0/1 labels v), then the
  Hsic statistic above on (u, v) -- so the labels get a Gaussian kernel with the pooled
  sample's median bandwidth -- times 2 n^2 m^2 / (n + m)^4. It is a normalised HSIC of the
  labels, not the squared MMD; kseq's `mmd2` reproduces it through the same transform.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import require_at_least, require_sizes
from experiments.plots import style_axis
from experiments.tasks import nonfinite
from experiments.timing import timed

# The comparator, an optional package: checked by the runner before the run folder is made.
REQUIRES = {"hyppo": "pip install hyppo, or pip install 'kseq[bench]'"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the benchmark.

    Attributes:
      sample_sizes: n (per sample for MMD).
      dim: dimension d of x and y.
      num_permutations: B, for both libraries.
      repeats: timed repeats (median reported).
      tests: which tests to run.
      dependence: y = dependence * x + noise (HSIC data).
      shift: mean shift of y in each coordinate (MMD data).
      hyppo_permutation_max_n: largest n at which hyppo's permutation test runs all B
        permutations; above it, `hyppo_reps_large` permutations, time scaled to B.
      hyppo_reps_large: permutations for hyppo above that size.
    """

    sample_sizes: tuple[int, ...] = (500, 1000, 2000)
    dim: int = 5
    num_permutations: int = 1000
    repeats: int = 3
    tests: tuple[Literal["hsic", "mmd"], ...] = ("hsic", "mmd")
    dependence: float = 0.1
    shift: float = 0.1
    hyppo_permutation_max_n: int = 500
    hyppo_reps_large: int = 100

    def __post_init__(self):
        require_sizes(self, "sample_sizes", 10)
        require_at_least(self, ("dim", "num_permutations", "repeats", "hyppo_reps_large"))


def _median_distance(x) -> float:
    """The median pairwise Euclidean distance, as hyppo computes it (off-diagonal pairs)."""
    return float(km.median_bandwidth(x, max_points=x.shape[0]))


def _normalised_hsic(x, y, kernel_x, kernel_y):
    hxy = km.hsic(x, y, kernel_x, kernel_y, unbiased=True)
    hxx = km.hsic(x, x, kernel_x, kernel_x, unbiased=True)
    hyy = km.hsic(y, y, kernel_y, kernel_y, unbiased=True)
    if hxx <= 0 or hyy <= 0:
        return 0.0
    return float(hxy / jnp.sqrt(hxx * hyy))


def hyppo_hsic_in_kseq(x, y) -> float:
    """hyppo's `Hsic().statistic(x, y)`, computed with kmethods (see the module docstring)."""
    k = km.Gaussian(_median_distance(x))
    return _normalised_hsic(x, y, k, k)


def hyppo_mmd_in_kseq(x, y) -> float:
    """hyppo's `MMD().statistic(x, y)`, computed with kmethods (see the module docstring)."""
    n, m = x.shape[0], y.shape[0]
    u = jnp.concatenate([x, y])
    labels = jnp.concatenate([jnp.zeros((n, 1), u.dtype), jnp.ones((m, 1), u.dtype)])
    return hyppo_hsic_in_kseq(u, labels) * 2 * n**2 * m**2 / (n + m) ** 4


def _data(key, test, n, cfg):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, cfg.dim))
    noise = jax.random.normal(ky, (n, cfg.dim))
    y = cfg.dependence * x + noise if test == "hsic" else cfg.shift + noise
    return x, y


def _kseq_call(test, x, y, null, cfg):
    if test == "hsic":
        kx = km.Gaussian(km.median_bandwidth(x))
        ky = km.Gaussian(km.median_bandwidth(y))
        return lambda key: km.hsic_test(
            key, x, y, kx, ky, null=null, num_permutations=cfg.num_permutations
        )
    k = km.Gaussian(km.median_bandwidth(jnp.concatenate([x, y])))
    return lambda key: km.mmd_test(key, x, y, k, null=null, num_permutations=cfg.num_permutations)


def _hyppo_test(test):
    if test == "hsic":
        from hyppo.independence import Hsic

        return Hsic()
    from hyppo.ksample import MMD

    return MMD()


def _bench_kseq(key, test, x, y, null, cfg):
    """(first call's seconds, median warm seconds, first result, how many of the calls had a
    statistic or p-value that is not finite)."""
    call = _kseq_call(test, x, y, null, cfg)
    first, res = timed(lambda: call(key))
    runs = [timed(lambda i=i: call(jax.random.fold_in(key, i + 1))) for i in range(cfg.repeats)]
    bad = sum(bool(nonfinite(r)) for r in [res, *(r for _, r in runs)])
    return first, statistics.median(t for t, _ in runs), res, bad


def _bench_unit(key, test, n, cfg) -> list[dict]:
    """Times one (test, n): the permutation nulls, then the fast nulls."""
    x, y = _data(key, test, n, cfg)
    xn, yn = np.asarray(x, np.float64), np.asarray(y, np.float64)
    reference_stat = float(_hyppo_test(test).statistic(xn, yn))
    with jax.enable_x64(True):  # float64, as hyppo computes
        mapped = (hyppo_hsic_in_kseq if test == "hsic" else hyppo_mmd_in_kseq)(xn, yn)

    # Permutation nulls. hyppo's takes minutes, so it is timed once; a fresh instance for every
    # call, since its test(auto=False) mutates the instance.
    first, warm, res, bad = _bench_kseq(key, test, x, y, "permutation", cfg)
    extrapolated = n > cfg.hyppo_permutation_max_n
    reps = cfg.hyppo_reps_large if extrapolated else cfg.num_permutations
    seconds, out = timed(lambda: _hyppo_test(test).test(xn, yn, reps=reps, auto=False))
    hyppo_time = seconds * cfg.num_permutations / reps
    perm = {
        "test": test,
        "n": n,
        "null": "permutation",
        "kseq_first_s": first,
        "kseq_warm_s": warm,
        "hyppo_s": hyppo_time,
        "hyppo_extrapolated": extrapolated,
        "ratio_warm": hyppo_time / warm,
        "ratio_first": hyppo_time / first,
        "kseq_p": float(res.p_value),
        "kseq_num_nonfinite": bad,
        "hyppo_p": float(out[1]),
        "kseq_statistic": float(res.statistic),
        "hyppo_statistic": reference_stat,
        "hyppo_statistic_via_kseq": mapped,
        "statistic_rel_diff": abs(mapped - reference_stat) / abs(reference_stat),
    }

    # Fast nulls: kseq's gamma approximation against hyppo's default (chi-square) path.
    first, warm, res, bad = _bench_kseq(key, test, x, y, "gamma", cfg)
    runs = [timed(lambda: _hyppo_test(test).test(xn, yn)) for _ in range(cfg.repeats)]
    hyppo_time = statistics.median(t for t, _ in runs)
    fast = {
        "test": test,
        "n": n,
        "null": "gamma vs hyppo default",
        "kseq_first_s": first,
        "kseq_warm_s": warm,
        "hyppo_s": hyppo_time,
        "hyppo_extrapolated": False,
        "ratio_warm": hyppo_time / warm,
        "ratio_first": hyppo_time / first,
        "kseq_p": float(res.p_value),
        "kseq_num_nonfinite": bad,
        "hyppo_p": float(runs[-1][1][1]),
    }
    return [perm, fast]


def run(cfg: Config, ctx) -> dict:
    """Times both libraries on every (test, n); returns one record per (test, n, null)."""
    import warnings

    records = []
    root = ctx.key()
    units = [(t, n) for t in cfg.tests for n in cfg.sample_sizes]
    for i, (test, n) in enumerate(ctx.progress(units, desc="bench_tests", total=len(units))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numba / sklearn deprecations, not ours
            unit = _bench_unit(jax.random.fold_in(root, i), test, n, cfg)
        for record in unit:
            ctx.log_metrics(**record)
            records.append(record)
    _plot(records, ctx)
    return {
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "num_permutations": cfg.num_permutations,
        "dim": cfg.dim,
        "records": records,
    }


def _plot(records, ctx):
    import matplotlib.pyplot as plt

    nulls = list(dict.fromkeys(r["null"] for r in records))
    fig, axes = plt.subplots(1, len(nulls), figsize=(5 * len(nulls), 3.6), squeeze=False)
    for ax, null in zip(axes[0], nulls, strict=True):
        for test in dict.fromkeys(r["test"] for r in records):
            rows = [r for r in records if r["null"] == null and r["test"] == test]
            ns = [r["n"] for r in rows]
            ax.plot(ns, [r["kseq_warm_s"] for r in rows], "o-", label=f"kseq {test} (warm)")
            ax.plot(ns, [r["kseq_first_s"] for r in rows], "o:", label=f"kseq {test} (first)")
            ax.plot(ns, [r["hyppo_s"] for r in rows], "s--", label=f"hyppo {test}")
        style_axis(ax, "n", "seconds", null, xlog=10, ylog=10)
    ctx.save_figure(fig, "times")
