"""Bins, their coresets and the bin-permutation null shared by CTT, ACTT and LR-CTT.

Compress Then Test (Domingo-Enrich, Dwivedi & Mackey, AISTATS 2023, Algorithm 1) cuts the
pooled sample into s bins of one size, s_m of x and s_n of y, compresses each bin to a coreset
with KT-Compress(g), and permutes the *bins*: every statistic is a quadratic form w' K w of a
small s x s matrix K (mean kernel values between coresets, or inner products of their mean
features) with a weight vector w that puts 1/s_m on the bins labelled x and -1/s_n on those
labelled y. That is the MMD^2 V-statistic between the union of the x coresets and the union of
the y coresets (all coresets have one size), and with w's entries summing to 0 it does not
change when K is shifted by a constant.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kmethods import _checks
from kmethods.calibration import decide, permuted_labels, resample_p_value
from kmethods.thinning._compress import compress_bins

__all__ = [
    "BinPlan",
    "bin_coresets",
    "bin_plan",
    "bin_result",
    "bin_statistics",
    "coreset_means",
    "coresets",
    "make_bins",
]

# Entries of the coreset-pair Gram blocks evaluated at once: 2^21 floats = 8 MiB in float32.
_BLOCK_ELEMENTS = 2**21


class BinPlan(NamedTuple):
    """The paper's bins: `bin_size` points each, `bins_x` of x and `bins_y` of y."""

    bin_size: int
    bins_x: int
    bins_y: int


