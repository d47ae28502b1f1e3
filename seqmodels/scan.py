"""Linear recurrences h_t = a_t * h_{t-1} + b_t, solved sequentially, by associative scan, or in
chunks, with an analytic gradient.

Time is axis 0. `a` is either elementwise (broadcastable to `b`, any trailing shape, real or
complex) or a matrix transition of shape (L, ..., D, D) acting on b of shape (L, ..., D)
(h_t = a_t @ h_{t-1} + b_t, as DEER needs).

Solvers:
  "sequential": `lax.scan`, one step at a time. On a CPU it runs near the memory floor.
  "associative": a parallel prefix scan of the affine composition
      (a_1, b_1) . (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)
    (Blelloch, 1990; Martin & Cundy, 2018), log-depth, the form used by S5 and GateLoop; a
    radix-8 tree (`_associative`) rather than `lax.associative_scan`'s radix 2, so that each
    level is one fused pass over memory.
  "chunked": the sequence is cut into chunks; every chunk runs its own sequential scan from
    zero, all chunks at once (vectorised across chunks), which yields each chunk's summary
    (product of its transitions, end state); a short scan over the chunk summaries gives every
    chunk's incoming state; a second pass over the chunks, again all at once, writes the
    output. The depth is chunk_size + L / chunk_size instead of L.
  "auto": "sequential" on a CPU, "chunked" on accelerators.

Gradient: a custom VJP. With cotangent g of the output, the adjoint state obeys the reverse
recurrence lambda_t = g_t + a_{t+1}^T lambda_{t+1}, solved by the same solver; then
grad b_t = lambda_t, grad a_t = lambda_t h_{t-1}^T (elementwise: lambda_t * h_{t-1}),
grad h0 = a_0^T lambda_0. Nothing is differentiated through the scan itself, so the backward
pass costs one more recurrence.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["linear_recurrence"]

METHODS = ("auto", "sequential", "associative", "chunked")


def common_dtype(*arrays):
    """The dtype the inputs promote to under NumPy's rules (real and complex mix on purpose
    here, so this holds even under `jax_numpy_dtype_promotion="strict"`)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*arrays)


