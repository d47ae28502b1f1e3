"""Stein Cholesky (SC) and its low-rank form (LSC): a weighted coreset from debiased weights."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.debias._kernel import stein_problem
from kmethods.debias._thin import stein_thin_program
from kmethods.debias._weights import debias_program, rp_cholesky, simplex_qp
from kmethods.kernels import Kernel
from kmethods.pairwise import kernel_matvec
from kmethods.thinning._sizes import check_key

Score = Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"]


def support_weights(z, kernel, support, tol, max_iter):
    """The simplex weights on the points z[support] that minimise their KSD^2 v^T K_SS v
    (dense (m, m) block of the Stein kernel), and the solver's `DebiasInfo`."""
    gram = kernel.gram(z[support], z[support])
    return simplex_qp(lambda v: gram @ v, jnp.diagonal(gram), tol, max_iter)


def swap_with_line_search(z, kernel, support, v):
    """One pass of KT-SWAP with line search for simplex weights (Li et al., 2024): in turn,
    each coreset point i is taken out (the others renormalised to a measure u) and replaced by
    the point x_j and weight t in [0, 1] that minimise KSD^2((1 - t) u + t delta_{x_j}) =
    (1 - t)^2 u^T K u + 2 t (1 - t) (K u)_j + t^2 k_p(x_j, x_j) over every j of the input,
    with t in closed form. Keeps g = K_{:, S} v, one (n,) vector, and evaluates one column of
    the Stein kernel per removal and per insertion: O(n s d) per pass, O(n) memory."""
    dtype = z.dtype
    diag = kernel.diag(z)
    column = lambda j: kernel.gram(z, z[j][None])[:, 0]
    g = kernel_matvec(kernel, z, z[support], v)  # K_{:, S} v, blocked
    f = jnp.dot(v, g[support])
    tiny = jnp.finfo(dtype).tiny

    def step(carry, i):
        support, v, g, f = carry
        old, a = support[i], v[i]
        rest = 1.0 - a
        movable = rest > jnp.sqrt(jnp.finfo(dtype).eps)
        scale = jnp.where(movable, 1.0 / jnp.maximum(rest, tiny), 0.0)
        g_u = (g - a * column(old)) * scale
        f_u = (f - 2.0 * a * g[old] + a * a * diag[old]) * scale**2
        curvature = f_u - 2.0 * g_u + diag
        t = jnp.clip((f_u - g_u) / jnp.maximum(curvature, tiny), 0.0, 1.0)
        value = (1.0 - t) ** 2 * f_u + 2.0 * t * (1.0 - t) * g_u + t**2 * diag
        j = jnp.argmin(value)
        t_j = t[j]
        new_g = (1.0 - t_j) * g_u + t_j * column(j)
        new_v = ((1.0 - t_j) * scale * v).at[i].set(t_j)
        better = movable & (value[j] < f)
        pick = lambda new, cur: jnp.where(better, new, cur)
        carry = (
            pick(support.at[i].set(j.astype(support.dtype)), support),
            pick(new_v, v),
            pick(new_g, g),
            pick(value[j], f),
        )
        return carry, None

    (support, v, _, _), _ = jax.lax.scan(step, (support, v, g, f), jnp.arange(support.shape[0]))
    return support, v


@cpu_jit(static_argnames=("out_size", "rank"))
def stein_cholesky_program(key, z, kernel, shift, debias_tol, tol, max_iter, *, out_size, rank):
    n = z.shape[0]
    dtype = z.dtype
    k_debias, k_pivots = jax.random.split(key)
    zeros = jnp.zeros(n, dtype)
    if rank is None:
        # SC: Stein thinning run for n steps, its counts as the debiased weights.
        picked = stein_thin_program(z, kernel, zeros, zeros, out_size=n)
        w = jnp.bincount(jnp.maximum(picked, 0), length=n).astype(dtype) / n
    else:  # LSC: the low-rank debiasing weights
        w, _ = debias_program(k_debias, z, kernel, debias_tol, max_iter, rank=rank, block_size=None)
    diag = kernel.diag(z)
    if shift is None:
        # Li et al.'s constant: the mean of the out_size largest k_p(x_i, x_i), w_i > 0.
        top = jax.lax.top_k(jnp.where(w > 0, diag, -jnp.inf), out_size)[0]
        kept = jnp.isfinite(top)
        shift = jnp.sum(jnp.where(kept, top, 0.0)) / jnp.maximum(jnp.sum(kept), 1).astype(dtype)
    root = jnp.sqrt(w)
    # RPCholesky on A = diag(sqrt w) (K_p + c 1 1^T) diag(sqrt w), one column at a time.
    column = lambda s: root * root[s] * (kernel.gram(z, z[s][None])[:, 0] + shift)
    _, _, support = rp_cholesky(k_pivots, column, w * (diag + shift), out_size, return_pivots=True)
    # reweight, refine the support by swaps with line search, reweight (Li et al., 2024)
    v, _ = support_weights(z, kernel, support, tol, max_iter)
    support, v = swap_with_line_search(z, kernel, support, v)
    v, info = support_weights(z, kernel, support, tol, max_iter)
    finite = jnp.all(jnp.isfinite(z))
    return support, jnp.where(finite, v, jnp.nan), info._replace(converged=info.converged & finite)


