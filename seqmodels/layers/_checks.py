"""Input checks and the compute dtype shared by the layers.

Every layer maps one sequence of shape (L, width) and says so when it gets anything else (a
batch, a wrong width, an empty sequence) before any work, rather than failing in a matrix
product or, worse, running along the wrong axis. float16 and bfloat16 inputs are computed in
float32, with the float32 parameters, and the output is cast back to the input dtype (flax's
`dtype` idea: the dtype of the activations is not the dtype of the accumulation).
"""

from __future__ import annotations

import jax.numpy as jnp

from seqmodels.scan import compute_dtype


def check_sequence(x, width, layer, name="d_model"):
    """Raises a ValueError unless `x` has shape (L, width) with L >= 1."""
    shape = jnp.shape(x)
    if len(shape) != 2 or shape[1] != width:
        raise ValueError(
            f"{layer} expected (L, {name}) = (L, {width}), got shape {shape}; use jax.vmap "
            "over a batch."
        )
    if shape[0] < 1:
        raise ValueError(f"{layer} needs a sequence of length L >= 1, got shape {shape}.")


def prepare_sequence(x, width, layer, name="d_model"):
    """`x` checked as (L, width) and cast to its compute dtype; returns (x, input dtype)."""
    x = jnp.asarray(x)
    check_sequence(x, width, layer, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer} expects floating point input, got dtype {x.dtype}.")
    return x.astype(compute_dtype(x.dtype)), x.dtype
