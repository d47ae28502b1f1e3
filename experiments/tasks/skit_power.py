"""Experiment: SKIT's power and stopping time against the strength of dependence.

The linear-Gaussian setting of Podkopaev et al. (ICML 2023, and their reference code):
X ~ N(0, 1), Y = beta X + eps with eps ~ N(0, 1), streams of `sample_size` points read as
T = sample_size / 2 pairs, Gaussian kernels exp(-gamma ||.||^2) with gamma_x = 1/4 and
gamma_y = 1 / (4 (1 + beta^2)), i.e. `kmethods.Gaussian(bandwidth)` with
bandwidth^2 = 1 / (2 gamma). For every beta and betting strategy, `num_streams` streams run at
once (`jax.vmap` over `kmethods.skit`); the same draws of X and eps serve every beta. Reported:
the rejection rate (with a 95% binomial half-width), the number of streams whose wealth became
NaN (`num_nonfinite`; they never reject) and the mean normalised stopping time tau / T
(tau = T for a stream that never rejects), against beta. The authors' code rejects at
about 0.02, 0.55 and 1.0 for beta = 0, 0.1 and 0.2 (`published`, drawn on the plot).

Timing, side by side in one process: kseq is timed per (beta, bet) on all streams, warm (the
function is compiled once per bet beforehand; the compile time is reported apart). With
`reference_streams > 0`, a NumPy transcription of the reference implementation's per-step work
(float64; at every pair the kernel rows of the new points against the whole history are
evaluated afresh, four witness evaluations and the norm constant's update from cached row
sums, as the authors' `HSICWitness` does) runs on the first `reference_streams` streams of each
(beta, bet), with plain NumPy kernels (`numpy`) and, when scikit-learn is installed, with
`sklearn.metrics.pairwise.rbf_kernel`, the kernel function the authors call (`sklearn`). Its
seconds per stream, times `num_streams`, over kseq's seconds for `num_streams` streams give the
speed-ups; its decisions and wealth are compared with kseq's on the same streams.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_non_empty, require_probability
from experiments.plots import binomial_halfwidth, sequential_rate_plot
from experiments.tasks import nonfinite_streams
from kmethods.betting import DEFAULT_MAX_BET

Bet = Literal["ons", "agrapa"]
Backend = Literal["numpy", "sklearn"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      sample_size: points per stream n (T = n // 2 pairs).
      betas: dependence strengths beta (Y = beta X + eps).
      bets: betting strategies compared.
      num_streams: streams per (beta, bet).
      alpha: level.
      reference_streams: streams per (beta, bet) also run by the NumPy transcription of the
        reference implementation, for the timing and agreement columns (0: skip).
      reference_backends: kernel functions of the transcription: plain NumPy and/or
        scikit-learn's `rbf_kernel` (the authors'; skipped with a note when not installed).
      published: (beta, rejection rate) of the authors' code, drawn on the plot.
    """

    sample_size: int = 2000
    betas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    bets: tuple[Bet, ...] = ("ons", "agrapa")
    num_streams: int = 200
    alpha: float = 0.05
    reference_streams: int = 0
    reference_backends: tuple[Backend, ...] = ("numpy",)
    published: tuple[tuple[float, float], ...] = ((0.0, 0.02), (0.1, 0.55), (0.2, 1.0))

    def __post_init__(self):
        if self.sample_size < 4:
            raise ConfigError("`params.sample_size` must be >= 4 (two pairs).")
        require_non_empty(self, ("betas", "bets"))
        require_at_least(self, ("num_streams",))
        require_at_least(self, ("reference_streams",), minimum=0)
        if self.reference_streams > self.num_streams:
            raise ConfigError("`params.reference_streams` must be <= `params.num_streams`.")
        require_probability(self)


def gammas(beta: float) -> tuple[float, float]:
    """The reference code's kernel scales (gamma_x, gamma_y) for Y = beta X + eps."""
    return 0.25, 0.25 / (1.0 + beta**2)


def _bandwidth(gamma: float) -> float:
    """kmethods.Gaussian's bandwidth for exp(-gamma r^2): 2 bandwidth^2 = 1 / gamma."""
    return math.sqrt(1.0 / (2.0 * gamma))


# ------------------------------------------------------------------ the reference, in NumPy


def _numpy_rbf(a, b, gamma):
    sq = np.sum(a * a, axis=1)[:, None] + np.sum(b * b, axis=1)[None, :] - 2.0 * (a @ b.T)
    return np.exp(-gamma * np.maximum(sq, 0.0))


