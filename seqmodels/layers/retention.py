"""Gated linear attention: the recurrence shared by GateLoop, RetNet and linear attention.

With queries q_t, keys k_t (dimension K), values v_t (dimension V) and gates a_t (dimension K,
real or complex, |a_t| <= 1), the state is the K x V matrix

    H_t = diag(a_t) H_{t-1} + k_t^T v_t,      y_t = q_t H_t,

so that y_t = sum_{s <= t} (q_t . (prod_{r=s+1}^{t} a_r) . k_s) v_s. Four equal ways to compute
it (Katsch, 2023, GateLoop, Sections 3.1-3.3; Sun et al., 2023, RetNet, Section 2.2):

  "recurrent": one step at a time (`lax.scan`), O(L K V) time, O(K V) state.
  "parallel": all states at once by `linear_recurrence` (associative scan), O(L K V) memory.
  "attention": the surrogate attention matrix M_ts = sum_i q_ti k_si prod_{r=s+1}^t a_ri
    (s <= t), O(L^2 K) time and memory.
  "chunkwise": attention inside chunks, the recurrence across chunk boundaries.

Gates enter through their logarithms (`log_a`), so decay products are exp of differences of
cumulative sums, which never overflow inside a chunk (flash-linear-attention's lesson).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqmodels.scan import check_positive_int, common_dtype, compute_dtype, linear_recurrence

__all__ = ["MODES", "gated_linear_attention", "multihead_gated_linear_attention"]

MODES = ("recurrent", "parallel", "attention", "chunkwise")


def _outer(k, v):
    return k[..., :, None] * v[..., None, :]


def _recurrent(q, k, v, log_a):
    def step(h, inputs):
        q_t, k_t, v_t, la_t = inputs
        h = jnp.exp(la_t)[:, None] * h + _outer(k_t, v_t)
        return h, q_t @ h

    h0 = jnp.zeros((k.shape[-1], v.shape[-1]), common_dtype(q, k, v, log_a))
    return jax.lax.scan(step, h0, (q, k, v, log_a))[1]


def _parallel(q, k, v, log_a):
    states = linear_recurrence(
        jnp.exp(log_a)[:, :, None],
        _outer(k, v).astype(common_dtype(k, v, log_a)),
        method="associative",
    )
    return jnp.einsum("tk,tkv->tv", q, states)


def _decay_matrix(log_a_rows, log_a_cols):
    """exp(c_t - c_s) per key dimension for s <= t, zero above the diagonal: (T, S, K)."""
    c_rows = jnp.cumsum(log_a_rows, axis=0)
    c_cols = jnp.cumsum(log_a_cols, axis=0)
    diff = c_rows[:, None, :] - c_cols[None, :, :]
    causal = jnp.tril(jnp.ones((c_rows.shape[0], c_cols.shape[0]), bool))[:, :, None]
    # mask before exponentiating: above the diagonal the differences grow, not decay
    return jnp.where(causal, jnp.exp(jnp.where(causal, diff, 0.0)), 0.0)


def _attention(q, k, v, log_a):
    scores = jnp.einsum("tk,sk,tsk->ts", q, k, _decay_matrix(log_a, log_a))
    return scores @ v


def _chunkwise(q, k, v, log_a, chunk_size):
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
    intra = jax.vmap(_attention)(qc, kc, vc, lac)
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


def gated_linear_attention(q, k, v, log_a, *, mode="parallel", chunk_size=64):
    """y_t = q_t H_t with H_t = diag(a_t) H_{t-1} + k_t^T v_t, for one head.

    Args:
      q, k: (L, K). v: (L, V). Real or complex.
      log_a: (L, K) logarithms of the gates (real, or complex for rotating gates as in
        GateLoop); Re(log_a) <= 0 keeps the recurrence stable.
      mode: "recurrent", "parallel", "attention" or "chunkwise"; all four are equal.
      chunk_size: chunk length of the chunkwise form, a positive int; one longer than L is
        cut to L (a longer chunk would only be padding).

    Returns:
      y of shape (L, V), in the common dtype of the inputs. float16 and bfloat16 inputs are
      computed in float32 (state, cumulative gates, sums) and rounded once at the end.
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    _check_qkv(q, k, v, log_a)
    dtype = common_dtype(q, k, v, log_a)
    work = compute_dtype(dtype)
    q, k, v, log_a = (x.astype(work) for x in (q, k, v, log_a))
    if mode == "recurrent":
        y = _recurrent(q, k, v, log_a)
    elif mode == "parallel":
        y = _parallel(q, k, v, log_a)
    elif mode == "attention":
        y = _attention(q, k, v, log_a)
    else:
        y = _chunkwise(q, k, v, log_a, min(chunk_size, q.shape[0]))
    return y.astype(dtype)


def _check_qkv(q, k, v, log_a):
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


def multihead_gated_linear_attention(
    q, k, v, log_a, num_heads, *, mode="parallel", chunk_size=64, mesh=None, axis_name="seq"
):
    """`gated_linear_attention` on `num_heads` independent heads, concatenated.

    Args:
      q, k, log_a: (L, H * K); v: (L, H * V). Head h owns columns [h K, (h + 1) K) of q, k and
        log_a and [h V, (h + 1) V) of v.
      num_heads: H, which must divide the feature sizes.
      mode, chunk_size: as in `gated_linear_attention`.
      mesh, axis_name: with a `jax.sharding.Mesh`, the time axis is split across the devices
        of `mesh[axis_name]` (`seqmodels.parallel.gated_linear_attention_sharded`, LASP-2;
        `mode` is then not used).

    Returns:
      (L, H * V), the heads' outputs side by side, in the common dtype of the inputs (float16
      and bfloat16 computed in float32, as in `gated_linear_attention`).
    """
    num_heads = check_positive_int(num_heads, "num_heads")
    length = q.shape[0] if jnp.ndim(q) else 0
    if length < 1:
        raise ValueError(f"the sequence must have length L >= 1, got q of shape {jnp.shape(q)}.")
    for name, x in (("q", q), ("k", k), ("v", v), ("log_a", log_a)):
        if x.ndim != 2 or x.shape[1] % num_heads:
            raise ValueError(
                f"`{name}` must have shape (L, num_heads * size) with num_heads={num_heads}; "
                f"got {x.shape}."
            )
    split = lambda x: x.reshape(length, num_heads, -1).swapaxes(0, 1)
    if mesh is None:
        head = lambda *a: gated_linear_attention(*a, mode=mode, chunk_size=chunk_size)
    else:
        from seqmodels.parallel import gated_linear_attention_sharded

        head = lambda *a: gated_linear_attention_sharded(
            *a, mesh=mesh, axis_name=axis_name, chunk_size=chunk_size
        )
    y = jax.vmap(head)(split(q), split(k), split(v), split(log_a))
    return y.swapaxes(0, 1).reshape(length, -1)
