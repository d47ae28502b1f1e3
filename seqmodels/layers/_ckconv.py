"""Continuous kernel convolution (CKConv)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import DTypeLike
from jaxtyping import Array, Float

from seqmodels._checks import check_positive_int, compute_dtype
from seqmodels.layers._common import (
    cast,
    check_dtype,
    layer_input,
    param_dtype_of,
    param_init_dtype,
)

__all__ = ["CKConv", "causal_fft_conv"]


def causal_fft_conv(
    x: Float[Array, "L C_in"], kernel: Float[Array, "L_k C_out C_in"]
) -> Float[Array, "L C_out"]:
    """y_t = sum_{s=0}^{t} kernel_s @ x_{t-s}, for x (L, C_in) and kernel (L_k, C_out, C_in).

    Computed with real FFTs of length >= L + L_k - 1 (no circular wrap-around): O(L log L),
    in float32 for float16 / bfloat16 operands; returns x's dtype.
    """
    dtype = x.dtype
    x, kernel = x.astype(compute_dtype(x.dtype)), kernel.astype(compute_dtype(kernel.dtype))
    length = x.shape[0]
    n = 1 << (length + kernel.shape[0] - 1 - 1).bit_length()
    x_hat = jnp.fft.rfft(x, n=n, axis=0)
    k_hat = jnp.fft.rfft(kernel, n=n, axis=0)
    y = jnp.fft.irfft(jnp.einsum("foi,fi->fo", k_hat, x_hat), n=n, axis=0)
    return y[:length].astype(dtype)


class _Sine(eqx.Module):
    linear: eqx.nn.Linear
    omega: float = eqx.field(static=True)

    def __call__(self, x):
        return jnp.sin(self.omega * self.linear(x))


class CKConv(eqx.Module):
    """Continuous kernel convolution (Romero, Kuzina, Bekkers, Tomczak & Hoogendoorn, ICLR
    2022, "CKConv: Continuous Kernel Convolution For Sequential Data").

    The convolution kernel is a function of the relative position: a SIREN MLP
    (Sitzmann et al., 2020; sin(omega_0 (W p + b)) layers with their initialisation) maps each
    lag s = 0 .. K-1, rescaled to [-1, 1], to a (C_out, C_in) matrix, divided by K. With
    `kernel_size` None (the default) K is the input length L, so one layer sees the full
    history (and the kernel depends on L); with a `kernel_size` K is fixed and the
    convolution sees the last K inputs whatever L. The causal convolution runs by FFT.

    Shapes and dtypes: x (L, C_in) -> (L, C_out), in `dtype` (None: x's dtype); the kernel
    network and the FFT run in at least float32 (bfloat16 cannot tell 256 positions in [-1, 1]
    apart), from parameters in `param_dtype` (default: float32, float64 with x64).

    Memory. `__call__`: O((L + K) (C_in + C_out) + K C_out C_in). `step`, one token at a
    time from `init_state()`, keeps the last K - 1 inputs, O(K C_in) (with `kernel_size`
    None, K is the `length` given to `init_state`: a long kernel's state is the whole
    window), and regenerates the kernel per token: O(K (hidden^2 + C_out C_in)) time.
    """

    hidden: tuple
    head: eqx.nn.Linear
    bias: jax.Array
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)
    kernel_size: int | None = eqx.field(static=True)
    dtype: jnp.dtype | None = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        hidden_size: int = 32,
        num_hidden: int = 2,
        omega_0: float = 30.0,
        kernel_size: int | None = None,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        self.kernel_size = (
            None if kernel_size is None else check_positive_int(kernel_size, "kernel_size")
        )
        self.dtype = check_dtype(dtype, "dtype")
        pdt = param_init_dtype(param_dtype)
        keys = jax.random.split(key, num_hidden + 1)
        layers, width = [], 1
        for i in range(num_hidden):
            lin = eqx.nn.Linear(width, hidden_size, dtype=pdt, key=keys[i])
            bound = 1.0 / width if i == 0 else math.sqrt(6.0 / width) / omega_0
            w = jax.random.uniform(keys[i], lin.weight.shape, pdt, minval=-bound, maxval=bound)
            lin = eqx.tree_at(lambda m: m.weight, lin, w)
            layers.append(_Sine(lin, omega_0))
            width = hidden_size
        self.hidden = tuple(layers)
        self.head = eqx.nn.Linear(width, out_channels * in_channels, dtype=pdt, key=keys[-1])
        self.bias = jnp.zeros((out_channels,), pdt)
        self.in_channels, self.out_channels = in_channels, out_channels

    def kernel(self, length: int) -> Float[Array, "length C_out C_in"]:
        """The generated kernel for lags 0 .. length - 1, shape (length, C_out, C_in), in the
        parameters' dtype (not divided by `length`)."""
        positions = jnp.linspace(-1.0, 1.0, length, dtype=self.head.weight.dtype)[:, None]

        def at(p):
            for layer in self.hidden:
                p = layer(p)
            return self.head(p).reshape(self.out_channels, self.in_channels)

        return jax.vmap(at)(positions)

    def _prepared(self, x, token):
        """(the layer in the accumulation dtype, x there, output dtype)."""
        x, work, out = layer_input(
            x,
            self.in_channels,
            "CKConv",
            dtype=self.dtype,
            params=param_dtype_of(self),
            argument="x_t" if token else "x",
            name="in_channels",
            token=token,
        )
        acc = compute_dtype(work)
        return cast(self, acc), x.astype(acc), out

    def __call__(self, x: Float[Array, "L C_in"]) -> Float[Array, "L C_out"]:
        """Maps x of shape (L, C_in) to (L, C_out). For a batch, `jax.vmap` it."""
        layer, x, dtype = self._prepared(x, token=False)
        size = self.kernel_size or x.shape[0]
        kernel = (layer.kernel(size) / size)[: x.shape[0]]
        y = causal_fft_conv(x, kernel) + layer.bias[None]
        return y.astype(dtype)

    def init_state(self, length: int | None = None) -> Float[Array, "K_minus_1 C_in"]:
        """The empty state: the last K - 1 inputs, newest first, as zeros (K = `kernel_size`),
        in the accumulation dtype. A layer without `kernel_size` generates its kernel for the
        whole input, so it needs the `length` L of the sequence that `__call__` would see
        (its first L outputs are then equal; memory O(L C_in))."""
        size = self.kernel_size or length
        if size is None:
            raise ValueError(
                "CKConv(kernel_size=None) generates its kernel for the whole input: give "
                "init_state(length=L), or build the layer with a kernel_size."
            )
        size = check_positive_int(size, "length")
        acc = compute_dtype(self.dtype or param_dtype_of(self))
        return jnp.zeros((size - 1, self.in_channels), acc)

    def step(
        self, state: Float[Array, "K_minus_1 C_in"], x_t: Float[Array, " C_in"]
    ) -> tuple[Float[Array, "K_minus_1 C_in"], Float[Array, " C_out"]]:
        """One token x_t (C_in,): y_t = sum_{s < K} kernel_s x_{t-s} / K + bias, the t-th row
        of `__call__` on the tokens so far (K from the state's length). The state shifts by
        one, a ring of the last taps kept in order."""
        layer, x, dtype = self._prepared(x_t, token=True)
        size = state.shape[0] + 1
        taps = jnp.concatenate([x[None], state.astype(x.dtype)])  # x_t, x_{t-1}, ...
        y = jnp.einsum("koi,ki->o", layer.kernel(size) / size, taps) + layer.bias
        return taps[:-1].astype(state.dtype), y.astype(dtype)