def stein_cholesky(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    score: Score,
    kernel: Kernel,
    *,
    out_size: int | None = None,
    rank: int | None = None,
    shift: float | None = None,
    preconditioner: Float[Array, "d d"] | None = None,
    tol: float = 1e-6,
    debias_tol: float = 1e-2,
    max_iter: int = 20_000,
    return_info: bool = False,
) -> tuple[Int[Array, " s"], Float[Array, " s"]]:
    """Stein Cholesky: a weighted coreset of `out_size` points of x with a small KSD to p.

    Li, Dwivedi & Mackey (2024), "Debiased Distribution Compression", Algorithms "SC" and
    "LSC", with simplex weights on the coreset:

    1. Debias: Stein thinning run for n steps (`stein_thin`), whose counts / n are simplex
       weights w on x (SC, `rank=None`: O(n^2 d) time, O(n d) memory); or the low-rank
       debiasing weights of `debias_weights(method="low_rank", rank=rank)` (LSC: O(n rank^2
       d)).
    2. Select: randomly pivoted Cholesky (`rp_cholesky`; Chen, Epperly, Tropp & Webber, 2023)
       for `out_size` steps on the weighted, shifted Stein kernel matrix
       diag(sqrt w) (K_p + c 1 1^T) diag(sqrt w): pivots are drawn in proportion to the
       residual diagonal, so only points of positive weight are chosen and each new one is
       far, in k_p + c, from those already chosen. The shift c (default: the mean of the
       out_size largest k_p(x_i, x_i) over w_i > 0, as in the paper) makes the selection
       account for the constraint that the weights sum to one. O(n out_size (d + out_size))
       time, O(n out_size) memory; no n x n matrix.
    3. Reweight: the simplex weights v on the chosen points that minimise their KSD^2,
       v^T K_SS v (`simplex_qp` on the dense (out_size, out_size) block), solved to a
       relative Frank-Wolfe gap of `tol`.

    The paper's SC reweights with constant-preserving weights (summing to one, of any sign)
    and refines the support by local swaps; this version keeps the weights on the simplex, a
    probability distribution.

    Args:
      key: JAX PRNG key (pivots; the low-rank factor of LSC).
      x: (n, d) biased sample. score: grad log p, a function of one point or an (n, d) array.
      kernel: the base kernel (or a `SteinKernel`, whose base and preconditioner are used).
      out_size: s, the coreset size, default floor(sqrt(n)); at most n.
      rank: None for SC, the rank of the low-rank debiasing for LSC.
      shift: the constant c >= 0 added to k_p for the selection; None for the paper's.
      preconditioner: optional (d, d) matrix M of the Stein kernel.
      tol: relative Frank-Wolfe gap of the final reweighting.
      debias_tol: that of the low-rank debiasing (LSC).
      max_iter: iteration cap of each quadratic solve.
      return_info: also return the final reweighting's `DebiasInfo`.

    Returns:
      (indices, weights): (s,) int indices into x (one repeats only if fewer than s points
      have positive debiased weight) and (s,) weights >= 0 summing to 1. The KSD^2 of the
      coreset is `ksd2(x[indices], score, kernel, weights=weights, unbiased=False)`. With
      `return_info`, (indices, weights, DebiasInfo). Non-finite scores raise a ValueError
      eagerly; inside jit the weights are NaN.

    References:
      Li, Dwivedi & Mackey, "Debiased Distribution Compression", ICML 2024.
      Chen, Epperly, Tropp & Webber, "Randomly pivoted Cholesky: practical approximation of a
        kernel matrix with few entry evaluations", CPAM 2024.
    """
    check_key(key)
    z, stein = stein_problem(x, score, kernel, preconditioner)
    n = z.shape[0]
    out_size = _checks.positive_int(math.isqrt(n) if out_size is None else out_size, "out_size")
    if out_size > n:
        raise ValueError(f"`out_size` must be at most n = {n}, got {out_size}.")
    if rank is not None:
        rank = _checks.positive_int(rank, "rank")
        if rank > n:
            raise ValueError(f"`rank` must be at most n = {n}, got {rank}.")
    if shift is not None:
        if _checks.is_concrete(shift) and not float(shift) >= 0.0:
            raise ValueError(f"`shift` must be nonnegative and finite, got {shift!r}.")
        _checks.check_finite(jnp.asarray(shift), "shift")
        shift = jnp.asarray(shift, z.dtype)
    _checks.check_positive(tol, "tol")
    _checks.check_positive(debias_tol, "debias_tol")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    return_info = _checks.flag(return_info, "return_info")
    support, weights, info = stein_cholesky_program(
        key,
        z,
        stein,
        shift,
        jnp.asarray(debias_tol, z.dtype),
        jnp.asarray(tol, z.dtype),
        jnp.asarray(max_iter, jnp.int32),
        out_size=out_size,
        rank=rank,
    )
    return (support, weights, info) if return_info else (support, weights)
