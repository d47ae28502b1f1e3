"""Stein kernels: a base kernel turned into one whose mean vanishes under a target density.

The Langevin Stein kernel of a kernel k and a density p with score s = grad log p is

  u_p(x, y) = s(x).s(y) k(x, y) + s(x).grad_y k(x, y) + s(y).grad_x k(x, y)
              + tr(grad_x grad_y k(x, y)),

so E_{x, y ~ p}[u_p(x, y)] = 0 and KSD^2(q, p) = E_{x, y ~ q}[u_p(x, y)] (Liu, Lee & Jordan,
2016, Theorem 3.6; Chwialkowski, Strathmann & Gretton, 2016, eq. 2). Radial kernels use the
closed form from `RadialKernel.radial_derivatives`; any other kernel goes through automatic
differentiation of its `__call__` (`Kernel.stein_gram`).
"""

from __future__ import annotations

from jaxtyping import Array, Float

from kmethods.pairwise import gram_matvec

__all__ = ["langevin_stein_matvec"]


def langevin_stein_matvec(
    kernel,
    x: Float[Array, "n d"],
    scores: Float[Array, "n d"],
    v: Float[Array, "n ..."],
    **options,
) -> Float[Array, "n ..."]:
    """U v with U = [u_p(x_i, x_j)] the Langevin Stein kernel matrix, without forming U:
    `kmethods.pairwise.gram_matvec` over row blocks of (x, scores), `options` as there.

    Args:
      kernel: base kernel. x: (n, d) sample. scores: (n, d), grad log p at x.
      v: (n,) or (n, p).
      options: `exclude_diagonal` (treat u_p(x_i, x_i) as zero: U-statistics), `block_size`
        (rows of U held at once: memory O(block_size * n)), `mesh` (a `jax.sharding.Mesh`
        whose devices share the rows of U, each holding about n/p of them and a p-th of each
        block, `kmethods.pairwise.map_row_blocks`; call it inside `jit` with the inputs on the
        mesh; or None, one device).
    """
    return gram_matvec(
        lambda xb, sb: kernel.stein_gram(xb, sb, x, scores), (x, scores), v, **options
    )
