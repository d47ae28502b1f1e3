"""Benchmark: kseq's kernel thinning and Compress++ side by side with goodpoints.

Setting of the papers and of goodpoints' examples: X ~ N(0, I_d), a Gaussian kernel with
bandwidth^2 = 2 d (goodpoints' `k_params = 2 * bandwidth^2`), output size sqrt(n).

For each d, n and method:

- KT: `kmethods.kernel_thin` (float32) against goodpoints' fastest KT path, a float64 kernel
  matrix built with `kt.kernel_matrix` then `kt.split_K` + `kt.swap_K` (columns `gp_matrix_*`,
  up to `goodpoints_matrix_max_n`; the matrix needs 8 n^2 bytes), and `kt.thin` (the O(n d)
  memory path, `gp_thin_*`, up to `goodpoints_thin_max_n`).
- Compress++: `kmethods.compresspp(g)` against `compress.compresspp_kt(g)` (`gp_compresspp_kt_*`).

Times: kseq's first call (compilation included) and warm calls (median over `repeats` seeds);
goodpoints' median over the same seeds. Quality: MMD between the input and the coreset,
evaluated in float64 with `kmethods.mmd_to_sample` for both (median over seeds). Memory: with
`measure_memory`, each call also runs once in a fresh Python process, which reports its peak
resident memory and its resident memory after importing the libraries (the baseline).
`kt_only_sizes` / `compresspp_only_sizes` are run by kseq alone (goodpoints' matrix would not
fit, or it would take too long), e.g. Compress++ on 2^20 points; MMDs are evaluated up to
`mmd_max_n`.

Devices: the timed calls run one at a time on one device, as goodpoints does (a benchmark of
single calls); the MMDs of the coresets of all seeds (the O(n^2) float64 part at large n) are
split over the run's device mesh with `RunContext.map`, bit for bit as on one device. Each
(method, n, d) record is a resumable unit.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import require_at_least, require_sizes
from experiments.plots import style_axis
from experiments.timing import timed
from kmethods import thinning

Method = Literal["kt", "compresspp"]


# The comparator, an optional package: checked by the runner before the run folder is made.
REQUIRES = {"goodpoints": "pip install goodpoints, or pip install 'kseq[bench]'"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the benchmark.

    Attributes:
      sample_sizes: n, each compared with goodpoints (powers of 4 keep out_size = sqrt(n)).
      dims: dimensions d.
      methods: "kt" and/or "compresspp".
      g: Compress++'s oversampling parameter (both libraries).
      repeats: seeds timed (median reported) and used for the MMD.
      goodpoints_matrix_max_n: largest n for goodpoints' stored-matrix KT.
      goodpoints_thin_max_n: largest n for goodpoints' `kt.thin` (slow; 0 skips it).
      kt_only_sizes, compresspp_only_sizes: sizes run by kseq alone (d = the first of
        `dims`), e.g. Compress++ on 2^20 points.
      mmd_max_n: largest n whose MMD is evaluated (an n^2 float64 reduction).
      measure_memory: also run each call in a fresh process for its peak memory.
    """

    sample_sizes: tuple[int, ...] = (1024, 4096, 16384, 65536)
    dims: tuple[int, ...] = (2, 10)
    methods: tuple[Method, ...] = ("kt", "compresspp")
    g: int = 4
    repeats: int = 3
    goodpoints_matrix_max_n: int = 16384
    goodpoints_thin_max_n: int = 4096
    kt_only_sizes: tuple[int, ...] = ()
    compresspp_only_sizes: tuple[int, ...] = (1048576,)
    mmd_max_n: int = 65536
    measure_memory: bool = True

    def __post_init__(self):
        require_sizes(self, "sample_sizes", 16)
        require_sizes(self, "dims", 1, "d")
        require_at_least(self, ("repeats",))
        require_at_least(self, ("g",), minimum=0)


def _bandwidth(d: int) -> float:
    return float(np.sqrt(2.0 * d))


