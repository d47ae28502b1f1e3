"""Debiasing weights: the simplex weights on a sample that minimise its KSD (Li et al., 2024)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray, Scalar

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.debias._kernel import stein_problem
from kmethods.kernels import Kernel
from kmethods.pairwise import kernel_matvec
from kmethods.thinning._sizes import check_key

Score = Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"]


class DebiasInfo(NamedTuple):
    """How the simplex quadratic program min_w w^T K w was solved.

    objective: w^T K w at the returned weights (KSD^2 of the weighted sample; for
      `method="low_rank"`, of the low-rank matrix). gap: the relative Frank-Wolfe gap
      (w^T K w - min_i (K w)_i) / w^T K w, which bounds the relative suboptimality:
      w^T K w - min = at most 2 gap w^T K w. iterations: gradient steps taken. converged: gap
      at most `tol`.
    """

    objective: Float[Scalar, ""]
    gap: Float[Scalar, ""]
    iterations: Int[Scalar, ""]
    converged: jax.Array


# Iterations between the checks of `simplex_qp` for a gap stuck at the rounding floor.
_STALL_WINDOW = 250


class SolverNotConverged(UserWarning):
    """`debias_weights` stopped at `max_iter` before its gap reached `tol`."""


def project_to_simplex(v: Float[Array, " n"]) -> Float[Array, " n"]:
    """Euclidean projection onto the probability simplex {w >= 0, sum w = 1}: w = max(v - t, 0)
    with t the root of sum_i max(v_i - t, 0) = 1 (Duchi, Shalev-Shwartz, Singer & Chandra,
    ICML 2008). t is bracketed in [max v - 1, max v] and bisected to the float precision, then
    solved exactly on the support found, t = (sum_{v_i > t} v_i - 1) / #{v_i > t} (Condat,
    2016): O(n) per bisection step, where a sort (the textbook method) is slow on XLA:CPU."""
    top = jnp.max(v)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        enough = jnp.sum(jnp.maximum(v - mid, 0.0)) >= 1.0
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    steps = jnp.finfo(v.dtype).nmant + 4
    lo, _ = jax.lax.fori_loop(0, steps, halve, (top - 1.0, top))
    support = v > lo
    count = jnp.maximum(jnp.sum(support), 1).astype(v.dtype)
    theta = (jnp.sum(jnp.where(support, v, 0.0)) - 1.0) / count
    return jnp.maximum(v - theta, 0.0)


def simplex_qp(matvec, diag, tol, max_iter, init: Float[Array, " n"] | None = None):
    """min_w w^T K w over the simplex, K positive semi-definite given by `matvec`; `init`, an
    optional starting point on the simplex (default uniform).

    Accelerated projected gradient (FISTA; Beck & Teboulle, 2009) with Euclidean projection
    onto the simplex, backtracking on the step (the curvature test is exact for a quadratic:
    (w' - y)^T K (w' - y) <= L / 2 ||w' - y||^2, from products already computed, so each
    iteration costs one product K w) and function-value restart of the momentum (O'Donoghue
    & Candes, 2015). The step starts from L = 2 max(max_i K_ii, n w0^T K w0) <= 2 lambda_max
    and doubles when the test fails. Stops when the relative Frank-Wolfe gap
    (w^T K w - min_i (K w)_i) / w^T K w is at most `tol`, after `max_iter` iterations, or
    when it is stuck at the rounding floor: the gap within 64 eps max_i K_ii / w^T K w (see
    `not_converged_advice`) and the objective down by less than a relative 1e-3 over the
    last `_STALL_WINDOW` iterations. In float32 at n = 4096, d = 2 that stops an unreachable
    tol = 1e-2 after about 1,000 of the 5,000 default iterations; in float64 the floor is
    never reached and nothing changes.

    Returns (w, DebiasInfo).
    """
    n = diag.shape[0]
    dtype = diag.dtype
    tiny = jnp.finfo(dtype).tiny
    w0 = jnp.full((n,), 1.0 / n, dtype)
    kw0 = matvec(w0)
    f0 = jnp.dot(w0, kw0)
    scale = jnp.max(jnp.abs(diag))
    eps = jnp.finfo(dtype).eps
    lipschitz = 2.0 * jnp.maximum(jnp.max(diag), n * f0)
    if init is not None:
        w0 = init.astype(dtype)
        kw0 = matvec(w0)

    def gap(w, kw):
        f = jnp.dot(w, kw)
        return (f - jnp.min(kw)) / jnp.maximum(f, tiny)

    def cond(state):
        w, kw, *_, it, _, stalled = state
        g = gap(w, kw)
        # NaN (non-finite input) stops at once.
        return (it < max_iter) & (g > tol) & ~stalled

    def stuck(w, kw, f_mark):
        """At the rounding floor and hardly moving (checked every `_STALL_WINDOW` steps)."""
        f = jnp.dot(w, kw)
        at_floor = gap(w, kw) <= 64.0 * eps * scale / jnp.maximum(f, tiny)
        return at_floor & (f_mark - f <= 1e-3 * f_mark), f

    def body(state):
        w, kw, w_prev, kw_prev, momentum, lipschitz, it, f_mark, _ = state
        next_momentum = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * momentum**2))
        beta = (momentum - 1.0) / next_momentum
        y = w + beta * (w - w_prev)
        ky = kw + beta * (kw - kw_prev)
        w_new = project_to_simplex(y - (2.0 / lipschitz) * ky)
        kw_new = matvec(w_new)
        step = w_new - y
        curvature = jnp.dot(step, kw_new - ky)
        bound = 0.5 * lipschitz * jnp.dot(step, step)
        # K w' - K y cancels: its rounding, about eps max_i K_ii per entry (|K_ij| <= max K_ii
        # for K PSD), must not read as curvature (in float32 it would halve the step forever).
        noise = 8.0 * eps * scale * jnp.sum(jnp.abs(step))
        fits = curvature <= bound + noise
        # Without momentum (beta = 0) a fitting step is a descent step; with it, a rise of
        # the objective restarts the momentum from w (O'Donoghue & Candes, 2015).
        lower = (jnp.dot(w_new, kw_new) <= jnp.dot(w, kw)) | (momentum == 1.0)
        accept = fits & lower
        restart = fits & ~lower
        pick = lambda new, old: jnp.where(accept, new, old)
        w_next, kw_next = pick(w_new, w), pick(kw_new, kw)
        check = (it + 1) % _STALL_WINDOW == 0
        stalled, f_next = stuck(w_next, kw_next, f_mark)
        return (
            w_next,
            kw_next,
            jnp.where(accept, w, jnp.where(restart, w, w_prev)),
            jnp.where(accept, kw, jnp.where(restart, kw, kw_prev)),
            jnp.where(accept, next_momentum, jnp.where(restart, 1.0, momentum)).astype(dtype),
            jnp.where(fits, lipschitz, 2.0 * lipschitz),
            it + 1,
            jnp.where(check, f_next, f_mark),
            check & stalled,
        )

    init = (
        *(w0, kw0, w0, kw0, jnp.ones((), dtype), lipschitz, jnp.zeros((), jnp.int32)),
        *(jnp.dot(w0, kw0), jnp.zeros((), bool)),
    )
    w, kw, *_, it, _, _ = jax.lax.while_loop(cond, body, init)
    g = gap(w, kw)
    info = DebiasInfo(jnp.dot(w, kw), g, it, g <= tol)
    return w, info


def low_rank_simplex_qp(factor, residual, tol, max_iter):
    """min_w w^T (F F^T + D) w over the simplex, for a factor F (n, r) and a diagonal D >= 0
    (Li et al.'s low-rank debiasing problem), by a semismooth Newton method on its dual in
    r + 1 variables, certified by the primal Frank-Wolfe gap.

    The optimum is dense (most points keep a positive weight: D acts as a ridge), so an
    active-set method on a few points does not fit; but the optimality conditions
    (F u)_i + D_i w_i >= lam, with equality where w_i > 0, u = F^T w, give
    w_i = max(0, lam - (F u)_i) / D_i in terms of (u, lam) alone. These are the maximisers of
    the concave, piecewise-quadratic dual
    psi(u, lam) = lam - |u|^2 / 2 - sum_i max(0, lam - (F u)_i)^2 / (2 D_i),
    whose gradient is (F^T w - u, 1 - sum w). Each Newton step solves one (r + 1)-square
    system with F^T diag(a / D) F (a the indicator of lam > (F u)_i): O(n r^2), then an
    Armijo backtracking line search on psi. D is floored at sqrt(eps) max_i K_ii (the pivots
    of a randomly pivoted Cholesky factor have D_i = 0); the floor's excess rho_i is undone by
    a proximal-point term rho_i (w_i - w_i^k)^2 (Rockafellar, 1976), whose centre w^k moves to
    the solution each time a Newton subproblem is solved to rounding, so that the fixed point
    is the unfloored optimum (the lam above becomes lam + rho_i w_i^k). After each step the
    primal point
    w / sum w is scored exactly, (w^T K w - min_i (K w)_i) / w^T K w with K = F F^T + D (the
    floor is not in the certificate); the method stops when that relative gap is at most `tol`.
    If Newton stalls first, accelerated projected gradient (`simplex_qp`) continues from its
    point. `max_iter` caps the Newton steps, and again the gradient steps. Returns
    (w, DebiasInfo); iterations counts both kinds of steps.

    At n = 2^14, rank 128 (the benchmark's problem) it reaches a gap of 2e-7 in 12 Newton
    steps, 0.5 CPU s, where accelerated projected gradient on all n stopped at its 5000-step
    cap with a gap above 1e-2.

    References: Li, Dwivedi & Mackey, "Debiased Distribution Compression", ICML 2024 (the
    problem); Qi & Sun, "A nonsmooth version of Newton's method", Math. Program. 1993
    (semismooth Newton); Rockafellar, "Monotone operators and the proximal point algorithm",
    SIAM J. Control Optim. 1976.
    """
    n, r = factor.shape
    dtype = factor.dtype
    tiny = jnp.finfo(dtype).tiny
    residual = jnp.maximum(residual, 0.0)
    diag = jnp.sum(factor**2, axis=1) + residual
    floored = jnp.maximum(residual, jnp.sqrt(jnp.finfo(dtype).eps) * jnp.max(diag))
    inv_d = 1.0 / floored
    rho = floored - residual  # the proximal weight, nonzero only where D_i is below the floor
    matvec = lambda v: factor @ (v @ factor) + residual * v

    def excess(u, lam, b):
        return lam + b - factor @ u

    def primal(u, lam, b):
        return jnp.maximum(excess(u, lam, b), 0.0) * inv_d

    def dual(u, lam, b):
        w = primal(u, lam, b)
        return lam - 0.5 * jnp.dot(u, u) - 0.5 * jnp.dot(w * w, 1.0 / inv_d)

    def certify(u, lam, b):
        w = primal(u, lam, b)
        w = w / jnp.maximum(jnp.sum(w), tiny)
        kw = matvec(w)
        f = jnp.dot(w, kw)
        return w, f, (f - jnp.min(kw)) / jnp.maximum(f, tiny)

    block = min(n, 4096)

    def weighted_gram(c):
        # F^T diag(c) F by blocks of rows (the last one shifted back to end at n, its rows
        # already counted masked out): no (n, r) temporary beside F
        def add(b, acc):
            start = jnp.minimum(b * block, n - block)
            rows = jax.lax.dynamic_slice_in_dim(factor, start, block)
            new = start + jnp.arange(block) >= b * block
            cb = jnp.where(new, jax.lax.dynamic_slice_in_dim(c, start, block), 0.0)
            return acc + jnp.einsum("ki,k,kj->ij", rows, cb, rows)

        return jax.lax.fori_loop(0, -(-n // block), add, jnp.zeros((r, r), dtype))

    def cond(state):
        *_, gap, it, stalled = state
        return (gap > tol) & (it < max_iter) & ~stalled

    def body(state):
        u, lam, b, *_, it, _ = state
        psi = dual(u, lam, b)
        w = primal(u, lam, b)
        c = jnp.where(excess(u, lam, b) > 0.0, inv_d, 0.0)
        fc = c @ factor
        hessian = jnp.block(
            [
                [jnp.eye(r, dtype=dtype) + weighted_gram(c), -fc[:, None]],
                [-fc[None, :], jnp.sum(c)[None, None]],
            ]
        )
        grad = jnp.concatenate([w @ factor - u, (1.0 - jnp.sum(w))[None]])
        step = jnp.linalg.solve(hessian, grad)  # the ascent direction -H^{-1} grad
        slope = jnp.dot(grad, step)

        def shorter(ls):
            t, _ = ls
            t = 0.5 * t
            return t, dual(u + t * step[:r], lam + t * step[r], b)

        def too_long(ls):
            t, value = ls
            return (t > 1e-12) & ~(value >= psi + 1e-4 * t * slope)

        t, value = jax.lax.while_loop(
            too_long, shorter, (jnp.ones((), dtype), dual(u + step[:r], lam + step[r], b))
        )
        ok = (t > 1e-12) & jnp.isfinite(value) & (slope > 0.0)
        stalled = ~ok & ~(slope <= 0.0)  # a failed line search (or NaN), not a solved subproblem
        u = jnp.where(ok, u + t * step[:r], u)
        lam = jnp.where(ok, lam + t * step[r], lam)
        w, f, gap_new = certify(u, lam, b)
        # once the subproblem is solved (to rounding), the proximal centre moves to its solution
        solved = slope <= jnp.finfo(dtype).eps * jnp.abs(psi)
        b_new = jnp.where(solved, rho * primal(u, lam, b), b)
        return u, lam, b_new, w, f, gap_new, it + 1, stalled

    u0 = jnp.zeros((r,), dtype)
    b0 = jnp.zeros((n,), dtype)
    lam0 = 1.0 / jnp.sum(inv_d)  # the diagonal-only optimum, w proportional to 1 / D
    w0, f0, gap0 = certify(u0, lam0, b0)
    state = (u0, lam0, b0, w0, f0, gap0, jnp.zeros((), jnp.int32), ~(gap0 >= 0))
    _, _, _, w, f, gap, it, _ = jax.lax.while_loop(cond, body, state)

    def polish(w):
        return simplex_qp(matvec, diag, tol, jnp.maximum(max_iter - it, 1), init=w)

    def done(w):
        return w, DebiasInfo(f, gap, jnp.zeros((), jnp.int32), gap <= tol)

    w, info = jax.lax.cond(gap <= tol, done, polish, w)
    return w, info._replace(iterations=info.iterations + it)


def rp_cholesky(key, column, diag, rank, *, return_pivots=False):
    """Randomly pivoted Cholesky (Chen, Epperly, Tropp & Webber, 2023, Algorithm 2.1): a
    rank-`rank` factor F (n, rank) with K ~ F F^T, from `rank` columns of K.

    Each step draws a pivot s with probability proportional to the residual diagonal d,
    takes g = K[:, s] - F F[s]^T, appends g / sqrt(g_s) to F and lowers d by its square.
    O(n rank^2) time, O(n rank) memory. Returns (F, the residual diagonal d >= 0), and the
    (rank,) pivots with `return_pivots` (a pivot repeats only once d is exhausted).
    `column(s)` must give an (n,) array for an integer index s; an integer or half-precision
    `diag` is computed in float32 (or the default float).
    """
    rank = _checks.positive_int(rank, "rank")
    diag = _checks.as_array(diag, "diag", "(n,)")
    if jnp.issubdtype(diag.dtype, jnp.integer) or diag.dtype == jnp.bool_:
        diag = diag.astype(jnp.result_type(float))
    elif not jnp.issubdtype(diag.dtype, jnp.floating):
        raise TypeError(f"`diag` must hold real floating values, got dtype {diag.dtype}.")
    if diag.ndim != 1 or diag.shape[0] == 0:
        raise ValueError(f"`diag` must have shape (n,), n >= 1, got {diag.shape}.")
    diag = _checks.at_least_float32(diag)
    n = diag.shape[0]
    dtype = diag.dtype
    index = jax.ShapeDtypeStruct((), jax.dtypes.canonicalize_dtype(jnp.int64))
    out = jax.eval_shape(column, index)
    if getattr(out, "shape", None) != (n,):
        raise ValueError(
            f"`column` must map a pivot index to a column of shape ({n},) (as `diag`), got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    keys = jax.random.split(key, rank)

    def step(i, carry):
        factor, residual, pivots = carry
        logits = jnp.log(jnp.maximum(residual, 0.0))
        s = jax.random.categorical(keys[i], logits)
        g = column(s).astype(dtype) - factor @ factor[s]
        pivot = g[s]
        ok = (pivot > 0) & jnp.isfinite(pivot)
        new = jnp.where(ok, g / jnp.sqrt(jnp.where(ok, pivot, 1.0)), 0.0)
        factor = factor.at[:, i].set(new)
        return factor, jnp.maximum(residual - new**2, 0.0), pivots.at[i].set(s.astype(jnp.int32))

    init = (jnp.zeros((n, rank), dtype), diag, jnp.zeros((rank,), jnp.int32))
    factor, residual, pivots = jax.lax.fori_loop(0, rank, step, init)
    return (factor, residual, pivots) if return_pivots else (factor, residual)


@cpu_jit(static_argnames=("rank", "block_size"))
def debias_program(key, z, kernel, tol, max_iter, *, rank, block_size):
    """Simplex weights on z minimising w' K w (exact, or with K low-rank when `rank` is set),
    and the solver's info; `tol` and `max_iter` are numbers or scalar arrays."""
    tol, max_iter = jnp.asarray(tol, z.dtype), jnp.asarray(max_iter, jnp.int32)
    diag = kernel.diag(z)
    if rank is None:
        matvec = lambda v: kernel_matvec(kernel, z, z, v, block_size=block_size)
    else:
        column = lambda s: kernel.gram(z, z[s][None])[:, 0]
        factor, residual = rp_cholesky(key, column, diag, rank)
        # K ~ F F^T + diag(residual): the factor plus the diagonal it misses (Li et al.'s
        # diagonal correction), positive semi-definite and exact on the diagonal.
        w, info = low_rank_simplex_qp(factor, residual, tol, max_iter)
    if rank is None:
        w, info = simplex_qp(matvec, diag, tol, max_iter)
    finite = jnp.all(jnp.isfinite(z))
    w = jnp.where(finite, w, jnp.nan)
    return w, info._replace(converged=info.converged & finite)


def debias_weights(
    x: Float[Array, "n d"],
    score: Score,
    kernel: Kernel,
    *,
    method: str = "exact",
    rank: int | None = None,
    key: PRNGKeyArray | None = None,
    tol: float = 1e-2,
    max_iter: int = 5000,
    preconditioner: Float[Array, "d d"] | None = None,
    block_size: int | None = None,
    return_info: bool = False,
) -> Float[Array, " n"] | tuple[Float[Array, " n"], DebiasInfo]:
    """Simplex weights on x that minimise the KSD of the weighted sample to the target p.

    Solves min_{w in simplex} w^T K_p w, K_p the Stein kernel matrix of x (`SteinKernel`):
    the weighted sample sum_i w_i delta_{x_i} has KSD^2 = w^T K_p w, so the optimum is the
    closest weighting of a biased sample (MCMC with burn-in, an approximate or tempered
    sampler) to p (Li, Dwivedi & Mackey, 2024, Section 3, "debiasing"). The solver is
    accelerated projected gradient on the simplex with backtracking and restarts
    (`simplex_qp`), one product K_p w per iteration ("exact"), or a Newton method on the dual
    of the low-rank problem ("low_rank").

    method="exact": the products are blocked (`kmethods.pairwise.kernel_matvec`): O(n^2 d) time
    per iteration, O(n block) memory, no n x n matrix. For moderate n.

    method="low_rank": Li et al.'s low-rank debiasing: randomly pivoted Cholesky (Chen,
    Epperly, Tropp & Webber, 2023) gives K_p ~ F F^T + D from `rank` columns of K_p (D the
    residual diagonal, so that the approximation is exact on the diagonal), then
    `low_rank_simplex_qp`: a semismooth Newton method on the problem's dual in rank + 1
    variables, with the same certificate (the relative Frank-Wolfe gap of the primal weights
    under F F^T + D): O(n rank^2 d) to build the factor, O(n rank^2) per Newton step (about
    ten steps to a gap of 1e-4 at n = 2^12 to 2^14), O(n rank) memory. Tends to the exact
    weights as the rank grows.

    Args:
      x: (n, d) biased sample.
      score: grad log p, a function of one point or an (n, d) array of its values at x.
      kernel: the base kernel of the Stein kernel, or a `SteinKernel` whose base and
        preconditioner are used.
      method: "exact" or "low_rank".
      rank: the rank of "low_rank" (required there, at most n).
      key: PRNG key of the pivots of "low_rank"; default a fixed key (0).
      tol: stop when the relative Frank-Wolfe gap (w^T K w - min_i (K w)_i) / w^T K w is at
        most tol; then w^T K w exceeds the minimum by at most 2 tol w^T K w (certified).
        The gap cannot fall much below eps max_i K_ii / w^T K w (eps of the compute dtype):
        in float32, for a target in a few dimensions at n in the thousands, that can be above
        1e-2 while the objective is accurate and the weights near-optimal. The exact solver
        stops once stuck there (`simplex_qp`; measured at n = 4096, d = 2: 1,250 iterations
        instead of 5,000, 4x sooner, objective 0.1% higher), the warning says so, and
        float64 certifies.
      max_iter: iteration cap (gradient steps; for "low_rank", Newton steps, then gradient
        steps if Newton stalls). A solve that stops there has not converged, and says so: a
        `SolverNotConverged` warning (eagerly) and `converged=False` in the info.
      preconditioner: optional (d, d) matrix M of the Stein kernel.
      block_size: rows of K_p held at once ("exact").
      return_info: also return a `DebiasInfo` (objective, gap, iterations, converged).

    Returns:
      (n,) weights >= 0 summing to 1 (many exactly 0), in the compute dtype of x; with
      `return_info`, (weights, DebiasInfo). Non-finite scores raise a ValueError eagerly;
      inside jit the weights are NaN and `converged` False.

    References:
      Li, Dwivedi & Mackey, "Debiased Distribution Compression", ICML 2024.
      Chen, Epperly, Tropp & Webber, "Randomly pivoted Cholesky: practical approximation of a
        kernel matrix with few entry evaluations", CPAM 2024 (arXiv:2207.06503, 2023).
      Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm", SIAM J. Imaging
        Sci. 2009.
    """
    _checks.choice(method, "method", ("exact", "low_rank"))
    z, stein = stein_problem(x, score, kernel, preconditioner)
    n = z.shape[0]
    if method == "low_rank":
        if rank is None:
            raise ValueError('`rank` is required for method="low_rank".')
        rank = _checks.positive_int(rank, "rank")
        if rank > n:
            raise ValueError(f"`rank` must be at most n = {n}, got {rank}.")
    elif rank is not None:
        raise ValueError('`rank` applies only to method="low_rank".')
    if key is None:
        key = jax.random.key(0)
    check_key(key)
    _checks.check_positive(tol, "tol")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    block_size = _checks.block_size(block_size)
    return_info = _checks.flag(return_info, "return_info")
    w, info = debias_program(key, z, stein, tol, max_iter, rank=rank, block_size=block_size)
    if _checks.is_concrete(info.converged) and not bool(info.converged):
        warnings.warn(
            f"debias_weights did not converge: relative gap {float(info.gap):.3g} > tol = "
            f"{float(tol):g} after {int(info.iterations)} iterations; "
            + not_converged_advice(info, stein.diag(z)),
            SolverNotConverged,
            stacklevel=2,
        )
    return (w, info) if return_info else w


def not_converged_advice(info: DebiasInfo, diag: Float[Array, " n"]) -> str:
    """What to do about a solve that stopped short of its gap: more iterations, unless the gap
    is near what the compute dtype can resolve.

    The gap (w'Kw - min_i (Kw)_i) / w'Kw subtracts entries of K w rounded to about
    eps max_i K_ii from an objective that, for a good weighting, is far smaller than K's
    entries (the Stein kernel has mean zero under p), so it stops falling near
    eps max_i K_ii / w'Kw (measured: 4 to 21 times that in float32, for d = 1 to 5,
    n = 256 to 4096) while the objective itself stays accurate. More iterations do not help
    there; float64 does."""
    objective = float(info.objective)
    eps = float(jnp.finfo(diag.dtype).eps)
    scale = float(jnp.max(jnp.abs(diag)))
    floor = eps * scale / objective if objective > 0 else math.inf
    if not float(info.gap) <= 64.0 * floor:
        return "raise `max_iter`."
    return (
        f"the gap is near what {diag.dtype} rounding of K_p w can resolve here (about "
        f"{floor:.2g} and up: entries of K_p up to {scale:.3g} against w'K_p w = "
        f"{objective:.3g}), so more iterations will not lower it; for a certificate use float64 "
        '(jax.config.update("jax_enable_x64", True)) or a looser `tol`.'
    )
