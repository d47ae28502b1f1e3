"""Input checks and compute dtypes shared by the solvers and the layers.

Below float32 a long recurrence is wrong, and wrong differently per solver, so float16 and
bfloat16 inputs are computed in float32 (flax's `dtype` idea: the storage dtype is not the
accumulation dtype) and the result is rounded once at the end.

Every layer maps one sequence of shape (L, width) and says so when it gets anything else (a
batch, a wrong width, an empty sequence) before any work, rather than failing in a matrix
product or, worse, running along the wrong axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "check_positive_int",
    "check_sequence",
    "common_dtype",
    "compute_dtype",
    "head_sizes",
    "prepare_sequence",
]


def common_dtype(*arrays):
    """The dtype the inputs promote to under NumPy's rules (real and complex mix on purpose
    here, so this holds even under `jax_numpy_dtype_promotion="strict"`)."""
    with jax.numpy_dtype_promotion("standard"):
        return jnp.result_type(*arrays)


# In bfloat16 the sum of 4096 ones stops at 256 sequentially (256 + 1 rounds back to 256) and
# reaches 4032 by the tree.
_LOW_PRECISION = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def compute_dtype(dtype):
    """The dtype a recurrence on `dtype` accumulates in: float32 for float16 and bfloat16,
    `dtype` itself otherwise (float32, float64, complex)."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in _LOW_PRECISION else dtype


def check_positive_int(value, name):
    """`value` as an int, or a ValueError naming `name` (bools, floats, arrays rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def head_sizes(d_model, num_heads, head_dim):
    """(num_heads, head_dim, num_heads * head_dim) of a multi-head layer, checked; `head_dim`
    None means d_model // num_heads (at least 1)."""
    num_heads = check_positive_int(num_heads, "num_heads")
    if head_dim is not None:
        head_dim = check_positive_int(head_dim, "head_dim")
    head_dim = head_dim or max(1, d_model // num_heads)
    return num_heads, head_dim, num_heads * head_dim


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
