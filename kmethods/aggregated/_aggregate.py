"""The aggregation shared by MMDAgg, HSICAgg and KSDAgg: weights, the level correction, results.

Given the statistic of N kernels on the data and on B1 + B2 resampled data sets (the same
draws for every kernel), the aggregated test of Schrab et al. (JMLR 2023, Algorithm 1)

1. estimates, for each kernel i, the (1 - u w_i)-quantile q_i(u) of its statistic from the
   B1 draws and the statistic itself (B1 + 1 values);
2. estimates the family-wise error of the union test "some statistic exceeds its quantile"
   from the B2 other draws, P(u) = #{b : some M2_ib > q_i(u)} / B2, and finds by B3 steps of
   bisection on [0, min_i 1 / w_i] the largest u with P(u) <= alpha;
3. rejects when some statistic exceeds its quantile q_i(u).

Here q_i(u) is the value of rank ceil((B1 + 1)(1 - u w_i)) among the B1 + 1 values, as in the
reference implementations, and the comparisons run on counts: "v > q_i(u)" is "at most
(B1 + 1) - ceil((B1 + 1)(1 - u w_i)) of the B1 + 1 values are >= v", which is the same
(exactly) and lets draws and data share one code path. The bisection carries the counts it
accepted, so the final thresholds are exactly those whose error was estimated (rounding of u
can then shift the result by one rank against a float64 reference, never past alpha).
"""

from __future__ import annotations

import math
from collections import namedtuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from kmethods import _checks
from kmethods.calibration import TestResult, tie_tolerance

__all__ = [
    "WEIGHTINGS",
    "AggregatedTestResult",
    "aggregate",
    "check_quantile_draws",
    "collection_weights",
    "weights",
]

# The unnormalised weight of kernel i = 1..N (ordered by bandwidth) of each weighting.
_UNNORMALISED = {
    "uniform": lambda i, num: np.ones_like(i),
    "decreasing": lambda i, num: 1.0 / i,
    "increasing": lambda i, num: 1.0 / (num + 1 - i),
    "centred": lambda i, num: 1.0 / (np.abs((num + 1) / 2 - i) + (1.0 if num % 2 else 0.5)),
}
WEIGHTINGS = tuple(_UNNORMALISED)

_EXTRA_FIELDS = (
    "statistics",
    "p_values",
    "thresholds",
    "quantiles",
    "rejections",
    "u",
    "weights",
    "kernels",
)


class AggregatedTestResult(
    namedtuple("AggregatedTestResult", TestResult._fields + _EXTRA_FIELDS), TestResult
):
    """Outcome of an aggregated kernel test: a `TestResult` that also says what each kernel did.

    Attributes:
      statistic: the weighted smallest p-value min_i p_i / w_i (the test rejects when it is at
        most `u`; small values are extreme).
      p_value: the level-corrected p-value, (1 + #{b : min_i p_ib / w_i <= statistic}) /
        (1 + B2) over the B2 correction draws (p_ib: the p-value of draw b's statistic for
        kernel i against the B1 draws), in (0, 1] like every p-value of the library: the
        estimated family-wise error of the union test that the data just rejects, with the
        data counted among the draws. p_value <= alpha implies a rejection, and a rejection
        implies p_value <= alpha + (1 - alpha) / (1 + B2) (the bisection accepts an error of
        #{b} / B2 <= alpha; up to its resolution).
      reject: whether H0 is rejected at level alpha (some kernel rejects).
      null_samples: min_i p_ib / w_i for the B2 correction draws, shape (B2,).
      statistics: the statistic of each kernel, shape (N,).
      p_values: each kernel's p-value (1 + #{b : M1_ib >= statistic_i}) / (B1 + 1), shape (N,).
      thresholds: u w_i: kernel i rejects when p_values[i] <= thresholds[i].
      quantiles: q_i(u), the equivalent threshold on the statistic (-inf when u w_i >= 1).
      rejections: which kernels reject, shape (N,) bool; `reject` is their `any`.
      u: the level correction found by bisection.
      weights: w_i, shape (N,).
      kernels: the `KernelCollection` tested, kernel i as in `kernels.unstack()[i]`; for
        `hsicagg`, the pair (kernels_x, kernels_y), kernel pair i = a N_y + b.
    """

    __slots__ = ()
    __test__ = False  # not a pytest test class


