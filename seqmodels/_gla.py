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
  `chunkwise_form`: attention inside chunks, the recurrence across chunk boundaries (Yang et
    al., 2024, GLA), O(L C K + L K V) time, memory linear in L forward and backward; the
    layers' default.

Gates enter through their logarithms (`log_a`), so decay products are exp of sums of log
gates, which never overflow (flash-linear-attention's lesson). The sums are taken directly,
never as differences of cumulative sums (`segment_sums`), so that a strong decay early in a
sequence costs no precision later.

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
    "chunkwise_scan",
    "decay_matrix",
    "outer",
    "parallel_form",
    "recurrent_form",
    "resolve_form",
    "segment_sums",
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


def _masked_exp(x, mask):
    """exp(x) where `mask`, 0 elsewhere. Masked before exponentiating: outside the mask x may
    be a growth (Re x > 0) that overflows, and an inf there, though discarded by the outer
    `where`, would still make the gradient NaN."""
    return jnp.where(mask, jnp.exp(jnp.where(mask, x, 0.0)), 0.0)


def segment_sums(x):
    """S[t, s] = x_{s+1} + ... + x_t along axis 0 (0 for s >= t): (T, ...) to (T, T, ...), as
    masked cumulative sums (Mamba-2's `segsum`).

    Not c_t - c_s of the cumulative sum c: log gates have Re <= 0, so c_t grows in magnitude
    along the sequence and the difference of two large, nearly equal sums keeps only their
    absolute rounding error, ulp(|c|). After a hard reset (a gate of e^-1000) every later
    decay of the chunk was off by 1e-4 relative in float32 that way (1e-2 after e^-1e5);
    summed directly, terms of one sign, the error stays relative."""
    size = x.shape[0]
    later = jnp.tril(jnp.ones((size, size), bool), -1)  # [r, s]: r > s
    later = later.reshape(size, size, *(1,) * (x.ndim - 1))
    return jnp.cumsum(jnp.where(later, x[:, None], 0.0), axis=0)


def _exclusive_sums(x, reverse=False):
    """Along axis 0: sum_{r < t} x_r, or sum_{r > t} x_r with `reverse`; direct sums of the
    terms, not total minus prefix (see `segment_sums`)."""
    c = jax.lax.cumsum(x, axis=0, reverse=reverse)
    zero = jnp.zeros_like(x[:1])
    return jnp.concatenate([c[1:], zero] if reverse else [zero, c[:-1]])


def decay_matrix(log_a):
    """prod_{r=s+1}^{t} a_r per key dimension for s <= t, zero above the diagonal: (T, T, K)."""
    causal = jnp.tril(jnp.ones((log_a.shape[0],) * 2, bool))[:, :, None]
    return _masked_exp(segment_sums(log_a), causal)


def attention_form(q, k, v, log_a):
    scores = jnp.einsum("tk,sk,tsk->ts", q, k, decay_matrix(log_a))
    return scores @ v


# Sub-chunk length of the chunkwise form's intra-chunk scores (Yang et al.'s secondary
# chunking, c). Only the diagonal sub-chunk blocks are computed elementwise in log space, a
# (C / c, c, c, K) tensor; every other block is a matrix product. See `_chunk_step`.
SUB_CHUNK = 16


def _chunk_step(sub, h, chunk):
    """One chunk of the chunkwise form (Yang et al., 2024, Section 4, eq. 4-5 across chunks,
    secondary chunking inside, Figure 3): from the state h (K, V) entering the chunk, its
    outputs (C, V) and the state leaving it.

    Inside the chunk, the causal scores M_ts = sum_i q_ti k_si prod_{r=s+1}^{t} a_ri in
    sub-chunks of `sub` = c steps, n = C / c of them. The naive factorisation
    (q_t e^{b_t}) . (k_s e^{-b_s}), with b the cumulative log gates, is one matrix product,
    but e^{-b_s} grows as the gates decay (gates of 1e-3 overflow float32 after 13 steps).
    Here every exponent is a decay, a sum of log gates (Re <= 0) taken directly:
      - block (i, j), sub-chunk j before sub-chunk i: relative to the start of sub-chunk i,
        (q_t e^{sum of sub-chunk i's gates up to t}) . (k_s e^{sum of the gates after s up to
        that start}); a matrix product per block, over (n, n, c, K) keys;
      - diagonal blocks: exp(sum_{r=s+1}^{t} log a_r) elementwise, masked, (n, c, c, K).
    Nothing of size (C, C, K) is built: memory C K (c + C / c), against C^2 K.
    """
    q, k, v, log_a = chunk
    size, dim = q.shape
    n = size // sub
    qs, ks, las = (x.reshape(n, sub, -1) for x in (q, k, log_a))
    upto = jnp.cumsum(las, axis=1)  # within each sub-chunk, up to t: (n, c, K)
    after = jax.vmap(functools.partial(_exclusive_sums, reverse=True))(las)  # after s
    totals = upto[:, -1]  # each sub-chunk's whole log decay, (n, K)

    causal = jnp.tril(jnp.ones((sub, sub), bool))[None, :, :, None]
    diag = jnp.einsum("ick,idk,icdk->icd", qs, ks, _masked_exp(jax.vmap(segment_sums)(las), causal))
    # between[i, j]: the log decay of the sub-chunks strictly between j and i (j < i)
    between = segment_sums(totals)
    between = jnp.concatenate([jnp.zeros_like(between[:1]), between[:-1]])
    earlier = (jnp.arange(n)[:, None] > jnp.arange(n)[None, :])[:, :, None, None]
    k_ref = ks[None] * _masked_exp(between[:, :, None] + after[None], earlier)  # (i, j, c, K)
    blocks = jnp.einsum("ick,ijdk->ijcd", qs * jnp.exp(upto), k_ref)
    blocks = jnp.where(jnp.eye(n, dtype=bool)[:, :, None, None], diag[:, None], blocks)
    scores = blocks.transpose(0, 2, 1, 3).reshape(size, size)

    # Across chunks: the entering state's part, and the state leaving the chunk.
    to_t = (_exclusive_sums(totals)[:, None] + upto).reshape(size, dim)  # chunk start to t
    to_end = (_exclusive_sums(totals, reverse=True)[:, None] + after).reshape(size, dim)
    y = scores @ v + (q * jnp.exp(to_t)) @ h
    h = jnp.exp(jnp.sum(totals, axis=0))[:, None] * h + (k * jnp.exp(to_end)).T @ v
    return h, y


def chunkwise_scan(q, k, v, log_a, chunk_size):
    """`chunkwise_form` and the state after the last step: (y of shape (L, V), H_L (K, V)),
    from a zero state."""
    length = q.shape[0]
    sub = min(SUB_CHUNK, chunk_size)
    chunk_size = -(-chunk_size // sub) * sub
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length
    # padding: k = 0 adds nothing to the state, log_a = 0 (a = 1) keeps it
    split = lambda x: jnp.pad(x, ((0, pad), (0, 0))).reshape(num_chunks, chunk_size, -1)
    # zeros_like keeps k's device-varying type inside `shard_map` (`seqmodels.parallel`)
    h0 = jnp.zeros_like(outer(k[0], v[0]), common_dtype(q, k, v, log_a))
    step = jax.checkpoint(functools.partial(_chunk_step, sub))
    h, y = jax.lax.scan(step, h0, tuple(split(x) for x in (q, k, v, log_a)))
    return y.reshape(num_chunks * chunk_size, -1)[:length], h


def chunkwise_form(q, k, v, log_a, chunk_size):
    """Gated linear attention by chunks, in memory linear in L (Yang, Wang, Shen, Panda & Kim,
    2024, "Gated Linear Attention Transformers with Hardware-Efficient Training", ICML,
    Section 4): a `lax.scan` over chunks of C = `chunk_size` steps carries the K x V state;
    inside a chunk, the scores by secondary chunking and the entering state's part
    (`_chunk_step`). C is rounded up to a multiple of the sub-chunk c = min(16, C).

    The backward pass recomputes each chunk from the state entering it (`jax.checkpoint` on
    the chunk body), so only the L / C chunk-boundary states are kept: memory
    O(L (K + V) + (L / C) K V), time O(L C K + L K V). Planned temporary memory of one
    GateLoop layer (L = 4096, d = 256, 4 heads of K = V = 64, complex gates, C = 64), XLA's
    compiled memory analysis on CPU:

      form                                  forward    forward+backward
      this one                               48 MiB     108 MiB   (432 MiB at L = 16384)
      without the checkpoint                 48 MiB     667 MiB   (every chunk's residuals)
      the former chunkwise form             569 MiB   2684 MiB   ((L / C, C, C, K) decays)
      `parallel_form`                       612 MiB   2220 MiB   (all L states)
      `recurrent_form`                       48 MiB    1144 MiB   (all L states, for the VJP)

    Forward+backward time there, medians of 7 interleaved runs on 2 shared CPU cores: 0.66x
    the former chunkwise form, 0.40x `parallel_form`. The checkpoint's recomputation costs
    about 7% (fastest runs 1.86 s against 1.74 s unchecked), for a sixth of the memory. On
    CPU C = 32 is 10% faster than the default 64 (1.75 s against 1.92 s; 128: 2.35 s), for 7%
    more memory; 64 is flash-linear-attention's chunk on GPUs and half the sequential steps.
    c = 16 beat 8 and 32 at C = 64. `recurrent_form` is faster on CPU (forward+backward 0.65x
    this form's time, in ten times its memory; the four heads' forward alone 0.07 s against
    0.50 s): per step this form spends O(C (K + V) + K V), the recurrence O(K V); the extra
    work is matrix products, which accelerators run fast.
    """
    return chunkwise_scan(q, k, v, log_a, chunk_size)[0]


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
