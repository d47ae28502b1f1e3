"""Input checks shared by `find_modes`, `perturb` and `pksd_test` (internal)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from kmethods import _checks


@eqx.filter_jit
def _log_prob_values(x, log_prob):
    return jax.vmap(log_prob)(x)


def check_log_prob_values(log_prob, x):
    """Eagerly, log p must be finite at every point of the sample (before any long work)."""
    if not _checks.is_concrete(x):
        return
    values = np.asarray(_log_prob_values(x, log_prob))
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(
            f"`log_prob` is {values[i]} at x[{i}]: it must be finite at every point of the "
            "sample (which must lie in the support of p)."
        )


def check_log_prob(log_prob, x):
    """`log_prob` maps one point of x, shape (d,), to a real scalar."""
    if not callable(log_prob):
        raise TypeError(
            f"`log_prob` must be a function of one point, got {type(log_prob).__name__}."
        )
    out = jax.eval_shape(log_prob, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    shape = getattr(out, "shape", None)
    if shape != () or not jnp.issubdtype(getattr(out, "dtype", np.int32), jnp.floating):
        raise ValueError(
            f"`log_prob` must map a point of shape {x.shape[1:]} to a real scalar; it returned "
            f"{getattr(out, 'shape', type(out).__name__)} "
            f"of dtype {getattr(out, 'dtype', None)}."
        )


def check_positive_scalar(value, name):
    """A positive scalar (a Python number or a 0-d array, possibly traced)."""
    if isinstance(value, (bool, str, bytes)) or value is None or np.ndim(value) != 0:
        raise TypeError(f"`{name}` must be a positive scalar, got {value!r}.")
    _checks.check_positive(value, name)


def check_thetas(thetas, dtype):
    """A non-empty 1-d array of positive values, as `dtype`."""
    if thetas is None or isinstance(thetas, (str, bytes)):
        raise TypeError(f"`thetas` must be a 1-d array of positive values, got {thetas!r}.")
    arr = jnp.asarray(thetas)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"`thetas` must be a non-empty 1-d array, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"`thetas` must hold real values, got dtype {arr.dtype}.")
    _checks.check_positive(arr, "thetas")
    return arr.astype(dtype)
