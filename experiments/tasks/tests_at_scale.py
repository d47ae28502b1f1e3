"""Experiment: power per second. Which two-sample test to run for a given time budget?

Two fixed alternatives in d = `dim`, each with its null:

- `shift`: x ~ N(0, I_d), y ~ N(shift e_1, I_d) (the null: shift 0);
- `mixture`: x ~ sum_k (1/K) N(spacing e_k, I_d), K = `mixture_components`, and y the same
  mixture with component 1's weight raised by `weight_difference` (the other weights lowered
  in proportion): the samples differ only in one component's weight (the null: equal weights).

Methods, each at its own list of sample sizes n = m per sample (`sizes`), all with one fixed
kernel `Gaussian(bandwidth)` (default sqrt(d), goodpoints' lam^2 = 2 d) except MMDAgg:

- `exact`: `kmethods.mmd_test` (the quadratic permutation test) on n points: what a
  subsample of that size costs;
- `ctt`: `kmethods.ctt_test` at each g of `ctt_g` (one line per g), `num_bins` bins;
- `lrctt`: `kmethods.compressed.lrctt_test` at g = `lrctt_g`, `num_features` features;
- `rff`: `kmethods.compressed.rff_test` with `num_features` features;
- `block`: `kmethods.compressed.block_mmd_test` (blocks of sqrt(n) points, normal null);
- `mmdagg`: `kmethods.mmdagg` over its default collection (`agg_bandwidths` Gaussian and
  l1-Laplace bandwidths around the data's scale), `agg_permutations` draws for B1 and B2.

Each (method, n) is a resumable unit. It draws `replicates` data sets per alternative and per
null from fixed keys (the same keys for every method and size) inside one jitted function that
maps the test over the replicates, `batch_points // n` replicates vmapped at a time
(`lax.map` with a batch size), and compiles it once (ahead of time, `lower().compile()`: the
compile time is reported apart, `compile_s`); both alternatives share the compiled program (the
samplers are one Gaussian mixture with traced centres and weights). Reported: the power
(rejection rate under the alternative) with a 95% binomial half-width, the level (rejection
rate under the null) with the 99% binomial interval of a level-alpha test and whether it lies
in it, and `time_s`, the warm wall-clock seconds per test: the median over the unit's warm
batches (null and alternative of each alternative) of the batch's time over its replicates
(drawing the data included; it is a small part of each test). `best` lists, for each budget of
`budgets`, the most powerful test whose time per test is within it. The figure plots power and
level against the time per test (log x), one line per method, a panel per alternative.

Run with `kseq run configs/tests_at_scale.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_probability
from experiments.plots import binomial_halfwidth, pyplot, rate_bars, style_axis
from experiments.tasks import nonfinite
from experiments.tasks.aggregated_power import binomial_interval
from kmethods import compressed
from kmethods._jit import cpu_jit

METHODS = ("exact", "ctt", "lrctt", "rff", "block", "mmdagg")
ALTERNATIVES = ("shift", "mixture")


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      alternatives: any of "shift", "mixture" (module docstring).
      methods: any of "exact", "ctt", "lrctt", "rff", "block", "mmdagg".
      sizes: method -> the sample sizes n = m per sample it runs at (n <= 2^20).
      replicates: data sets per alternative and per null (fixed keys).
      dim: dimension d.
      shift: the `shift` alternative's mean shift of y's first coordinate.
      mixture_components: K, the mixture's components (centres spacing e_k, k = 1..K; K <= d).
      spacing: distance of each mixture centre from the origin.
      weight_difference: how much more weight y's mixture puts on component 1.
      bandwidth: the Gaussian kernel's bandwidth (None: sqrt(d)).
      alpha: level.
      num_permutations: B of the permutation tests (exact, CTT, LR-CTT, RFF).
      ctt_g: CTT's compression levels, one line each.
      num_bins: CTT's and LR-CTT's bins of both samples together.
      lrctt_g: LR-CTT's compression level.
      num_features: random features of RFF and LR-CTT.
      agg_permutations: B1 = B2 of MMDAgg.
      agg_bandwidths: bandwidths per family of MMDAgg's default collection.
      batch_points: replicates vmapped at once: batch_points // n (at least 1).
      budgets: time budgets (seconds per test) of the `best` summary.
    """

    alternatives: tuple[str, ...] = ALTERNATIVES
    methods: tuple[str, ...] = METHODS
    sizes: dict[str, tuple[int, ...]] = dataclasses.field(
        default_factory=lambda: {
            "exact": (512, 1024, 2048, 4096),
            "ctt": (2048, 8192, 32768),
            "lrctt": (4096, 16384, 65536),
            "rff": (2048, 8192, 32768),
            "block": (4096, 16384, 65536, 262144),
            "mmdagg": (128, 256, 512),
        }
    )
    replicates: int = 20
    dim: int = 10
    shift: float = 0.06
    mixture_components: int = 3
    spacing: float = 3.0
    weight_difference: float = 0.04
    bandwidth: float | None = None
    alpha: float = 0.05
    num_permutations: int = 99
    ctt_g: tuple[int, ...] = (1, 2, 3)
    num_bins: int = 32
    lrctt_g: int = 2
    num_features: int = 256
    agg_permutations: int = 100
    agg_bandwidths: int = 10
    batch_points: int = 2**17
    budgets: tuple[float, ...] = (0.1, 1.0, 10.0, 60.0)

    def __post_init__(self):
        for name, allowed in (("alternatives", ALTERNATIVES), ("methods", METHODS)):
            values = getattr(self, name)
            if not values or set(values) - set(allowed):
                raise ConfigError(
                    f"`params.{name}` must name some of {', '.join(allowed)}; got {list(values)}."
                )
        for method in self.methods:
            sizes = self.sizes.get(method, ())
            if not sizes or min(sizes) < 16 or max(sizes) > 2**20:
                raise ConfigError(
                    f"`params.sizes.{method}` must be a non-empty list of n in [16, 2^20]."
                )
        require_at_least(self, ("replicates", "dim", "num_permutations", "batch_points"))
        require_at_least(self, ("num_bins", "num_features", "agg_bandwidths"), minimum=2)
        require_at_least(self, ("agg_permutations",), minimum=19)
        require_at_least(self, ("lrctt_g",), minimum=0)
        require_probability(self)
        if not self.ctt_g or min(self.ctt_g) < 0:
            raise ConfigError("`params.ctt_g` must be a non-empty list of g >= 0.")
        if not 1 <= self.mixture_components <= self.dim:
            raise ConfigError("`params.mixture_components` must be in [1, `params.dim`].")
        k = self.mixture_components
        if not 0 <= self.weight_difference < 1 - 1 / k or self.shift < 0:
            raise ConfigError(
                "`params.weight_difference` must be in [0, 1 - 1 / K) and `params.shift` >= 0."
            )
        if self.bandwidth is not None and not self.bandwidth > 0:
            raise ConfigError("`params.bandwidth` must be positive (or null: sqrt(d)).")
        if not self.budgets or min(self.budgets) <= 0:
            raise ConfigError("`params.budgets` must be a non-empty list of seconds > 0.")


