"""Small helpers shared by the modules of `kmethods.sequences`: the working float dtype and the
padding convention of a batch of sequences."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Int


def float_dtype():
    """float32, or float64 in x64 mode: the dtype of every weight, kernel value and statistic."""
    return jnp.result_type(float)


def pad_sequences(
    seqs: Int[Array, "*batch w"], lengths: Int[Array, "*batch"], width: int
) -> Int[Array, "*batch width"]:
    """Zero-pads (..., W) to (..., width) and zeroes the padding positions (those >= length)."""
    pad = [(0, 0)] * (seqs.ndim - 1) + [(0, width - seqs.shape[-1])]
    seqs = jnp.pad(seqs.astype(jnp.int32), pad)
    t = jnp.arange(width, dtype=jnp.int32).reshape((1,) * (seqs.ndim - 1) + (width,))
    return jnp.where(t < lengths[..., None], seqs, 0)
