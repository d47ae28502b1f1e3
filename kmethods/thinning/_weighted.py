"""Weighted inputs of KT and Compress++: the check of simplex weights, their rounding to a
multiset of points, and the kernel mean embedding of the weighted input (internal).

A weighted input sum_i w_i delta_{x_i} enters KT-SPLIT (and Compress) as a multiset: the
weights rounded to n' points by stratified resampling, which keeps the multiplicity of x_i
within one of n' w_i. KT-SWAP then lowers the MMD to the weighted input itself, through the
row means (K w)_i. This is the weighted KT that Li, Dwivedi & Mackey (2024, "Debiased
Distribution Compression") run after debiasing.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods.pairwise import kernel_matvec


def check_simplex_weights(weights, n: int, dtype, name: str = "weights"):
    """`weights` as an (n,) array of `dtype` on the probability simplex, or None
    (`kmethods._checks.point_weights`: shape always, values when concrete)."""
    if weights is None:
        return None
    return _checks.point_weights(weights, n, dtype, name, simplex=True)


def _relative(weights):
    """w / max(w): exactly 1 for equal weights, so that the uniform case is exact."""
    return weights / jnp.max(weights)


@partial(jax.jit, static_argnames=("size",))
def stratified_round(
    key: PRNGKeyArray, weights: Float[Array, " n"], size: int
) -> Int[Array, " size"]:
    """`size` indices whose multiplicities approximate size * weights: the integer parts
    floor(size w_i) first, then the remaining r draws by stratified resampling of the
    fractional parts (one uniform in each [k / r, (k + 1) / r)); sorted (Li et al., 2024,
    as in goodpoints' `stratified_round`). Weights are normalised to sum to one; equal
    weights with size = n give every index once."""
    n = weights.shape[0]
    v = _relative(weights)
    scaled = v * size / jnp.sum(v)
    counts = jnp.floor(scaled).astype(jnp.int32)
    left = (size - jnp.sum(counts)).astype(jnp.int32)
    fraction = scaled - counts.astype(weights.dtype)
    cumulative = jnp.cumsum(fraction) / jnp.maximum(
        jnp.sum(fraction), jnp.finfo(weights.dtype).tiny
    )
    k = jnp.arange(size, dtype=weights.dtype)
    points = (k + jax.random.uniform(key, (size,), weights.dtype)) / left.astype(weights.dtype)
    drawn = jnp.minimum(jnp.searchsorted(cumulative, points).astype(jnp.int32), n - 1)
    # Only the first `left` strata are used; the others land past the end and are dropped.
    drawn = jnp.where(jnp.arange(size, dtype=jnp.int32) < left, drawn, n)
    counts = counts + jnp.bincount(drawn, length=n + 1)[:n].astype(jnp.int32)
    # default int indices, as `kept_points` (int64 under x64)
    return jnp.repeat(jnp.arange(n), counts, total_repeat_length=size)


def weighted_row_means(kernel, x, weights):
    """(K w)_i = sum_j w_j k(x_i, x_j), blocked: the kernel mean embedding of the weighted
    input at every point. Computed as K v / sum(v), v = w / max(w), which for equal weights
    is the row sums over n, as in unweighted KT-SWAP."""
    v = _relative(weights)
    return kernel_matvec(kernel, x, x, v) / jnp.sum(v)
