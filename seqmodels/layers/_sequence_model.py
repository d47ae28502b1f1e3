"""A sequence model: embedding, N residual blocks of [norm, (short conv), mixing layer, norm,
MLP], head."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Float, Int, PyTree

from seqmodels._checks import compute_dtype
from seqmodels.layers._common import (
    cast,
    check_dtype,
    layer_input,
    param_dtype_of,
    param_init_dtype,
)
from seqmodels.layers._short_conv import ShortConv

__all__ = ["SequenceModel"]


class _Block(eqx.Module):
    norm1: eqx.nn.LayerNorm
    conv: ShortConv | None
    mixer: eqx.Module
    norm2: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __call__(self, x, work):
        own = cast(eqx.tree_at(lambda b: b.mixer, self, None), work)  # the mixer keeps its own
        h = jax.vmap(own.norm1)(x)
        if own.conv is not None:
            h = own.conv(h)
        x = x + self.mixer(h).astype(work)
        return x + jax.vmap(own.mlp)(jax.vmap(own.norm2)(x))

    def init_state(self, length):
        if not hasattr(self.mixer, "step"):
            raise TypeError(
                f"SequenceModel.step needs mixers with init_state() and step(state, x_t); "
                f"{type(self.mixer).__name__} has none."
            )
        takes_length = "length" in inspect.signature(self.mixer.init_state).parameters
        mixer = self.mixer.init_state(length=length) if takes_length else self.mixer.init_state()
        return None if self.conv is None else self.conv.init_state(), mixer

    def step(self, state, x, work):
        own = cast(eqx.tree_at(lambda b: b.mixer, self, None), work)
        conv_state, mixer_state = state
        h = own.norm1(x)
        if own.conv is not None:
            conv_state, h = own.conv.step(conv_state, h)
        mixer_state, y = self.mixer.step(mixer_state, h)
        x = x + y.astype(work)
        return (conv_state, mixer_state), x + own.mlp(own.norm2(x))


class SequenceModel(eqx.Module):
    """Pre-norm residual stack around any mixing layer (GateLoop, LRU, S5, LinearAttention,
    CKConv, or your own module mapping (L, d_model) to (L, d_model)).

    Args:
      make_mixer: `make_mixer(d_model, key) -> module`, e.g.
        `lambda d, key: GateLoop(d, num_heads=4, key=key)`. The mixers take their own `dtype`
        and `param_dtype` there.
      num_tokens: vocabulary size for token inputs (int arrays of shape (L,)); None for
        real-valued inputs of shape (L, input_dim).
      input_dim: input features when `num_tokens` is None.
      d_model, num_layers, num_outputs: widths and depth; the head maps each position to
        `num_outputs` logits.
      conv_width: width of a `ShortConv` before each mixer (0: none, the default).
      dtype: the dtype of the residual stream, the embedding, norms, MLPs and head's
        computation and the logits; None: the features' dtype (tokens: the parameters'),
        with float16 and bfloat16 computed in float32. Layer norms compute their statistics
        in float32 whatever `dtype`.
      param_dtype: the dtype of the embedding, norms, MLPs and head (and short convolutions)
        at creation; default float32 (float64 with x64).

    Shapes: (L,) tokens or (L, input_dim) features -> (L, num_outputs); `jax.vmap` it over a
    batch. Memory: the mixers' plus O(L d_model) per block. `step`, one token at a time from
    `init_state()`, keeps each block's mixer (and short convolution) state: O(1) in L for
    every mixer here but CKConv without `kernel_size`.
    """

    embed: eqx.Module
    blocks: tuple
    norm: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    dtype: jnp.dtype | None = eqx.field(static=True)

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
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        if (num_tokens is None) == (input_dim is None):
            raise ValueError("give exactly one of `num_tokens` and `input_dim`.")
        if not isinstance(conv_width, int) or conv_width < 0:
            raise ValueError(f"`conv_width` must be a non-negative int, got {conv_width!r}.")
        self.dtype = check_dtype(dtype, "dtype")
        pdt = param_init_dtype(param_dtype)
        keys = jax.random.split(key, 2 * num_layers + 2)
        conv_keys = jax.random.split(jax.random.fold_in(key, 1), num_layers)
        if num_tokens is not None:
            self.embed = eqx.nn.Embedding(num_tokens, d_model, dtype=pdt, key=keys[0])
        else:
            self.embed = eqx.nn.Linear(input_dim, d_model, dtype=pdt, key=keys[0])
        norm = lambda: eqx.nn.LayerNorm(d_model, dtype=pdt)
        self.blocks = tuple(
            _Block(
                norm(),
                ShortConv(d_model, conv_width, param_dtype=pdt, key=conv_keys[i])
                if conv_width
                else None,
                make_mixer(d_model, keys[2 * i + 1]),
                norm(),
                eqx.nn.MLP(
                    d_model,
                    d_model,
                    2 * d_model,
                    1,
                    activation=jax.nn.gelu,
                    dtype=pdt,
                    key=keys[2 * i + 2],
                ),
            )
            for i in range(num_layers)
        )
        self.norm = norm()
        self.head = eqx.nn.Linear(d_model, num_outputs, dtype=pdt, key=keys[-1])

    def _embedded(self, x, token):
        """(embedded input, work dtype, output dtype) of a sequence, or of one step."""
        own_params = param_dtype_of(eqx.tree_at(lambda m: m.blocks, self, ()))
        if isinstance(self.embed, eqx.nn.Embedding):
            x = jnp.asarray(x)
            if x.ndim != (0 if token else 1) or not jnp.issubdtype(x.dtype, jnp.integer):
                where = (
                    "SequenceModel.step expected a () integer token"
                    if token
                    else ("SequenceModel expected (L,) integer tokens")
                )
                raise ValueError(
                    f"{where} for `{'x_t' if token else 'x'}`, got shape {x.shape} of dtype "
                    f"{x.dtype}; use jax.vmap over a batch."
                )
            if not token and x.shape[0] < 1:
                raise ValueError(f"SequenceModel needs L >= 1 tokens, got shape {x.shape}.")
            work = self.dtype or compute_dtype(own_params)
            embed = cast(self.embed, work)
            return (embed(x) if token else jax.vmap(embed)(x)), work, work
        x, work, out = layer_input(
            x,
            self.embed.in_features,
            "SequenceModel",
            dtype=self.dtype,
            params=own_params,
            argument="x_t" if token else "x",
            name="input_dim",
            token=token,
        )
        embed = cast(self.embed, work)
        return (embed(x) if token else jax.vmap(embed)(x)), work, out

    def __call__(
        self, x: Int[Array, " L"] | Float[Array, "L input_dim"]
    ) -> Float[Array, "L num_outputs"]:
        """(L,) tokens or (L, input_dim) features -> (L, num_outputs) logits, in `dtype`, or
        with None in the features' dtype (float16 and bfloat16 computed in float32) or, for
        tokens, the parameters' (float32). For a batch, `jax.vmap` it."""
        h, work, out = self._embedded(x, token=False)
        for block in self.blocks:
            h = block(h, work)
        norm, head = cast((self.norm, self.head), work)
        return jax.vmap(head)(jax.vmap(norm)(h)).astype(out)

    def init_state(self, length: int | None = None) -> PyTree:
        """The empty state: per block, (its ShortConv's state or None, its mixer's state).
        `length` is passed to mixers whose `init_state` takes it (CKConv without
        `kernel_size`); every mixer must have `init_state` and `step`."""
        return tuple(block.init_state(length) for block in self.blocks)

    def step(
        self, state: PyTree, x_t: Int[Array, ""] | Float[Array, " input_dim"]
    ) -> tuple[PyTree, Float[Array, " num_outputs"]]:
        """One token (a () integer) or feature vector (input_dim,) -> (state, the logits
        (num_outputs,)), the t-th row of `__call__` on the inputs so far. Memory: the blocks'
        states, O(1) in t; for generation, `lax.scan` over the inputs."""
        h, work, out = self._embedded(x_t, token=True)
        states = []
        for block, block_state in zip(self.blocks, state, strict=True):
            block_state, h = block.step(block_state, h, work)
            states.append(block_state)
        norm, head = cast((self.norm, self.head), work)
        return tuple(states), head(norm(h)).astype(out)
