"""`RNN`: a recurrent cell run over a sequence by the solver its `solver` option names."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import PyTree

from seqmodels._deer import DeerSolution, deer_solve, sequential_solve

__all__ = ["RNN"]


def _solve_sequential(rnn, xs, h0, init):
    # one pass of `lax.scan` (an initial guess has nothing to do), converged by construction
    del init
    states = sequential_solve(rnn.cell, h0, xs)
    return DeerSolution(states, jnp.int32(1), jnp.bool_(True))


def _solve_deer(method, rnn, xs, h0, init):
    return deer_solve(
        rnn.cell,
        h0,
        xs,
        method=method,
        damping=rnn.damping,
        max_iter=rnn.max_iter,
        tol=rnn.tol,
        init=init,
    )


# `RNN(solver=...)`: each name mapped to its solve, `solve(rnn, xs, h0, init) -> DeerSolution`.
_SOLVES = {
    "sequential": _solve_sequential,
    "newton": functools.partial(_solve_deer, "newton"),
    "quasi": functools.partial(_solve_deer, "quasi"),
}
ON_FAILURE = ("nan", "raise")


class RNN(eqx.Module):
    """A cell run over a sequence, by the solver chosen with `solver`:

    "sequential" (`lax.scan`), "newton" (DEER) or "quasi" (quasi-DEER); `damping` (ELK, with
    either), `max_iter` and `tol` go to `deer_solve`. All give the same states (up to the DEER
    tolerance) and the same gradients, in the dtype of the cell's state (float16 and bfloat16
    are solved in float32; see `deer_solve`).

    A DEER solve can fail where the sequential scan would not: it may stop at `max_iter`, or
    diverge. Calling the RNN never returns such states as if they were the answer: with
    `on_failure="nan"` (the default) the states of a solve that did not converge are all NaN
    (per sequence under `vmap`), and so are the gradients through them; with
    `on_failure="raise"` the call raises (an `equinox` runtime error, which works under `jit`
    too). `RNN.solve` returns the solution with its `converged` flag and the last iterate,
    untouched, for those who want it. (The sequential scan's states are never replaced: a
    diverging cell gives its infs there.)

    Args:
      cell: the step, `cell(h, x) -> h_next` (a cell from `seqmodels.cells`, or any module).
      solver: "sequential", "newton" or "quasi"; each name is mapped once to its solve.
      damping, max_iter, tol: passed to `deer_solve` (not used by "sequential").
      on_failure: "nan" or "raise", what a call does with a solve that did not converge.
    """

    cell: eqx.Module
    solver: str = eqx.field(static=True)
    damping: float | None = eqx.field(static=True)
    max_iter: int | None = eqx.field(static=True)
    tol: float | None = eqx.field(static=True)
    on_failure: str = eqx.field(static=True)

    def __init__(
        self,
        cell,
        *,
        solver="sequential",
        damping=None,
        max_iter=None,
        tol=None,
        on_failure="nan",
    ):
        if solver not in _SOLVES:
            raise ValueError(f"`solver` must be one of {tuple(_SOLVES)}, got {solver!r}.")
        if on_failure not in ON_FAILURE:
            raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}.")
        self.cell = cell
        self.solver = solver
        self.damping = damping
        self.max_iter = max_iter
        self.tol = tol
        self.on_failure = on_failure

    def solve(
        self, xs: PyTree, h0: PyTree | None = None, *, init: PyTree | None = None
    ) -> DeerSolution:
        """All states as a `DeerSolution` (for "sequential": one pass, converged), as the
        solver left them: check `converged`."""
        if h0 is None:
            h0 = self.cell.init_state()
        return _SOLVES[self.solver](self, xs, h0, init)

    def __call__(
        self, xs: PyTree, h0: PyTree | None = None, *, init: PyTree | None = None
    ) -> PyTree:
        """The states h_0 ... h_{L-1}, with a leading time axis: all NaN (or an error, with
        `on_failure="raise"`) if a DEER solve did not converge."""
        sol = self.solve(xs, h0, init=init)
        if self.solver == "sequential":
            return sol.states
        if self.on_failure == "raise":
            return eqx.error_if(
                sol.states,
                ~sol.converged,
                f"RNN(solver={self.solver!r}): the DEER iteration did not converge (diverged, "
                "or needs more than `max_iter` iterations); RNN.solve returns the last iterate.",
            )
        # a product rather than a select, so that gradients through an unconverged solve are
        # NaN as well (a select would give them silently as zeros)
        poison = jnp.where(sol.converged, 1.0, jnp.nan)
        return jax.tree.map(lambda s: s * poison.astype(s.dtype), sol.states)
