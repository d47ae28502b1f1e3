"""A sequence model: embedding, N residual blocks of [norm, (short conv), mixing layer, norm,
MLP], head."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from seqmodels._checks import prepare_sequence
from seqmodels.layers._short_conv import ShortConv

__all__ = ["SequenceModel"]


class _Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    conv: ShortConv | None
    mixer: eqx.Module
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __call__(self, x):
        h = jax.vmap(self.norm1)(x)
        if self.conv is not None:
            h = self.conv(h)
        x = x + self.mixer(h)
        return x + jax.vmap(self.mlp)(jax.vmap(self.norm2)(x))


class SequenceModel(eqx.Module):
    """Pre-norm residual stack around any mixing layer (GateLoop, LRU, S5, LinearAttention,
    CKConv, or your own module mapping (L, d_model) to (L, d_model)).

    Args:
      make_mixer: `make_mixer(d_model, key) -> module`, e.g.
        `lambda d, key: GateLoop(d, num_heads=4, key=key)`.
      num_tokens: vocabulary size for token inputs (int arrays of shape (L,)); None for
        real-valued inputs of shape (L, input_dim).
      input_dim: input features when `num_tokens` is None.
      d_model, num_layers, num_outputs: widths and depth; the head maps each position to
        `num_outputs` logits.
      conv_width: width of a `ShortConv` before each mixer (0: none, the default).
    """

    embed: eqx.Module
    blocks: tuple
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(
        self,
        make_mixer: Callable,
        *,
        d_model: int,
        num_layers: int,
        num_outputs: int,
        num_tokens: int | None = None,
        input_dim: int | None = None,
        conv_width: int = 0,
        key,
    ):
        if (num_tokens is None) == (input_dim is None):
            raise ValueError("give exactly one of `num_tokens` and `input_dim`.")
        if not isinstance(conv_width, int) or conv_width < 0:
            raise ValueError(f"`conv_width` must be a non-negative int, got {conv_width!r}.")
        keys = jax.random.split(key, 2 * num_layers + 2)
        conv_keys = jax.random.split(jax.random.fold_in(key, 1), num_layers)
        if num_tokens is not None:
            self.embed = eqx.nn.Embedding(num_tokens, d_model, key=keys[0])
        else:
            self.embed = eqx.nn.Linear(input_dim, d_model, key=keys[0])
        self.blocks = tuple(
            _Block(
                eqx.nn.LayerNorm(d_model),
                ShortConv(d_model, conv_width, key=conv_keys[i]) if conv_width else None,
                make_mixer(d_model, keys[2 * i + 1]),
                eqx.nn.LayerNorm(d_model),
                eqx.nn.MLP(
                    d_model, d_model, 2 * d_model, 1, activation=jax.nn.gelu, key=keys[2 * i + 2]
                ),
            )
            for i in range(num_layers)
        )
        self.norm = eqx.nn.LayerNorm(d_model)
        self.head = eqx.nn.Linear(d_model, num_outputs, key=keys[-1])

    def __call__(
        self, x: Int[Array, " L"] | Float[Array, "L input_dim"]
    ) -> Float[Array, "L num_outputs"]:
        """(L,) tokens or (L, input_dim) features -> (L, num_outputs) logits: float32 for
        tokens; for features, in their dtype (float16 and bfloat16 are computed in float32).
        For a batch, `jax.vmap` it."""
        if isinstance(self.embed, eqx.nn.Embedding):
            x = jnp.asarray(x)
            if x.ndim != 1 or not jnp.issubdtype(x.dtype, jnp.integer):
                raise ValueError(
                    f"SequenceModel expected (L,) integer tokens, got shape {x.shape} of dtype "
                    f"{x.dtype}; use jax.vmap over a batch."
                )
            if x.shape[0] < 1:
                raise ValueError(f"SequenceModel needs L >= 1 tokens, got shape {x.shape}.")
            dtype = None
        else:
            x, dtype = prepare_sequence(x, self.embed.in_features, "SequenceModel", "input_dim")
        h = jax.vmap(self.embed)(x)
        for block in self.blocks:
            h = block(h)
        logits = jax.vmap(self.head)(jax.vmap(self.norm)(h))
        return logits if dtype is None else logits.astype(dtype)
