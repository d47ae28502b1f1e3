"""Nonlinear recurrences h_t = f(h_{t-1}, x_t) solved for all t at once (DEER and relatives).

DEER (Lim, Zhu, Selfridge & Kasim, 2024, "Parallelizing non-linear sequential models over the
sequence length", ICLR) treats the whole trajectory h = (h_0, ..., h_{L-1}) as the unknown of
the residual r_t(h) = h_t - f(h_{t-1}, x_t) and runs Newton's method on it. Linearising f around
the current guess h^(i),

    h_t = J_t h_{t-1} + (f(h^(i)_{t-1}, x_t) - J_t h^(i)_{t-1}),   J_t = df/dh at h^(i)_{t-1},

is a linear recurrence with matrix transitions, solved by `linear_recurrence` (sequentially on a
CPU, in log depth or in chunks on an accelerator). Newton converges quadratically near the
solution, and in at most L iterations in any case (each iteration makes one more step exact).

Variants (Gonzalez, Warrington, Smith & Linderman, 2024, "Towards Scalable and Stable
Parallelization of Nonlinear RNNs", NeurIPS):

  quasi-DEER: J_t is replaced by its diagonal, so every iteration is an elementwise linear
    recurrence and the memory is O(L H) instead of O(L H^2). The diagonal is computed directly:
    cells in `seqmodels.cells` give it in closed form (`diag_jacobian`), and for any other step
    function it is taken one coordinate at a time by forward-mode products, so the (L, H, H)
    Jacobian is never formed.
  ELK (damping > 0): a Levenberg-Marquardt / trust-region step. Each iteration minimises
    sum_t ||h_t - J_t h_{t-1} - b_t||^2 + damping * sum_t ||h_t - h^(i)_t||^2, which is the
    posterior mean of a linear-Gaussian state-space model with unit process noise and
    "observations" h^(i)_t of variance 1 / damping: a Kalman filter and a Rauch-Tung-Striebel
    smoother. Both mean passes are linear recurrences (`linear_recurrence`); the covariance
    recursion, which does not depend on the data, runs as one `lax.scan`. Damping trades speed
    for stability on stiff or unstable (e.g. trained, chaotic) recurrences.

Gradients come from implicit differentiation at the solution, never from backpropagating
through the iterations: with cotangent g of the states, the adjoint obeys
lambda_t = g_t + J_{t+1}^T lambda_{t+1}, one more linear recurrence (Newton: with the full
Jacobians at the solution; quasi: solved by the same diagonal fixed-point iteration with exact
vector-Jacobian products, so memory stays O(L H)). Then grad x_t, grad params and grad h0 are
vector-Jacobian products of f with lambda_t, all time steps at once.

As in the reference implementation, each iterate is clipped to +-1e8 and its NaNs are reset to
zero before it is linearised, so a diverging iteration can recover instead of poisoning the
state; an iterate that had to be clipped or reset never counts as converged. The clipping is
internal: the states returned are the last iterate as computed, so a solve that diverged
returns its infs and NaNs (never the finite zeros of the reset), and non-convergence is always
reported in `DeerSolution.converged`, never silent.

Precision: below float32 the iteration cannot converge: a step evaluated in bfloat16 rounds
differently in different programs (XLA fuses and rounds where it likes), so the iterates chase
rounding noise for up to L iterations, and a long recurrence accumulated in bfloat16 is
inaccurate anyway. So float16 and bfloat16 are solved in float32: the states, the inputs and
the step's own floating-point leaves (an equinox cell's parameters) are cast to float32, and
the states are returned in their own dtype. `sequential_solve` does the same, so both give
the float32 solution of the same values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree, Shaped

from seqmodels._checks import compute_dtype
from seqmodels._elk import damped_step
from seqmodels._scan import METHODS as SOLVERS
from seqmodels._scan import linear_recurrence, resolve_solver

__all__ = ["DeerSolution", "deer_solve", "sequential_solve"]

METHODS = ("newton", "quasi")
_CLIP = 1e8


class DeerSolution(NamedTuple):
    """Result of `deer_solve`.

    Attributes:
      states: h_0 ... h_{L-1}, the state pytree with a leading time axis of length L.
      num_iters: the number of iterations run (int32 scalar).
      converged: whether the last iteration changed no state entry h by more than
        `tol * (1 + |h|)` (and no entry was infinite, NaN or beyond +-1e8); with damping,
        also that the residual h_t - step(h_{t-1}) was that small (a damped step can stall
        far from the solution). When False, the states are the last iterate: an
        approximation, or inf / NaN where it diverged.
    """

    states: Any
    num_iters: jax.Array
    converged: jax.Array


# ----------------------------------------------------------------------------- linearisation


def _generic_diag(f, h, x, consts):
    """diag(df/dh) at one time step, one coordinate at a time (H forward-mode products)."""
    size = h.shape[0]

    def entry(i):
        tangent = jnp.zeros_like(h).at[i].set(1)
        _, column = jax.jvp(lambda v: f(v, x, *consts), (h,), (tangent,))
        return column[i]

    return jax.lax.map(entry, jnp.arange(size))


def _linearise(fns, consts, hprev, xs, quasi):
    """The transitions A_t (full or diagonal Jacobians) and offsets b_t = f - A_t h_{t-1}."""
    f, diag = fns
    consts_f, consts_d = consts

    def value(h, x):
        return f(h, x, *consts_f)

    if quasi:
        fs = jax.vmap(value)(hprev, xs)
        if diag is None:
            a = jax.vmap(lambda h, x: _generic_diag(f, h, x, consts_f))(hprev, xs)
        else:
            a = jax.vmap(lambda h, x: diag(h, x, *consts_d))(hprev, xs)
        return a, fs - a * hprev

    def value_and_jac(h, x):
        # has_aux returns f itself alongside its Jacobian, from one forward-mode pass
        return jax.jacfwd(lambda v: (value(v, x), value(v, x)), has_aux=True)(h)

    jac, fs = jax.vmap(value_and_jac)(hprev, xs)
    return jac, fs - jnp.einsum("lij,lj->li", jac, hprev)


# ------------------------------------------------------------------------------- the solver


def _sanitise(h):
    """The iterate as the next iteration uses it: NaNs reset to zero, clipped to +-1e8."""
    return jnp.where(jnp.isnan(h), 0.0, jnp.clip(h, -_CLIP, _CLIP))


def _iterate(fns, consts, h0, xs, init, damping, options):
    method, max_iter, tol, damped, solver = options
    quasi = method == "quasi"

    def body(carry):
        # h is the previous iterate as computed; it is sanitised here rather than where it
        # was computed, so that the loop ends holding the raw iterate: a diverged solve then
        # returns its infs and NaNs, not the finite values they were reset to
        it, h, _ = carry
        h = _sanitise(h)
        hprev = jnp.concatenate([h0[None], h[:-1]])
        a, b = _linearise(fns, consts, hprev, xs, quasi)
        if damped:
            new = damped_step(a, b, h0, h, damping, quasi, solver)
        else:
            new = linear_recurrence(a, b, h0, method=solver)
        clean = jnp.all(jnp.abs(new) < _CLIP)  # False for NaN and overflow too
        # mixed absolute / relative change, so large states are judged at their precision; an
        # iterate that had to be clipped or reset is never a converged one
        safe = _sanitise(new)
        err = jnp.max(jnp.abs(safe - h) / (1.0 + jnp.abs(safe)))
        if damped:
            # A damped step can be tiny far from the solution (the trust region stalls along
            # an ill-conditioned direction: h' = 3h + x stalls near h = -1/2), so a small step
            # alone is no proof; the iterate's residual h_t - f(h_{t-1}) must be small too.
            # (An undamped step solves the linearisation exactly: a zero step means a zero
            # residual.)
            f_prev = b + (a * hprev if quasi else jnp.einsum("lij,lj->li", a, hprev))
            err = jnp.maximum(err, jnp.max(jnp.abs(h - f_prev) / (1.0 + jnp.abs(h))))
        err = jnp.where(clean, err, jnp.inf)
        return it + 1, new, err

    def cond(carry):
        it, _, err = carry
        return (it < max_iter) & ~(err <= tol)

    inf = jnp.asarray(jnp.inf, h0.dtype)
    it, h, err = jax.lax.while_loop(cond, body, (jnp.int32(0), init, inf))
    return h, it, err <= tol


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 6))
def _deer(fns, consts, h0, xs, init, damping, options):
    return _iterate(fns, consts, h0, xs, init, damping, options)


def _deer_fwd(fns, consts, h0, xs, init, damping, options):
    h, it, converged = _iterate(fns, consts, h0, xs, init, damping, options)
    return (h, it, converged), (consts, h0, xs, h, damping)


def _adjoint_quasi(fns, consts, hprev, xs, g, options):
    """lambda_t = g_t + J_{t+1}^T lambda_{t+1} by the diagonal fixed-point iteration.

    Each iteration solves lambda_t = g_t + D_{t+1} lambda_t+1 + (J_{t+1}^T - D_{t+1}) lambda'_{t+1}
    with lambda' the previous iterate: an elementwise reverse linear recurrence plus one
    vector-Jacobian product per time step (all at once). Exact after at most L iterations.
    """
    _, max_iter, tol, _, solver = options
    f, _ = fns
    consts_f, _ = consts
    diag, _ = _linearise(fns, consts, hprev, xs, True)
    # transitions into step t come from step t + 1
    d_next = jnp.concatenate([diag[1:], jnp.zeros_like(diag[:1])])
    x_next = jax.tree.map(lambda v: v[1:], xs)
    length = g.shape[0]

    def jt_times(lam):
        # J_{t+1}^T lam_{t+1} for t = 0 .. L-2, and 0 for t = L-1
        _, vjp = jax.vjp(
            lambda h: jax.vmap(lambda hh, x: f(hh, x, *consts_f))(h, x_next), hprev[1:]
        )
        return jnp.concatenate([vjp(lam[1:])[0], jnp.zeros_like(lam[:1])])

    def body(carry):
        it, lam, _ = carry
        lam_next = jnp.concatenate([lam[1:], jnp.zeros_like(lam[:1])])
        rhs = g + jt_times(lam) - d_next * lam_next
        new = linear_recurrence(d_next, rhs, jnp.zeros_like(g[0]), reverse=True, method=solver)
        # with d_next at t = L-1 zero, the reverse recurrence starts from lambda_{L-1} = g_{L-1}
        return it + 1, new, jnp.max(jnp.abs(new - lam))

    def cond(carry):
        it, _, err = carry
        # exact after L iterations, whatever the forward solve's (possibly damped) cap
        return (it < max(min(max_iter, length + 1), length)) & ~(err <= tol)

    inf = jnp.asarray(jnp.inf, g.dtype)
    _, lam, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), g, inf))
    return lam


def _deer_bwd(fns, options, res, cotangents):
    consts, h0, xs, h, damping = res
    g = cotangents[0]
    f, _ = fns
    consts_f, consts_d = consts
    solver = options[4]
    hprev = jnp.concatenate([h0[None], h[:-1]])
    if options[0] == "quasi":
        lam = _adjoint_quasi(fns, consts, hprev, xs, g, options)
    else:
        jac, _ = _linearise(fns, consts, hprev, xs, False)
        jac_next_t = jnp.swapaxes(jnp.concatenate([jac[1:], jnp.zeros_like(jac[:1])]), -1, -2)
        lam = linear_recurrence(jac_next_t, g, jnp.zeros_like(h0), reverse=True, method=solver)
    # All vector-Jacobian products of f at the solution, every time step at once.
    _, vjp = jax.vjp(
        lambda hp, x, c: jax.vmap(lambda hh, xx: f(hh, xx, *c), in_axes=(0, 0))(hp, x),
        hprev,
        xs,
        consts_f,
    )
    grad_hprev, grad_xs, grad_consts_f = vjp(lam)
    grad_consts_d = [_zero_cotangent(c) for c in consts_d]
    # the solution depends neither on the initial guess (same shape as h) nor on the damping
    # (which only shapes the path to it): zero cotangents
    return (
        (grad_consts_f, grad_consts_d),
        grad_hprev[0],
        grad_xs,
        jnp.zeros_like(h),
        jnp.zeros_like(damping),
    )


def _zero_cotangent(value):
    if jnp.issubdtype(jnp.result_type(value), jnp.inexact):
        return jnp.zeros_like(value)
    return np.zeros(jnp.shape(value), jax.dtypes.float0)


_deer.defvjp(_deer_fwd, _deer_bwd)


# ------------------------------------------------------------------------------ public API


def _low_precision(tree):
    return any(
        jnp.result_type(v) != compute_dtype(jnp.result_type(v))
        for v in jax.tree.leaves(tree)
        if isinstance(v, (jax.Array, np.ndarray))
    )


def _to_compute_dtype(tree):
    """Every float16 / bfloat16 array leaf of `tree` cast to float32 (other leaves as they are:
    a plain function, static fields, integers)."""

    def cast(v):
        if isinstance(v, (jax.Array, np.ndarray)):
            return v.astype(compute_dtype(v.dtype))
        return v

    return jax.tree.map(cast, tree)


def _as_dtypes_of(tree, like):
    return jax.tree.map(lambda v, w: v.astype(jnp.result_type(w)), tree, like)


def _flatten_step(step, h0, xs):
    """Flat-vector forms of `step` and its diagonal, closure-converted so that the parameters
    they close over (equinox modules, closures under `grad`) become explicit arguments."""
    h0_flat, unravel = ravel_pytree(h0)

    x0 = jax.tree.map(lambda v: v[0], xs)
    out = jax.eval_shape(step, h0, x0)
    if jax.tree.structure(out) != jax.tree.structure(h0) or any(
        o.shape != jnp.shape(s)
        for o, s in zip(jax.tree.leaves(out), jax.tree.leaves(h0), strict=True)
    ):
        raise TypeError(
            "`step(h, x)` must return a state with the same structure and shapes as `h0`; got "
            f"{jax.tree.map(lambda o: o.shape, out)} for h0 "
            f"{jax.tree.map(jnp.shape, h0)}."
        )

    def f(h, x):
        out = step(unravel(h), x)
        return ravel_pytree(out)[0].astype(h.dtype)

    f_conv, consts_f = jax.closure_convert(f, h0_flat, x0)
    diag_method = getattr(step, "diag_jacobian", None)
    if diag_method is None:
        diag_conv, consts_d = None, []
    else:

        def diag(h, x):
            return ravel_pytree(diag_method(unravel(h), x))[0].astype(h.dtype)

        diag_conv, consts_d = jax.closure_convert(diag, h0_flat, x0)
    return (f_conv, diag_conv), (consts_f, consts_d), h0_flat, unravel


def _check_xs(xs):
    leaves = jax.tree.leaves(xs)
    if not leaves:
        raise ValueError("`xs` must hold at least one array with a leading time axis.")
    lengths = {jnp.shape(v)[0] if jnp.ndim(v) else None for v in leaves}
    if None in lengths or len(lengths) != 1:
        raise ValueError(
            "every array in `xs` must have the same leading time axis, got shapes "
            f"{[jnp.shape(v) for v in leaves]}."
        )
    (length,) = lengths
    if length < 1:
        raise ValueError("`xs` must have a time axis of length >= 1.")
    return length


def deer_solve(
    step: Callable[[Any, Any], Any],
    h0: PyTree[Float[Array, "..."]],
    xs: PyTree[Shaped[Array, "L ..."]],
    *,
    method: str = "newton",
    max_iter: int | None = None,
    tol: float | None = None,
    damping: float | None = None,
    init: PyTree[Float[Array, "L ..."]] | None = None,
    solver: str = "auto",
) -> DeerSolution:
    """Solves h_t = step(h_{t-1}, x_t), t = 0 .. L-1 with h_{-1} = h0, for all t at once.

    Args:
      step: the cell, `step(h, x) -> h_next` on one time step; h is any pytree of arrays
        (for example (h, c) for an LSTM). Parameters it closes over (an equinox module's
        fields, values captured under `grad`) are differentiated through. If it has a
        `diag_jacobian(h, x)` method (the cells in `seqmodels.cells` do), quasi-DEER uses it.
      h0: the initial state, a pytree of arrays.
      xs: the inputs, a pytree of arrays with a common leading time axis of length L.
      method: "newton" (DEER; full Jacobians, O(L H^2) memory) or "quasi" (quasi-DEER;
        Jacobian diagonals, O(L H) memory).
      max_iter: iteration cap (default 1000; without damping never more than L + 1, since L
        undamped iterations already give the exact answer, while a damped step is not exact
        and may need more). Contractive cells need a handful of Newton iterations;
        cells whose Jacobians expand (spectral radius > 1 over long stretches, as trained
        RNNs can have) may need hundreds.
      tol: convergence when no state entry h moves by more than `tol * (1 + |h|)` in an
        iteration, and with damping when no residual h_t - step(h_{t-1}) is larger either
        (default 1e-5 in float32, float16 and bfloat16, 1e-10 in float64). A Python float.
      damping: None, or the ELK / Levenberg-Marquardt weight lambda > 0 of the trust region
        (see the module docstring). Larger is more stable and slower. It may be a traced value
        (under `jit`, `vmap` over dampings); a traced damping <= 0 cannot be refused, so it
        makes the states NaN and `converged` False. It gets no gradient: the solution does not
        depend on it.
      init: an initial guess of the states (same structure as the result), e.g. the previous
        training step's solution; zeros when omitted.
      solver: the `linear_recurrence` method for the inner linear solves ("auto" picks the
        sequential scan on a CPU and the chunked one on accelerators).

    Returns:
      `DeerSolution(states, num_iters, converged)`; `states` has h0's structure and dtype with
      a leading time axis of length L (float16 and bfloat16 states are iterated in float32).
      Check `converged`: when False, `states` is the last iterate, which holds inf or NaN
      where the iteration diverged (`seqmodels.RNN` turns it into NaN or an error).

    Gradients with respect to `h0`, `xs` and the step's parameters are by implicit
    differentiation at the solution (one adjoint linear recurrence; see the module docstring).
    Use under `jax.jit`.

    References:
      Lim et al. (2024), ICLR, "Parallelizing non-linear sequential models over the sequence
      length"; Gonzalez et al. (2024), NeurIPS, "Towards Scalable and Stable Parallelization of
      Nonlinear RNNs" (quasi-DEER, ELK).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if not callable(step):
        raise TypeError(f"`step` must be callable, got {type(step).__name__}.")
    length = _check_xs(xs)
    if _low_precision(h0):  # solved in float32, returned in the states' dtype
        sol = deer_solve(
            _to_compute_dtype(step),
            _to_compute_dtype(h0),
            _to_compute_dtype(xs),
            method=method,
            max_iter=max_iter,
            tol=tol,
            damping=damping,
            init=None if init is None else _to_compute_dtype(init),
            solver=solver,
        )
        return sol._replace(states=_as_dtypes_of(sol.states, h0))
    if max_iter is None:
        max_iter = 1000
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}.")
    if solver not in SOLVERS:
        raise ValueError(f"`solver` must be one of {SOLVERS}, got {solver!r}.")
    if isinstance(tol, jax.core.Tracer):
        raise TypeError(
            "`tol` must be a Python float: it is fixed when the solve is compiled, so it cannot "
            "be traced (pass it outside `jit`, or mark it static)."
        )
    if damping is not None and not isinstance(damping, jax.core.Tracer):
        if jnp.ndim(damping) != 0 or not float(damping) > 0:
            raise ValueError(f"`damping` must be None or a scalar > 0, got {damping!r}.")
    fns, consts, h0_flat, unravel = _flatten_step(step, h0, xs)
    if not jnp.issubdtype(h0_flat.dtype, jnp.floating):
        raise TypeError(f"`h0` must be floating point, got dtype {h0_flat.dtype}.")
    if damping is None:
        damping_arr = jnp.ones((), h0_flat.dtype)  # unused
    else:
        if jnp.ndim(damping) != 0:
            raise ValueError(f"`damping` must be a scalar, got shape {jnp.shape(damping)}.")
        damping_arr = jnp.asarray(damping).astype(h0_flat.dtype)
        if isinstance(damping, jax.core.Tracer):  # unchecked above: <= 0 poisons it visibly
            damping_arr = jnp.where(damping_arr > 0, damping_arr, jnp.nan)
    if tol is None:
        tol = 1e-10 if h0_flat.dtype == jnp.float64 else 1e-5
    if not float(tol) > 0:
        raise ValueError(f"`tol` must be > 0, got {tol!r}.")
    if init is None:
        init_flat = jnp.zeros((length, h0_flat.shape[0]), h0_flat.dtype)
    else:
        init_flat = jax.vmap(lambda s: ravel_pytree(s)[0])(init).astype(h0_flat.dtype)
        if init_flat.shape != (length, h0_flat.shape[0]):
            raise ValueError(
                f"`init` must have the states' shape, (L={length}, ...) per leaf; got "
                f"{jax.tree.map(jnp.shape, init)}."
            )
    # the solver name is mapped to its `Solver` once; every inner linear solve takes the object
    solver = resolve_solver(solver, None, length)
    # L undamped (Newton or quasi) iterations give the exact answer; a damped step does not
    cap = max_iter if damping is not None else min(max_iter, length + 1)
    options = (method, cap, float(tol), damping is not None, solver)
    h, it, converged = _deer(fns, consts, h0_flat, xs, init_flat, damping_arr, options)
    # the diagnostics carry no gradient; without this, their (float0) tangents would reach
    # integer and boolean ops downstream under `grad`
    it, converged = jax.lax.stop_gradient((it, converged))
    return DeerSolution(jax.vmap(unravel)(h), it, converged)


def sequential_solve(
    step: Callable[[Any, Any], Any],
    h0: PyTree[Float[Array, "..."]],
    xs: PyTree[Shaped[Array, "L ..."]],
) -> PyTree[Float[Array, "L ..."]]:
    """The reference: h_t = step(h_{t-1}, x_t) by `lax.scan`, states stacked over time.

    The states have h0's structure and dtype; as in `deer_solve`, float16 and bfloat16 are
    solved in float32 (states, inputs and the step's floating-point leaves) and rounded at the
    end."""
    _check_xs(xs)
    if _low_precision(h0):
        states = sequential_solve(
            _to_compute_dtype(step), _to_compute_dtype(h0), _to_compute_dtype(xs)
        )
        return _as_dtypes_of(states, h0)

    def body(h, x):
        h = step(h, x)
        return h, h

    return jax.lax.scan(body, h0, xs)[1]
