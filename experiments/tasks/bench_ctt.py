"""Benchmark: kseq's Compress Then Test, LR-CTT and RFF test side by side with goodpoints.

Data and settings of goodpoints' `ctt` examples: x, y ~ N(0, I_d) (the alternative shifts y's
first coordinate by `shift`), goodpoints' Gaussian kernel exp(-||x - y||^2 / lam^2) with
lam^2 = 2 d, which is `kmethods.Gaussian(lam / sqrt(2))`, B permutations, s bins per sample
(goodpoints' `s`; kseq's `num_bins` counts both samples, 2 s), r random features.

For each n (per sample) and method, in one process:

- `ctt`: `kmethods.ctt_test(g)` against `goodpoints.ctt.ctt(g)`, for each g of `g_values`;
- `lrctt`: `kmethods.compressed.lrctt_test` against `goodpoints.ctt.lrctt` (a = 0);
- `rff`: `kmethods.compressed.rff_test` against `goodpoints.ctt.rff`.

Times: kseq's first call (compilation included) and the median of `repeats` warm calls (new
keys and data each); goodpoints' median over the same data. Rejection rates: over
`replicates` fresh data sets at each n in `rate_sizes`, under the null and the alternative,
for both libraries on the same data sets (with the number of non-finite kseq replicates), each
with its 95% binomial half-width, and the paired difference kseq - goodpoints with its
standard error. `kseq_only_sizes` time
kseq's CTT alone (e.g. n = 2^20, where goodpoints would take minutes). Each (method, n)
record is a resumable unit.
"""

from __future__ import annotations

import dataclasses
import statistics

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least
from experiments.plots import binomial_halfwidth
from experiments.tasks import nonfinite
from experiments.timing import timed
from kmethods import compressed

# The comparator, an optional package: checked by the runner before the run folder is made.
REQUIRES = {"goodpoints": "pip install goodpoints, or pip install 'kseq[bench]'"}


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the benchmark.

    Attributes:
      sample_sizes: n per sample, each timed against goodpoints.
      dim: dimension d.
      g_values: CTT's compression levels g (both libraries).
      bins_per_sample: goodpoints' `s` (kseq's `num_bins` is twice it).
      num_permutations: B (both libraries).
      num_features: r, random features of RFF and LR-CTT.
      methods: any of "ctt", "lrctt", "rff".
      repeats: warm calls timed (median reported).
      rate_sizes: n at which rejection rates are estimated (a subset of `sample_sizes`).
      replicates: data sets per rejection rate (null and alternative each).
      rate_chunk: replicates per resumable unit (a killed run redoes at most one chunk).
      rate_settings: which rates to estimate, of "null" and "alt" (two processes may share
        the work: one each, in two run folders of the same config, then one folder's units
        copied into the other and `kseq run --resume` reuses them).
      shift: the alternative's mean shift of y's first coordinate.
      kseq_only_sizes: n at which kseq's CTT (the first g) is timed alone.
    """

    sample_sizes: tuple[int, ...] = (16384, 65536)
    dim: int = 10
    g_values: tuple[int, ...] = (2, 4)
    bins_per_sample: int = 16
    num_permutations: int = 39
    num_features: int = 256
    methods: tuple[str, ...] = ("ctt", "lrctt", "rff")
    repeats: int = 3
    rate_sizes: tuple[int, ...] = (16384,)
    replicates: int = 200
    rate_chunk: int = 10
    rate_settings: tuple[str, ...] = ("null", "alt")
    shift: float = 0.05
    kseq_only_sizes: tuple[int, ...] = (1048576,)

    def __post_init__(self):
        if not self.sample_sizes or min(self.sample_sizes) < 64:
            raise ConfigError("`params.sample_sizes` must be a non-empty list of n >= 64.")
        unknown = set(self.methods) - {"ctt", "lrctt", "rff"}
        if unknown:
            raise ConfigError(f"`params.methods`: unknown {sorted(unknown)}.")
        if not set(self.rate_settings) <= {"null", "alt"}:
            raise ConfigError('`params.rate_settings`: a list of "null" and "alt".')
        if not set(self.rate_sizes) <= set(self.sample_sizes):
            raise ConfigError("`params.rate_sizes` must be a subset of `params.sample_sizes`.")
        require_at_least(
            self, ("dim", "bins_per_sample", "num_permutations", "repeats", "rate_chunk")
        )
        require_at_least(self, ("num_features",), minimum=2)
        require_at_least(self, ("replicates",), minimum=0)


def _data(seed: int, n: int, d: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    y[:, 0] += shift
    return x, y


def _lam(d: int) -> float:
    return float(np.sqrt(2.0 * d))


def _kseq_call(method: str, g: int | None, cfg: Config):
    """kseq's test as a function of (key, x, y)."""
    kernel = km.Gaussian(_lam(cfg.dim) / np.sqrt(2.0))
    common = {"num_permutations": cfg.num_permutations}
    if method == "ctt":
        return lambda k, x, y: km.ctt_test(
            k, x, y, kernel, g=g, num_bins=2 * cfg.bins_per_sample, **common
        )
    if method == "lrctt":
        return lambda k, x, y: compressed.lrctt_test(
            k,
            x,
            y,
            kernel,
            g=g,
            num_bins=2 * cfg.bins_per_sample,
            num_features=cfg.num_features,
            **common,
        )
    return lambda k, x, y: compressed.rff_test(
        k, x, y, kernel, num_features=cfg.num_features, **common
    )


