"""What every layer shares: the input check that names the argument, and the dtype policy.

Dtypes follow flax's two knobs. `param_dtype` is the dtype the parameters are created in (the
default float: float32, or float64 with x64 enabled); `dtype` is the dtype of the computation
and of the output, or None for the input's dtype. Whatever the two, what accumulates over time
(recurrent states, decays and their logarithms, convolution sums) is computed in at least
float32 (`compute_dtype`): in bfloat16 a state near 300 does not change by adding 1, and a
decay of 0.999 rounds to 1. So `dtype=jnp.bfloat16` runs the projections (the matrix products
with the weights) in bfloat16 and rounds each layer's output to it, while states and decays
stay float32; with `dtype=None`, bfloat16 inputs are computed in float32 throughout and
rounded once at the end.

Complex parameters (LRU, S5) and complex states (GateLoop) are at least complex64: there is no
bfloat16 complex type.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from seqmodels._checks import common_dtype, compute_dtype

__all__ = [
    "cast",
    "check_dtype",
    "complex_of",
    "layer_input",
    "param_dtype_of",
    "param_init_dtype",
    "real_of",
]


def check_dtype(dtype, name):
    """`dtype` as a real floating `jnp.dtype`, None as None; a ValueError naming `name`."""
    if dtype is None:
        return None
    try:
        out = jnp.dtype(dtype)
    except TypeError:
        out = None
    if out is None or not jnp.issubdtype(out, jnp.floating):
        raise ValueError(f"`{name}` must be a real floating dtype or None, got {dtype!r}.")
    return out


def param_init_dtype(param_dtype):
    """The dtype parameters are created in: `param_dtype` checked, or the default float
    (float32; float64 with x64 enabled) for None."""
    param_dtype = check_dtype(param_dtype, "param_dtype")
    return jnp.dtype(jnp.result_type(float)) if param_dtype is None else param_dtype


def real_of(dtype):
    """The real dtype of `dtype` (float32 for complex64)."""
    return jnp.finfo(dtype).dtype


def complex_of(dtype):
    """The complex dtype that holds `dtype`: complex128 for float64, complex64 below."""
    return jnp.dtype(jnp.complex128 if real_of(dtype) == jnp.float64 else jnp.complex64)


def param_dtype_of(module):
    """The real dtype that the inexact arrays of `module` promote to (float32 for float32
    weights and complex64 ones)."""
    leaves = jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))
    return real_of(common_dtype(*leaves)) if leaves else jnp.dtype(jnp.float32)


def cast(tree, dtype):
    """The inexact arrays of `tree` cast to `dtype` (complex ones to `complex_of(dtype)`);
    other leaves unchanged. A cast to an array's own dtype is a no-op."""

    def leaf(x):
        if not eqx.is_inexact_array(x):
            return x
        return x.astype(complex_of(dtype) if jnp.iscomplexobj(x) else dtype)

    return jax.tree.map(leaf, tree)


def layer_input(x, width, layer, *, dtype, params, argument="x", name="d_model", token=False):
    """Checks and casts a layer's input. `x` must have shape (L, width), L >= 1 (or (width,)
    with `token`, one step), and be floating point. Returns (x in the work dtype, work, out):
    `work` is the layer's `dtype`, or with None the compute dtype of x and the parameters
    (`params`, a dtype) promoted; `out`, the output dtype, is `dtype` or x's dtype."""
    x = jnp.asarray(x)
    shape = jnp.shape(x)
    want, rank = (
        ((f"({name},)", f"({width},)"), 1) if token else ((f"(L, {name})", f"(L, {width})"), 2)
    )
    if len(shape) != rank or shape[-1] != width:
        where = f"{layer}.step" if token else layer
        raise ValueError(
            f"{where} expected {want[0]} = {want[1]} for `{argument}`, got shape {shape} "
            f"(rank {len(shape)}); use jax.vmap over a batch (seqmodels.flax takes batch-first "
            "(B, L, D) arrays)."
        )
    if not token and shape[0] < 1:
        raise ValueError(f"{layer} needs a sequence of length L >= 1, got shape {shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{layer} expects floating point `{argument}`, got dtype {x.dtype}.")
    if dtype is None:
        work, out = compute_dtype(common_dtype(x.dtype, params)), x.dtype
    else:
        work, out = jnp.dtype(dtype), jnp.dtype(dtype)
    return x.astype(work), work, out