def _sklearn_rbf(a, b, gamma):
    from sklearn.metrics.pairwise import rbf_kernel

    return rbf_kernel(a, b, gamma=gamma)


_BACKENDS = {"numpy": _numpy_rbf, "sklearn": _sklearn_rbf}


def reference_skit(x, y, gamma_x, gamma_y, *, alpha, bet, backend="numpy"):
    """SKIT as the reference implementation computes it, step by step in float64.

    The first pair starts the history and the norm constant; then for every pair, the witness
    (mean of k l minus the product of means over the history, divided by the norm constant) is
    evaluated at the four points, each from kernel rows against the whole history computed
    afresh; the bettor stakes; the norm constant is updated from tr(KL), K1 and L1, whose new
    entries come from the kernel block between the history and the pair. O(t) kernel work per
    step, with many small NumPy calls.

    Returns:
      (reject, stopping_time, wealth), as `kmethods.skit` defines them.
    """
    rbf = _BACKENDS[backend]
    max_bet = DEFAULT_MAX_BET[bet]
    num_pairs = x.shape[0] // 2
    k0, l0 = rbf(x[:2], x[:2], gamma_x), rbf(y[:2], y[:2], gamma_y)
    trace, k_rows, l_rows = float(np.sum(k0 * l0)), k0.sum(axis=1), l0.sum(axis=1)

    def norm_constant(m):
        value = trace / m**2 + k_rows.sum() * l_rows.sum() / m**4 - 2 * (k_rows @ l_rows) / m**3
        return math.sqrt(value) if value > 0 else 0.0

    norm = norm_constant(2)
    lam, scale, total, total_sq, wealth = 0.0, 1.0, 0.0, 0.0, 1.0
    trajectory, stopping_time = [1.0], None
    for t in range(1, num_pairs):
        hx, hy = x[: 2 * t], y[: 2 * t]
        px, py = x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2]

        def witness(i, j, hx=hx, hy=hy, px=px, py=py):
            k = rbf(px[i : i + 1], hx, gamma_x)
            l_vals = rbf(py[j : j + 1], hy, gamma_y)
            return np.mean(k * l_vals) - np.mean(k) * np.mean(l_vals)

        payoff = 0.0
        if norm > 0:
            payoff = 0.5 * (witness(1, 1) + witness(0, 0) - witness(0, 1) - witness(1, 0)) / norm
            payoff = min(max(payoff, -1.0), 1.0)
        if bet == "agrapa":
            lam = min(max((1e-3 + total) / (1.0 + total_sq), 0.0), max_bet)
        wealth *= 1.0 + lam * payoff
        trajectory.append(wealth)
        if stopping_time is None and wealth >= 1.0 / alpha:
            stopping_time = t + 1
        total, total_sq = total + payoff, total_sq + payoff**2
        if bet == "ons":
            z = payoff / (1.0 + lam * payoff)
            scale += z * z
            lam = min(max(lam + 2.0 / (2.0 - math.log(3.0)) * z / scale, 0.0), max_bet)

        k_old, l_old = rbf(hx, px, gamma_x), rbf(hy, py, gamma_y)
        k_new, l_new = rbf(px, px, gamma_x), rbf(py, py, gamma_y)
        trace += 2.0 * float(np.sum(k_old * l_old)) + float(np.sum(k_new * l_new))
        k_rows = np.hstack([k_rows + k_old.sum(axis=1), k_old.sum(axis=0) + k_new.sum(axis=1)])
        l_rows = np.hstack([l_rows + l_old.sum(axis=1), l_old.sum(axis=0) + l_new.sum(axis=1)])
        norm = norm_constant(2 * (t + 1))
    reject = stopping_time is not None
    return reject, stopping_time or num_pairs, np.array(trajectory)


def _available(backend: str) -> bool:
    if backend != "sklearn":
        return True
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------ the experiment


def _batched_skit(key, alpha, bet):
    """All streams at once, compiled once per bet (the kernels are traced arguments)."""

    def one(x, y, kernel_x, kernel_y):
        return km.skit(key, x, y, kernel_x, kernel_y, alpha=alpha, bet=bet)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None, None)))


def _kernels(beta):
    gamma_x, gamma_y = gammas(beta)
    return km.Gaussian(_bandwidth(gamma_x)), km.Gaussian(_bandwidth(gamma_y))


