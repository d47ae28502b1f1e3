"""Experiment: level and power of the kernel Stein test for sequences against the sample size.

The model is the random walk with memory of Baum, Kanagawa & Gretton (ICML 2023): a
second-order chain on a cycle of `num_states` symbols that steps to x +- 1, continues upwards
after an upward step with probability `memory`, and stops after each symbol with probability
1 / mean_length (`kmethods.sequences.models.random_walk_with_memory`; lengths conditioned on
<= max_length, which is also the padded width). Three sampling distributions:

- null: the model itself (the rate is the test's level);
- transitions: the same walk with memory `alt_memory` (the paper's alternative: 0.95 vs 0.05);
- lengths: the same walk with mean length `alt_mean_length` (a changed stop probability).

For every kernel and sample size n, `num_replicates` tests run in rows of `batch_size`
replicates vmapped together, the rows split over the run's devices (`RunContext.map`, bit for
bit the rates of one device): one compilation per (kernel, n), shared by the three scenarios.
Each test is `kmethods.ksd_seq_test` with the ZS_J neighbourhood (J = `window`) and the
wild (default) or multinomial bootstrap. Kernels: "csk" the contiguous-subsequence kernel with
substrings of length 3 (the authors' choice for a second-order chain), "length" a Gaussian
kernel on the lengths alone (bandwidth 3), "hamming" the exponentiated Hamming kernel (length-
normalised, the paper's; slowest here).
Reported: the rejection rate with a 95% binomial half-width per (kernel, scenario, n), the
number of tests whose statistic or p-value was not finite (`num_nonfinite`; they count as not
rejecting), and the seconds per (kernel, n) (compilation included).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_probability, require_sizes
from experiments.plots import binomial_halfwidth, rejection_plot
from experiments.tasks import nonfinite
from kmethods import sequences as ks
from kmethods.sequences.models import random_walk_with_memory

Kernel = Literal["csk", "length", "hamming"]
SCENARIOS = ("null", "transitions", "lengths")

_KERNEL_LABELS = {
    "csk": "contiguous substrings (length 3)",
    "length": "length only (Gaussian, bandwidth 3)",
    "hamming": "exponentiated Hamming",
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      num_states: symbols S of the walk.
      mean_length: mean length of the model's sequences (stop probability 1 / mean_length).
      memory: the model's probability of continuing upwards after an upward step.
      alt_memory: `memory` of the "transitions" alternative.
      alt_mean_length: mean length of the "lengths" alternative.
      max_length: cap on the lengths (the models are conditioned on it) and padded width.
      sample_sizes: n for each point of the curves (>= 2).
      kernels: the kernels compared.
      num_replicates: tests per (kernel, scenario, n).
      num_bootstrap: bootstrap draws per test.
      bootstrap: "wild" (V-statistic) or "multinomial" (U-statistic).
      alpha: level.
      window: J of the ZS_J neighbourhood.
      balance: the balancing function, "barker" or "sqrt".
      batch_size: replicates vmapped together inside the `lax.map`.
    """

    num_states: int = 10
    mean_length: float = 8.0
    memory: float = 0.95
    alt_memory: float = 0.05
    alt_mean_length: float = 3.0
    max_length: int = 32
    sample_sizes: tuple[int, ...] = (10, 20, 30, 50, 100, 200)
    kernels: tuple[Kernel, ...] = ("csk", "length")
    num_replicates: int = 300
    num_bootstrap: int = 500
    bootstrap: Literal["wild", "multinomial"] = "wild"
    alpha: float = 0.05
    window: int = 3
    balance: Literal["barker", "sqrt"] = "barker"
    batch_size: int = 1

    def __post_init__(self):
        if self.num_states < 3:
            raise ConfigError("`params.num_states` must be >= 3 (the walk needs i, i+1, i+2).")
        for name in ("mean_length", "alt_mean_length"):
            if not getattr(self, name) > 1.0:
                raise ConfigError(f"`params.{name}` must be > 1.")
        for name in ("memory", "alt_memory"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"`params.{name}` must lie in [0, 1].")
        require_sizes(self, "sample_sizes", 2)
        if not self.kernels:
            raise ConfigError("`params.kernels` must name at least one kernel.")
        require_at_least(self, ("max_length", "num_replicates", "num_bootstrap", "window"))
        require_at_least(self, ("batch_size",))
        require_probability(self)


def make_kernel(name: str) -> ks.SequenceKernel:
    """The kernel called `name` in the config."""
    if name == "csk":
        return ks.ContiguousSubsequenceKernel(3, 3)
    if name == "length":
        return ks.LengthKernel(3.0)
    return ks.HammingKernel()


def models(cfg: Config) -> dict:
    """The sampling distribution of each scenario; "null" is also the tested model."""
    walk = lambda memory, mean: random_walk_with_memory(
        cfg.num_states, mean_length=mean, memory=memory, max_length=cfg.max_length
    )
    return {
        "null": walk(cfg.memory, cfg.mean_length),
        "transitions": walk(cfg.alt_memory, cfg.mean_length),
        "lengths": walk(cfg.memory, cfg.alt_mean_length),
    }


