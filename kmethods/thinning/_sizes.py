"""Sizes, slabs and input checks shared by the thinning routines (internal)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from kmethods import _checks
from kmethods.kernels import check_kernel

# Pairs decided per kernel slab; memory of a halving round is about 3 * block * n floats.
_BLOCK = 16
# Upper bound on the entries of all kernel slabs of one round held at once.
SLAB_ELEMENTS = 2**22


def default_out_size(n: int) -> int:
    return max(1, math.isqrt(n))


def thinning_inputs(x, kernel, out_size, delta, name_kernel="kernel"):
    x = _checks.as_points(x, "x")
    check_kernel(kernel, name_kernel)
    n = x.shape[0]
    if out_size is None:
        out_size = default_out_size(n)
    out_size = _checks.positive_int(out_size, "out_size")
    if 2 * out_size > n:
        raise ValueError(
            f"`out_size` must be at most n / 2 = {n // 2} for thinning n = {n} points "
            f"(at least one halving round); got {out_size}."
        )
    delta = _checks.probability(delta, "delta")
    return x, out_size, delta


def check_key(key):
    if not (isinstance(key, jax.Array) and (key.shape == (2,) or key.shape == ())):
        raise TypeError(
            f"`key` must be a JAX PRNG key (jax.random.key(0) or PRNGKey(0)), got {key!r}."
        )


def halving_rounds(n: int, out_size: int) -> int:
    return math.floor(math.log2(n / out_size))


def slab_block(num_points: int) -> int:
    """Pairs per coreset and slab pass: the (num_points, 2 block) slab stays under 2^22 entries."""
    cap = max(1, SLAB_ELEMENTS // (2 * num_points))
    return min(_BLOCK, 2 ** math.floor(math.log2(cap)))


def kept_points(key, n: int, n_used: int):
    """The n_used of n points that enter the split, in their original order: all of them when
    n_used = n, else a uniformly random subset (the documented drop of a remainder)."""
    if n_used == n:
        return jnp.arange(n)
    return jnp.sort(jax.random.choice(key, n, (n_used,), replace=False))


def standard_indices(n: int, s: int):
    """Every (n // s)-th index, counted back from the last point (goodpoints' baseline)."""
    stride = n // s
    return n - 1 - stride * jnp.arange(s - 1, -1, -1)


# ----------------------------------------------------------------------------- KT
