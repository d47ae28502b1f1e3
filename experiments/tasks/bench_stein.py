"""Benchmark: kseq's debiased compression side by side with goodpoints.jax and coreax.

One process, one problem: the target p = 0.5 N((-2, 0), I) + 0.5 N((2, 0), I), the biased
sample of n i.i.d. points with mode weights 0.8 / 0.2 (float64, one sample per n, the same for
every method), the scores grad log p at it, the Langevin Stein kernel on the IMQ base
(1 + r^2)^(-1/2) (goodpoints' `PrecondSteinKernel(imq, I, 1)`, coreax's
`SteinKernel(PCIMQKernel(length_scale=1 / sqrt(2)))`), coresets of sqrt(n) points, and one
metric for all: `stein_compression.coreset_ksd`, kseq's float64 `ksd2` of the coreset with its
weights (simplex weights for SR, signed constant-preserving weights for SC).

Methods (`methods`), named library_method:

- kseq: `kseq_stein_thin`, `kseq_skt`, `kseq_lskt` (rank ceil(n^`rank_exponent`)) and, where
  `kmethods.debias` has it, `kseq_stein_cholesky` (SC) and `kseq_lsc` (low-rank SC, same rank)
  with simplex weights, and `kseq_sc_cp`, `kseq_lsc_cp` with the paper's constant-preserving
  (signed) weights; `swap_passes` is their number of swap-and-reweight passes (the paper: 1);
- goodpoints.jax (`goodpoints.jax.dtc`): `gp_stein_thin` (`st.stein_thin`), `gp_skt`, `gp_lskt`
  (same rank), `gp_sr`, `gp_sc`. goodpoints 0.6.3's `dtc.lskt` unpacks `kt_compresspp`'s
  coreset (an index sequence) as (weights, support) and fails; during our `gp_lskt` calls
  `dtc.kt_compresspp` is wrapped so that it returns `seq_to_w_supp(coreset, n)`, the line
  corrected (site-packages untouched). One kernel instance is reused for every goodpoints call
  (its kernel is a static jit argument hashed by identity);
- coreax: `coreax_st` (`SteinThinning`, its defaults: regularised, unique points) and
  `coreax_st_noreg` (`regularise=False`). coreax evaluates the score function inside its
  kernel (its API takes a function, not precomputed scores);
- baselines: `uniform` (a uniform subsample of the biased sample) and `input` (the whole
  biased sample, up to `input_max_n`).

A competitor that does not import is recorded as skipped with the reason. `max_n` caps the n
of a method (e.g. the O(n^2) ones at large n).

Times: the first call (compilation included) and the median of `repeats` warm calls (new
seeds, same sample), in this process, one at a time; `warm_cpu_s` is the warm calls' CPU time
of this process (all threads), steadier than wall time on a shared machine. KSD: median
over the warm calls. Memory (`measure_memory`): each method once more in a fresh Python
process, which reports its peak resident set (VmHWM, compilation included) and its resident
set after imports and the sample (`peak_over_base_mb` is the difference). Each (method, n) is
a resumable unit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

from experiments.config import ConfigError, require_at_least
from experiments.tasks import stein_compression as sc
from experiments.timing import timed
from kmethods import debias

KSEQ = (
    "kseq_stein_thin",
    "kseq_skt",
    "kseq_lskt",
    "kseq_stein_cholesky",
    "kseq_lsc",
    "kseq_sc_cp",
    "kseq_lsc_cp",
)
GOODPOINTS = ("gp_stein_thin", "gp_skt", "gp_lskt", "gp_sr", "gp_sc")
COREAX = ("coreax_st", "coreax_st_noreg")
BASELINES = ("uniform", "input")


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the benchmark.

    Attributes:
      sample_sizes: n (powers of 4 keep goodpoints' LSKT output at sqrt(n)).
      methods: library_method names: kseq_stein_thin, kseq_skt, kseq_lskt,
        kseq_stein_cholesky, kseq_lsc, kseq_sc_cp, kseq_lsc_cp, gp_stein_thin, gp_skt,
        gp_lskt, gp_sr, gp_sc, coreax_st, coreax_st_noreg, uniform, input.
      max_n: the largest n of a method (absent: no cap).
      repeats: warm calls per method (median reported).
      rank_exponent: the rank of both LSKTs is ceil(n^rank_exponent).
      sample_weights: the biased sample's weights of the modes (-2, 0) and (2, 0).
      measure_memory: also run each method once in a fresh process for its peak memory.
      swap_passes: `stein_cholesky`'s swap passes in kseq's SC / LSC methods.
    """

    sample_sizes: tuple[int, ...] = (4096, 16384)
    methods: tuple[str, ...] = (*KSEQ, *GOODPOINTS, *COREAX, *BASELINES)
    max_n: dict[str, int] = dataclasses.field(default_factory=dict)
    repeats: int = 1
    rank_exponent: float = 0.5
    sample_weights: tuple[float, float] = (0.8, 0.2)
    measure_memory: bool = True
    swap_passes: int = 1

    def __post_init__(self):
        if not self.sample_sizes or min(self.sample_sizes) < 64:
            raise ConfigError("`params.sample_sizes` must be a non-empty list of n >= 64.")
        known = (*KSEQ, *GOODPOINTS, *COREAX, *BASELINES)
        unknown = (set(self.methods) | set(self.max_n)) - set(known)
        if unknown:
            raise ConfigError(f"`params.methods` / `params.max_n`: unknown {sorted(unknown)}.")
        require_at_least(self, ("repeats", "swap_passes"))