# ------------------------------------------------------------------ data


def mixtures(cfg: Config) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each alternative as one Gaussian mixture family: (centres (K, d), x's weights, y's
    weights), padded to one K so that both alternatives share the compiled program. The null
    gives y x's weights."""
    k = max(2, cfg.mixture_components)
    out = {}
    centres = np.zeros((k, cfg.dim), np.float32)
    centres[1, 0] = cfg.shift
    wx, wy = np.zeros(k, np.float32), np.zeros(k, np.float32)
    wx[0], wy[1] = 1.0, 1.0
    out["shift"] = (centres, wx, wy)
    centres = np.zeros((k, cfg.dim), np.float32)
    num = cfg.mixture_components
    centres[np.arange(num), np.arange(num)] = cfg.spacing
    wx = np.zeros(k, np.float32)
    wx[:num] = 1.0 / num
    wy = wx.copy()
    if num > 1:
        wy[0] += cfg.weight_difference
        wy[1:num] -= cfg.weight_difference / (num - 1)
    out["mixture"] = (centres, wx, wy)
    return out


def draw(key, n: int, centres, weights):
    """n points of sum_k weights_k N(centres_k, I), shape (n, d) (weights may be 0)."""
    k_component, k_noise = jax.random.split(key)
    component = jax.random.categorical(k_component, jnp.log(weights), shape=(n,))
    return jax.random.normal(k_noise, (n, centres.shape[1])) + centres[component]


