"""Continuous kernel convolution (CKConv)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from seqmodels._checks import compute_dtype, prepare_sequence

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
    lag s = 0 .. L-1, rescaled to [-1, 1], to a (C_out, C_in) matrix. The kernel is generated
    for the whole input length, so one layer sees the full history, and the causal
    convolution runs by FFT.
    """

    hidden: tuple
    head: eqx.nn.Linear
    bias: jax.Array
    in_channels: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        hidden_size: int = 32,
        num_hidden: int = 2,
        omega_0: float = 30.0,
        key,
    ):
        keys = jax.random.split(key, num_hidden + 1)
        layers, width = [], 1
        for i in range(num_hidden):
            lin = eqx.nn.Linear(width, hidden_size, key=keys[i])
            bound = 1.0 / width if i == 0 else math.sqrt(6.0 / width) / omega_0
            w = jax.random.uniform(keys[i], lin.weight.shape, minval=-bound, maxval=bound)
            lin = eqx.tree_at(lambda m: m.weight, lin, w)
            layers.append(_Sine(lin, omega_0))
            width = hidden_size
        self.hidden = tuple(layers)
        self.head = eqx.nn.Linear(width, out_channels * in_channels, key=keys[-1])
        self.bias = jnp.zeros((out_channels,))
        self.in_channels, self.out_channels = in_channels, out_channels

    def kernel(self, length: int):
        """The generated kernel for lags 0 .. length - 1, shape (length, C_out, C_in)."""
        positions = jnp.linspace(-1.0, 1.0, length)[:, None]

        def at(p):
            for layer in self.hidden:
                p = layer(p)
            return self.head(p).reshape(self.out_channels, self.in_channels)

        return jax.vmap(at)(positions)

    def __call__(self, x: Float[Array, "L C_in"]) -> Float[Array, "L C_out"]:
        """Maps x of shape (L, C_in) to (L, C_out), in x's dtype (float16 and bfloat16 are
        computed in float32). For a batch, `jax.vmap` it."""
        x, dtype = prepare_sequence(x, self.in_channels, "CKConv", "in_channels")
        y = causal_fft_conv(x, self.kernel(x.shape[0]) / x.shape[0]) + self.bias[None]
        return y.astype(dtype)