def bin_plan(m: int, n: int, num_bins: int, name: str = "num_bins") -> BinPlan:
    """The paper's bins for samples of m and n points and s = `num_bins` bins in all.

    Bins hold (m + n) // s points (at most min(m, n), so that each sample has a bin); x gives
    s_m = m // size bins and y s_n = n // size, so s_m : s_n follows m : n, as in the paper
    (which takes s_m = s m / (m + n)) and goodpoints' `ctt`. Points past the last whole bin
    of a sample are left out (fewer than one bin's worth).
    """
    m = _checks.positive_int(m, "m")
    n = _checks.positive_int(n, "n")
    num_bins = _checks.positive_int(num_bins, name, minimum=2)
    if num_bins > m + n:
        raise ValueError(f"`{name}` must be at most m + n = {m + n}, got {num_bins}.")
    size = min((m + n) // num_bins, m, n)
    return BinPlan(size, m // size, n // size)


def make_bins(x, bins: int, size: int):
    """The first `bins` * `size` points of x as (bins, size, d) consecutive bins."""
    return x[: bins * size].reshape(bins, size, x.shape[1])


def _log4(size: int) -> int:
    """floor(log4(size)), exactly."""
    return (size.bit_length() - 1) // 2


def coreset_size(size: int, g: int) -> int:
    """Points per coreset from a bin of `size` points: KT-Compress(g) on the largest power of
    4, 4^k <= size, returns 2^(g + k) = 2^g sqrt(4^k); when 4^k <= 4^g Compress returns its
    input, and the coreset is the whole bin."""
    k = _log4(size)
    return size if k <= g else 2 ** (g + k)


def coresets(key, bins, kernel, *, g: int, delta: float):
    """Each bin's KT-Compress(g) coreset, shape (s, c, d) with c = `coreset_size`: the key
    split into one key per bin, then `bin_coresets`."""
    return bin_coresets(jax.random.split(key, bins.shape[0]), bins, kernel, g=g, delta=delta)


def bin_coresets(keys, bins, kernel, *, g: int, delta: float):
    """Each bin's KT-Compress(g) coreset, shape (s, c, d) with c = `coreset_size`.

    KT-Compress(g) (Shetty, Dwivedi & Mackey, 2022, Algorithm 1, with symmetrized kernel
    halving) is `kmethods.compresspp` with g = 0 and the output size 2^g sqrt(4^k): Compress
    with leaves of 4^g points, whose halvings stop at 2^g sqrt(4^k) points, without the final
    KT of Compress++. A bin of more than 4^k points gives 4^k of them, drawn at random, to
    Compress. Bin i is compressed with keys[i] and failure probability `delta`; the halvings
    of one level are done for all bins together (`thinning`'s `compress_bins`), so that each
    sequential step of the walks and swaps advances every bin.
    """
    _, size, _ = bins.shape
    c = coreset_size(size, g)
    if c == size:
        return bins
    used = 4 ** _log4(size)
    parts = jax.vmap(jax.random.split)(keys)  # (s, 2): the pick of 4^k points, Compress
    if used < size:
        bins = jax.vmap(lambda k, xb: xb[jnp.sort(jax.random.permutation(k, size)[:used])])(
            parts[:, 0], bins
        )
    idx = compress_bins(parts[:, 1], bins, kernel, out_size=c, delta=delta)
    return jnp.take_along_axis(bins, idx[:, :, None], axis=1)


def coreset_means(pair_mean, sets):
    """The symmetric matrix of `pair_mean(a, b)` over all pairs of the sets (s, c, d), shape
    (s, s, ...): each pair i <= j is evaluated once, `lax.map` over batches of pairs whose
    Gram blocks hold about 2^21 entries."""
    s, c, _ = sets.shape
    rows, cols = np.triu_indices(s)
    batch = max(1, min(len(rows), _BLOCK_ELEMENTS // (c * c)))
    values = jax.lax.map(
        lambda ij: pair_mean(sets[ij[0]], sets[ij[1]]),
        (jnp.asarray(rows), jnp.asarray(cols)),
        batch_size=batch,
    )
    out = jnp.zeros((s, s, *values.shape[1:]), values.dtype)
    return out.at[rows, cols].set(values).at[cols, rows].set(values)


def bin_statistics(key, means, bins_x: int, num_permutations: int):
    """The statistic w_0' K w_0 and its bin-permuted draws w_b' K w_b, and the size of their
    terms (for `resample_p_value`'s ties).

    Args:
      key: PRNG key of the permutations (`calibration.permuted_labels` over the s bins).
      means: (..., s, s), one s x s matrix per kernel along the leading axes.
      bins_x: s_m, the first s_m bins are x's.
      num_permutations: B.

    Returns:
      (draws, scale): draws (..., 1 + B), the statistic first; scale (...,).

    Every w sums to 0, so w' K w = w' C w for the doubly centred C = K - r 1' - 1 r' + g 11'
    (r the row means, g their mean), and the forms are evaluated on C. With K's entries near
    a common value k (large n: the coresets' kernel means differ by O(1/sqrt(n))), a form
    on K sums terms of size k / s^2 whose rounding (about eps k) can exceed the whole spread
    of the permutation draws: all of them then tie with the statistic and p = 1 at every n (it
    did at n = 2^20 in float32). C's entries are the differences themselves, and C is formed
    as (K_ij - r_i) - (r_j - g), subtractions of nearby numbers, which round at the size of
    the result: the forms' rounding, and the tie tolerance from `scale`, shrink with C. The
    rank-one parts vanish exactly against w, so an error in r or g changes no statistic.
    """
    s = means.shape[-1]
    dtype = means.dtype
    rows = jnp.mean(means, axis=-1)
    grand = jnp.mean(rows, axis=-1)
    means = (means - rows[..., :, None]) - (rows[..., None, :] - grand[..., None, None])
    observed = (jnp.arange(s) < bins_x).astype(dtype)
    labels = jnp.concatenate([observed[None], permuted_labels(key, observed, num_permutations)])
    w = labels / bins_x - (1.0 - labels) / (s - bins_x)  # (1 + B, s)
    draws = jnp.einsum("bi,...ij,bj->...b", w, means, w)
    scale = jnp.einsum("bi,...ij,bj->...b", jnp.abs(w), jnp.abs(means), jnp.abs(w))
    return draws, jnp.max(scale, axis=-1)


def bin_result(draws, scale, alpha, x, y):
    """The `TestResult` of a bin-permutation test from `bin_statistics`' draws and scale: NaN
    statistic unless x and y are finite, p-value (1 + #{b : draw_b >= statistic}) / (1 + B)."""
    statistic = _checks.nan_unless_finite(draws[0], x, y)
    null_samples = draws[1:]
    p_value = resample_p_value(statistic, null_samples, scale=scale)
    return decide(statistic, p_value, alpha, null_samples)
