"""Greedy Stein thinning (Riabiz et al., 2022) and its regularised variant (Benard et al., 2023)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods._numerics import first_minimum
from kmethods._scores import evaluate_score
from kmethods.debias._kernel import stein_problem
from kmethods.kernels import Kernel

Score = Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"]


@eqx.filter_jit
def _positive_laplacian(fn, x, gradient):
    """Delta^+ log p = sum_j max(0, d^2 log p / dx_j^2) at every point: the diagonal of the
    Jacobian of the score (`gradient`) or of the Hessian of log p, one jvp per coordinate.
    (`fn` and the flag are static under equinox's filter: one compile per function.)"""
    grad = fn if gradient else jax.grad(fn)
    eye = jnp.eye(x.shape[1], dtype=x.dtype)

    def one(point):
        column = lambda e: jax.jvp(grad, (point,), (e,))[1]
        return jnp.sum(jnp.maximum(jnp.diagonal(jax.vmap(column)(eye)), 0.0))

    return jax.vmap(one)(x)


def _regulariser(x, score, log_prob, strength, out_size):
    """The regularised objective's terms: ((n,) diagonal correction Delta^+ log p, (n,)
    per-step entropic term -(strength / 2) log p)."""
    if log_prob is None:
        raise ValueError(
            "`regularised=True` needs `log_prob` (log p up to a constant: a function of one "
            "point or an (n,) array of its values at x)."
        )
    if callable(log_prob):
        out = jax.eval_shape(log_prob, x[0])
        if getattr(out, "shape", None) != ():
            raise ValueError(f"`log_prob` must map a point to a scalar, got shape {out.shape}.")
        values = evaluate_score(log_prob, x)
    else:
        values = _checks.as_array(log_prob, "log_prob", f"({x.shape[0]},)")
        if values.shape != (x.shape[0],):
            raise ValueError(
                f"`log_prob` must be a function or an array of shape ({x.shape[0]},), got "
                f"shape {values.shape}."
            )
    _checks.check_finite(values, "log_prob")
    if callable(score):
        laplacian = _positive_laplacian(score, x, True)
    elif callable(log_prob):
        laplacian = _positive_laplacian(log_prob, x, False)
    else:
        raise ValueError(
            "`regularised=True` needs the Laplacian of log p: give `score` or `log_prob` as a "
            "function."
        )
    _checks.check_finite(laplacian, "the Laplacian of log_prob")
    if strength is None:
        strength = 1.0 / out_size
    _checks.check_positive(strength, "strength")
    dtype = x.dtype
    return laplacian.astype(dtype), (-0.5 * strength * values).astype(dtype)


@cpu_jit(static_argnames=("out_size",))
def stein_thin_program(z, kernel, laplacian=None, entropic=None, *, out_size):
    """The greedy loop: step t picks argmin_i [k_p(x_i, x_i) + Delta^+_i] / 2 +
    sum_{j < t} k_p(x_{pi_j}, x_i) + t e_i, holding first + the running sum of the Stein
    kernel's columns (one (n,) column per step). `laplacian` and `entropic` are (n,) arrays,
    or None for zeros (plain Stein thinning: no pass over them)."""
    first = kernel.diag(z)
    if laplacian is not None:
        first = first + laplacian
    first = 0.5 * first
    # The points' coordinates are laid out once, an (n,) array each; a step evaluates one
    # column of k_p against them in one fused loop (`SteinKernel.column`), which also adds it.
    columns = kernel.columns(z)
    index = jnp.arange(z.shape[0], dtype=jnp.int32)

    def step(carry, t):
        current = carry  # first + the columns of the points picked so far
        if entropic is None:
            objective = current
        else:
            objective = current + t.astype(z.dtype) * entropic
        i = first_minimum(objective, index)
        return current + kernel.column(z[i], columns), i

    _, picked = jax.lax.scan(step, first, jnp.arange(1, out_size + 1))
    # default int indices (int64 under x64), as before
    picked = picked.astype(jax.dtypes.canonicalize_dtype(jnp.int64))
    finite = jnp.all(jnp.isfinite(z))
    # A non-finite score that jit let through would pick arbitrary points: -1 marks them.
    return jnp.where(finite, picked, -1)


def stein_thin(
    x: Float[Array, "n d"],
    score: Score,
    kernel: Kernel,
    *,
    out_size: int,
    regularised: bool = False,
    log_prob: Callable[[Float[Array, " d"]], Float[Array, ""]] | Float[Array, " n"] | None = None,
    strength: float | None = None,
    preconditioner: Float[Array, "d d"] | None = None,
) -> Int[Array, " s"]:
    """Greedy Stein thinning: `out_size` indices of x, with repeats, whose uniform weighting
    has a small KSD to the target p (Riabiz et al., 2022, Algorithm 1).

    Step t = 1, ..., s picks, with replacement,
      pi_t = argmin_i  k_p(x_i, x_i) / 2 + sum_{j < t} k_p(x_{pi_j}, x_i),
    the point that most lowers KSD^2 of the uniform weighting of the t points chosen so far.
    Ties go to the smallest index. The running sum is one (n,) vector, so each step costs one
    column of the Stein kernel (O(n d) time and memory) and the whole O(n s d).

    `regularised=True` is regularised Stein thinning (Benard, Staber & Da Veiga, 2023,
    Algorithm 2), against the pathologies of plain Stein thinning (points stuck in regions of
    low density, where the score is small): the objective becomes
      [k_p(x_i, x_i) + Delta^+ log p(x_i)] / 2 + sum_{j < t} k_p(x_{pi_j}, x_i)
      - (strength t / 2) log p(x_i),
    with the Laplacian correction Delta^+ log p = sum_j max(0, d^2 log p / dx_j^2) (by
    automatic differentiation of `score`, or of `log_prob` when the scores are an array) and
    the entropic term weighted by `strength` (the paper's lambda, default 1 / out_size).

    Args:
      x: (n, d) sample (e.g. MCMC output).
      score: grad log p, a function of one point or an (n, d) array of its values at x.
      kernel: the base kernel of the Stein kernel (IMQ in the paper), or a `SteinKernel` whose
        base and preconditioner are used.
      out_size: s, the number of points chosen (may exceed n: points repeat).
      regularised: the regularised variant; needs `log_prob`.
      log_prob: log p up to a constant, a function of one point or an (n,) array of values.
      strength: the entropic weight lambda > 0 of the regularised variant.
      preconditioner: optional (d, d) matrix M of the Stein kernel (`SteinKernel`).

    Returns:
      (out_size,) int indices into x, in the order chosen. With non-finite scores a ValueError
      is raised eagerly; inside jit the indices are all -1.

    References:
      Riabiz, Chen, Cockayne, Swietach, Niederer, Mackey & Oates, "Optimal thinning of MCMC
        output", JRSS-B 2022 (Algorithm 1).
      Benard, Staber & Da Veiga, "Kernel Stein Discrepancy thinning: a theoretical perspective
        of pathologies and a practical fix with regularization", NeurIPS 2023 (Algorithm 2).
    """
    z, stein = stein_problem(x, score, kernel, preconditioner)
    out_size = _checks.positive_int(out_size, "out_size")
    regularised = _checks.flag(regularised, "regularised")
    if regularised:
        laplacian, entropic = _regulariser(
            z[:, : z.shape[1] // 2], score, log_prob, strength, out_size
        )
    else:
        if strength is not None or log_prob is not None:
            raise ValueError("`log_prob` and `strength` apply only with `regularised=True`.")
        laplacian = entropic = None
    return stein_thin_program(z, stein, laplacian, entropic, out_size=out_size)
