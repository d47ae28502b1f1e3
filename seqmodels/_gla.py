"""The four forms of gated linear attention, the core shared by GateLoop, RetNet and linear
attention, and by its sequence-parallel form (`seqmodels.parallel`).

With queries q_t, keys k_t (dimension K), values v_t (dimension V) and gates a_t (dimension K,
real or complex, |a_t| <= 1), the state is the K x V matrix

    H_t = diag(a_t) H_{t-1} + k_t^T v_t,      y_t = q_t H_t,

so that y_t = sum_{s <= t} (q_t . (prod_{r=s+1}^{t} a_r) . k_s) v_s. Four equal ways to compute
it (Katsch, 2023, GateLoop, Sections 3.1-3.3; Sun et al., 2023, RetNet, Section 2.2):

  `recurrent_form`: one step at a time (`lax.scan`), O(L K V) time, O(K V) state.
  `parallel_form`: all states at once by `linear_recurrence` (associative scan), O(L K V) memory.
  `attention_form`: the surrogate attention matrix M_ts = sum_i q_ti k_si prod_{r=s+1}^t a_ri
    (s <= t), O(L^2 K) time and memory.
  `chunkwise_form`: attention inside chunks, the recurrence across chunk boundaries.

Gates enter through their logarithms (`log_a`), so decay products are exp of differences of
cumulative sums, which never overflow inside a chunk (flash-linear-attention's lesson).

Each form takes one head, `form(q, k, v, log_a) -> y` (q, k, log_a of shape (L, K), v of shape
(L, V), already in their compute dtype); `chunkwise_form` also takes its `chunk_size`.
`resolve_form` maps the public `mode` names to them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqmodels._checks import common_dtype
from seqmodels._scan import linear_recurrence

__all__ = [
    "MODES",
    "attention_form",
    "check_mode",
    "check_qkv",
    "chunkwise_form",
    "decay_matrix",
    "outer",
    "parallel_form",
    "recurrent_form",
    "resolve_form",
]


def outer(k, v):
    """k^T v per time step: (..., K) and (..., V) to (..., K, V)."""
    return k[..., :, None] * v[..., None, :]


def recurrent_form(q, k, v, log_a):
    def step(h, inputs):
        q_t, k_t, v_t, la_t = inputs
        h = jnp.exp(la_t)[:, None] * h + outer(k_t, v_t)
        return h, q_t @ h

    h0 = jnp.zeros((k.shape[-1], v.shape[-1]), common_dtype(q, k, v, log_a))
    return jax.lax.scan(step, h0, (q, k, v, log_a))[1]


def parallel_form(q, k, v, log_a):
    states = linear_recurrence(
        jnp.exp(log_a)[:, :, None],
        outer(k, v).astype(common_dtype(k, v, log_a)),
        method="associative",
    )
    return jnp.einsum("tk,tkv->tv", q, states)


def decay_matrix(log_a_rows, log_a_cols):
    """exp(c_t - c_s) per key dimension for s <= t, zero above the diagonal: (T, S, K)."""
    c_rows = jnp.cumsum(log_a_rows, axis=0)
    c_cols = jnp.cumsum(log_a_cols, axis=0)
    diff = c_rows[:, None, :] - c_cols[None, :, :]
    causal = jnp.tril(jnp.ones((c_rows.shape[0], c_cols.shape[0]), bool))[:, :, None]
    # mask before exponentiating: above the diagonal the differences grow, not decay
    return jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)


def attention_form(q, k, v, log_a):
    scores = jnp.einsum("tk,sk,tsk->ts", q, k, decay_matrix(log_a, log_a))
    return scores @ v


def chunkwise_form(q, k, v, log_a, chunk_size):
    length = q.shape[0]
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length
    if pad:
        zeros = lambda x: jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
        q, k, v, log_a = zeros(q), zeros(k), zeros(v), zeros(log_a)
    split = lambda x: x.reshape(num_chunks, chunk_size, *x.shape[1:])
    qc, kc, vc, lac = split(q), split(k), split(v), split(log_a)
    cum = jnp.cumsum(lac, axis=1)  # within-chunk cumulative log gates, (C, T, K)
    total = cum[:, -1]  # log of each chunk's whole decay, (C, K)

    # Inside each chunk: the attention form.
    intra = jax.vmap(attention_form)(qc, kc, vc, lac)
    # Each chunk's own contribution to the state at its end: sum_s exp(C_end - c_s) k_s^T v_s.
    k_to_end = kc * jnp.exp(total[:, None, :] - cum)
    chunk_states = jnp.einsum("ctk,ctv->ckv", k_to_end, vc)
    # The state entering each chunk: a recurrence over chunks, H_c = e^{total_c} H_{c-1} + S_c.
    ends = linear_recurrence(
        jnp.exp(total)[:, :, None],
        chunk_states.astype(common_dtype(chunk_states, total)),
        method="sequential",
    )
    incoming = jnp.concatenate([jnp.zeros_like(ends[:1]), ends[:-1]])
    inter = jnp.einsum("ctk,ckv->ctv", qc * jnp.exp(cum), incoming)
    out = (intra + inter).reshape(num_chunks * chunk_size, -1)
    return out[:length]


# The public `mode` names, each mapped to a factory of its form from the chunk size.
_FORMS: dict[str, Callable[[int], Callable]] = {
    "recurrent": lambda chunk_size: recurrent_form,
    "parallel": lambda chunk_size: parallel_form,
    "attention": lambda chunk_size: attention_form,
    "chunkwise": lambda chunk_size: functools.partial(chunkwise_form, chunk_size=chunk_size),
}
MODES = tuple(_FORMS)


def check_mode(mode):
    """A ValueError unless `mode` is one of `MODES` or a form (a callable)."""
    if not callable(mode) and mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")


def resolve_form(mode: str | Callable, chunk_size: int) -> Callable:
    """The form `mode` names, `form(q, k, v, log_a) -> y`, with `chunk_size` bound where it is
    used (a callable `mode` passes through)."""
    check_mode(mode)
    if callable(mode):
        return mode
    return _FORMS[mode](chunk_size)


def check_qkv(q, k, v, log_a):
    shapes = tuple(jnp.shape(x) for x in (q, k, v, log_a))
    if (
        len(shapes[0]) != 2
        or len(shapes[2]) != 2
        or shapes[1] != shapes[0]
        or shapes[3] != shapes[0]
        or shapes[2][0] != shapes[0][0]
    ):
        raise ValueError(
            "expected q, k, log_a of one shape (L, K) and v of shape (L, V) (use jax.vmap over "
            f"a batch); got {shapes[0]}, {shapes[1]}, {shapes[3]}, {shapes[2]}."
        )
    if shapes[0][0] < 1:
        raise ValueError(f"the sequence must have length L >= 1, got q of shape {shapes[0]}.")
