"""Linear recurrences h_t = a_t * h_{t-1} + b_t: checks, the choice of solver, the gradient.

Time is axis 0 (`axis=` moves it there and back; the solvers only ever see time first). `a`
is either elementwise (broadcastable to `b`, any trailing shape, real or complex) or a matrix
transition of shape (L, ..., D, D) acting on b of shape (L, ..., D) (h_t = a_t @ h_{t-1} + b_t,
as DEER needs).

`method` names a solver (`_solvers`); the name is mapped to a `Solver` object once, here, and
everything below takes the object:

  "sequential" -> `Sequential()`, "associative" -> `Associative()`,
  "chunked" -> `Chunked(chunk_size)` (chunk_size about sqrt(L) by default),
  "auto" -> "sequential" on a CPU, "chunked" on accelerators.

Gradient: a custom VJP, the solver's `adjoint` (one reverse recurrence). Nothing is
differentiated through the scan itself, so the backward pass costs one more recurrence.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Inexact

from seqmodels._checks import check_positive_int, common_dtype, compute_dtype
from seqmodels._solvers import Associative, Chunked, Sequential, Solver

__all__ = ["METHODS", "check_method", "linear_recurrence", "prepare_recurrence", "resolve_solver"]

# The public names of the solvers, each mapped to a factory of its `Solver` from the chunk size.
_SOLVERS: dict[str, Callable[[int], Solver]] = {
    "sequential": lambda chunk_size: Sequential(),
    "associative": lambda chunk_size: Associative(),
    "chunked": Chunked,
}
METHODS = ("auto", *_SOLVERS)


def prepare_recurrence(a, b, h0):
    """Checks and normalises the inputs of a linear recurrence: `a` broadcast to b's shape
    (elementwise) or to (L, ..., D, D) (matrix), all three in their common dtype, h0 zeros when
    None. Returns (a, b, h0, matrix)."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    if b.ndim < 1 or b.shape[0] < 1:
        raise ValueError(f"`b` must have a time axis of length >= 1, got shape {b.shape}.")
    matrix = a.ndim == b.ndim + 1
    if matrix:
        d = b.shape[-1]
        if a.shape[-2:] != (d, d) or a.shape[0] != b.shape[0]:
            raise ValueError(
                f"matrix transitions `a` must have shape (L, ..., {d}, {d}) for `b` of shape "
                f"{b.shape}, got {a.shape}."
            )
        batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-1])
        a = jnp.broadcast_to(a, (*batch, d, d))
        b = jnp.broadcast_to(b, (*batch, d))
    else:
        try:
            shape = jnp.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ValueError(
                f"`a` (shape {a.shape}) must broadcast against `b` (shape {b.shape})."
            ) from None
        if shape != b.shape:
            raise ValueError(
                f"`a` (shape {a.shape}) must broadcast to `b`'s shape {b.shape}, not beyond."
            )
    dtype = common_dtype(a, b) if h0 is None else common_dtype(a, b, h0)
    state_shape = b.shape[1:]
    if h0 is None:
        h0 = jnp.zeros_like(b[0], dtype)  # (zeros_like keeps b's device-varying type in shard_map)
    else:
        h0 = jnp.asarray(h0)
        if h0.shape != state_shape:
            raise ValueError(f"`h0` must have shape {state_shape}, got {h0.shape}.")
    a_full = a if matrix else jnp.broadcast_to(a, b.shape)
    return a_full.astype(dtype), b.astype(dtype), h0.astype(dtype), matrix


def _default_method():
    return "sequential" if jax.default_backend() == "cpu" else "chunked"


def _default_chunk(length):
    # About sqrt(L) balances the in-chunk depth against the pass over chunks.
    return int(max(1, min(length, 2 ** round(0.5 * max(length, 1).bit_length()))))


def check_method(method):
    """A ValueError unless `method` is a solver name or a `Solver`."""
    if not isinstance(method, Solver) and method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")


def resolve_solver(method: str | Solver, chunk_size: int | None, length: int) -> Solver:
    """The `Solver` that `method` names, for a sequence of `length` steps (a `Solver` passes
    through). `chunk_size`, if given, must be an int in [1, length]; by default about
    sqrt(length)."""
    check_method(method)
    if chunk_size is None:
        chunk_size = _default_chunk(length)
    else:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        if chunk_size > length:
            raise ValueError(
                f"`chunk_size` ({chunk_size}) must be at most the sequence length L = {length}."
            )
    if isinstance(method, Solver):
        return method
    if method == "auto":
        method = _default_method()
    return _SOLVERS[method](chunk_size)


# ------------------------------------------------------------------------- custom gradient


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _recurrence(a, b, h0, solver, matrix, reverse):
    return solver.solve(a, b, h0, matrix, reverse)


def _recurrence_fwd(a, b, h0, solver, matrix, reverse):
    h = solver.solve(a, b, h0, matrix, reverse)
    return h, (a, h, h0)