def _data(seed: int, n: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def _kseq_call(method: str, x, d: int, g: int):
    kernel = km.Gaussian(_bandwidth(d))
    if method == "kt":
        return lambda key: km.kernel_thin(key, x, kernel)
    return lambda key: km.compresspp(key, x, kernel, g=g)


def _goodpoints_calls(method: str, X: np.ndarray, d: int, g: int, cfg: Config) -> dict:
    """The goodpoints paths to time at this size: name -> function of a seed."""
    from goodpoints import compress, kt

    n = X.shape[0]
    m = int(np.log2(n)) // 2  # sqrt(n) points out
    bw2 = _bandwidth(d) ** 2

    def row_kernel(y, Z):
        return np.exp(-((y - Z) ** 2).sum(-1) / (2.0 * bw2))

    if method == "compresspp":
        params = np.array([2.0 * bw2])
        return {
            "gp_compresspp_kt": lambda seed: compress.compresspp_kt(
                X, b"gaussian", k_params=params, g=g, seed=seed
            )
        }
    calls = {}
    if n <= cfg.goodpoints_matrix_max_n:

        def matrix_path(seed):
            K = kt.kernel_matrix(X, row_kernel)
            return kt.swap_K(K, kt.split_K(K, m, seed=seed))

        calls["gp_matrix"] = matrix_path
    if n <= cfg.goodpoints_thin_max_n:
        calls["gp_thin"] = lambda seed: kt.thin(X, m, row_kernel, row_kernel, seed=seed)
    return calls


def _mean_kxx(X64: np.ndarray, d: int) -> float:
    """mean k(x_i, x_j) over all pairs, float64: the O(n^2) term of every MMD of this sample."""
    with jax.enable_x64(True):
        x = jnp.asarray(X64)
        return float(km.pairwise.kernel_sum(km.Gaussian(_bandwidth(d)), x, x)) / x.shape[0] ** 2


def _mmds(ctx, X64: np.ndarray, coresets, d: int, mean_kxx: float) -> list[float]:
    """MMD between X and each coreset (one per seed, float64), the seeds split over the
    devices."""
    indices = np.stack([np.asarray(idx) for idx in coresets])
    with jax.enable_x64(True):
        kernel = km.Gaussian(jnp.asarray(_bandwidth(d), jnp.float64))
        values = ctx.map(
            _mmd_row, X64, indices, kernel, np.float64(mean_kxx), in_axes=(None, 0, None, None)
        )
    return [float(v) for v in values]


def _mmd_row(x, indices, kernel, mean_kxx):
    # module level, with the kernel and the n^2 term as arguments: `ctx.map` compiles it once
    # per shape, whatever the bandwidth and the sample
    return thinning.mmd_to_sample(x, indices, kernel, mean_kxx=mean_kxx)


# One measured call in a fresh interpreter: prints {"seconds", "peak_mb", "base_mb"}.
_CHILD = r"""
import json, resource, sys, time
spec = json.loads(sys.argv[1])
import numpy as np
import jax, jax.numpy as jnp
import kmethods as km
from kmethods import thinning
from experiments.tasks import bench_thinning as b
jnp.zeros(1).block_until_ready()
X = b._data(spec["seed"], spec["n"], spec["d"])
def rss():
    # VmHWM, the peak resident set of this process image (ru_maxrss survives exec on Linux and
    # would report the parent's peak)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if spec["lib"] == "kseq":
    x = jnp.asarray(X, jnp.float32)
    call = b._kseq_call(spec["method"], x, spec["d"], spec["g"])
    run = lambda: call(jax.random.key(spec["seed"]))
else:
    cfg = b.Config(goodpoints_matrix_max_n=spec["n"], goodpoints_thin_max_n=spec["n"])
    fn = b._goodpoints_calls(spec["method"], X, spec["d"], spec["g"], cfg)[spec["path"]]
    run = lambda: fn(spec["seed"])
base = rss()
start = time.perf_counter()
jax.block_until_ready(run())
print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": rss(), "base_mb": base}))
"""


def _fresh_process(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench_unit(method: str, n: int, d: int, cfg: Config, seed0: int, compare: bool, ctx) -> dict:
    X = _data(seed0, n, d)
    x = jnp.asarray(X, jnp.float32)
    call = _kseq_call(method, x, d, cfg.g)
    seeds = [seed0 + i for i in range(cfg.repeats)]
    first, idx0 = timed(lambda: call(jax.random.key(seeds[0] + 10**6)))
    mean_kxx = _mean_kxx(X, d) if n <= cfg.mmd_max_n else None
    warm, kseq_idx = [], []
    for seed in seeds:
        seconds, idx = timed(lambda seed=seed: call(jax.random.key(seed)))
        warm.append(seconds)
        kseq_idx.append(idx)
    kseq_mmd = _mmds(ctx, X, kseq_idx, d, mean_kxx) if n <= cfg.mmd_max_n else []
    record = {
        "method": method,
        "n": n,
        "d": d,
        "out_size": int(idx0.shape[0]),
        "kseq_first_s": first,
        "kseq_warm_s": statistics.median(warm),
        "kseq_mmd": statistics.median(kseq_mmd) if kseq_mmd else None,
    }
    if cfg.measure_memory:
        fresh = _fresh_process(
            {"lib": "kseq", "method": method, "n": n, "d": d, "g": cfg.g, "seed": seed0}
        )
        record["kseq_fresh_process_s"] = fresh.get("seconds")
        record["kseq_peak_mb"] = fresh.get("peak_mb")
        record["kseq_peak_over_base_mb"] = (
            fresh["peak_mb"] - fresh["base_mb"] if "peak_mb" in fresh else None
        )
    if not compare:
        return record
    for path, fn in _goodpoints_calls(method, X, d, cfg.g, cfg).items():
        times, coresets = [], []
        for seed in seeds:
            seconds, idx = timed(lambda fn=fn, seed=seed: fn(seed))
            times.append(seconds)
            coresets.append(idx)
        mmds = _mmds(ctx, X, coresets, d, mean_kxx) if n <= cfg.mmd_max_n else []
        gp = statistics.median(times)
        entry = {
            "s": gp,
            "ratio_warm": gp / record["kseq_warm_s"],
            "ratio_first": gp / first,
            "mmd": statistics.median(mmds) if mmds else None,
        }
        if mmds and kseq_mmd:
            entry["mmd_ratio"] = record["kseq_mmd"] / entry["mmd"]
        if cfg.measure_memory:
            fresh = _fresh_process(
                {"lib": "goodpoints", "method": method, "path": path, "n": n, "d": d}
                | {"g": cfg.g, "seed": seed0}
            )
            entry["peak_mb"] = fresh.get("peak_mb")
        record[path] = entry
    return record


def run(cfg: Config, ctx) -> dict:
    """Times and scores both libraries on every (method, d, n); one record each."""
    units = [(m, n, d, True) for m in cfg.methods for d in cfg.dims for n in cfg.sample_sizes]
    units += [
        (m, n, d, False)
        for m in cfg.methods
        for d in cfg.dims[:1]
        for n in (cfg.kt_only_sizes if m == "kt" else cfg.compresspp_only_sizes)
    ]
    base_seed = int(jax.random.randint(ctx.key(), (), 0, 2**20))
    records = []
    for i, (method, n, d, compare) in enumerate(
        ctx.progress(units, desc="bench_thinning", total=len(units))
    ):

        def compute(method=method, n=n, d=d, compare=compare, i=i):
            record = _bench_unit(method, n, d, cfg, base_seed + 100 * i, compare, ctx)
            ctx.log_metrics(**_flat(record))
            return record

        # one resumable unit per record: `kseq run --resume` reuses the finished ones
        suffix = "" if compare else "-alone"
        records.append(ctx.unit(f"{method}-d{d}-n{n}{suffix}", compute, log=False))
    _plot(records, ctx)
    return {
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "kernel": "Gaussian, bandwidth^2 = 2 d",
        "records": [_flat(r) for r in records],
    }


def _flat(record: dict) -> dict:
    """Nested goodpoints entries become `path_field` columns."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update({f"{k}_{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _plot(records, ctx):
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in records})
    fig, axes = plt.subplots(2, len(dims), figsize=(5 * len(dims), 7), squeeze=False)
    for col, d in enumerate(dims):
        for method in dict.fromkeys(r["method"] for r in records):
            rows = sorted(
                (r for r in records if r["d"] == d and r["method"] == method),
                key=lambda r: r["n"],
            )
            ns = [r["n"] for r in rows]
            axes[0, col].plot(ns, [r["kseq_warm_s"] for r in rows], "o-", label=f"kseq {method}")
            paths = {k for r in rows for k, v in r.items() if isinstance(v, dict)}
            for path in sorted(paths):
                pts = [(r["n"], r[path]) for r in rows if path in r]
                axes[0, col].plot([p[0] for p in pts], [p[1]["s"] for p in pts], "s--", label=path)
                axes[1, col].plot(
                    [p[0] for p in pts if p[1]["mmd"]],
                    [p[1]["mmd"] for p in pts if p[1]["mmd"]],
                    "s--",
                    label=path,
                )
            scored = [r for r in rows if r["kseq_mmd"] is not None]
            axes[1, col].plot(
                [r["n"] for r in scored], [r["kseq_mmd"] for r in scored], "o-", label=method
            )
        for row, label in ((0, "seconds (warm)"), (1, "MMD to the input")):
            ax = axes[row, col]
            # Lines with no points (a method that measured nothing) still have legend handles.
            drawn = any(len(line.get_xdata()) for line in ax.get_lines())
            # An empty axis cannot be log-scaled (matplotlib refuses at savefig).
            scale = 10 if drawn else None
            style_axis(ax, "n", label, f"d = {d}", xlog=scale, ylog=scale, legend=drawn)
            if not drawn:  # e.g. no MMD evaluated (every n above `mmd_max_n`)
                ax.text(0.5, 0.5, "nothing measured", ha="center", transform=ax.transAxes)
    ctx.save_figure(fig, "thinning")
