"""MMDAgg: the aggregated kernel two-sample test.

References:
  Schrab, Kim, Albert, Laurent, Guedj & Gretton, "MMD Aggregated Two-Sample Test", JMLR 24,
  2023 (Algorithm 1; the collection of Section 5.2 and the weights of Section 5.1).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods.aggregated import _blocks
from kmethods.aggregated._aggregate import AggregatedTestResult, collection_weights
from kmethods.aggregated._collections import KernelCollection, as_collection, mmdagg_kernels
from kmethods.kernels import Kernel
from kmethods.pairwise import mask_diagonal

__all__ = ["mmdagg"]


def mmdagg(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    kernels: KernelCollection | list[Kernel] | None = None,
    *,
    alpha: float = 0.05,
    weights: str | Float[Array, " N"] = "uniform",
    num_bandwidths: int = 10,
    num_permutations: int = 2000,
    num_correction: int = 2000,
    bisection_steps: int = 50,
    block_size: int | None = None,
) -> AggregatedTestResult:
    """MMDAgg (Schrab et al., JMLR 2023): the kernel two-sample test of H0: P = Q aggregated
    over a collection of kernels, with the level corrected for the multiple testing.

    Each kernel's statistic is the unbiased `mmd2(x, y, kernel)`. The same
    `num_permutations + num_correction` relabellings of the pooled sample serve every kernel:
    the first B1 estimate each kernel's quantiles, the other B2 the family-wise error of their
    union, and the correction u is found by `bisection_steps` steps of bisection (see
    `kmethods.aggregated` for the algorithm). All statistics on all relabellings come from one
    blocked pass over the rows of the pooled kernel matrices, K_i [e_0 ... e_B] and K_i 1 with
    e_b the label indicators, so memory is O(N block_size (n + m) + (n + m) B + N B) and no
    kernel matrix is stored (at n = m = 20000, d = 10, 20 kernels and B = 2000 + 2000, the
    compiled plan holds 0.7 GB, the labels 0.64 GB of it). Permutations make the test valid
    for any n, m (the reference implementation uses a wild bootstrap when n = m).

    Args:
      key: PRNG key for the permutations.
      x: (n, d). y: (m, d).
      kernels: None for MMDAgg's collection (`kmethods.aggregated.mmdagg_kernels`: l1-Laplace
        and Gaussian kernels, `num_bandwidths` each, around the scale of the inter-sample
        distances), or a `KernelCollection` / sequence of kernels.
      alpha: level.
      weights: "uniform", "decreasing", "increasing" or "centred" (Section 5.1, applied within
        each family of kernels, ordered as given), or one positive weight per kernel.
      num_bandwidths: size of each family of the default collection (>= 2).
      num_permutations: B1, the permutations that estimate the quantiles, with
        (1 + B1) alpha >= 1 (else a `ValueError`: no kernel could reject).
      num_correction: B2, the permutations that estimate the level correction.
      bisection_steps: B3.
      block_size: rows of the pooled kernel matrices held at once.

    Returns:
      `AggregatedTestResult` (a `TestResult` with the per-kernel statistics, p-values,
      thresholds and rejections, u and the kernels), float32 for half-precision input, which
      is computed in float32, else the input's dtype. A non-finite input gives NaN statistics
      and reject = False. One compile per shape, collection layout and option set.
    """
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_dimension(x, y, "x", "y")
    x, y = _checks.promote(x, y)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_bandwidths = _checks.positive_int(num_bandwidths, "num_bandwidths", minimum=2)
    if kernels is None:
        kernels = mmdagg_kernels(x, y, num_bandwidths)
    collection = as_collection(kernels, x.dtype)
    w = collection_weights(collection.sizes, weights)
    plan = _blocks.Plan.checked(
        "num_permutations", num_permutations, num_correction, bisection_steps, block_size, alpha
    )
    return _mmdagg(key, x, y, collection, alpha, jnp.asarray(w, x.dtype), plan)


@partial(jax.jit, static_argnames=("plan",))
def _mmdagg(key, x, y, collection, alpha, weights, plan):
    n, m = x.shape[0], y.shape[0]
    z = jnp.concatenate([x, y])
    dtype = z.dtype
    observed = jnp.concatenate([jnp.ones(n, dtype), jnp.zeros(m, dtype)])
    labels = _blocks.draw_rows(  # (1 + B1 + B2, n + m): the labelling, then the permuted ones
        lambda k: jax.random.permutation(k, observed),
        key,
        plan.num_draws,
        observed,
    )
    # MMD^2 is unchanged by K -> K - c: each kernel is shifted by one of its entries, so that
    # a nearly constant kernel keeps the digits its statistics differ in (as in `mmd_test`).
    shifts = _blocks.family_map(lambda k: k(z[0], z[-1]), collection)

    def block(start, rows):
        size = rows.shape[0]
        zb, eb = _blocks.row_block(z, start, size), _blocks.row_block(labels, start, size, axis=1)

        def one(kernel, shift):
            g = mask_diagonal(kernel.gram(zb, z) - shift, rows)
            g = jnp.where((rows < n + m)[:, None], g, jnp.zeros((), dtype))
            k_e = labels @ g.T  # (K e_b)_i for the rows i of the block, shape (1 + B, b)
            k_one = jnp.sum(g, axis=1)
            return jnp.sum(eb * k_e, axis=1), eb @ k_one, jnp.sum(k_one)

        outs = [
            jax.vmap(one)(family, s)
            for family, s in zip(collection.families, _split(shifts, collection), strict=True)
        ]
        return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)

    within_x, x_to_all, total = _blocks.sum_row_blocks(
        block, n + m, block_size=plan.rows_per_block(n + m, len(collection))
    )
    # With W = e'Ke, X = e'K1 and T = 1'K1 (zero diagonal, f = 1 - e), MMD_u^2 is
    # W / (n(n-1)) + f'Kf / (m(m-1)) - 2 e'Kf / (nm), and f'Kf = T - 2X + W, e'Kf = X - W:
    # collected per sum, the coefficients below. The scale of the rounding is the size of the
    # terms.
    nf, mf = float(n), float(m)
    cx, cy, cxy = 1.0 / (nf * (nf - 1)), 1.0 / (mf * (mf - 1)), 1.0 / (nf * mf)
    sums = (within_x, x_to_all, jnp.broadcast_to(total[:, None], within_x.shape))
    coefficients = (cx + cy + 2.0 * cxy, -2.0 * (cy + cxy), cy)
    draws = sum(c * t for c, t in zip(coefficients, sums, strict=True))
    scale = jnp.max(sum(abs(c) * jnp.abs(t) for c, t in zip(coefficients, sums, strict=True)), 1)
    return plan.decide(draws, scale, weights, alpha, collection, (x, y))


def _split(values, collection):
    """The per-kernel array `values` (N, ...) split into the collection's families."""
    bounds, start = [], 0
    for size in collection.sizes:
        bounds.append((start, start + size))
        start += size
    return [values[a:b] for a, b in bounds]