def _recurrence_bwd(solver, matrix, reverse, res, g):
    a, h, h0 = res
    return solver.adjoint(a, h, h0, g, matrix, reverse)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _time_first(a, b, axis):
    """(a, b) with the time `axis` of b moved to the front, and the axis normalised. An
    elementwise `a` is first given b's rank (ones on the left, as broadcasting would) so that
    its axes line up with b's; a matrix `a` (one more axis) lines up on the left."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    if isinstance(axis, bool) or not isinstance(axis, int) or not -b.ndim <= axis < b.ndim:
        raise ValueError(
            f"`axis` must be an int in [-{b.ndim}, {b.ndim}) for `b` of shape "
            f"{b.shape}, got {axis!r}."
        )
    axis %= b.ndim
    if a.ndim == b.ndim + 1:
        if axis == b.ndim - 1:
            raise ValueError(
                f"`axis` {axis} is the state axis of a matrix recurrence (b of shape {b.shape}); "
                "time must come before it."
            )
    elif a.ndim <= b.ndim:
        a = a.reshape((1,) * (b.ndim - a.ndim) + a.shape)
    return jnp.moveaxis(a, axis, 0), jnp.moveaxis(b, axis, 0), axis


# ------------------------------------------------------------------------------ public API


def linear_recurrence(
    a: Inexact[ArrayLike, " L *state"],
    b: Inexact[ArrayLike, " L *state"],
    h0: Inexact[ArrayLike, "*state"] | None = None,
    *,
    method: str | Solver = "auto",
    reverse: bool = False,
    chunk_size: int | None = None,
    axis: int = 0,
) -> Inexact[Array, " L *state"]:
    """Solves h_t = a_t * h_{t-1} + b_t for t = 0 .. L-1 (h_{-1} = h0), along `axis` (0).

    Time is axis 0 unless `axis` says otherwise. A batch-first array (B, L, ...) passed
    without `axis=1` is solved along its batch axis, as if the B sequences were B time steps
    of one: the shapes fit, so there is no error, and the answer is silently wrong. Pass
    `axis=1` (or `jax.vmap` over the batch).

    Args:
      a: transitions. Elementwise: any shape that broadcasts to `b`'s shape under NumPy's
        rules (aligned on the right: (L, 1, D) is a per-time, per-channel decay shared over
        a batch axis of b with shape (L, B, D); (D,) is time-invariant). Matrix: shape
        (L, ..., D, D) with b of shape (L, ..., D), recognised by `a.ndim == b.ndim + 1`.
      b: inputs, shape (L, ...). Real or complex.
      h0: initial state with b's trailing shape (b.shape[1:]); zeros when omitted.
      method: "auto", "sequential", "associative" or "chunked" (see the module docstring).
        A `Solver` object, as `deer_solve` passes once it has mapped its `solver` name, is
        used as it is.
      reverse: run backwards in time, h_t = a_t * h_{t+1} + b_t with h_L = h0.
      chunk_size: chunk length for "chunked" (default about sqrt(L)).
      axis: the time axis of `b` (negative counts from the end); `a`'s axes align with b's
        from the right (elementwise) or from the left (matrix: a (..., L, ..., D, D)), and
        `h0` has b's shape without the time axis. A matrix recurrence's time axis cannot be
        b's last (state) axis.

    Returns:
      h of shape b.shape, in the common dtype of a, b and h0. float16 and bfloat16 inputs are
      solved in float32 by every method (so all methods agree, and agree with the float32
      solution of the same values) and the result is rounded to the input dtype once, at the
      end; the gradient is computed in float32 the same way. float32, float64 and complex
      inputs are solved in their own dtype.

    Raises:
      ValueError: an unknown `method`; `chunk_size` not an int in [1, L]; an `axis` out of
        range; shapes that do not fit (see `prepare_recurrence`).

    The gradient with respect to a, b and h0 is one reverse recurrence (custom VJP), and the
    function composes with jit, vmap and grad.
    """
    check_method(method)
    if axis != 0:
        a, b, axis = _time_first(a, b, axis)
        h = linear_recurrence(a, b, h0, method=method, reverse=reverse, chunk_size=chunk_size)
        return jnp.moveaxis(h, 0, axis)
    a_full, b, h0, matrix = prepare_recurrence(a, b, h0)
    solver = resolve_solver(method, chunk_size, b.shape[0])
    dtype = b.dtype
    work = compute_dtype(dtype)
    if work == dtype:  # float32, float64, complex: the very same program as always
        return _recurrence(a_full, b, h0, solver, matrix, bool(reverse))
    a_full, b, h0 = a_full.astype(work), b.astype(work), h0.astype(work)
    h = _recurrence(a_full, b, h0, solver, matrix, bool(reverse))
    return h.astype(dtype)