def weights(num: int, kind: str = "uniform") -> np.ndarray:
    """The weightings of Schrab et al. (JMLR 2023, Section 5.1) over `num` kernels ordered by
    bandwidth, each summing to 1: "uniform" 1/N; "decreasing" proportional to 1/i (favours small
    bandwidths); "increasing" proportional to 1/(N + 1 - i) (favours large ones); "centred"
    proportional to 1/(|(N + 1)/2 - i| + 1) for odd N, 1/(|(N + 1)/2 - i| + 1/2) for even N."""
    num = _checks.positive_int(num, "num")
    _checks.choice(kind, "weights", WEIGHTINGS)
    raw = _UNNORMALISED[kind](np.arange(1, num + 1, dtype=np.float64), num)
    return raw / raw.sum()


def collection_weights(sizes, kind) -> np.ndarray:
    """The weights of a collection with families of the given sizes: a weighting name applies
    within each family (bandwidths in order), divided by the number of families, as MMDAgg
    does for its Laplace and Gaussian families; an array is checked (positive, finite, one per
    kernel) and used as it is (only ratios matter: u absorbs a common factor)."""
    total = sum(sizes)
    if isinstance(kind, str):
        _checks.choice(kind, "weights", WEIGHTINGS)
        return np.concatenate([weights(s, kind) for s in sizes]) / len(sizes)
    w = np.asarray(kind, dtype=np.float64)
    if w.shape != (total,):
        raise ValueError(
            f"`weights` must be one of {WEIGHTINGS} or an array of {total} weights (one per "
            f"kernel), got shape {w.shape}."
        )
    if not np.all(np.isfinite(w)) or not np.all(w > 0):
        raise ValueError("`weights` must be positive and finite.")
    return w


def check_quantile_draws(num_quantile, name: str, alpha) -> int:
    """B1, checked (a positive int) and large enough for the level: a kernel's p-value is at
    least 1 / (1 + B1), and its corrected level u w_i is at most about alpha (the union test's
    family-wise error is at least each kernel's own error), so with (1 + B1) alpha < 1 no
    kernel could ever reject. A `ValueError` naming `name` then. (With N nearly independent
    kernels u w_i is nearer alpha / N, and B1 should be well above N / alpha.) A traced alpha
    (vmapped over) is not checked."""
    num_quantile = _checks.positive_int(num_quantile, name)
    if isinstance(alpha, jax.core.Tracer):
        return num_quantile
    level = float(alpha)
    if (1 + num_quantile) * level < 1.0 - 1e-9:
        needed = math.ceil(1.0 / level - 1.0 - 1e-9)
        raise ValueError(
            f"`{name}` = {num_quantile} is too small for alpha = {level:g}: a kernel's p-value "
            f"is at least 1 / (1 + {name}) > alpha, so the test could never reject; use "
            f"`{name}` >= {needed} (and well above the number of kernels / alpha)."
        )
    return num_quantile


