"""ShortConv: a depthwise causal convolution over a few time steps."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Float

from seqmodels._checks import compute_dtype
from seqmodels.layers._common import check_dtype, layer_input, param_dtype_of, param_init_dtype

__all__ = ["ShortConv"]


class ShortConv(eqx.Module):
    """Depthwise causal convolution over time, y_t = sum_{j < width} w_j * x_{t - j} (per
    channel), the short convolution that H3 (Fu et al., 2023), Based and the Zoology study
    (Arora et al., 2024) put before a linear-recurrent mixer: it lets a position's keys see the
    previous tokens, which associative recall needs. Initialised near the identity (w_0 = 1,
    the rest small).

    Shapes and dtypes: x (L, d_model) -> (L, d_model); the sums in at least float32, the output
    in `dtype` (None: x's dtype); the weight (width, d_model) in `param_dtype` (default:
    float32, float64 with x64). `step`, one token at a time from `init_state()`, keeps the
    last width - 1 inputs: O(width d_model) memory.
    """

    weight: jax.Array  # (width, d_model)
    dtype: jnp.dtype | None = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        width: int = 4,
        *,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"`width` must be a positive int, got {width!r}.")
        self.dtype = check_dtype(dtype, "dtype")
        noise = 0.1 * jax.random.normal(key, (width, d_model)) / width**0.5
        self.weight = noise.at[0].add(1.0).astype(param_init_dtype(param_dtype))

    def _input(self, x, token):
        """(x in the accumulation dtype, the weight there, output dtype)."""
        x, work, out = layer_input(
            x,
            self.weight.shape[1],
            "ShortConv",
            dtype=self.dtype,
            params=param_dtype_of(self),
            argument="x_t" if token else "x",
            token=token,
        )
        acc = compute_dtype(work)
        return x.astype(acc), self.weight.astype(acc), out

    def __call__(self, x: Float[Array, "L d_model"]) -> Float[Array, "L d_model"]:
        """(L, d_model) -> (L, d_model). For a batch, `jax.vmap` it."""
        x, weight, dtype = self._input(x, token=False)
        length = x.shape[0]
        out = weight[0][None] * x
        for j in range(1, min(weight.shape[0], length)):
            shifted = jnp.concatenate([jnp.zeros_like(x[:j]), x[: length - j]])
            out = out + weight[j][None] * shifted
        return out.astype(dtype)

    def init_state(self) -> Float[Array, "width_minus_1 d_model"]:
        """The empty state: the last width - 1 inputs, newest first, as zeros (the causal
        padding), in the accumulation dtype (float32 for float32, bfloat16 and float16)."""
        acc = compute_dtype(self.dtype or param_dtype_of(self))
        return jnp.zeros((self.weight.shape[0] - 1, self.weight.shape[1]), acc)

    def step(
        self, state: Float[Array, "width_minus_1 d_model"], x_t: Float[Array, " d_model"]
    ) -> tuple[Float[Array, "width_minus_1 d_model"], Float[Array, " d_model"]]:
        """One token x_t (d_model,): y_t = sum_j w_j x_{t-j}, the t-th row of `__call__` on the
        tokens so far; the state shifts by one (a ring of the last taps, kept in order)."""
        x, weight, dtype = self._input(x_t, token=True)
        taps = jnp.concatenate([x[None], state.astype(x.dtype)])  # x_t, x_{t-1}, ...
        y = jnp.sum(weight * taps, axis=0)
        return taps[:-1].astype(state.dtype), y.astype(dtype)
