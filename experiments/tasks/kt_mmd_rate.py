"""Experiment: how fast the MMD of each thinning method falls with n (the papers' figures).

For n = 4^k, each method keeps sqrt(n) of n points drawn from a target and we measure the MMD
between the coreset and the input (Dwivedi & Mackey, 2021, Fig. 3; 2022, Fig. 2; Shetty et al.,
2022, Fig. 3). i.i.d. thinning decays like n^-1/4; kernel thinning like n^-1/2 (up to logs).
Methods: `iid`, `standard` (every n/sqrt(n)-th point), `kt` (target KT), `root_kt` (split with
the square-root kernel), `kt_plus` (split with k + k_rt) and `compresspp`.

Datasets: `gaussian` (N(0, I_d), each d in `dims`) and `mog` (an equal mixture of 8 unit
Gaussians with means on a circle of radius 3, in d = 2). Kernel: Gaussian with
bandwidth^2 = 2 d. The MMD is evaluated in float64 with the n^2 term computed once per sample;
the slope is a least-squares fit of log MMD on log n over `slope_range`.

Devices: the `repeats` of each (dataset, d, n) are split over the run's device mesh with
`RunContext.map` (each repeat's thinning and MMD computed by the same program on any number of
devices), so the results are bit for bit those of one device. Each (dataset, d, n) is a
resumable unit (`units/<dataset>-d<d>-n<n>.json`).
"""

from __future__ import annotations

import dataclasses
import statistics
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_sizes
from experiments.plots import style_axis
from kmethods import thinning

Method = Literal["iid", "standard", "kt", "root_kt", "kt_plus", "compresspp"]
Dataset = Literal["gaussian", "mog"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      sample_sizes: n; powers of 4 give out_size = sqrt(n) exactly.
      datasets: `gaussian` (in each of `dims`) and/or `mog` (d = 2).
      dims: dimensions of the Gaussian datasets.
      methods: thinning methods compared.
      repeats: independent samples (and thinning keys) per n; medians are reported.
      g: Compress++ oversampling parameter.
      slope_range: [n_min, n_max] of the fitted slopes.
    """

    sample_sizes: tuple[int, ...] = (256, 1024, 4096, 16384, 65536)
    datasets: tuple[Dataset, ...] = ("gaussian", "mog")
    dims: tuple[int, ...] = (2, 10)
    methods: tuple[Method, ...] = ("iid", "standard", "kt", "root_kt", "kt_plus", "compresspp")
    repeats: int = 3
    g: int = 4
    slope_range: tuple[int, int] = (256, 16384)

    def __post_init__(self):
        require_sizes(self, "sample_sizes", 16)
        if self.slope_range[0] >= self.slope_range[1]:
            raise ConfigError("`params.slope_range` must be [n_min, n_max] with n_min < n_max.")
        require_at_least(self, ("repeats",))
        require_at_least(self, ("g",), minimum=0)


def _sample(rng: np.random.Generator, dataset: str, n: int, d: int) -> np.ndarray:
    if dataset == "gaussian":
        return rng.normal(size=(n, d))
    angles = 2 * np.pi * np.arange(8) / 8
    means = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return means[rng.integers(0, 8, size=n)] + rng.normal(size=(n, 2))


def _thinner(method: str, kernel, g: int) -> thinning.Thinner:
    """The config's method name as a `Thinner`, `thin(key, x) -> indices`."""
    thinners = {
        "iid": thinning.iid_thin,
        "standard": thinning.standard_thin,
        "kt": partial(km.kernel_thin, kernel=kernel),
        "root_kt": partial(
            km.kernel_thin, kernel=kernel, split_kernel=thinning.root_kernel(kernel)
        ),
        "kt_plus": partial(
            km.kernel_thin, kernel=kernel, split_kernel=thinning.kt_plus_kernel(kernel)
        ),
        "compresspp": partial(km.compresspp, kernel=kernel, g=g),
    }
    return thinners[method]


def fitted_slope(ns, values) -> float:
    """Least-squares slope of log(value) against log(n)."""
    return float(np.polyfit(np.log(ns), np.log(values), 1)[0])


def _unit_rows(cfg: Config, ctx, key, index: int, dataset: str, d: int, n: int) -> list[dict]:
    """MMD to the input of every method's coreset, over `repeats` samples split over the
    devices."""
    kernel = km.Gaussian(float(np.sqrt(2.0 * d)))
    data = np.stack(
        [_sample(np.random.default_rng([index, r]), dataset, n, d) for r in range(cfg.repeats)]
    )
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(cfg.repeats))
    thinners = [_thinner(method, kernel, cfg.g) for method in cfg.methods]
    coresets = [
        ctx.map(
            lambda k, x, j=j, thin=thin: thin(jax.random.fold_in(k, j), x),
            keys,
            data.astype(np.float32),
        )
        for j, thin in enumerate(thinners)
    ]
    if len({c.shape for c in coresets}) != 1:
        raise ValueError(f"coreset sizes differ between methods: {[c.shape for c in coresets]}")

    def mmds(x64, indices):
        # the n^2 term once per sample, then each method's coreset against it
        self_term = km.pairwise.kernel_sum(kernel, x64, x64) / n**2
        return jax.vmap(lambda idx: thinning.mmd_to_sample(x64, idx, kernel, mean_kxx=self_term))(
            indices
        )

    with jax.enable_x64(True):
        values = ctx.map(mmds, data, np.stack(coresets, axis=1))  # (repeats, methods)
    rows = []
    for j, method in enumerate(cfg.methods):
        vals = [float(v) for v in values[:, j]]
        row = {
            "dataset": dataset,
            "d": d,
            "n": n,
            "method": method,
            "mmd_median": statistics.median(vals),
            "mmd": vals,
        }
        ctx.log_metrics(**row)
        rows.append(row)
    return rows


