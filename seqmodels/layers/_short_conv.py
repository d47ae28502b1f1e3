"""ShortConv: a depthwise causal convolution over a few time steps."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqmodels._checks import prepare_sequence

__all__ = ["ShortConv"]


class ShortConv(eqx.Module):
    """Depthwise causal convolution over time, y_t = sum_{j < width} w_j * x_{t - j} (per
    channel), the short convolution that H3 (Fu et al., 2023), Based and the Zoology study
    (Arora et al., 2024) put before a linear-recurrent mixer: it lets a position's keys see the
    previous tokens, which associative recall needs. Initialised near the identity (w_0 = 1,
    the rest small)."""

    weight: jax.Array  # (width, d_model)

    def __init__(self, d_model: int, width: int = 4, *, key):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"`width` must be a positive int, got {width!r}.")
        noise = 0.1 * jax.random.normal(key, (width, d_model)) / width**0.5
        self.weight = noise.at[0].add(1.0)

    def __call__(self, x: Float[Array, "L d_model"]) -> Float[Array, "L d_model"]:
        """(L, d_model) -> (L, d_model), in x's dtype (float16 and bfloat16 are computed in
        float32)."""
        x, dtype = prepare_sequence(x, self.weight.shape[1], "ShortConv")
        length = x.shape[0]
        out = self.weight[0][None] * x
        for j in range(1, min(self.weight.shape[0], length)):
            shifted = jnp.concatenate([jnp.zeros_like(x[:j]), x[: length - j]])
            out = out + self.weight[j][None] * shifted
        return out.astype(dtype)