# ------------------------------------------------------------------ the tests


def make_test(method: str, g: int | None, cfg: Config):
    """The test as a function of (key, x, y) returning a `TestResult`."""
    kernel = km.Gaussian(cfg.bandwidth if cfg.bandwidth is not None else math.sqrt(cfg.dim))
    common = {"num_permutations": cfg.num_permutations, "alpha": cfg.alpha}
    if method == "exact":
        return lambda k, x, y: km.mmd_test(k, x, y, kernel, **common)
    if method == "ctt":
        return lambda k, x, y: km.ctt_test(k, x, y, kernel, g=g, num_bins=cfg.num_bins, **common)
    if method == "lrctt":
        options = dict(g=g, num_bins=cfg.num_bins, num_features=cfg.num_features, **common)
        return lambda k, x, y: compressed.lrctt_test(k, x, y, kernel, **options)
    if method == "rff":
        return lambda k, x, y: compressed.rff_test(
            k, x, y, kernel, num_features=cfg.num_features, **common
        )
    if method == "block":
        return lambda k, x, y: compressed.block_mmd_test(k, x, y, kernel, alpha=cfg.alpha)
    b = cfg.agg_permutations
    return lambda k, x, y: km.mmdagg(
        k,
        x,
        y,
        alpha=cfg.alpha,
        num_bandwidths=cfg.agg_bandwidths,
        num_permutations=b,
        num_correction=b,
    )


# Compiled as kmethods compiles its own entry points on the CPU (without XLA's fusion
# emitters, `kmethods._jit`): the whole replicate loop is one program, and the emitters'
# LLVM lowering failed on one such CTT program ("Failed to translate module to LLVM IR").
@cpu_jit(static_argnames=("test", "n", "batch"))
def _rejections(keys, centres, wx, wy, *, test, n, batch):
    """The test's rejection and non-finiteness on one data set per key, x from the mixture
    (centres, wx) and y from (centres, wy)."""

    def one(key):
        kx, ky, kt = jax.random.split(key, 3)
        result = test(kt, draw(kx, n, centres, wx), draw(ky, n, centres, wy))
        return result.reject, nonfinite(result)

    return jax.lax.map(one, keys, batch_size=batch)


