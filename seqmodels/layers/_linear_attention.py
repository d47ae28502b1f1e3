"""Linear attention and RetNet-style retention."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from seqmodels._checks import head_sizes
from seqmodels.layers._gated_linear_attention import gated_heads_call, qkv_projections

__all__ = ["LinearAttention"]


class LinearAttention(eqx.Module):
    """Causal linear attention with a fixed per-head decay: RetNet's retention (Sun et al.,
    2023, "Retentive Network", eq. 1-5), or plain linear attention (Katharopoulos et al., 2020)
    with `decay=False`.

    Per head h with decay gamma_h = 1 - 2^(-5 - h) (RetNet's choice):
      S_t = gamma_h S_{t-1} + k_t^T v_t,  y_t = q_t S_t,
    computed in the chunkwise form (the default; memory linear in L, forward and backward),
    or the recurrent, parallel, or attention ((Q K^T . D) V with D_ts = gamma^(t-s)) form;
    all agree. Heads are concatenated, gated by
    SiLU(W_g x) as in RetNet, and projected.
    """

    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    gate: eqx.nn.Linear
    out: eqx.nn.Linear
    log_decay: tuple[float, ...] = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        *,
        decay: bool = True,
        key,
    ):
        num_heads, head_dim, inner = head_sizes(d_model, num_heads, head_dim)
        keys = jax.random.split(key, 5)
        self.q, self.k, self.v = qkv_projections(d_model, inner, keys)
        self.gate = eqx.nn.Linear(d_model, inner, key=keys[3])
        self.out = eqx.nn.Linear(inner, d_model, use_bias=False, key=keys[4])
        gammas = 1.0 - 2.0 ** (-5.0 - np.arange(num_heads)) if decay else np.ones(num_heads)
        self.log_decay = tuple(float(g) for g in np.log(gammas))
        self.num_heads, self.head_dim = num_heads, head_dim

    __call__ = gated_heads_call("LinearAttention", default_mode="chunkwise")

    def gla_inputs(self, x):
        """(q / sqrt(head_dim), k, v, log_a) of a float32 sequence x, with log_a each head's
        fixed log decay."""
        q, k, v = (jax.vmap(layer)(x) for layer in (self.q, self.k, self.v))
        per_column = jnp.repeat(jnp.asarray(self.log_decay, q.dtype), self.head_dim)
        return q / np.sqrt(self.head_dim), k, v, jnp.broadcast_to(per_column, q.shape)
