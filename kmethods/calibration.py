"""Calibration shared by the kernel tests: the result type, p-values and resampling draws.

All draws are vectorised over the resamples (one `vmap`, no Python loop), and a p-value follows
the (1 + count) / (1 + B) convention, which keeps a permutation or bootstrap test valid at any
number B of resamples (Phipson & Smyth, 2010).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "TestResult",
    "decide",
    "gamma_p_value",
    "multinomial_weights",
    "permuted_labels",
    "random_labels",
    "resample_p_value",
    "resampled_weights",
    "stein_bootstrap_columns",
    "stein_bootstrap_result",
    "u_statistic_columns",
    "wild_bootstrap_signs",
]


class TestResult(NamedTuple):
    """Outcome of a kernel hypothesis test.

    Attributes:
      statistic: the test statistic (its definition is in each test's docstring).
      p_value: the p-value, in (0, 1].
      reject: whether the null hypothesis is rejected at level alpha (p_value <= alpha).
      null_samples: the statistic recomputed under the null, one per permutation or bootstrap
        draw, shape (B,); empty (shape (0,)) for an asymptotic null such as `null="gamma"`.
    """

    statistic: jax.Array
    p_value: jax.Array
    reject: jax.Array
    null_samples: jax.Array

    __test__ = False  # not a pytest test class


# Resampled statistics within this many units of rounding of the statistic count as ties.
_TIE_ULPS = 64


def tie_tolerance(scale, dtype):
    """How far below a statistic a resampled one still counts as a tie: `_TIE_ULPS` roundings
    (in `dtype`) of `scale`, the size of the terms the statistics sum."""
    return _TIE_ULPS * jnp.finfo(dtype).eps * jnp.abs(scale)


def resample_p_value(statistic, null_samples, *, scale=None):
    """(1 + #{b : null_b >= statistic}) / (1 + B), or NaN when the test cannot be decided.

    A NaN or infinite statistic, or a NaN among the resampled statistics (a +inf draw is a
    legitimate "at least as extreme"), gives p = NaN: counting `null_b >= NaN` as zero would
    report the smallest p-value, 1 / (1 + B), and reject on garbage.

    `scale` is the size of the terms the statistics are sums of (not of the statistics, which
    may be differences of large sums). Draws within `_TIE_ULPS` roundings of that size below
    the statistic count as ties: with a nearly constant kernel every statistic is equal in
    exact arithmetic, and rounding (which differs between rows of one batched program) must
    not decide the test. Counting near-ties as exceedances is conservative, and changes
    nothing when the statistics are spread wider than rounding, as on ordinary data (the same
    device as `scipy.stats.permutation_test`'s relative tolerance).
    """
    tolerance = 0.0
    if scale is not None:
        tolerance = tie_tolerance(scale, null_samples.dtype)
    count = jnp.sum(null_samples >= statistic - tolerance).astype(null_samples.dtype)
    p_value = (1.0 + count) / (1.0 + null_samples.shape[0])
    defined = jnp.isfinite(statistic) & ~jnp.any(jnp.isnan(null_samples))
    return jnp.where(defined, p_value, jnp.nan).astype(p_value.dtype)


def gamma_p_value(statistic, mean, variance):
    """Upper tail of the moment-matched gamma law with the given mean and variance.

    A degenerate null (variance or mean not positive: identical or constant samples, where the
    statistic cannot vary) gives p = 1; a non-finite statistic gives p = NaN.
    """
    degenerate = ~((variance > 0) & (mean > 0))
    safe_mean = jnp.where(degenerate, 1.0, mean)
    safe_variance = jnp.where(degenerate, 1.0, variance)
    shape = safe_mean**2 / safe_variance
    scale = safe_variance / safe_mean
    p_value = jax.scipy.special.gammaincc(shape, statistic / scale)
    p_value = jnp.where(degenerate, jnp.ones_like(p_value), p_value)
    return jnp.where(jnp.isfinite(statistic), p_value, jnp.nan).astype(p_value.dtype)


def decide(statistic, p_value, alpha, null_samples) -> TestResult:
    """The `TestResult` of a test: rejects only when the statistic and p-value are finite and
    p_value <= alpha. Every test in kmethods builds its result here. A traced `alpha` (one
    vmapped over) skips the eager range check, so a level outside (0, 1) never rejects."""
    level_ok = (alpha > 0) & (alpha < 1)
    reject = jnp.isfinite(statistic) & jnp.isfinite(p_value) & (p_value <= alpha) & level_ok
    return TestResult(statistic, p_value, reject, null_samples)


def permuted_labels(key, labels, num_permutations):
    """`num_permutations` random permutations of a label vector, shape (B, n)."""
    keys = jax.random.split(key, num_permutations)
    return jax.vmap(lambda k: jax.random.permutation(k, labels))(keys)


def _smallest(words, k, mask):
    """The k-th smallest (1-based) of the uint32 `words` where `mask`, by bisection on the
    bits: 32 counting passes, no sort."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(mask & (words <= mid)) >= k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    top = jnp.asarray(0xFFFFFFFF, jnp.uint32)
    return jax.lax.fori_loop(0, 32, halve, (jnp.zeros((), jnp.uint32), top))[1]


def random_labels(key: PRNGKeyArray, num: int, m: int, dtype=jnp.float32) -> Array:
    """A uniformly random 0/1 vector of length `num` with exactly `m` ones: the labels of a
    random permutation of [1] * m + [0] * (num - m), without a sort.

    Each point draws a random 64-bit word (two uint32) and the m smallest words are labelled
    1: the m-th smallest word is found by bisection on its bits (64 counting passes over the
    points, O(num) each), where XLA's sort on a CPU costs about 100x more (40 permutations of
    32768 points: 5.4 s against 0.06 s for the feature products they feed, 2 loaded cores).
    Equal words (probability about num^2 / 2^65) are ordered by index.
    """
    k1, k2 = jax.random.split(key)
    high = jax.random.bits(k1, (num,), jnp.uint32)
    low = jax.random.bits(k2, (num,), jnp.uint32)
    everyone = jnp.ones((num,), bool)
    t_high = _smallest(high, m, everyone)
    below = high < t_high
    tied = high == t_high
    need = m - jnp.sum(below)  # >= 1 of the words whose high half is t_high
    t_low = _smallest(low, need, tied)
    below = below | (tied & (low < t_low))
    last = tied & (low == t_low)
    take = last & (jnp.cumsum(last) <= m - jnp.sum(below))
    return (below | take).astype(dtype)


def multinomial_weights(key, n, num_draws, dtype):
    """Bootstrap weights w = counts / n with counts ~ Multinomial(n; 1/n, ..., 1/n); (B, n)."""
    return resampled_weights(jax.random.randint(key, (num_draws, n), 0, n), dtype)


def resampled_weights(indices, dtype):
    """Weights counts / n of n points resampled as the rows of `indices`, shape (B, n) with
    entries in [0, n): how often each point was drawn, over n (`multinomial_weights` for any
    source of uniform indices)."""
    n = indices.shape[1]
    counts = jax.vmap(lambda i: jnp.zeros(n, dtype).at[i].add(1.0))(indices)
    return counts / n


def wild_bootstrap_signs(key, n, num_draws, flip_probability, dtype):
    """The wild bootstrap process of Chwialkowski, Strathmann & Gretton (2016), shape (B, n).

    W_1 is a uniform sign and W_t = -W_{t-1} with probability `flip_probability`, else
    W_{t-1}. With probability 1/2 the signs are i.i.d. Rademacher (for i.i.d. samples); a small
    flip probability keeps neighbouring signs correlated, which is what a dependent (e.g. MCMC)
    sample needs.
    """
    k0, k1 = jax.random.split(key)
    first = jax.random.rademacher(k0, (num_draws, 1), dtype=jnp.int32)
    flips = jax.random.bernoulli(k1, flip_probability, (num_draws, n - 1)).astype(jnp.int32)
    parity = jnp.concatenate([jnp.zeros((num_draws, 1), jnp.int32), jnp.cumsum(flips, 1)], 1)
    return (first * (1 - 2 * (parity % 2))).astype(dtype)


def stein_bootstrap_columns(key, n, num_draws, *, wild, flip_probability, dtype):
    """The vectors v_0 .. v_B whose quadratic forms v_b^T H v_b give a Stein-kernel test's
    statistic (b = 0) and its bootstrap draws, shape (n, B + 1), so that all of them come from
    one blocked product H [v_0 ... v_B].

    wild (Chwialkowski, Strathmann & Gretton 2016): v_0 = 1/n, v_b = W_b / n with W_b the wild
    bootstrap sign process (V-statistic). Otherwise (Liu, Lee & Jordan 2016): v_0 = 1,
    v_b = w_b - 1/n with n w_b ~ Multinomial(n; 1/n, ...) (U-statistic, diagonal excluded).
    """
    if wild:
        weights = wild_bootstrap_signs(key, n, num_draws, flip_probability, dtype) / n
        observed = jnp.full((1, n), 1.0 / n, dtype)
        return jnp.concatenate([observed, weights]).T
    return u_statistic_columns(multinomial_weights(key, n, num_draws, dtype))


def u_statistic_columns(weights: Float[Array, "B n"]) -> Float[Array, "n B1"]:
    """The columns v_0 = 1, v_b = w_b - 1/n, shape (n, B + 1), of a U-statistic's multinomial
    bootstrap from weights w of shape (B, n) (`stein_bootstrap_columns` without `wild`)."""
    n = weights.shape[1]
    observed = jnp.ones((1, n), weights.dtype)
    return jnp.concatenate([observed, weights - 1.0 / n]).T


def stein_bootstrap_result(columns, h_columns, *, wild, alpha):
    """`TestResult` from the columns of `stein_bootstrap_columns` and H times them."""
    n = columns.shape[0]
    forms = jnp.einsum("ib,ib->b", columns, h_columns)
    # A non-finite entry of H (a NaN score or point that jit let through) can vanish from the
    # forms (masked diagonals); it must not leave a finite statistic behind.
    forms = forms.at[0].set(jnp.where(jnp.all(jnp.isfinite(h_columns)), forms[0], jnp.nan))
    statistic = forms[0] if wild else forms[0] / (float(n) * (n - 1))
    null_samples = forms[1:]
    return decide(statistic, resample_p_value(statistic, null_samples), alpha, null_samples)