def _unit(method, g, n, cfg, keys, families) -> list[dict]:
    """One (method, n): compile once, then every alternative's null and alternative batch."""
    test = make_test(method, g, cfg)
    batch = max(1, min(cfg.replicates, cfg.batch_points // n))
    static = {"test": test, "n": n, "batch": batch}
    centres, wx, _ = next(iter(families.values()))
    start = time.perf_counter()
    compiled = _rejections.lower(keys["null"], centres, wx, wx, **static).compile()
    compile_s = time.perf_counter() - start
    times, rows = [], []
    for alternative, (centres, wx, wy) in families.items():
        row = {"alternative": alternative, "method": method, "g": g, "n": n, "batch": batch}
        for label, weights_y in (("null", wx), ("alt", wy)):
            start = time.perf_counter()
            reject, bad = jax.block_until_ready(compiled(keys[label], centres, wx, weights_y))
            times.append((time.perf_counter() - start) / cfg.replicates)
            row[f"rejections_{label}"] = int(np.sum(np.asarray(reject)))
            row[f"num_nonfinite_{label}"] = int(np.sum(np.asarray(bad)))
        rows.append(row)
    reps = cfg.replicates
    lo, hi = binomial_interval(reps, cfg.alpha)
    for row in rows:
        power, level = row["rejections_alt"] / reps, row["rejections_null"] / reps
        row.update(
            replicates=reps,
            power=power,
            power_halfwidth95=binomial_halfwidth(power, reps),
            level=level,
            level_interval99=[lo / reps, hi / reps],
            level_ok=lo <= row["rejections_null"] <= hi,
            time_s=statistics.median(times),
            compile_s=compile_s,
        )
    return rows


def _label(method: str, g: int | None) -> str:
    return f"ctt g={g}" if method == "ctt" else method


# ------------------------------------------------------------------ the experiment


def run(cfg: Config, ctx) -> dict:
    """Power, level and time per test of every method at each of its sizes."""
    root = ctx.key()
    # Fixed replicate keys, shared by every method and size (and by both alternatives).
    keys = {
        label: jax.random.split(jax.random.fold_in(root, i), cfg.replicates)
        for i, label in enumerate(("null", "alt"))
    }
    all_families = {k: tuple(map(jnp.asarray, v)) for k, v in mixtures(cfg).items()}
    families = {a: all_families[a] for a in cfg.alternatives}
    units = []
    for method in cfg.methods:
        for g in cfg.ctt_g if method == "ctt" else (cfg.lrctt_g if method == "lrctt" else None,):
            units += [(method, g, n) for n in cfg.sizes[method]]
    records = []
    for method, g, n in ctx.progress(units, desc="tests_at_scale"):
        name = f"{method}-g{g}-n{n}" if g is not None else f"{method}-n{n}"

        def compute(method=method, g=g, n=n):
            return {"rows": _unit(method, g, n, cfg, keys, families)}

        records += ctx.unit(name, compute, log=False)["rows"]
    for row in records:
        ctx.log_metrics(**{k: v for k, v in row.items() if k != "level_interval99"})
    _plot(records, cfg, ctx)
    return {
        "alpha": cfg.alpha,
        "replicates": cfg.replicates,
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "best": best_by_budget(records, cfg.budgets),
        "levels_ok": all(r["level_ok"] for r in records),
        "records": records,
    }


def best_by_budget(records, budgets) -> dict:
    """Per alternative and budget, the most powerful (method, g, n) whose time per test is
    within the budget (None when no test is that fast)."""
    out = {}
    for alternative in dict.fromkeys(r["alternative"] for r in records):
        rows = [r for r in records if r["alternative"] == alternative]
        out[alternative] = {}
        for budget in budgets:
            fits = [r for r in rows if r["time_s"] <= budget]
            top = max(fits, key=lambda r: (r["power"], -r["time_s"]), default=None)
            out[alternative][f"{budget:g}"] = (
                None
                if top is None
                else {
                    "test": _label(top["method"], top["g"]),
                    "n": top["n"],
                    "power": top["power"],
                    "time_s": top["time_s"],
                }
            )
    return out


_TITLES = {"shift": "mean shift, d = {d}", "mixture": "mixture weight, d = {d}"}


def _plot(records, cfg, ctx):
    alternatives = list(dict.fromkeys(r["alternative"] for r in records))
    plt = pyplot()
    fig, axes = plt.subplots(
        2, len(alternatives), figsize=(5.2 * len(alternatives), 7), squeeze=False
    )
    for col, alternative in enumerate(alternatives):
        rows = [r for r in records if r["alternative"] == alternative]
        ax_power, ax_level = axes[0][col], axes[1][col]
        for method, g in dict.fromkeys((r["method"], r["g"]) for r in rows):
            line = sorted(
                (r for r in rows if (r["method"], r["g"]) == (method, g)), key=lambda r: r["n"]
            )
            times = [r["time_s"] for r in line]
            label = _label(method, g)
            rate_bars(ax_power, times, line, "power", "power_halfwidth95", label, capsize=2)
            ax_level.plot(times, [r["level"] for r in line], "o-", label=label)
        lo, hi = rows[0]["level_interval99"]
        ax_level.axhspan(lo, hi, color="grey", alpha=0.15, label="99% interval")
        for ax in (ax_power, ax_level):
            ax.axhline(cfg.alpha, color="grey", linestyle="--", linewidth=1)
        title = _TITLES[alternative].format(d=cfg.dim)
        style_axis(ax_power, "seconds per test", "power", title, xlog=10, ylim=(-0.02, 1.02))
        style_axis(ax_level, "seconds per test", "level (null rejection rate)", xlog=10)
    ctx.save_figure(fig, "tests_at_scale")
