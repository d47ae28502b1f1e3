"""Benchmark: `linear_recurrence` against the memory floor and `lax.associative_scan`.

For each L and each solver, forward and forward+backward (the gradient of a sum with respect
to a and b), on a and b of shape (L, B, D):

- the memory floor is a jitted elementwise op over the same arrays (a * b + b; its gradient
  for forward+backward), which reads and writes what any solver must;
- the reference is plain `jax.lax.associative_scan` with the affine composition (autodiff
  for its backward pass).

Each entry is timed on its first call (compilation included) and warm (median of `repeats`).
Ratios are solver / floor and lax.associative_scan / solver.

Run with `kseq run configs/bench_scan.yaml`.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from experiments.config import require_at_least, require_sizes
from experiments.plots import style_axis
from experiments.timing import first_and_warm
from seqmodels import linear_recurrence


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the scan benchmark.

    Attributes:
      lengths: sequence lengths L.
      batch: B.
      channels: D.
      methods: solvers of `linear_recurrence` to time.
      repeats: warm repeats (median reported).
      dtype: float32 or complex64.
    """

    lengths: tuple[int, ...] = (2**10, 2**12, 2**14, 2**16)
    batch: int = 4
    channels: int = 256
    methods: tuple[Literal["sequential", "associative", "chunked"], ...] = (
        "sequential",
        "associative",
        "chunked",
    )
    repeats: int = 3
    dtype: Literal["float32", "complex64"] = "float32"

    def __post_init__(self):
        require_sizes(self, "lengths", 2, "L")
        require_at_least(self, ("batch", "channels", "repeats"))


def _lax_associative(a, b):
    combine = lambda early, late: (late[0] * early[0], late[0] * early[1] + late[1])
    return jax.lax.associative_scan(combine, (a, b))[1]


def _forward_backward(fn):
    loss = lambda a, b: jnp.sum(jnp.real(fn(a, b)))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _inputs(key, length, cfg):
    k1, k2, k3 = jax.random.split(key, 3)
    shape = (length, cfg.batch, cfg.channels)
    a = jax.random.uniform(k1, shape, minval=0.5, maxval=0.99)
    b = jax.random.normal(k2, shape)
    if cfg.dtype == "complex64":
        phase = jax.random.uniform(k3, shape, minval=-0.1, maxval=0.1)
        a = jax.lax.complex(a * jnp.cos(phase), a * jnp.sin(phase))
        b = jax.lax.complex(b, b)
    return a, b


def run(cfg: Config, ctx) -> dict:
    """Times every (L, solver, direction); returns one record each."""
    records = []
    units = list(cfg.lengths)
    for i, length in enumerate(ctx.progress(units, desc="bench_scan", total=len(units))):
        a, b = _inputs(jax.random.fold_in(ctx.key(), i), length, cfg)
        floor = lambda a, b: a * b + b
        candidates = {m: (lambda a, b, m=m: linear_recurrence(a, b, method=m)) for m in cfg.methods}
        candidates["lax.associative_scan"] = _lax_associative
        for direction in ("forward", "forward+backward"):
            wrap = jax.jit if direction == "forward" else _forward_backward
            _, floor_s = first_and_warm(wrap(floor), (a, b), cfg.repeats)
            times = {
                name: first_and_warm(wrap(fn), (a, b), cfg.repeats)
                for name, fn in candidates.items()
            }
            lax_s = times["lax.associative_scan"][1]
            for name, (first, warm) in times.items():
                record = {
                    "L": length,
                    "method": name,
                    "direction": direction,
                    "first_s": first,
                    "warm_s": warm,
                    "floor_s": floor_s,
                    "ratio_to_floor": warm / floor_s,
                    "lax_associative_over_this": lax_s / warm,
                }
                ctx.log_metrics(**record)
                records.append(record)
    _plot(records, ctx)
    return {
        "batch": cfg.batch,
        "channels": cfg.channels,
        "dtype": cfg.dtype,
        "backend": jax.default_backend(),
        "records": records,
    }


def _plot(records, ctx):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, direction in zip(axes, ("forward", "forward+backward"), strict=True):
        for method in dict.fromkeys(r["method"] for r in records):
            rows = [r for r in records if r["method"] == method and r["direction"] == direction]
            ax.plot([r["L"] for r in rows], [r["ratio_to_floor"] for r in rows], "o-", label=method)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="memory floor")
        style_axis(ax, "L", "time / floor", direction, xlog=2, ylog=10)
    ctx.save_figure(fig, "ratio_to_floor")