def run(cfg: Config, ctx) -> dict:
    """MMD to the input for every (dataset, d, n, method, repeat), medians and slopes."""
    settings = [("gaussian", d) for d in cfg.dims if "gaussian" in cfg.datasets]
    if "mog" in cfg.datasets:
        settings.append(("mog", 2))
    units = [(ds, d, n) for ds, d in settings for n in cfg.sample_sizes]
    root = ctx.key()
    rows = []
    for i, (dataset, d, n) in enumerate(ctx.progress(units, desc="kt_mmd_rate", total=len(units))):
        key = jax.random.fold_in(root, i)
        # one resumable unit per (dataset, d, n): `kseq run --resume` reuses the finished ones
        rows += ctx.unit(
            f"{dataset}-d{d}-n{n}",
            lambda key=key, i=i, dataset=dataset, d=d, n=n: _unit_rows(
                cfg, ctx, key, i, dataset, d, n
            ),
        )

    lo, hi = cfg.slope_range
    slopes = []
    for dataset, d in settings:
        for method in cfg.methods:
            pts = [
                (r["n"], r["mmd_median"])
                for r in rows
                if (r["dataset"], r["d"], r["method"]) == (dataset, d, method)
                and lo <= r["n"] <= hi
            ]
            if len(pts) >= 2:
                slope = fitted_slope(*zip(*pts, strict=True))
                slopes.append({"dataset": dataset, "d": d, "method": method, "slope": slope})
    _plot(rows, slopes, settings, ctx)
    table = [{k: v for k, v in r.items() if k != "mmd"} for r in rows]
    return {"slope_range": [lo, hi], "slopes": slopes, "mmd": table}


def _plot(rows, slopes, settings, ctx):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 3.8), squeeze=False)
    for ax, (dataset, d) in zip(axes[0], settings, strict=True):
        for method in dict.fromkeys(r["method"] for r in rows):
            pts = [r for r in rows if (r["dataset"], r["d"], r["method"]) == (dataset, d, method)]
            slope = next(
                (
                    s["slope"]
                    for s in slopes
                    if (s["dataset"], s["d"], s["method"]) == (dataset, d, method)
                ),
                None,
            )
            label = method if slope is None else f"{method} ({slope:.2f})"
            ax.plot([r["n"] for r in pts], [r["mmd_median"] for r in pts], "o-", label=label)
        style_axis(
            ax,
            "n (coreset sqrt(n))",
            "MMD to the input",
            f"{dataset}, d = {d}",
            xlog=4,
            ylog=10,
            legend_title="fitted slope",
        )
    ctx.save_figure(fig, "mmd_rate")