# Below float32 a long recurrence is wrong, and wrong differently per solver: in bfloat16 the
# sum of 4096 ones stops at 256 sequentially (256 + 1 rounds back to 256) and reaches 4032 by
# the tree. So float16 and bfloat16 inputs are solved in float32 (flax's `dtype` idea: the
# storage dtype is not the accumulation dtype) and the result is rounded once at the end.
_LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def compute_dtype(dtype):
    """The dtype a recurrence on `dtype` accumulates in: float32 for float16 and bfloat16,
    `dtype` itself otherwise (float32, float64, complex)."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in _LOW_PRECISION else dtype


def check_positive_int(value, name):
    """`value` as an int, or a ValueError naming `name` (bools, floats, arrays rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------- the two algebras
# Elementwise transitions act by multiplication, matrix transitions by matrix products.


def _act(a, h, matrix):
    return jnp.einsum("...ij,...j->...i", a, h) if matrix else a * h


def _compose(a_later, a_earlier, matrix):
    return jnp.einsum("...ij,...jk->...ik", a_later, a_earlier) if matrix else a_later * a_earlier


def _transpose(a, matrix):
    return jnp.swapaxes(a, -1, -2) if matrix else a


def _identity_like(a, matrix):
    if matrix:
        eye = jnp.eye(a.shape[-1], dtype=a.dtype)
        return jnp.broadcast_to(eye, a.shape)
    return jnp.ones_like(a)


# ---------------------------------------------------------------------------------- solvers


def _sequential(a, b, h0, matrix, reverse=False):
    def step(h, ab):
        a_t, b_t = ab
        h = _act(a_t, h, matrix) + b_t
        return h, h

    _, hs = jax.lax.scan(step, h0, (a, b), reverse=reverse)
    return hs


# Branching factor of the associative solver's tree. Each level's per-chunk chains are
# unrolled so that XLA fuses a level into one pass; beyond 8 the fused chains start to
# recompute their prefixes (measured: 16 and 32 are several times slower on a CPU).
_RADIX = 8


def _associative(a, b, h0, matrix, reverse=False):
    """A radix-8 tree of the affine composition: log-depth, each level one fused pass.

    Cut the sequence into chunks of 8; compose each chunk's 8 elements into its summary
    (product of transitions, end state from zero); solve the recurrence of the L / 8 summaries
    the same way (recursively, from h0), which gives every chunk's incoming state; then run
    each chunk's 8 steps from it. Depth 2 * 8 * log_8(L), work about 2L compositions. It is
    the Blelloch scan with fan-out 8 instead of 2: the same associative operator, in far fewer
    passes over memory than `lax.associative_scan`'s odd/even recursion.

    `reverse` (elementwise transitions only) runs backwards, h_t = a_t h_{t+1} + b_t with
    h_L = h0, without reversed copies of the inputs (the backward pass uses it).
    """
    n = a.shape[0]
    if n <= _RADIX:
        return _unrolled_steps(a, b, h0, matrix, axis=0, reverse=reverse)
    a3, b3 = _as_chunks(a, b, _RADIX, matrix)
    m = a3.shape[0]
    if matrix:
        prod, end = a3[:, 0], b3[:, 0]
        for t in range(1, _RADIX):
            prod, end = _compose(a3[:, t], prod, matrix), _act(a3[:, t], end, matrix) + b3[:, t]
    else:
        prod, end = _chunk_summaries(a3, b3, reverse)
    # the state after every chunk (in reverse: before it), and the state entering each chunk
    ends = _associative(prod, end, h0, matrix, reverse)
    if reverse:
        h_in = jnp.concatenate([ends[1:], h0[None]])
    else:
        h_in = jnp.concatenate([h0[None], ends[:-1]])
    if matrix:
        hs = _unrolled_steps(a3, b3, h_in, matrix, axis=1)
    else:
        hs = _masked_steps(a3, b3, h_in, reverse)
    return hs.reshape(m * _RADIX, *b.shape[1:])[:n]


# The elementwise tree's two passes are written for XLA:CPU's fusion emitters (measured at
# L = 2^16, B = 4, D = 256, float32; 2.7x faster than the straightforward form):
# - every chunk's summary is a reduction over the chunk axis, prod = prod_s a_s and
#   end = sum_s (prod_{r > s} a_r) b_s. Reductions are materialised; the plain chain of
#   products was fused into the next level, which then re-read copies of slices of `a`.
# - the steps from the incoming states are one elementwise pass over the (m, R, ...) output
#   (step s applied where t >= s). Stacking the R outputs instead (a concatenate) made one
#   loop per stacked piece, piece t re-reading steps 0..t: 4.5 passes over a and b, not one.


def _position(x3):
    """The position inside each chunk, broadcastable against the (m, R, ...) array x3."""
    return jax.lax.broadcasted_iota(jnp.int32, (1, x3.shape[1]) + (1,) * (x3.ndim - 2), 1)


def _chunk_summaries(a3, b3, reverse=False):
    """(prod_s a3[:, s], final state of each chunk from zero), elementwise transitions: the
    end state sum_s (prod_{r > s} a_r) b_s, or in reverse the start state
    sum_s (prod_{r < s} a_r) b_s."""
    t = _position(b3)
    weight = jnp.ones_like(a3)  # the product of the transitions applied after step t
    for r in range(a3.shape[1]):
        later = (t > r) if reverse else (t < r)
        weight = jnp.where(later, weight * a3[:, r : r + 1], weight)
    return jnp.prod(a3, axis=1), jnp.sum(weight * b3, axis=1)


def _masked_steps(a3, b3, h_in, reverse=False):
    """Every chunk's steps from its incoming state, h[:, t] = a3[:, t] h[:, t-1] + b3[:, t]
    (h[:, -1] = h_in; in reverse h[:, t] = a3[:, t] h[:, t+1] + b3[:, t], h[:, R] = h_in),
    elementwise transitions, as one pass over the output."""
    t = _position(b3)
    h = jnp.broadcast_to(h_in[:, None], b3.shape)
    radix = a3.shape[1]
    for s in reversed(range(radix)) if reverse else range(radix):
        reached = (t <= s) if reverse else (t >= s)
        h = jnp.where(reached, a3[:, s : s + 1] * h + b3[:, s : s + 1], h)
    return h


def _unrolled_steps(a, b, h, matrix, *, axis, reverse=False):
    """h_t = a_t h_{t-1} + b_t over a short `axis` (or backwards), unrolled."""
    outs = {}
    steps = range(a.shape[axis])
    for t in reversed(steps) if reverse else steps:
        h = _act(jnp.take(a, t, axis), h, matrix) + jnp.take(b, t, axis)
        outs[t] = h
    return jnp.stack([outs[t] for t in steps], axis)


def _as_chunks(a, b, size, matrix):
    """a and b as (num_chunks, size, ...), padded at the end with a = identity, b = 0, which
    leaves the state unchanged past the end (in reverse: h0 unchanged before the start)."""
    num_chunks = -(-a.shape[0] // size)
    pad = num_chunks * size - a.shape[0]
    if pad:
        a = jnp.concatenate([a, _identity_like(a[:pad], matrix)])
        b = jnp.concatenate([b, jnp.zeros((pad, *b.shape[1:]), b.dtype)])
    return a.reshape(num_chunks, size, *a.shape[1:]), b.reshape(num_chunks, size, *b.shape[1:])


def _chunked(a, b, h0, matrix, chunk_size, reverse=False):
    length = a.shape[0]
    # (num_chunks, chunk_size, ...), a free reshape: step t of every chunk is a[:, t]. (A
    # transposed (chunk_size, num_chunks, ...) layout for `lax.scan` cost two full copies in
    # and one out: 5.5x the memory floor on a CPU against 2.2x.)
    a_c, b_c = _as_chunks(a, b, chunk_size, matrix)
    num_chunks = a_c.shape[0]

    def position(t):  # in reverse the steps run from the chunk's end
        return chunk_size - 1 - t if reverse else t

    def step_t(x, t):
        return jax.lax.dynamic_index_in_dim(x, position(t), axis=1, keepdims=False)

    # Pass 1: each chunk's summary (product of its transitions, end state from zero).
    def summarise(t, carry):
        prod, h = carry
        a_t, b_t = step_t(a_c, t), step_t(b_c, t)
        return _compose(a_t, prod, matrix), _act(a_t, h, matrix) + b_t

    init = (_identity_like(a_c[:, 0], matrix), jnp.zeros_like(b_c[:, 0]))
    prods, ends = jax.lax.fori_loop(0, chunk_size, summarise, init)

    # Pass over the chunk summaries: the state entering each chunk.
    def carry_step(h, pe):
        prod, end = pe
        return _act(prod, h, matrix) + end, h

    _, h_in = jax.lax.scan(carry_step, h0, (prods, ends), reverse=reverse)

    # Pass 2: every chunk again, from its true incoming state, writing the output in place.
    def fix_up(t, carry):
        h, out = carry
        h = _act(step_t(a_c, t), h, matrix) + step_t(b_c, t)
        return h, jax.lax.dynamic_update_index_in_dim(out, h, position(t), axis=1)

    _, hs = jax.lax.fori_loop(0, chunk_size, fix_up, (h_in, jnp.zeros_like(b_c)))
    return hs.reshape(num_chunks * chunk_size, *b.shape[1:])[:length]


def _default_method():
    return "sequential" if jax.default_backend() == "cpu" else "chunked"


def _default_chunk(length):
    # About sqrt(L) balances the in-chunk depth against the pass over chunks.
    return int(max(1, min(length, 2 ** round(0.5 * max(length, 1).bit_length()))))


def _solve(a, b, h0, method, chunk_size, matrix, reverse=False):
    """The recurrence by `method`; `reverse` runs it backwards in time (h_t = a_t h_{t+1} + b_t,
    h_L = h0) without reversed copies, except for the matrix tree, which flips."""
    if method == "sequential":
        return _sequential(a, b, h0, matrix, reverse)
    if method == "associative":
        if reverse and matrix:
            return jnp.flip(_associative(jnp.flip(a, 0), jnp.flip(b, 0), h0, matrix), 0)
        return _associative(a, b, h0, matrix, reverse)
    return _chunked(a, b, h0, matrix, chunk_size, reverse)


# ------------------------------------------------------------------------- custom gradient


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _recurrence(a, b, h0, method, chunk_size, matrix, reverse):
    return _solve(a, b, h0, method, chunk_size, matrix, reverse)


def _recurrence_fwd(a, b, h0, method, chunk_size, matrix, reverse):
    h = _solve(a, b, h0, method, chunk_size, matrix, reverse)
    return h, (a, h, h0)


def _outer_or_mul(lam, h, matrix):
    return jnp.einsum("...i,...j->...ij", lam, h) if matrix else lam * h


def _previous_states(h, h0, reverse):
    """The state each step started from: h_{t-1} (h_{-1} = h0), or h_{t+1} in reverse."""
    if reverse:
        return jnp.concatenate([h[1:], h0[None]])
    return jnp.concatenate([h0[None], h[:-1]])


def _sequential_adjoint(a, h, h0, g, matrix, reverse):
    """The backward pass: the adjoint in one `lax.scan` against the recurrence's direction
    that emits only lambda, then grad a_t = lambda_t h_prev_t^T in one fused pass (emitting
    grad a from the scan as well, shifted by one step, cost a second output stream and a
    copy: 1.5x slower at L = 2^16). The step's neighbour transition (a_{t+1}, in reverse
    a_{t-1}) is carried from the previous scan step rather than read from a shifted copy."""

    def step(carry, inputs):
        lam_next, a_next = carry
        a_t, g_t = inputs
        lam_t = g_t + _act(_transpose(a_next, matrix), lam_next, matrix)
        return (lam_t, a_t), lam_t

    init = (jnp.zeros_like(h0), jnp.zeros_like(a[0]))
    (lam_first, a_first), lam = jax.lax.scan(step, init, (a, g), reverse=not reverse)
    grad_a = _outer_or_mul(lam, _previous_states(h, h0, reverse), matrix)
    return grad_a, lam, _act(_transpose(a_first, matrix), lam_first, matrix)


def _recurrence_bwd(method, chunk_size, matrix, reverse, res, g):
    a, h, h0 = res
    if method == "sequential":
        return _sequential_adjoint(a, h, h0, g, matrix, reverse)
    # lambda_t = g_t + a_{t+1}^T lambda_{t+1} (in reverse: a_{t-1}, lambda_{t-1}): the same
    # kind of recurrence in the other direction
    zero = jnp.zeros_like(a[:1])
    if reverse:
        neighbour = jnp.concatenate([zero, a[:-1]])
    else:
        neighbour = jnp.concatenate([a[1:], zero])
    lam = _solve(
        _transpose(neighbour, matrix),
        g,
        jnp.zeros_like(h0),
        method,
        chunk_size,
        matrix,
        not reverse,
    )
    grad_a = _outer_or_mul(lam, _previous_states(h, h0, reverse), matrix)
    first = -1 if reverse else 0  # the step that read h0
    grad_h0 = _act(_transpose(a[first], matrix), lam[first], matrix)
    return grad_a, lam, grad_h0


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


# ------------------------------------------------------------------------------ public API


def linear_recurrence(a, b, h0=None, *, method="auto", reverse=False, chunk_size=None):
    """Solves h_t = a_t * h_{t-1} + b_t for t = 0 .. L-1 (h_{-1} = h0), along axis 0.

    Args:
      a: transitions. Elementwise: any shape that broadcasts to `b`'s shape under NumPy's
        rules (aligned on the right: (L, 1, D) is a per-time, per-channel decay shared over
        a batch axis of b with shape (L, B, D); (D,) is time-invariant). Matrix: shape
        (L, ..., D, D) with b of shape (L, ..., D), recognised by `a.ndim == b.ndim + 1`.
      b: inputs, shape (L, ...). Real or complex.
      h0: initial state with b's trailing shape (b.shape[1:]); zeros when omitted.
      method: "auto", "sequential", "associative" or "chunked" (see the module docstring).
      reverse: run backwards in time, h_t = a_t * h_{t+1} + b_t with h_L = h0.
      chunk_size: chunk length for "chunked" (default about sqrt(L)).

    Returns:
      h of shape b.shape, in the common dtype of a, b and h0. float16 and bfloat16 inputs are
      solved in float32 by every method (so all methods agree, and agree with the float32
      solution of the same values) and the result is rounded to the input dtype once, at the
      end; the gradient is computed in float32 the same way. float32, float64 and complex
      inputs are solved in their own dtype.

    Raises:
      ValueError: an unknown `method`; `chunk_size` not an int in [1, L]; shapes that do not
        fit (see `prepare_recurrence`).

    The gradient with respect to a, b and h0 is one reverse recurrence (custom VJP), and the
    function composes with jit, vmap and grad.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    a_full, b, h0, matrix = prepare_recurrence(a, b, h0)
    if method == "auto":
        method = _default_method()
    length = b.shape[0]
    if chunk_size is None:
        chunk_size = _default_chunk(length)
    else:
        chunk_size = check_positive_int(chunk_size, "chunk_size")
        if chunk_size > length:
            raise ValueError(
                f"`chunk_size` ({chunk_size}) must be at most the sequence length L = {length}."
            )
    dtype = b.dtype
    work = compute_dtype(dtype)
    if work == dtype:  # float32, float64, complex: the very same program as always
        return _recurrence(a_full, b, h0, method, chunk_size, matrix, bool(reverse))
    a_full, b, h0 = a_full.astype(work), b.astype(work), h0.astype(work)
    h = _recurrence(a_full, b, h0, method, chunk_size, matrix, bool(reverse))
    return h.astype(dtype)


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
