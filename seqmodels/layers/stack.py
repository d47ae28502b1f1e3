"""A sequence model: embedding, N residual blocks of [norm, mixing layer, norm, MLP], head."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

__all__ = ["SequenceModel"]


class _Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    mixer: eqx.Module
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __call__(self, x):
        x = x + self.mixer(jax.vmap(self.norm1)(x))
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
        key,
    ):
        if (num_tokens is None) == (input_dim is None):
            raise ValueError("give exactly one of `num_tokens` and `input_dim`.")
        keys = jax.random.split(key, 2 * num_layers + 2)
        if num_tokens is not None:
            self.embed = eqx.nn.Embedding(num_tokens, d_model, key=keys[0])
        else:
            self.embed = eqx.nn.Linear(input_dim, d_model, key=keys[0])
        self.blocks = tuple(
            _Block(
                eqx.nn.LayerNorm(d_model),
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

    def __call__(self, x):
        """(L,) tokens or (L, input_dim) features -> (L, num_outputs) logits."""
        h = jax.vmap(self.embed)(x)
        for block in self.blocks:
            h = block(h)
        return jax.vmap(self.head)(jax.vmap(self.norm)(h))


def count_parameters(model) -> int:
    """Number of trainable scalars (complex counted twice)."""
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return sum(x.size * (2 if jnp.iscomplexobj(x) else 1) for x in leaves)
