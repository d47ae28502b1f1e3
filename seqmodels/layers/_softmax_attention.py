"""Causal softmax attention: the Transformer baseline of the linear-time layers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Inexact, Int

from seqmodels._checks import check_positive_int, compute_dtype, head_sizes
from seqmodels.layers._common import (
    cast,
    check_dtype,
    layer_input,
    param_dtype_of,
    param_init_dtype,
)

__all__ = ["SoftmaxAttention", "rotate"]


def rotate(x: Float[Array, "L H K"], positions: Int[Array, " L"], theta: float = 10000.0):
    """Rotary position embedding (Su et al., 2021, "RoFormer"), rotate-half form: the pairs
    (x_j, x_{j + K/2}) of each head turned by the angle p theta^(-2j / K) at position p, so
    that the dot product of a rotated query and key depends on their positions' difference
    only. x (L, H, K) with K even; computed in at least float32, returned in x's dtype."""
    half = x.shape[-1] // 2
    acc = compute_dtype(x.dtype)
    freqs = theta ** (-jnp.arange(half, dtype=acc) / half)
    angles = positions.astype(acc)[:, None, None] * freqs[None, None, :]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    a, b = x[..., :half].astype(acc), x[..., half:].astype(acc)
    return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1).astype(x.dtype)


class SoftmaxAttention(eqx.Module):
    """Causal multi-head softmax attention (Vaswani et al., 2017) over equinox's
    `eqx.nn.MultiheadAttention`, with rotary position embeddings on queries and keys (Su et
    al., 2021; `rotary=False`: none, position then comes from causality and any short
    convolution before the layer): the softmax Transformer baseline that the linear-time
    layers (GateLoop, LinearAttention, LearnedKernelAttention) are measured against.

    Per head: y_t = sum_{s <= t} softmax_s(q_t . k_s / sqrt(head_dim)) v_s; the heads are
    concatenated and projected by W_o. The projections have no biases (as the other layers'
    q, k, v and output projections).

    Shapes and dtypes: x (L, d_model) -> (L, d_model). `param_dtype` is the parameters' dtype
    (default: float32, float64 with x64); `dtype` the computation's and output's (None: x's
    dtype, with float16 and bfloat16 computed in float32). With `dtype=jnp.bfloat16` the
    projections and attention logits are bfloat16 while the softmax and the rotary angles are
    computed in float32. Memory: O(H L^2) for the attention weights, forward and backward
    (no flash-style tiling). `step` decodes one token at a time from `init_state(length)`, a
    cache of the keys and values of up to `length` tokens: O(length H head_dim) memory and
    O(length) time per token.

    Attributes:
      attention: the `eqx.nn.MultiheadAttention` (query_proj, key_proj, value_proj,
        output_proj).
      num_heads, head_dim: heads and their query, key and value size.
      rotary: whether queries and keys are rotated. theta: the rotary base.
      dtype: the computation dtype.
    """

    num_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    rotary: bool = eqx.field(static=True)
    theta: float = eqx.field(static=True)
    dtype: jnp.dtype | None = eqx.field(static=True)
    attention: eqx.nn.MultiheadAttention

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        *,
        rotary: bool = True,
        theta: float = 10000.0,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        self.num_heads, self.head_dim, _ = head_sizes(d_model, num_heads, head_dim)
        if rotary and self.head_dim % 2:
            raise ValueError(f"`head_dim` must be even with rotary=True, got {self.head_dim}.")
        if not theta > 0:
            raise ValueError(f"`theta` must be positive, got {theta!r}.")
        self.rotary, self.theta = bool(rotary), float(theta)
        self.dtype = check_dtype(dtype, "dtype")
        self.attention = eqx.nn.MultiheadAttention(
            self.num_heads,
            d_model,
            qk_size=self.head_dim,
            vo_size=self.head_dim,
            dtype=param_init_dtype(param_dtype),
            key=key,
        )

    def _prepared(self, x, *, token):
        x, work, out = layer_input(
            x,
            self.attention.query_proj.in_features,
            "SoftmaxAttention",
            dtype=self.dtype,
            params=param_dtype_of(self),
            argument="x_t" if token else "x",
            token=token,
        )
        return cast(self.attention, work), x, out

    def __call__(self, x: Float[Array, "L d_model"]) -> Float[Array, "L d_model"]:
        """Mixes a sequence x of shape (L, d_model) causally; returns (L, d_model) in the
        layer's `dtype`, or x's dtype when that is None. For a batch, `jax.vmap` it."""
        attention, x, out = self._prepared(x, token=False)
        length = x.shape[0]
        positions = jnp.arange(length)

        def process_heads(q, k, v):
            if not self.rotary:
                return q, k, v
            return rotate(q, positions, self.theta), rotate(k, positions, self.theta), v

        mask = jnp.tril(jnp.ones((length, length), bool))
        return attention(x, x, x, mask, process_heads=process_heads).astype(out)

    def init_state(self, length: int):
        """The empty cache for up to `length` tokens: (keys (length, H, head_dim), values
        (length, H, head_dim), the number of tokens seen, an int32 scalar), in the work dtype
        (float32 for bfloat16 and float16 parameters with `dtype=None`)."""
        length = check_positive_int(length, "length")
        work = self.dtype or compute_dtype(param_dtype_of(self))
        cache = jnp.zeros((length, self.num_heads, self.head_dim), work)
        return cache, cache, jnp.zeros((), jnp.int32)

    def step(
        self, state, x_t: Float[Array, " d_model"]
    ) -> tuple[tuple[Inexact[Array, "length H K"], ...], Float[Array, " d_model"]]:
        """One token x_t of shape (d_model,) at the position held in the state: its key and
        value enter the cache and y_t (d_model,) is the t-th row of `__call__` on the tokens
        so far. The cache holds `length` tokens: a token beyond it gets a NaN output and
        leaves the state as it was (it used to overwrite the last key and value, silently),
        so size the cache for the whole generation."""
        attention, x, out = self._prepared(x_t, token=True)
        keys, values, t = state
        split = lambda proj: proj(x).reshape(self.num_heads, self.head_dim)
        q, k, v = (
            split(attention.query_proj),
            split(attention.key_proj),
            split(attention.value_proj),
        )
        if self.rotary:
            q, k = (rotate(a[None], t[None], self.theta)[0] for a in (q, k))
        # dynamic_update_slice clamps t onto the last slot: past the end, that slot is
        # rewritten with what it holds (a one-row select, so the cache stays updated in place)
        fits = t < keys.shape[0]
        slot = jnp.minimum(t, keys.shape[0] - 1)
        k = jnp.where(fits, k.astype(keys.dtype), keys[slot])
        v = jnp.where(fits, v.astype(values.dtype), values[slot])
        keys = jax.lax.dynamic_update_slice(keys, k[None], (slot, 0, 0))
        values = jax.lax.dynamic_update_slice(values, v[None], (slot, 0, 0))
        logits = jnp.einsum("hk,shk->hs", q, keys.astype(q.dtype)) / jnp.sqrt(
            jnp.asarray(self.head_dim, q.dtype)
        )
        seen = jnp.arange(keys.shape[0]) <= t
        logits = jnp.where(seen[None], logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits.astype(compute_dtype(logits.dtype)), axis=-1)
        y = jnp.einsum("hs,shv->hv", weights.astype(q.dtype), values.astype(q.dtype))
        y = attention.output_proj(y.reshape(-1))
        y = jnp.where(fits, y, jnp.asarray(jnp.nan, y.dtype))
        return (keys, values, jnp.where(fits, t + 1, t)), y.astype(out)
