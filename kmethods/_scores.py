"""A score function or array of scores: checked and evaluated once, for every Stein method.

`score` is grad log p, given as a function of one point or as an (n, d) array of its values at
the points (the convention of `kmethods.ksd2`)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from kmethods import _checks


def check_score_function(x, score):
    """Checks, without evaluating it, that `score` maps one point of `x` to a gradient of the
    same shape."""
    out = jax.eval_shape(score, x[0])
    if getattr(out, "shape", None) != x.shape[1:]:
        raise ValueError(
            f"`score` must map a point of shape {x.shape[1:]} to a gradient of the same shape; "
            f"it returned {getattr(out, 'shape', type(out).__name__)}."
        )


@eqx.filter_jit
def evaluate_score(score, x):
    # A user function enters jit through equinox's filter: a plain function is static (one
    # compile per function and shape), an equinox module's bound method is a pytree.
    return jax.vmap(score)(x)


def scores_at(x, score):
    """Validates `score`; evaluates it at x when it is a function. Returns (n, d) scores."""
    if callable(score):
        check_score_function(x, score)
        s = evaluate_score(score, x)
    else:
        s = jnp.asarray(score)
        if s.shape != x.shape:
            raise ValueError(
                f"`score` must be a function or an array of shape {x.shape} (one gradient of "
                f"log p per point), got shape {s.shape}."
            )
    _checks.check_finite(s, "score")
    dtype = common_float(x, s)
    return x.astype(dtype), s.astype(dtype)


def common_float(x, s):
    """The wider float type of x and of the scores s (at least float32): the promotion
    jnp.promote_types would give, written out so that it also holds under
    `jax_numpy_dtype_promotion="strict"` (scores in float32, or integer, with float64 x)."""
    floats = [
        _checks.compute_dtype(a.dtype) for a in (x, s) if jnp.issubdtype(a.dtype, jnp.floating)
    ]
    if not floats:
        return jnp.dtype(jnp.float32)
    return max(floats, key=lambda dtype: jnp.finfo(dtype).bits)
