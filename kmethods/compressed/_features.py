"""Random Fourier features of the Gaussian, Laplace and Matern kernels (Rahimi & Recht, 2007).

A translation-invariant kernel k(x, y) = psi(x - y) with psi(0) = 1 is the characteristic
function of its spectral density p (Bochner): k(x, y) = E_{w ~ p} cos(w'(x - y)). With F
frequencies w_1 .. w_F drawn from p, the r = 2F features

  phi(x) = F^{-1/2} [cos(w_1'x), ..., cos(w_F'x), sin(w_1'x), ..., sin(w_F'x)]

give phi(x)'phi(y) = F^{-1} sum_j cos(w_j'(x - y)), an unbiased estimate of k(x, y), and
||phi(x)||^2 = 1 exactly. The spectral densities, in kmethods' conventions (`kmethods.kernels`):

- Gaussian(h), exp(-r^2 / (2 h^2)): w ~ N(0, I / h^2);
- Matern(nu, h), a = sqrt(2 nu) r / h: density proportional to (2 nu / h^2 + ||w||^2)^-(nu + d/2)
  (Rasmussen & Williams, 2006, eq. 4.15), the multivariate Student t with 2 nu degrees of
  freedom and scale 1 / h: w = z / h * sqrt(nu / G), z ~ N(0, I), G ~ Gamma(nu, 1);
- Laplace(h), exp(-||x - y||_2 / h) = Matern(1/2, h): the multivariate Cauchy, scale 1 / h.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods.kernels import Gaussian, Kernel, Laplace, Matern

__all__ = ["random_features", "random_frequencies"]


def check_fourier_kernel(kernel, name: str = "kernel") -> None:
    """A TypeError naming `name` unless the kernel has a spectral density implemented here."""
    if not isinstance(kernel, (Gaussian, Laplace, Matern)):
        raise TypeError(
            f"`{name}` must be a Gaussian, Laplace or Matern kernel (random Fourier features "
            f"sample their spectral densities), got {type(kernel).__name__}."
        )


def feature_count(num_features, name: str = "num_features") -> int:
    """r, a positive even int (one cosine and one sine per frequency)."""
    r = _checks.positive_int(num_features, name, minimum=2)
    if r % 2:
        raise ValueError(f"`{name}` must be even (a cosine and a sine per frequency), got {r}.")
    return r


def random_frequencies(
    key: PRNGKeyArray, kernel: Kernel, dim: int, num_frequencies: int, dtype=jnp.float32
) -> Float[Array, "d F"]:
    """F frequencies drawn from the kernel's spectral density (module docstring), shape (d, F).

    Args:
      key: PRNG key. kernel: Gaussian, Laplace or Matern. dim: d. num_frequencies: F.
      dtype: floating dtype of the result.
    """
    check_fourier_kernel(kernel)
    dim = _checks.positive_int(dim, "dim")
    num_frequencies = _checks.positive_int(num_frequencies, "num_frequencies")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype, got {jnp.dtype(dtype).name}.")
    k_normal, k_gamma = jax.random.split(key)
    z = jax.random.normal(k_normal, (dim, num_frequencies), dtype)
    h = jnp.asarray(kernel.bandwidth, dtype)
    if isinstance(kernel, Gaussian):
        return z / h
    nu = 0.5 if isinstance(kernel, Laplace) else float(kernel.nu)
    gamma = jax.random.gamma(k_gamma, nu, (1, num_frequencies), dtype)
    return z / h * jnp.sqrt(nu / gamma)


def random_features(
    x: Float[Array, "n d"], frequencies: Float[Array, "d F"]
) -> Float[Array, "n 2F"]:
    """phi(x) = F^{-1/2} [cos(x W), sin(x W)] for the frequencies W of shape (d, F), shape
    (n, 2F): phi(x)'phi(y) estimates k(x, y) without bias."""
    if x.ndim != 2 or frequencies.ndim != 2 or x.shape[1] != frequencies.shape[0]:
        raise ValueError(
            f"`x` (n, d) and `frequencies` (d, F) must share d; got shapes {x.shape} and "
            f"{frequencies.shape}."
        )
    projections = x @ frequencies
    scale = 1.0 / jnp.sqrt(jnp.asarray(frequencies.shape[1], x.dtype))
    return scale * jnp.concatenate([jnp.cos(projections), jnp.sin(projections)], axis=1)