def aggregate(
    draws: Float[Array, "N B"],
    weights: Float[Array, " N"],
    alpha: float,
    scale: Float[Array, " N"],
    *,
    num_quantile: int,
    num_steps: int,
    kernels: tuple,
    inputs: tuple[Array, ...] = (),
):
    """`AggregatedTestResult` from the statistics of N kernels on the data (column 0), the B1
    quantile draws (columns 1..B1) and the B2 correction draws (the rest), shape
    (N, 1 + B1 + B2), with weights w (N,). `scale` (N,) is the size of the terms each
    statistic sums: values within `kmethods.calibration.tie_tolerance` of it count as ties, as in
    `kmethods.calibration.resample_p_value`. The statistics on the data are NaN (no kernel
    rejects) unless every array of `inputs` (the data the statistics came from) is finite."""
    dtype = draws.dtype
    if inputs:
        draws = draws.at[:, 0].set(_checks.nan_unless_finite(draws[:, 0], *inputs))
    observed = draws[:, 0]
    m1 = draws[:, : num_quantile + 1]
    m2 = draws[:, num_quantile + 1 :]
    b1 = num_quantile + 1  # values per quantile: the B1 draws and the statistic
    tolerance = tie_tolerance(scale, dtype)
    m1_sorted = jnp.sort(m1, axis=1)

    def at_least(values):  # #{j : m1_ij >= v - tolerance_i} for each entry v of row i
        below = jax.vmap(lambda s, v: jnp.searchsorted(s, v, side="left", method="sort"))(
            m1_sorted, values - tolerance[:, None]
        )
        return b1 - below

    c_obs = at_least(observed[:, None])[:, 0]
    c_draws = at_least(m2)
    w = jnp.asarray(weights, dtype)
    # u = t / min(w) with t in [0, 1], so u w_i = t w_i / min(w): exactly t for equal weights,
    # whatever N (1 / N is not a binary fraction).
    w_min = jnp.min(w)
    relative = w / w_min

    def allowed(t):  # the largest count that still exceeds q_i(u)
        return b1 - jnp.ceil(b1 * (1.0 - t * relative)).astype(jnp.int32)

    def error(a):
        return jnp.mean(jnp.any(c_draws <= a[:, None], axis=0).astype(dtype))

    def step(_, carry):
        low, high, a_low = carry
        t = (low + high) / 2.0
        a = allowed(t)
        ok = error(a) <= alpha
        return jnp.where(ok, t, low), jnp.where(ok, high, t), jnp.where(ok, a, a_low)

    zero = jnp.zeros((), dtype)
    t, _, a = jax.lax.fori_loop(0, num_steps, step, (zero, zero + 1.0, allowed(zero)))
    u = t / w_min

    defined = jnp.all(jnp.isfinite(observed)) & ~jnp.any(jnp.isnan(draws))
    level_ok = (alpha > 0) & (alpha < 1)
    rejections = (c_obs <= a) & defined & level_ok
    index = b1 - 1 - a
    quantiles = jnp.take_along_axis(m1_sorted, jnp.clip(index, 0, b1 - 1)[:, None], 1)[:, 0]
    quantiles = jnp.where(index >= 0, quantiles, -jnp.inf)
    p_values = c_obs.astype(dtype) / b1
    # min_i p_i / w_i of the data and of the draws in one expression on one array: computed
    # apart, XLA may round the two differently (a / b1 / w rewritten in one place only), and
    # the data's exact ties with draws (p-values are multiples of 1 / b1) would stop counting.
    counts = jnp.concatenate([c_obs[:, None], c_draws], axis=1).astype(dtype)
    weighted = jnp.min(counts / b1 / w[:, None], axis=0)
    statistic, null_samples = weighted[0], weighted[1:]
    count = jnp.sum((null_samples <= statistic).astype(dtype))
    p_value = (1.0 + count) / (1.0 + null_samples.shape[0])
    nan = jnp.full((), jnp.nan, dtype)
    return AggregatedTestResult(
        statistic=jnp.where(defined, statistic, nan),
        p_value=jnp.where(defined, p_value, nan),
        reject=jnp.any(rejections),
        null_samples=null_samples,
        statistics=observed,
        p_values=jnp.where(defined, p_values, nan),
        thresholds=t * relative,
        quantiles=quantiles,
        rejections=rejections,
        u=u,
        weights=w,
        kernels=kernels,
    )
