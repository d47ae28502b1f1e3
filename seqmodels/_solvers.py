"""The three linear-recurrence solvers, each a `Solver` with its forward and backward pass.

A solver runs h_t = a_t h_{t-1} + b_t for t = 0 .. L-1 from h_{-1} = h0 (in `reverse`,
h_t = a_t h_{t+1} + b_t from h_L = h0), on inputs already checked and broadcast by
`_scan.prepare_recurrence`; `matrix` says whether the transitions are matrices (`_affine`).

  `Sequential`: `lax.scan`, one step at a time. On a CPU it runs near the memory floor.
  `Associative`: a parallel prefix scan of the affine composition
      (a_1, b_1) . (a_2, b_2) = (a_2 a_1, a_2 b_1 + b_2)
    (Blelloch, 1990; Martin & Cundy, 2018), log-depth, the form used by S5 and GateLoop; a
    radix-8 tree (`_associative`) rather than `lax.associative_scan`'s radix 2, so that each
    level is one fused pass over memory.
  `Chunked(chunk_size)`: the sequence is cut into chunks; every chunk runs its own sequential
    scan from zero, all chunks at once (vectorised across chunks), which yields each chunk's
    summary (product of its transitions, end state); a short scan over the chunk summaries
    gives every chunk's incoming state; a second pass over the chunks, again all at once,
    writes the output. The depth is chunk_size + L / chunk_size instead of L.

Backward pass (`Solver.adjoint`): with cotangent g of the output, the adjoint state obeys the
reverse recurrence lambda_t = g_t + a_{t+1}^T lambda_{t+1}, solved by the same solver; then
grad b_t = lambda_t, grad a_t = lambda_t h_{t-1}^T (elementwise: lambda_t * h_{t-1}),
grad h0 = a_0^T lambda_0. `Sequential` has its own, fused form of it.

Solvers are frozen dataclasses: hashable, so they pass as static arguments of `jit` and
`custom_vjp`, with their hyperparameters (the chunk size) fixed at construction.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from seqmodels._affine import act, compose, identity_like, outer_or_mul, transpose

__all__ = ["Associative", "Chunked", "Sequential", "Solver"]


def _sequential(a, b, h0, matrix, reverse=False):
    def step(h, ab):
        a_t, b_t = ab
        h = act(a_t, h, matrix) + b_t
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
            prod, end = compose(a3[:, t], prod, matrix), act(a3[:, t], end, matrix) + b3[:, t]
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
        h = act(jnp.take(a, t, axis), h, matrix) + jnp.take(b, t, axis)
        outs[t] = h
    return jnp.stack([outs[t] for t in steps], axis)


def _as_chunks(a, b, size, matrix):
    """a and b as (num_chunks, size, ...), padded at the end with a = identity, b = 0, which
    leaves the state unchanged past the end (in reverse: h0 unchanged before the start)."""
    num_chunks = -(-a.shape[0] // size)
    pad = num_chunks * size - a.shape[0]
    if pad:
        a = jnp.concatenate([a, identity_like(a[:pad], matrix)])
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
        return compose(a_t, prod, matrix), act(a_t, h, matrix) + b_t

    init = (identity_like(a_c[:, 0], matrix), jnp.zeros_like(b_c[:, 0]))
    prods, ends = jax.lax.fori_loop(0, chunk_size, summarise, init)

    # Pass over the chunk summaries: the state entering each chunk.
    def carry_step(h, pe):
        prod, end = pe
        return act(prod, h, matrix) + end, h

    _, h_in = jax.lax.scan(carry_step, h0, (prods, ends), reverse=reverse)

    # Pass 2: every chunk again, from its true incoming state, writing the output in place.
    def fix_up(t, carry):
        h, out = carry
        h = act(step_t(a_c, t), h, matrix) + step_t(b_c, t)
        return h, jax.lax.dynamic_update_index_in_dim(out, h, position(t), axis=1)

    _, hs = jax.lax.fori_loop(0, chunk_size, fix_up, (h_in, jnp.zeros_like(b_c)))
    return hs.reshape(num_chunks * chunk_size, *b.shape[1:])[:length]


# ----------------------------------------------------------------------------- adjoints


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
        lam_t = g_t + act(transpose(a_next, matrix), lam_next, matrix)
        return (lam_t, a_t), lam_t

    init = (jnp.zeros_like(h0), jnp.zeros_like(a[0]))
    (lam_first, a_first), lam = jax.lax.scan(step, init, (a, g), reverse=not reverse)
    grad_a = outer_or_mul(lam, _previous_states(h, h0, reverse), matrix)
    return grad_a, lam, act(transpose(a_first, matrix), lam_first, matrix)


# ------------------------------------------------------------------------------- the solvers


@dataclasses.dataclass(frozen=True)
class Solver:
    """A linear-recurrence solver: `solve` is the forward pass, `adjoint` the backward one."""

    def solve(self, a, b, h0, matrix, reverse=False):
        """h_t = a_t h_{t-1} + b_t (h_{-1} = h0), or in reverse h_t = a_t h_{t+1} + b_t
        (h_L = h0), along axis 0; h of b's shape."""
        raise NotImplementedError

    def adjoint(self, a, h, h0, g, matrix, reverse):
        """(grad a, grad b, grad h0) from the output h and its cotangent g.

        lambda_t = g_t + a_{t+1}^T lambda_{t+1} (in reverse: a_{t-1}, lambda_{t-1}) is the
        same kind of recurrence in the other direction, solved by this same solver."""
        zero = jnp.zeros_like(a[:1])
        if reverse:
            neighbour = jnp.concatenate([zero, a[:-1]])
        else:
            neighbour = jnp.concatenate([a[1:], zero])
        lam = self.solve(
            transpose(neighbour, matrix),
            g,
            jnp.zeros_like(h0),
            matrix,
            not reverse,
        )
        grad_a = outer_or_mul(lam, _previous_states(h, h0, reverse), matrix)
        first = -1 if reverse else 0  # the step that read h0
        grad_h0 = act(transpose(a[first], matrix), lam[first], matrix)
        return grad_a, lam, grad_h0


@dataclasses.dataclass(frozen=True)
class Sequential(Solver):
    """`lax.scan`, one step at a time; the backward pass is one fused reverse scan."""

    def solve(self, a, b, h0, matrix, reverse=False):
        return _sequential(a, b, h0, matrix, reverse)

    def adjoint(self, a, h, h0, g, matrix, reverse):
        return _sequential_adjoint(a, h, h0, g, matrix, reverse)


@dataclasses.dataclass(frozen=True)
class Associative(Solver):
    """The radix-8 tree of the affine composition (log depth)."""

    def solve(self, a, b, h0, matrix, reverse=False):
        # the matrix tree runs forwards only: a reverse matrix recurrence is flipped
        if reverse and matrix:
            return jnp.flip(_associative(jnp.flip(a, 0), jnp.flip(b, 0), h0, matrix), 0)
        return _associative(a, b, h0, matrix, reverse)


@dataclasses.dataclass(frozen=True)
class Chunked(Solver):
    """Chunks of `chunk_size` steps solved side by side, joined by a scan over the chunks."""

    chunk_size: int

    def solve(self, a, b, h0, matrix, reverse=False):
        return _chunked(a, b, h0, matrix, self.chunk_size, reverse)