def missing_reason(method: str) -> str | None:
    """Why `method` cannot run here (its library does not import), else None."""
    try:
        if method in GOODPOINTS:
            import goodpoints.jax.dtc  # noqa: F401  (needs qpsolvers[proxqp])
        elif method in COREAX:
            import coreax  # noqa: F401
        elif method in KSEQ[3:] and not hasattr(debias, "stein_cholesky"):
            return "kmethods.debias has no stein_cholesky"
    except Exception as err:  # an optional comparator: any import failure skips it
        return f"{type(err).__name__}: {err}"
    return None


def library_versions() -> dict:
    """The versions of the libraries compared (None where absent)."""
    from importlib import metadata

    out = {}
    for name in ("jax", "goodpoints", "coreax", "qpsolvers", "proxsuite"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def problem(n: int, cfg: Config):
    """The float64 biased sample of size n (fixed key), its scores and the coreset size."""
    with jax.enable_x64(True):
        key = jax.random.fold_in(jax.random.key(20240721), n)
        x = sc.biased_mixture_sample(key, n, cfg.sample_weights)
        return x, sc.mixture_scores(x), math.isqrt(n)


@contextlib.contextmanager
def _competitor_numerics():
    # goodpoints and coreax are written for JAX's default promotion rules
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        yield


@contextlib.contextmanager
def _lskt_fixed(dtc):
    """goodpoints 0.6.3's `dtc.lskt` with its one broken line corrected: `kt_compresspp`
    returns a coreset (indices with repeats), which `lskt` unpacks as (weights, support)."""
    original = dtc.kt_compresspp

    def compresspp_as_weights(kernel, points, w, rng_gen, **kwargs):
        return dtc.seq_to_w_supp(original(kernel, points, w, rng_gen, **kwargs), points.length)

    dtc.kt_compresspp = compresspp_as_weights
    try:
        yield
    finally:
        dtc.kt_compresspp = original


class Calls:
    """Each method as a function of a seed -> (support, weights or None), on one problem.

    Built once per (process, n): goodpoints' kernel and coreax's solvers are single instances
    reused across calls."""

    def __init__(self, x, scores, out_size: int, cfg: Config):
        self.x, self.scores, self.out_size = x, scores, out_size
        self.rank = sc.lskt_rank(x.shape[0], cfg.rank_exponent)
        self.swap_passes = cfg.swap_passes
        self._gp = self._coreax = None

    def get(self, method: str):
        s, rank = self.out_size, self.rank
        if method.startswith("kseq_") or method == "uniform":
            name = "uniform" if method == "uniform" else method.removeprefix("kseq_")
            fn = sc.kseq_method(name, out_size=s, rank=rank, swap_passes=self.swap_passes)
            return lambda seed: fn(jax.random.key(seed), self.x, self.scores)
        if method in GOODPOINTS:
            return self._goodpoints(method.removeprefix("gp_"), s, rank)
        return self._coreax_call(regularise=method == "coreax_st")

    def _goodpoints(self, name, s, rank):
        from goodpoints.jax import dtc, st
        from goodpoints.jax.kernel.precond_stein import PrecondSteinKernel
        from goodpoints.jax.kernel.scalar import imq

        if self._gp is None:
            with _competitor_numerics():
                kernel = PrecondSteinKernel(imq, np.eye(self.x.shape[1]), 1.0)
                self._gp = kernel, kernel.prepare_input(self.x, self.scores)
        kernel, points = self._gp

        def call(seed):
            with _competitor_numerics():
                if name == "stein_thin":
                    return _support(*st.stein_thin(kernel, points, s))
                if name == "lskt":
                    with _lskt_fixed(dtc):
                        return _support(*dtc.lskt(kernel, points, rank, seed=seed))
                return _support(*getattr(dtc, name)(kernel, points, s, seed=seed))

        return call

    def _coreax_call(self, *, regularise: bool):
        from coreax import Data
        from coreax.kernels import PCIMQKernel, SteinKernel
        from coreax.solvers import SteinThinning

        with _competitor_numerics():
            kernel = SteinKernel(
                base_kernel=PCIMQKernel(length_scale=1.0 / math.sqrt(2.0)),
                score_function=jax.grad(sc.mixture_log_prob),
            )
            solver = SteinThinning(self.out_size, kernel, regularise=regularise)
            data = Data(self.x)

        def call(seed):
            del seed  # deterministic
            with _competitor_numerics():
                coreset, _ = solver.reduce(data)
                return coreset.unweighted_indices, None

        return call


def _support(w, supp):
    """goodpoints' (n,) weights and support as (support, its weights)."""
    supp = np.asarray(supp)
    return supp, np.asarray(w)[supp]


def measure_here(spec: dict) -> dict:
    """One call of spec's method on spec's problem in this process: its seconds, this process's
    peak resident set (MB) and the resident set before the call (`base_mb`)."""
    cfg = Config(**spec["cfg"])
    with jax.enable_x64(True):
        x, scores, out_size = problem(spec["n"], cfg)
        call = Calls(x, scores, out_size, cfg).get(spec["method"])
        base = _vm("VmRSS")
        seconds, _ = timed(lambda: call(0))
    return {"seconds": seconds, "peak_mb": _vm("VmHWM"), "base_mb": base}


def _vm(field: str) -> float | None:
    # the resident set of this process image, from /proc (Linux); None elsewhere
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


_CHILD = (
    "import json, sys\n"
    "from experiments.tasks import bench_stein\n"
    "print(json.dumps(bench_stein.measure_here(json.loads(sys.argv[1]))))\n"
)


def _in_fresh_process(method: str, n: int, cfg: Config) -> dict:
    spec = {"method": method, "n": n, "cfg": dataclasses.asdict(cfg)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench_unit(method: str, n: int, cfg: Config) -> dict:
    record = {"method": method, "library": method.split("_")[0], "n": n}
    reason = missing_reason(method)
    if n > cfg.max_n.get(method, n):
        reason = f"n above max_n = {cfg.max_n[method]}"
    if reason:
        return record | {"skipped": reason}
    with jax.enable_x64(True):
        x, scores, out_size = problem(n, cfg)
        if method == "input":
            start = time.perf_counter()
            ksd = sc.coreset_ksd(x, scores, np.arange(n))
            return record | {"out_size": n, "ksd": ksd, "ksd_s": time.perf_counter() - start}
        call = Calls(x, scores, out_size, cfg).get(method)
        try:
            first, _ = timed(lambda: call(10**6))
            warm, cpu, ksds, sizes = [], [], [], []
            for seed in range(cfg.repeats):
                start = time.process_time()
                seconds, (support, weights) = timed(lambda seed=seed: call(seed))
                cpu.append(time.process_time() - start)
                warm.append(seconds)
                ksds.append(sc.coreset_ksd(x, scores, support, weights))
                sizes.append(int(np.asarray(support).shape[0]))
        except Exception as err:  # a competitor failing at this size is a result
            return record | {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    if method in ("kseq_stein_cholesky", "kseq_lsc", "kseq_sc_cp", "kseq_lsc_cp"):
        record["swap_passes"] = cfg.swap_passes
    record |= {
        "out_size": sizes[0],
        "first_s": first,
        "warm_s": statistics.median(warm),
        "warm_cpu_s": statistics.median(cpu),
        "ksd": statistics.median(ksds),
    }
    if method in ("kseq_lskt", "kseq_lsc", "kseq_lsc_cp", "gp_lskt"):
        record["rank"] = sc.lskt_rank(n, cfg.rank_exponent)
    if cfg.measure_memory and method != "uniform":
        fresh = _in_fresh_process(method, n, cfg)
        record["peak_mb"] = fresh.get("peak_mb")
        record["peak_over_base_mb"] = (
            fresh["peak_mb"] - fresh["base_mb"] if "peak_mb" in fresh else None
        )
        if "error" in fresh:
            record["memory_error"] = fresh["error"]
    return record


def summary(records) -> list[dict]:
    """Per n: the best goodpoints KSD, kseq's best KSD and its ratio to it, kseq SKT's warm
    speed-up over goodpoints' SKT, and kseq's fastest Stein method's over coreax's."""
    out = []
    for n in sorted({r["n"] for r in records}):
        at = {r["method"]: r for r in records if r["n"] == n and "ksd" in r}
        row = {"n": n}
        gp = [r for m, r in at.items() if m in GOODPOINTS]
        kseq = [r for m, r in at.items() if m.startswith("kseq_")]
        if gp and kseq:
            best_gp = min(gp, key=lambda r: r["ksd"])
            best = min(kseq, key=lambda r: r["ksd"])
            row |= {
                "gp_best": best_gp["method"],
                "gp_best_ksd": best_gp["ksd"],
                "kseq_best": best["method"],
                "kseq_best_ksd": best["ksd"],
                "ksd_ratio": best["ksd"] / best_gp["ksd"],
            }
        if "kseq_skt" in at and "gp_skt" in at:
            row["skt_speedup_warm"] = at["gp_skt"]["warm_s"] / at["kseq_skt"]["warm_s"]
        coreax = [at[m]["warm_s"] for m in COREAX if m in at]
        if coreax and "kseq_stein_thin" in at:
            row["coreax_fastest_s"] = min(coreax)
            row["stein_thin_speedup_vs_coreax"] = min(coreax) / at["kseq_stein_thin"]["warm_s"]
        out.append(row)
    return out


def run(cfg: Config, ctx) -> dict:
    """Times, KSD and peak memory of every (method, n); one record each, and a summary."""
    units = [(m, n) for n in cfg.sample_sizes for m in cfg.methods]
    records = []
    for method, n in ctx.progress(units, desc="bench_stein", total=len(units)):

        def compute(method=method, n=n):
            record = _bench_unit(method, n, cfg)
            ctx.log_metrics(**record)
            return record

        records.append(ctx.unit(f"{method}-n{n}", compute, log=False))
    return {
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "versions": library_versions(),
        "kernel": "Langevin Stein kernel, IMQ base (1 + r^2)^(-1/2); float64",
        "summary": summary(records),
        "records": records,
    }
