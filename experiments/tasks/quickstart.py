"""Quickstart: an MMD, an HSIC and a KSD test at a few sample sizes, size and power.

For each sample size n, each test runs `num_replicates` times on fresh data under its null and
under a clear alternative, all replicates at once (`jax.vmap` over keys; one compilation per
test and n, shared by null and alternative). Bandwidths come from the median heuristic on each
replicate's own data.

- MMD (two-sample, permutation null): x ~ N(0, I_d) against y ~ N(mmd_shift * 1, I_d).
- HSIC (independence, permutation null): y = hsic_rho * x + N(0, I_d).
- KSD (goodness of fit to N(0, I_d), multinomial bootstrap): x ~ N(ksd_shift * 1, I_d).

Each record also counts the replicates whose statistic or p-value was not finite
(`num_nonfinite_size`, `num_nonfinite_power`); they count as not rejecting in the rates.

Run with `kseq run configs/quickstart.yaml`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_probability, require_sizes
from experiments.plots import rejection_plot
from experiments.tasks import nonfinite


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the quickstart tour.

    Attributes:
      sample_sizes: n for each point of the curves (per sample; >= 6).
      num_replicates: replicates per (test, n, hypothesis).
      num_permutations: permutations / bootstrap draws per test.
      alpha: level.
      dim: dimension d of the data.
      mmd_shift: mean shift of y in each coordinate (alternative).
      hsic_rho: dependence strength (alternative).
      ksd_shift: mean shift of the sample away from the N(0, I) target (alternative).
      tests: which of the tests to run.
    """

    sample_sizes: tuple[int, ...] = (25, 50, 100, 200)
    num_replicates: int = 100
    num_permutations: int = 200
    alpha: float = 0.05
    dim: int = 2
    mmd_shift: float = 0.5
    hsic_rho: float = 0.3
    ksd_shift: float = 0.3
    tests: tuple[Literal["mmd", "hsic", "ksd"], ...] = ("mmd", "hsic", "ksd")

    def __post_init__(self):
        require_sizes(self, "sample_sizes", 6)
        require_at_least(self, ("num_replicates", "num_permutations", "dim"))
        require_probability(self)
        if not self.tests:
            raise ConfigError("`params.tests` must name at least one test.")


def _mmd(key, n, d, shift, cfg):
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d))
    y = shift + jax.random.normal(ky, (n, d))
    kernel = km.Gaussian(km.median_bandwidth(jnp.concatenate([x, y])))
    res = km.mmd_test(kt, x, y, kernel, num_permutations=cfg.num_permutations, alpha=cfg.alpha)
    return res.reject, nonfinite(res)


def _hsic(key, n, d, rho, cfg):
    kx, ky, kt = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, d))
    y = rho * x + jax.random.normal(ky, (n, d))
    kernel_x = km.Gaussian(km.median_bandwidth(x))
    kernel_y = km.Gaussian(km.median_bandwidth(y))
    res = km.hsic_test(
        kt, x, y, kernel_x, kernel_y, num_permutations=cfg.num_permutations, alpha=cfg.alpha
    )
    return res.reject, nonfinite(res)


def _ksd(key, n, d, shift, cfg):
    kx, kt = jax.random.split(key)
    x = shift + jax.random.normal(kx, (n, d))
    kernel = km.IMQ(bandwidth=km.median_bandwidth(x))
    res = km.ksd_test(
        kt, x, lambda z: -z, kernel, num_bootstrap=cfg.num_permutations, alpha=cfg.alpha
    )
    return res.reject, nonfinite(res)


TESTS = {
    "mmd": (_mmd, "mmd_shift", "two-sample (MMD)"),
    "hsic": (_hsic, "hsic_rho", "independence (HSIC)"),
    "ksd": (_ksd, "ksd_shift", "goodness of fit (KSD)"),
}


def run(cfg: Config, ctx) -> dict:
    """Runs the tour; returns one record per (test, n) with its size and power."""
    root = ctx.key()
    records = []
    # keys follow each (test, n)'s place among all of them, whichever tests are run
    units = [
        (i, name, n)
        for i, (name, n) in enumerate((name, n) for name in TESTS for n in cfg.sample_sizes)
        if name in cfg.tests
    ]
    for i, name, n in ctx.progress(units, desc="quickstart", total=len(units)):
        fn, param, _ = TESTS[name]
        rates = jax.jit(
            jax.vmap(lambda k, p, fn=fn, n=n: fn(k, n, cfg.dim, p, cfg), in_axes=(0, None))
        )
        keys = jax.random.split(jax.random.fold_in(root, i), 2 * cfg.num_replicates)

        def compute(rates=rates, keys=keys, param=param, name=name, n=n):
            # the replicates are split over the run's devices (`devices` in the config)
            null_reject, null_bad = rates(ctx.shard(keys[: cfg.num_replicates]), 0.0)
            alt_reject, alt_bad = rates(ctx.shard(keys[cfg.num_replicates :]), getattr(cfg, param))
            return {
                "test": name,
                "n": n,
                "size": float(jnp.mean(null_reject)),
                "power": float(jnp.mean(alt_reject)),
                # replicates whose statistic or p-value was not finite (they never reject)
                "num_nonfinite_size": int(jnp.sum(null_bad)),
                "num_nonfinite_power": int(jnp.sum(alt_bad)),
            }

        # one resumable unit per (test, n): `kseq run --resume` reuses the finished ones
        records.append(ctx.unit(f"{name}-n{n}", compute))

    import matplotlib.pyplot as plt

    shown = {name: spec for name, spec in TESTS.items() if name in cfg.tests}
    fig, axes = plt.subplots(
        1, len(shown), figsize=(4.2 * len(shown), 3.4), sharey=True, squeeze=False
    )
    for ax, (name, (_, _, title)) in zip(axes[0], shown.items(), strict=True):
        rows = [r for r in records if r["test"] == name]
        rejection_plot(
            [r["n"] for r in rows],
            {
                "power (alternative)": [r["power"] for r in rows],
                "size (null)": [r["size"] for r in rows],
            },
            alpha=cfg.alpha,
            title=title,
            replicates=cfg.num_replicates,
            ax=ax,
        )
    ctx.save_figure(fig, "rejection_rates")
    return {"alpha": cfg.alpha, "num_replicates": cfg.num_replicates, "rates": records}