def _rejections(cfg: Config, kernel, n: int):
    """(keys, sampling model, model) -> (rejections, non-finite tests), one test per key
    (vmapped)."""

    def one(key, sampler, target):
        k_data, k_test = jax.random.split(key)
        seqs, lengths = sampler.sample(k_data, n, cfg.max_length)
        res = km.ksd_seq_test(
            k_test,
            seqs,
            lengths,
            target.log_prob,
            kernel,
            num_states=cfg.num_states,
            window=cfg.window,
            balance=cfg.balance,
            num_bootstrap=cfg.num_bootstrap,
            alpha=cfg.alpha,
            bootstrap=cfg.bootstrap,
        )
        return res.reject, nonfinite(res)

    def chunk(keys, sampler, target):  # one row of `ctx.map`: `batch_size` tests vmapped
        return jax.vmap(one, in_axes=(0, None, None))(keys, sampler, target)

    return chunk


def _replicates(ctx, chunk, keys, sampler, target, batch_size: int) -> tuple[np.ndarray, ...]:
    """`chunk` over `keys` in rows of `batch_size` keys, the rows split over the run's devices
    (`RunContext.map`: each row the same program on any layout, so the rates do not depend on
    the device count)."""
    n = keys.shape[0]
    batch = min(batch_size, n)
    rows = -(-n // batch)
    padded = jnp.concatenate([keys, jnp.repeat(keys[:1], rows * batch - n, axis=0)])
    out = ctx.map(chunk, padded.reshape(rows, batch), sampler, target, in_axes=(0, None, None))
    return tuple(np.asarray(a).reshape(-1)[:n] for a in out)


def run(cfg: Config, ctx) -> dict:
    """Rejection rates for every (kernel, scenario, n)."""
    root = ctx.key()
    samplers = models(cfg)
    target = samplers["null"]
    units = [(k, n) for k in cfg.kernels for n in cfg.sample_sizes]
    records = []
    for i, (name, n) in enumerate(ctx.progress(units, desc="ksd_seq", total=len(units))):
        rejections = _rejections(cfg, make_kernel(name), n)

        def compute(i=i, name=name, n=n, rejections=rejections):
            start = time.perf_counter()
            rows = []
            for j, scenario in enumerate(SCENARIOS):
                # Keys depend on (n, scenario) only: every kernel sees the same samples.
                key = jax.random.fold_in(jax.random.fold_in(root, n), j)
                keys = jax.random.split(key, cfg.num_replicates)
                rejects, bad = _replicates(
                    ctx, rejections, keys, samplers[scenario], target, cfg.batch_size
                )
                rate = float(np.mean(rejects))
                rows.append(
                    {
                        "kernel": name,
                        "scenario": scenario,
                        "n": n,
                        "rejection_rate": rate,
                        "rate_halfwidth95": binomial_halfwidth(rate, cfg.num_replicates),
                        # tests whose statistic or p-value was not finite (they never reject)
                        "num_nonfinite": int(np.sum(bad)),
                    }
                )
            seconds = time.perf_counter() - start
            return {"rows": [dict(r, seconds=seconds) for r in rows]}

        records += ctx.unit(f"{i:02d}-{name}-n{n}", compute)["rows"]

    _plot(records, cfg, ctx)
    level = {
        f"{r['kernel']}-n{r['n']}": r["rejection_rate"] for r in records if r["scenario"] == "null"
    }
    return {
        "num_states": cfg.num_states,
        "mean_length": cfg.mean_length,
        "mean_length_capped": _mean_length(target, cfg),
        "num_replicates": cfg.num_replicates,
        "alpha": cfg.alpha,
        "max_level": max(level.values()),
        "seconds_total": sum(r["seconds"] for r in records) / len(SCENARIOS),
        "records": records,
    }


def _mean_length(model, cfg: Config) -> float:
    """The model's mean length given the cap, sum_l l P(l) (from its stop probability)."""
    q = float(model.stop_probability)
    ell = np.arange(1, cfg.max_length + 1)
    p = q * (1 - q) ** (ell - 1)
    return float((ell * p).sum() / p.sum())


def _plot(records, cfg: Config, ctx) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(cfg.kernels), figsize=(4.6 * len(cfg.kernels), 3.6), sharey=True, squeeze=False
    )
    labels = {
        "null": f"null (memory {cfg.memory})",
        "transitions": f"memory {cfg.alt_memory}",
        "lengths": f"mean length {cfg.alt_mean_length:g}",
    }
    for ax, name in zip(axes[0], cfg.kernels, strict=True):
        rates = {
            labels[s]: [
                r["rejection_rate"] for r in records if r["kernel"] == name and r["scenario"] == s
            ]
            for s in SCENARIOS
        }
        rejection_plot(
            list(cfg.sample_sizes),
            rates,
            alpha=cfg.alpha,
            title=_KERNEL_LABELS[name],
            replicates=cfg.num_replicates,
            ax=ax,
        )
    fig.suptitle(
        f"KSD test (ZS_{cfg.window}, {cfg.balance}, {cfg.bootstrap} bootstrap), random walk "
        f"with memory: S = {cfg.num_states}, mean length {cfg.mean_length:g}",
        fontsize=9,
    )
    ctx.save_figure(fig, "ksd_seq")
