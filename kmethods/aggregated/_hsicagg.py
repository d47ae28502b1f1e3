"""HSICAgg: the aggregated kernel independence test, with complete or incomplete U-statistics.

References:
  Schrab, Kim, Guedj & Gretton, "Efficient Aggregated Kernel Tests using Incomplete
  U-statistics", NeurIPS 2022 (the HSIC U-statistic on pairs of observations, its incomplete
  form on R diagonals, the wild bootstrap and the collection of their `agginc` package).
  Albert, Laurent, Marrel & Meynaoui, "Adaptive test of independence based on HSIC measures",
  Annals of Statistics 50, 2022 (aggregation of HSIC tests over bandwidths).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods.aggregated import _blocks
from kmethods.aggregated._aggregate import (
    WEIGHTINGS,
    AggregatedTestResult,
)
from kmethods.aggregated._aggregate import (
    weights as weighting,
)
from kmethods.aggregated._collections import KernelCollection, as_collection, hsicagg_kernels
from kmethods.kernels import Kernel
from kmethods.pairwise import mask_diagonal

__all__ = ["hsicagg"]


def hsicagg(
    key: PRNGKeyArray,
    x: Float[Array, "n dx"],
    y: Float[Array, "n dy"],
    kernels_x: KernelCollection | list[Kernel] | None = None,
    kernels_y: KernelCollection | list[Kernel] | None = None,
    *,
    alpha: float = 0.05,
    weights: str = "uniform",
    num_diagonals: int | None = None,
    num_bootstrap: int = 2000,
    num_correction: int = 2000,
    bisection_steps: int = 50,
    block_size: int | None = None,
) -> AggregatedTestResult:
    """HSICAgg (Schrab et al., NeurIPS 2022; Albert et al., 2022): the kernel independence test
    of H0: x and y are independent, from paired observations, aggregated over every pair of a
    kernel on x and a kernel on y.

    The n observations are split into N = floor(n / 2) pairs, (x_i, y_i) with
    (x'_i, y'_i) = (x_{N+i}, y_{N+i}) (an odd last observation is dropped). With
    h^k_ij = k(x_i, x_j) - k(x_i, x'_j) - k(x'_i, x_j) + k(x'_i, x'_j), and h^l the same on y,
    the statistic of the kernel pair (k, l) is the U-statistic

      sum_{(i, j) in D} h^k_ij h^l_ij / (4 |D|),

    an unbiased estimator of HSIC (its expectation is 4 HSIC(P_xy) before the 1/4), over all
    pairs i != j (`num_diagonals=None`, quadratic time) or, the incomplete U-statistic, over
    the pairs (i, i + r), r = 1, ..., R (`num_diagonals=R`, time O(N R) per kernel and draw).
    Each draw multiplies h_ij by W_i W_j, with i.i.d. Rademacher signs W shared by all kernel
    pairs (the paper's wild bootstrap). The level correction is MMDAgg's (see
    `kmethods.aggregated`). The complete form is one blocked pass over the rows of every
    h^k o h^l, times all the draws' sign vectors at once; the incomplete one, one scan over
    the diagonals. Memory O(N_x N_y block_size n + n B + N_x N_y B), never n^2.

    Args:
      key: PRNG key for the bootstrap signs.
      x: (n, d_x). y: (n, d_y): paired observations, n >= 4.
      kernels_x, kernels_y: None for HSICAgg's collection (`kmethods.aggregated.
        hsicagg_kernels`: Gaussian kernels at 2^i times each variable's median distance,
        i = -2, ..., 2, both None or both given), or `KernelCollection`s / sequences of
        kernels. Kernel pair (a, b) is number a N_y + b of the result.
      alpha: level.
      weights: "uniform", "decreasing", "increasing" or "centred": the weight of pair (a, b)
        is the product of the weightings of a among the x-kernels and b among the y-kernels.
      num_diagonals: None (complete U-statistic) or R in [1, N - 1] (incomplete; R = N - 1
        is the complete one).
      num_bootstrap: B1, with (1 + B1) alpha >= 1 (else a `ValueError`: no kernel pair
        could reject). num_correction: B2. bisection_steps: B3.
      block_size: rows held at once (complete U-statistic).

    Returns:
      `AggregatedTestResult`, float32 for half-precision input, else the input's dtype. A
      non-finite input gives NaN statistics and reject = False.
    """
    x = _checks.as_points(x, "x", min_points=4)
    y = _checks.as_points(y, "y", min_points=4)
    _checks.same_length(x, y, "x", "y")
    x, y = _checks.promote(x, y)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    if not isinstance(weights, str):
        raise TypeError(f"`weights` must be one of {WEIGHTINGS}, got {type(weights).__name__}.")
    _checks.choice(weights, "weights", WEIGHTINGS)
    num_pairs = x.shape[0] // 2
    if num_diagonals is not None:
        num_diagonals = _checks.positive_int(num_diagonals, "num_diagonals")
        if num_diagonals > num_pairs - 1:
            raise ValueError(
                f"`num_diagonals` must be at most N - 1 = {num_pairs - 1} for n = {x.shape[0]} "
                f"observations (N = n // 2 pairs), got {num_diagonals}."
            )
    if (kernels_x is None) != (kernels_y is None):
        raise ValueError("`kernels_x` and `kernels_y` must both be None or both be given.")
    if kernels_x is None:
        kernels_x, kernels_y = hsicagg_kernels(x, y)
    collection_x = as_collection(kernels_x, x.dtype, "kernels_x")
    collection_y = as_collection(kernels_y, x.dtype, "kernels_y")
    w = jnp.asarray(
        (
            weighting(len(collection_x), weights)[:, None]
            * weighting(len(collection_y), weights)[None, :]
        ).ravel(),
        x.dtype,
    )
    plan = _blocks.Plan.checked(
        "num_bootstrap", num_bootstrap, num_correction, bisection_steps, block_size, alpha
    )
    return _hsicagg(key, x, y, collection_x, collection_y, alpha, w, num_diagonals, plan)


def _h_block(collection, a, a2, b, b2):
    """h^k for every kernel k of the collection between the pairs (a, a2) (rows) and (b, b2)
    (columns), shape (N_k, rows, columns)."""
    return _blocks.family_map(
        lambda k: k.gram(a, b) - k.gram(a, b2) - k.gram(a2, b) + k.gram(a2, b2), collection
    )


def _h_paired(collection, a, a2, b, b2):
    """h^k between the pairs (a_i, a2_i) and (b_i, b2_i), i = 1..N, shape (N_k, N)."""
    pair = lambda k, p, q: jax.vmap(k)(p, q)
    return _blocks.family_map(
        lambda k: pair(k, a, b) - pair(k, a, b2) - pair(k, a2, b) + pair(k, a2, b2), collection
    )


@partial(jax.jit, static_argnames=("num_diagonals", "plan"))
def _hsicagg(key, x, y, collection_x, collection_y, alpha, weights, num_diagonals, plan):
    num = x.shape[0] // 2
    dtype = x.dtype
    x1, x2, y1, y2 = x[:num], x[num : 2 * num], y[:num], y[num : 2 * num]
    signs = _blocks.rademacher_rows(key, num, plan.num_draws, dtype)  # (1 + B, N)
    nx, ny = len(collection_x), len(collection_y)

    if num_diagonals is None:

        def block(start, rows):
            size = rows.shape[0]
            x1b, x2b = _blocks.row_block(x1, start, size), _blocks.row_block(x2, start, size)
            y1b, y2b = _blocks.row_block(y1, start, size), _blocks.row_block(y2, start, size)
            wb = _blocks.row_block(signs, start, size, axis=1)
            hx = _h_block(collection_x, x1b, x2b, x1, x2)
            hy = _h_block(collection_y, y1b, y2b, y1, y2)
            h = (hx[:, None] * hy[None, :]).reshape(nx * ny, *hx.shape[1:])
            h = jax.vmap(mask_diagonal, in_axes=(0, None))(h, rows)
            h = jnp.where((rows < num)[None, :, None], h, jnp.zeros((), dtype))
            forms = jax.vmap(lambda hk: jnp.sum(wb * (signs @ hk.T), axis=1))(h)
            return forms, jnp.sum(jnp.abs(h), axis=(1, 2))

        forms, abs_sum = _blocks.sum_row_blocks(
            block, num, block_size=plan.rows_per_block(num, len(collection_x) * len(collection_y))
        )
        count = float(num) * (num - 1)
    else:

        def diagonal(total, r):
            shift = lambda a, axis=0: jnp.roll(a, -r, axis=axis)
            hx = _h_paired(collection_x, x1, x2, shift(x1), shift(x2))
            hy = _h_paired(collection_y, y1, y2, shift(y1), shift(y2))
            h = (hx[:, None] * hy[None, :]).reshape(nx * ny, num)
            h = jnp.where((jnp.arange(num) < num - r)[None, :], h, jnp.zeros((), dtype))
            part = ((signs * shift(signs, 1)) @ h.T, jnp.sum(jnp.abs(h), axis=1))
            return jax.tree.map(jnp.add, total, part), None

        start = (jnp.zeros((signs.shape[0], nx * ny), dtype), jnp.zeros(nx * ny, dtype))
        (forms, abs_sum), _ = jax.lax.scan(diagonal, start, jnp.arange(1, num_diagonals + 1))
        forms = forms.T
        r = num_diagonals
        count = float(r * num - r * (r + 1) // 2)
    draws = forms / (4.0 * count)
    return plan.decide(
        draws, abs_sum / (4.0 * count), weights, alpha, (collection_x, collection_y), (x, y)
    )