def _goodpoints_call(method: str, g: int | None, cfg: Config):
    """goodpoints' test as a function of (seed, X, Y), returning its rejection (0 or 1, or a
    fraction on a tie at the threshold)."""
    from goodpoints import ctt

    lam, B, s = _lam(cfg.dim), cfg.num_permutations, cfg.bins_per_sample
    if method == "ctt":
        fn = lambda seed, X, Y: ctt.ctt(
            X, Y, g, B=B, s=s, lam=lam, null_seed=seed, statistic_seed=seed + 1
        )
    elif method == "lrctt":
        fn = lambda seed, X, Y: ctt.lrctt(
            X, Y, g, cfg.num_features, B=B, s=s, lam=lam, null_seed=seed, statistic_seed=seed + 1
        )
    else:
        fn = lambda seed, X, Y: ctt.rff(
            X, Y, cfg.num_features, B=B, lam=lam, null_seed=seed, statistic_seed=seed + 1
        )
    return lambda seed, X, Y: float(fn(seed, X, Y).rejects)


def _rate_chunk(start, stop, shift, n, cfg, seed0, kseq_fn, gp_fn) -> dict:
    """Both libraries' decisions on replicates start..stop-1 (the same data sets)."""
    kseq_rejects, gp_rejects, bad = [], [], 0
    for i in range(start, stop):
        X, Y = _data(seed0 + 7919 * (i + 1), n, cfg.dim, shift)
        x, y = jnp.asarray(X, jnp.float32), jnp.asarray(Y, jnp.float32)
        result = kseq_fn(jax.random.key(seed0 + i), x, y)
        kseq_rejects.append(float(result.reject))
        bad += int(nonfinite(result))
        gp_rejects.append(gp_fn(seed0 + i, X, Y))
    return {"kseq": kseq_rejects, "gp": gp_rejects, "nonfinite": bad}


