"""The default kernel per sample (IMQ at its own median distance) and the summed Stein
matrix of the perturbed samples (internal)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from kmethods._numerics import median_distance
from kmethods.kernels import IMQ
from kmethods.pairwise import gram_matvec

# The median heuristic looks at most at this many points of each sample (evenly spaced).
MEDIAN_MAX_POINTS = 256


class MedianIMQ(IMQ):
    """The default kernel, IMQ with c = 1 and beta = -1/2: k = t^(-1/2), t = 1 + r^2 / h^2,
    with its radial derivatives in closed form from one rsqrt. `IMQ` differentiates its
    profile (three powers per entry), which made the Stein matrices ~10x slower than here and
    dominated the test's time."""

    def radial_derivatives(self, r2):
        inv_h2 = 1.0 / self.bandwidth**2
        t = 1.0 + r2 * inv_h2
        k = jax.lax.rsqrt(t)
        inv_t = 1.0 / t
        # g'/r = 2 phi'(r^2) = -h^-2 t^(-3/2); g'' = g'/r + 4 r^2 phi'' = g'/r + 3 r^2 h^-4 t^(-5/2)
        g1_over_r = -inv_h2 * k * inv_t
        return k, g1_over_r, g1_over_r + 3.0 * r2 * inv_h2**2 * k * inv_t**2


def kernel_stack(kernel, samples):
    """One kernel per sample as a pytree with a leading axis: `kernel` repeated, or (None) the
    IMQ kernel (1 + r^2 / h^2)^(-1/2) with h the median distance within each sample, taken on
    at most MEDIAN_MAX_POINTS points evenly spaced in the sample's order (the same points of
    every perturbed sample)."""
    num, n = samples.shape[:2]
    base = MedianIMQ() if kernel is None else kernel
    stack = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (num, *jnp.shape(a))), base)
    if kernel is not None:
        return stack
    subset = samples[:, :: -(-n // MEDIAN_MAX_POINTS)]
    bandwidth = jax.vmap(median_distance)(subset)
    return eqx.tree_at(lambda k: k.bandwidth, stack, bandwidth)


def scores_of(samples, log_prob):
    """grad log p at every point of the samples, shape (L, n, d), in their dtype."""
    grads = jax.vmap(jax.vmap(jax.grad(log_prob)))(samples)
    return grads.astype(samples.dtype)


def summed_stein_matvec(kernels, samples, scores, v, *, block_size):
    """(sum_l U_l) v with U_l = [u_p(x_i^l, x_j^l)]_{i != j} under the l-th kernel, by row blocks
    (memory O(block_size * n), one Stein block at a time)."""
    n = samples.shape[1]
    by_point = (jnp.swapaxes(samples, 0, 1), jnp.swapaxes(scores, 0, 1))  # (n, L, d)

    def gram_block(xb, sb):
        def add(total, args):
            kernel, xl, sl, x_all, s_all = args
            return total + kernel.stein_gram(xl, sl, x_all, s_all), None

        total = jnp.zeros((xb.shape[0], n), samples.dtype)
        blocks = (jnp.swapaxes(xb, 0, 1), jnp.swapaxes(sb, 0, 1))
        total, _ = jax.lax.scan(add, total, (kernels, *blocks, samples, scores))
        return total

    return gram_matvec(gram_block, by_point, v, exclude_diagonal=True, block_size=block_size)
