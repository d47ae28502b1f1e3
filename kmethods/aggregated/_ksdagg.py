"""KSDAgg: the aggregated kernel Stein discrepancy goodness-of-fit test.

References:
  Schrab, Guedj & Gretton, "KSD Aggregated Goodness-of-fit Test", NeurIPS 2022 (Algorithm 1
  with the wild bootstrap; the IMQ collection of their `ksdagg` package).
  Liu, Lee & Jordan, "A Kernelized Stein Discrepancy for Goodness-of-fit Tests", ICML 2016.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods._scores import scores_at
from kmethods.aggregated import _blocks
from kmethods.aggregated._aggregate import AggregatedTestResult, collection_weights
from kmethods.aggregated._collections import KernelCollection, as_collection, ksdagg_kernels
from kmethods.kernels import Kernel
from kmethods.pairwise import mask_diagonal

__all__ = ["ksdagg"]


def ksdagg(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    score: Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"],
    kernels: KernelCollection | list[Kernel] | None = None,
    *,
    alpha: float = 0.05,
    weights: str | Float[Array, " N"] = "uniform",
    num_bandwidths: int = 10,
    num_bootstrap: int = 2000,
    num_correction: int = 2000,
    bisection_steps: int = 50,
    block_size: int | None = None,
) -> AggregatedTestResult:
    """KSDAgg (Schrab, Guedj & Gretton, NeurIPS 2022): the KSD goodness-of-fit test of H0:
    x ~ p, knowing only grad log p, aggregated over a collection of base kernels.

    Each kernel's statistic is the U-statistic `ksd2(x, score, kernel)`; each draw is
    sum_{i != j} W_i W_j u_p(x_i, x_j) / (n (n - 1)) with i.i.d. Rademacher signs W, the same
    signs for every kernel (the wild bootstrap of the paper, for i.i.d. samples). The first
    `num_bootstrap` draws estimate each kernel's quantiles, the other `num_correction` the
    level correction, found by bisection (see `kmethods.aggregated`). All of them come from
    one blocked pass U_i [W_0 ... W_B] over the rows of every Stein kernel matrix: memory
    O(N block_size n + n B + N B), no n x n matrix.

    Args:
      key: PRNG key for the bootstrap signs.
      x: (n, d) sample. score: grad log p, a function on one point or an (n, d) array of its
        values at x (as in `ksd2`).
      kernels: None for KSDAgg's collection (`kmethods.aggregated.ksdagg_kernels`: IMQ kernels
        over `num_bandwidths` bandwidths), or a `KernelCollection` / sequence of
        differentiable kernels.
      alpha: level.
      weights: "uniform", "decreasing", "increasing" or "centred" (within each family), or one
        positive weight per kernel.
      num_bandwidths: size of the default collection (>= 2).
      num_bootstrap: B1, with (1 + B1) alpha >= 1 (else a `ValueError`: no kernel could
        reject). num_correction: B2. bisection_steps: B3.
      block_size: rows of the Stein kernel matrices held at once.

    Returns:
      `AggregatedTestResult`, float32 for half-precision input, else the input's dtype. A
      non-finite sample gives NaN statistics and reject = False (a score function returning
      NaN raises eagerly, as in `ksd_test`).
    """
    x = _checks.as_points(x, "x")
    x, scores = scores_at(x, score)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_bandwidths = _checks.positive_int(num_bandwidths, "num_bandwidths", minimum=2)
    if kernels is None:
        kernels = ksdagg_kernels(x, num_bandwidths)
    collection = as_collection(kernels, x.dtype)
    w = collection_weights(collection.sizes, weights)
    plan = _blocks.Plan.checked(
        "num_bootstrap", num_bootstrap, num_correction, bisection_steps, block_size, alpha
    )
    return _ksdagg(key, x, scores, collection, alpha, jnp.asarray(w, x.dtype), plan)


@partial(jax.jit, static_argnames=("plan",))
def _ksdagg(key, x, scores, collection, alpha, weights, plan):
    n = x.shape[0]
    dtype = x.dtype
    signs = _blocks.rademacher_rows(key, n, plan.num_draws, dtype)  # (1 + B, n)

    def block(start, rows):
        size = rows.shape[0]
        xb, sb = _blocks.row_block(x, start, size), _blocks.row_block(scores, start, size)
        wb = _blocks.row_block(signs, start, size, axis=1)

        def one(kernel):
            u = mask_diagonal(kernel.stein_gram(xb, sb, x, scores), rows)
            u = jnp.where((rows < n)[:, None], u, jnp.zeros((), dtype))
            return jnp.sum(wb * (signs @ u.T), axis=1), jnp.sum(jnp.abs(u))

        return _blocks.family_map(one, collection)

    forms, abs_sum = _blocks.sum_row_blocks(
        block, n, block_size=plan.rows_per_block(n, len(collection))
    )
    nf = float(n)
    draws = forms / (nf * (nf - 1))
    return plan.decide(draws, abs_sum / (nf * (nf - 1)), weights, alpha, collection, (x, scores))