def run(cfg: Config, ctx) -> dict:
    """Rejection rate, stopping time and timings for every (beta, bet)."""
    root = ctx.key()
    n, streams = cfg.sample_size, cfg.num_streams
    num_pairs = n // 2
    kx, ke = jax.random.split(jax.random.fold_in(root, 0))
    # the streams split over the run's devices (each device runs its share of the vmap)
    x, noise = ctx.shard(
        (jax.random.normal(kx, (streams, n, 1)), jax.random.normal(ke, (streams, n, 1)))
    )

    compiled, compile_s = {}, {}
    for bet in cfg.bets:
        fn = _batched_skit(jax.random.fold_in(root, 1), cfg.alpha, bet)
        start = time.perf_counter()
        compiled[bet] = fn.lower(x, noise, *_kernels(cfg.betas[0])).compile()
        compile_s[bet] = time.perf_counter() - start

    backends = [b for b in cfg.reference_backends if _available(b)] if cfg.reference_streams else []
    skipped = [b for b in cfg.reference_backends if not _available(b)]
    rows = []
    units = [(beta, bet) for beta in cfg.betas for bet in cfg.bets]
    for beta, bet in ctx.progress(units, desc="skit_power", total=len(units)):
        y = beta * x + noise
        start = time.perf_counter()
        res = jax.block_until_ready(compiled[bet](x, y, *_kernels(beta)))
        seconds = time.perf_counter() - start
        rate = float(jnp.mean(res.reject))
        normalised = np.asarray(res.stopping_time, np.float64) / num_pairs
        row = {
            "beta": beta,
            "bet": bet,
            "rejection_rate": rate,
            "rate_halfwidth95": binomial_halfwidth(rate, streams),
            # streams whose wealth became NaN (they never reject)
            "num_nonfinite": nonfinite_streams(res),
            "stopping_time_mean": float(np.mean(normalised)),
            "stopping_time_median": float(np.median(normalised)),
            "kseq_s": seconds,
        }
        if backends:
            row.update(_compare_with_reference(cfg, x, y, res, beta, bet, seconds, backends))
        ctx.log_metrics(**row)
        rows.append(row)
        ctx.write_json("partial_rows.json", rows)  # nothing lost if interrupted

    _plot(rows, cfg, ctx)
    summary = {
        "sample_size": n,
        "num_pairs": num_pairs,
        "num_streams": streams,
        "machine": f"{jax.default_backend()}, {jax.device_count()} device(s)",
        "kseq_compile_s": compile_s,
        "kseq_s_total": sum(r["kseq_s"] for r in rows),
        "reference_backends_skipped": skipped,
        "records": rows,
    }
    for backend in backends:
        ratios = [r[f"speedup_vs_{backend}"] for r in rows]
        summary[f"speedup_vs_{backend}_median"] = statistics.median(ratios)
    return summary


def _compare_with_reference(cfg, x, y, res, beta, bet, kseq_seconds, backends) -> dict:
    """Runs the NumPy reference on the first streams: seconds per stream and agreement."""
    gamma_x, gamma_y = gammas(beta)
    xs = np.asarray(x[: cfg.reference_streams], np.float64)
    ys = np.asarray(y[: cfg.reference_streams], np.float64)
    out, ref = {}, None
    for backend in backends:
        start = time.perf_counter()
        ref = [
            reference_skit(
                xs[i], ys[i], gamma_x, gamma_y, alpha=cfg.alpha, bet=bet, backend=backend
            )
            for i in range(cfg.reference_streams)
        ]
        per_stream = (time.perf_counter() - start) / cfg.reference_streams
        out[f"{backend}_s_per_stream"] = per_stream
        out[f"{backend}_s_all_streams"] = per_stream * cfg.num_streams
        out[f"speedup_vs_{backend}"] = per_stream * cfg.num_streams / kseq_seconds
    same, log_diff = [], 0.0
    for i, (reject, stopping_time, wealth) in enumerate(ref):
        same.append(bool(res.reject[i]) == reject and int(res.stopping_time[i]) == stopping_time)
        ours = np.asarray(res.wealth[i], np.float64)
        finite = np.isfinite(ours)  # a float32 wealth past ~3e38 reads as inf
        diff = np.abs(np.log(ours[finite]) - np.log(wealth[finite]))
        log_diff = max(log_diff, float(np.max(diff)))
    out["reference_decisions_agree"] = float(np.mean(same))
    out["reference_max_abs_log_wealth_diff"] = log_diff
    return out


def _plot(rows, cfg, ctx):
    title = f"SKIT, Y = beta X + eps, n = {cfg.sample_size}, {cfg.num_streams} streams"
    fig = sequential_rate_plot(
        rows,
        "beta",
        bets=cfg.bets,
        alpha=cfg.alpha,
        x_label="beta",
        title=title,
        reference=cfg.published,
    )
    ctx.save_figure(fig, "skit_power")