def _rates(name, n, cfg, seed0, kseq_fn, gp_fn, ctx) -> dict:
    """Rejection rates over `cfg.replicates` data sets, computed in resumable chunks of
    `cfg.rate_chunk` replicates (each a unit of its own: hours of goodpoints calls survive a
    kill)."""
    out = {}
    for label, shift in (("null", 0.0), ("alt", cfg.shift)):
        if label not in cfg.rate_settings:
            continue
        kseq_rejects, gp_rejects, bad = [], [], 0
        for start in range(0, cfg.replicates, cfg.rate_chunk):
            stop = min(start + cfg.rate_chunk, cfg.replicates)
            chunk = ctx.unit(
                f"{name}-{label}-{start}-{stop}",
                lambda start=start, stop=stop, shift=shift: _rate_chunk(
                    start, stop, shift, n, cfg, seed0, kseq_fn, gp_fn
                ),
                log=False,
            )
            kseq_rejects += chunk["kseq"]
            gp_rejects += chunk["gp"]
            bad += chunk["nonfinite"]
        out[f"kseq_rate_{label}"] = float(np.mean(kseq_rejects)) if kseq_rejects else None
        out[f"gp_rate_{label}"] = float(np.mean(gp_rejects)) if gp_rejects else None
        out[f"kseq_num_nonfinite_{label}"] = bad
        if len(kseq_rejects) > 1:
            # Paired difference over the same data sets, and each rate's 95% half-width.
            diff = np.asarray(kseq_rejects) - np.asarray(gp_rejects)
            out[f"rate_difference_{label}"] = float(diff.mean())
            out[f"rate_difference_se_{label}"] = float(diff.std(ddof=1) / np.sqrt(diff.size))
            for who in ("kseq", "gp"):
                rate = out[f"{who}_rate_{label}"]
                out[f"{who}_halfwidth95_{label}"] = binomial_halfwidth(rate, diff.size)
    return out


def _bench_unit(method, g, n, cfg: Config, seed0: int, compare: bool, name: str, ctx):
    kseq_fn = _kseq_call(method, g, cfg)
    datasets = [_data(seed0 + i, n, cfg.dim) for i in range(cfg.repeats + 1)]
    as_jax = lambda X: jnp.asarray(X, jnp.float32)
    X0, Y0 = datasets[0]
    first, _ = timed(lambda: kseq_fn(jax.random.key(seed0), as_jax(X0), as_jax(Y0)))
    warm = []
    for i, (X, Y) in enumerate(datasets[1:]):
        x, y = as_jax(X), as_jax(Y)
        warm.append(timed(lambda x=x, y=y, i=i: kseq_fn(jax.random.key(seed0 + i + 1), x, y))[0])
    record = {
        "method": method,
        "g": g,
        "n": n,
        "d": cfg.dim,
        "kseq_first_s": first,
        "kseq_warm_s": statistics.median(warm),
    }
    if not compare:
        return record
    gp_fn = _goodpoints_call(method, g, cfg)
    gp_times = [
        timed(lambda X=X, Y=Y, i=i: gp_fn(seed0 + i, X, Y))[0]
        for i, (X, Y) in enumerate(datasets[1:])
    ]
    record["gp_s"] = statistics.median(gp_times)
    record["ratio_warm"] = record["gp_s"] / record["kseq_warm_s"]
    if n in cfg.rate_sizes and cfg.replicates:
        record.update(_rates(name, n, cfg, seed0 + 10**5, kseq_fn, gp_fn, ctx))
    return record


def run(cfg: Config, ctx) -> dict:
    """Times both libraries and estimates their rejection rates; one record per unit."""
    settings = []
    for method in cfg.methods:
        for g in cfg.g_values if method != "rff" else (None,):
            if method == "lrctt" and g != cfg.g_values[0]:
                continue  # LR-CTT at the first g only
            settings += [(method, g, n, True) for n in cfg.sample_sizes]
    if "ctt" in cfg.methods:
        settings += [("ctt", cfg.g_values[0], n, False) for n in cfg.kseq_only_sizes]
    base_seed = int(jax.random.randint(ctx.key(), (), 0, 2**20))
    records = []
    for i, (method, g, n, compare) in enumerate(
        ctx.progress(settings, desc="bench_ctt", total=len(settings))
    ):
        suffix = "" if compare else "-alone"
        name = f"{method}-g{g}-n{n}{suffix}" if g is not None else f"{method}-n{n}"

        def compute(method=method, g=g, n=n, compare=compare, i=i, name=name):
            record = _bench_unit(method, g, n, cfg, base_seed + 1000 * i, compare, name, ctx)
            ctx.log_metrics(**record)
            return record

        records.append(ctx.unit(name, compute, log=False))
    return {
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "kernel": "Gaussian, goodpoints lam^2 = 2 d (kmethods.Gaussian(sqrt(d)))",
        "records": records,
    }
