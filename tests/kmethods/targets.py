"""Targets and biased samples shared by the Stein-compression tests."""

import jax
import jax.numpy as jnp


def _modes(dtype):
    return jnp.array([[-2.0, 0.0], [2.0, 0.0]], dtype)


def biased_mixture(key, n, left=0.8):
    """The biased sample: `left` / 1 - `left` draws of the modes (-2, 0), (2, 0) of the target
    0.5 N((-2, 0), I) + 0.5 N((2, 0), I) (the debiased compression paper's example)."""
    k1, k2 = jax.random.split(key)
    right = jax.random.bernoulli(k1, 1.0 - left, (n,))
    noise = jax.random.normal(k2, (n, 2))
    modes = _modes(noise.dtype)
    return jnp.where(right[:, None], modes[1], modes[0]) + noise


def mixture_log_p(v):
    """log density (unnormalised) of the target 0.5 N((-2, 0), I) + 0.5 N((2, 0), I)."""
    return jax.nn.logsumexp(-0.5 * jnp.sum((v[None] - _modes(v.dtype)) ** 2, axis=-1))


mixture_score = jax.grad(mixture_log_p)
