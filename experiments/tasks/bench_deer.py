"""Benchmark: DEER and quasi-DEER against the sequential scan on a GRU.

For each sequence length L and hidden size H, a GRU (input size 4, inputs N(0, 1), batch 1) is
evaluated three ways: `lax.scan` ("sequential"), DEER ("newton") and quasi-DEER ("quasi"), all
under `jax.jit`. Each is timed on its first call (compilation included) and warm (median of
`repeats`), with the number of iterations, whether it converged, the largest deviation from the
sequential states and the memory XLA plans for the call (temporaries + outputs, from the
compiled executable's memory analysis). Newton needs L H^2 Jacobian entries, so it is skipped
(and recorded as skipped) where those alone would exceed `newton_max_jacobian_mb`.

Lim et al. (2024) report DEER's speed-ups on GPUs (hundreds of times at H = 1-2 and L >= 10^5,
25-40x at H = 8); on a 2-core CPU the sequential scan is expected to win. The ratio reported is
time / sequential time.

Run with `kseq run configs/bench_deer.yaml`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import jax
import jax.numpy as jnp

from experiments.config import ConfigError, require_at_least, require_sizes
from experiments.plots import style_axis
from experiments.timing import first_and_warm
from seqmodels import deer_solve, sequential_solve
from seqmodels.cells import GRUCell

Method = Literal["sequential", "newton", "quasi"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the DEER benchmark.

    Attributes:
      lengths: sequence lengths L.
      hidden_sizes: GRU hidden sizes H.
      methods: "sequential", "newton" (DEER) and/or "quasi" (quasi-DEER).
      repeats: warm repeats (median reported).
      dtype: float32 or float64.
      newton_max_jacobian_mb: skip Newton where its L H^2 Jacobians exceed this.
    """

    lengths: tuple[int, ...] = (1000, 10000, 100000)
    hidden_sizes: tuple[int, ...] = (1, 8, 32, 64)
    methods: tuple[Method, ...] = ("sequential", "newton", "quasi")
    repeats: int = 3
    dtype: Literal["float32", "float64"] = "float32"
    newton_max_jacobian_mb: float = 2000.0

    def __post_init__(self):
        require_sizes(self, "lengths", 2, "L")
        require_sizes(self, "hidden_sizes", 1, "H")
        if "sequential" not in self.methods:
            raise ConfigError("`params.methods` must include 'sequential' (the reference).")
        require_at_least(self, ("repeats",))


def _solver(method):
    if method == "sequential":
        return jax.jit(lambda cell, xs: (sequential_solve(cell, cell.init_state(), xs), 1, True))

    def solve(cell, xs):
        sol = deer_solve(cell, cell.init_state(), xs, method=method)
        return sol.states, sol.num_iters, sol.converged

    return jax.jit(solve)


def _planned_mb(compiled):
    """Temporaries + outputs XLA allocates for one call (None if the backend does not say)."""
    try:
        stats = compiled.memory_analysis()
        return (stats.temp_size_in_bytes + stats.output_size_in_bytes) / 2**20
    except Exception:
        return None


def run(cfg: Config, ctx) -> dict:
    """Times every (L, H, method); returns one record each."""
    with jax.enable_x64(cfg.dtype == "float64"):
        records = _records(cfg, ctx)
    _plot(records, ctx)
    return {"dtype": cfg.dtype, "backend": jax.default_backend(), "records": records}


def _records(cfg, ctx):
    dtype = jnp.dtype(cfg.dtype)
    records = []
    units = [(length, h) for length in cfg.lengths for h in cfg.hidden_sizes]
    for i, (length, hidden) in enumerate(ctx.progress(units, desc="bench_deer", total=len(units))):
        k1, k2 = jax.random.split(jax.random.fold_in(ctx.key(), i))
        cell = GRUCell(4, hidden, key=k1, dtype=dtype)
        xs = jax.random.normal(k2, (length, 4), dtype)
        reference = None
        sequential_s = None
        for method in cfg.methods:
            record = {"L": length, "H": hidden, "method": method}
            jac_mb = length * hidden**2 * dtype.itemsize / 2**20
            if method == "newton" and jac_mb > cfg.newton_max_jacobian_mb:
                record.update(skipped=f"Jacobians need {jac_mb:.0f} MB")
                ctx.log_metrics(**record)
                records.append(record)
                continue
            # compiled once, ahead of time: the same executable is timed and its memory read
            start = time.perf_counter()
            compiled = _solver(method).lower(cell, xs).compile()
            compile_s = time.perf_counter() - start
            first, warm = first_and_warm(compiled, (cell, xs), cfg.repeats)
            first += compile_s
            states, iters, converged = compiled(cell, xs)
            if method == "sequential":
                reference, sequential_s = states, warm
            record.update(
                first_s=first,
                warm_s=warm,
                ratio_to_sequential=warm / sequential_s,
                iterations=int(iters),
                converged=bool(converged),
                max_deviation=float(jnp.max(jnp.abs(states - reference))),
                planned_mb=_planned_mb(compiled),
            )
            ctx.log_metrics(**record)
            records.append(record)
    return records


def _plot(records, ctx):
    import matplotlib.pyplot as plt

    timed = [r for r in records if "warm_s" in r]
    lengths = sorted({r["L"] for r in timed})
    fig, axes = plt.subplots(1, len(lengths), figsize=(4 * len(lengths), 3.4), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        for method in dict.fromkeys(r["method"] for r in timed):
            rows = [r for r in timed if r["L"] == length and r["method"] == method]
            ax.plot([r["H"] for r in rows], [r["warm_s"] for r in rows], "o-", label=method)
        style_axis(ax, "hidden size H", "warm time (s)", f"GRU, L = {length}", xlog=2, ylog=10)
    ctx.save_figure(fig, "time_vs_hidden")
