"""Baselines (standard and i.i.d. thinning) and the MMD of a coreset to its input."""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from kmethods import _checks
from kmethods.kernels import Kernel, check_kernel
from kmethods.mmd import mmd2
from kmethods.pairwise import kernel_sum
from kmethods.thinning._sizes import check_key, default_out_size, standard_indices


class Thinner(Protocol):
    """What every thinning routine is once its options are bound (`functools.partial`):
    `kernel_thin`, `compresspp`, `standard_thin` and `iid_thin` all fit, e.g.
    `partial(kernel_thin, kernel=k, out_size=64)`."""

    def __call__(self, key: Array, x: Float[Array, "n d"]) -> Int[Array, " s"]: ...


def _baseline_inputs(x, out_size):
    x = _checks.as_points(x, "x")
    n = x.shape[0]
    out_size = _checks.positive_int(
        default_out_size(n) if out_size is None else out_size, "out_size"
    )
    if out_size > n:
        raise ValueError(f"`out_size` must be at most n = {n}, got {out_size}.")
    return n, out_size


def standard_thin(
    key: PRNGKeyArray | None, x: Float[Array, "n d"], *, out_size: int | None = None
) -> Int[Array, " s"]:
    """Standard thinning: every (n // s)-th point, counted back from the last one.

    `key` is unused; it is taken so that every thinning routine is a `Thinner`, called as
    `thin(key, x)` (bind other arguments with `functools.partial`).
    """
    del key
    n, out_size = _baseline_inputs(x, out_size)
    return standard_indices(n, out_size)


def iid_thin(
    key: PRNGKeyArray, x: Float[Array, "n d"], *, out_size: int | None = None
) -> Int[Array, " s"]:
    """An i.i.d. baseline: `out_size` indices drawn uniformly without replacement."""
    check_key(key)
    n, out_size = _baseline_inputs(x, out_size)
    return jax.random.choice(key, n, (out_size,), replace=False)


def mmd_to_sample(
    x: Float[Array, "n d"],
    indices: Int[Array, " s"],
    kernel: Kernel,
    *,
    mean_kxx: float | None = None,
    block_size: int | None = None,
) -> Float[Scalar, ""]:
    """MMD between the empirical distributions of x and of x[indices] (repeats count twice).

    The V-statistic sqrt(mean K(x, x) - 2 mean K(x, c) + mean K(c, c)), blocked.

    In float32 the three terms cancel to within about 1e-7, so MMDs below about 1e-3 are
    coarse; evaluate in float64 (`jax.enable_x64`) to compare good coresets.

    Args:
      x: (n, d) the input sample. indices: (s,) integer indices into x (the coreset).
      kernel: the kernel of the MMD.
      mean_kxx: optional precomputed mean of k(x_i, x_j) over all n^2 pairs (the one O(n^2)
        term), so that several coresets of one sample cost O(n s) each.
      block_size: rows per block of the pairwise sums.
    """
    x = _checks.as_points(x, "x", min_points=1)
    check_kernel(kernel)
    indices = jnp.asarray(indices)
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(
            f"`indices` must be a 1-d integer array, got {indices.dtype}{indices.shape}."
        )
    if (
        _checks.is_concrete(indices)
        and indices.size
        and (int(indices.min()) < 0 or int(indices.max()) >= x.shape[0])
    ):
        raise ValueError(f"`indices` must lie in [0, {x.shape[0]}).")
    c = x[indices]
    if mean_kxx is None:
        value = mmd2(x, c, kernel, unbiased=False, block_size=block_size)
    else:
        s, n = c.shape[0], x.shape[0]
        cross = kernel_sum(kernel, c, x, block_size=block_size) / (s * n)
        core = kernel_sum(kernel, c, c, block_size=block_size) / s**2
        value = jnp.asarray(mean_kxx, x.dtype) - 2.0 * cross + core
    return jnp.sqrt(jnp.maximum(value, 0.0))
