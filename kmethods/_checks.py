"""Input validation shared by the public functions.

Every check runs on concrete arrays only: under `jit`/`vmap` the arrays are tracers and the
checks that need values (finiteness, positivity) are skipped, while shape checks always run.
Checks happen in Python before any compiled work starts, so bad input fails fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when `x` holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def as_points(x, name: str, *, min_points: int = 2) -> jax.Array:
    """Validates a sample of points: a floating (n, d) array of finite values, n >= min_points.

    A 1-d array of length n is read as n points in one dimension. Half-precision samples
    (float16, bfloat16) are cast to float32: every statistic sums O(n^2) terms, which float16
    overflows (n(n - 1) > 65504 at n = 257) and bfloat16's 8-bit mantissa rounds away, so the
    library computes and returns float32 for them (as flax's `dtype` for computation).
    """
    x = as_array(x, name, "(n, d)")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
            x = x.astype(jnp.result_type(float))
        else:
            raise TypeError(f"`{name}` must hold real floating values, got dtype {x.dtype}.")
    x = at_least_float32(x)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, d) or (n,), got shape {x.shape}.")
    if x.shape[0] < min_points:
        raise ValueError(f"`{name}` needs at least {min_points} points, got {x.shape[0]}.")
    if x.shape[1] < 1:
        raise ValueError(f"`{name}` has zero dimensions (shape {x.shape}).")
    check_finite(x, name)
    return x


def as_array(x, name: str, shape: str, *, integer: bool = False) -> jax.Array:
    """`x` as a JAX array, after the checks that `jnp.asarray` does not make: a TypeError naming
    it for a string, None, or a NumPy array that does not hold real numbers (integers when
    `integer`). `shape` is the expected shape, as text for the error."""
    if isinstance(x, (str, bytes)) or x is None:
        array = "an integer array" if integer else "an array"
        raise TypeError(f"`{name}` must be {array} of shape {shape}, got {type(x).__name__}.")
    kinds, holding = ("iu", "integers") if integer else ("biuf", "real numbers")
    if isinstance(x, np.ndarray) and x.dtype.kind not in kinds:
        raise TypeError(f"`{name}` must hold {holding}, got dtype {x.dtype}.")
    return jnp.asarray(x)


def compute_dtype(dtype):
    """float32 for a float narrower than it (float16, bfloat16), else `dtype`: what sums of
    O(n^2) terms are accumulated in."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return dtype


def at_least_float32(x):
    """`x` cast to its `compute_dtype` (float32 for float16, bfloat16), else unchanged."""
    dtype = compute_dtype(x.dtype)
    return x if dtype == x.dtype else x.astype(dtype)


def promote(*arrays):
    """Casts arrays to their common dtype (samples of mixed precision compare as one)."""
    dtype = jnp.result_type(*arrays)
    return tuple(a.astype(dtype) for a in arrays)


def check_finite(x, name: str) -> None:
    if is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"`{name}` contains NaN or inf values.")


def point_weights(weights, n: int, dtype, name: str = "weights", *, simplex: bool):
    """`weights` as an (n,) array of `dtype`, one per point: the shape is always checked; when
    concrete, the values are finite and nonnegative and, with `simplex`, sum to 1 within
    sqrt(eps) of `dtype` (else to a positive total). A ValueError names `name`."""
    w = as_array(weights, name, f"({n},)")
    if w.shape != (n,):
        raise ValueError(f"`{name}` must have shape ({n},) (one per point), got {w.shape}.")
    w = w.astype(dtype)
    if is_concrete(w):
        a = np.asarray(w, np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError(f"`{name}` contains NaN or inf values.")
        if np.any(a < 0):
            raise ValueError(f"`{name}` must be nonnegative, got a minimum of {a.min():.3g}.")
        if simplex and not abs(a.sum() - 1.0) <= float(np.sqrt(np.finfo(dtype).eps)):
            raise ValueError(
                f"`{name}` must sum to 1 (simplex weights), got a sum of {a.sum():.8g}."
            )
        if not a.sum() > 0:
            raise ValueError(f"`{name}` must have a positive sum.")
    return w


def nan_unless_finite(value, *arrays):
    """`value` where every entry of `arrays` is finite, else NaN: the in-jit counterpart of
    `check_finite`, for statistics that a non-finite input could leave finite (an inf point
    is merely "far" to a kernel, and masked diagonals drop NaNs)."""
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))
    return jnp.where(finite, value, jnp.nan).astype(value.dtype)


def check_positive(value, name: str) -> None:
    """Raises if a concrete scalar (or every entry of an array) is not > 0."""
    if value is None or not is_concrete(value):
        return
    arr = np.asarray(value)
    if not np.all(np.isfinite(arr)) or not np.all(arr > 0):
        raise ValueError(f"`{name}` must be positive and finite, got {value!r}.")


def same_dimension(x, y, name_x: str, name_y: str) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`{name_x}` and `{name_y}` must have the same dimension d, got "
            f"{x.shape[1]} and {y.shape[1]}."
        )


def same_length(x, y, name_x: str, name_y: str) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"`{name_x}` and `{name_y}` must hold the same number of points (paired samples), "
            f"got {x.shape[0]} and {y.shape[0]}."
        )


def choice(value, name: str, options) -> None:
    if value not in options:
        raise ValueError(f"`{name}` must be one of {tuple(options)}, got {value!r}.")


def positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


def probability(value, name: str, *, traced_ok: bool = False):
    """A float in (0, 1). With `traced_ok`, a traced scalar (e.g. a level vmapped over) passes
    through unchecked: the caller uses it only inside compiled code."""
    if traced_ok and isinstance(value, jax.core.Tracer):
        if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"`{name}` must be a scalar float, got {value.dtype}{value.shape}.")
        return value
    if isinstance(value, (jax.Array, np.ndarray)) and value.shape == () and is_concrete(value):
        if jnp.issubdtype(value.dtype, jnp.floating):
            value = float(value)
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"`{name}` must be a Python float, not a traced value: it fixes a static part of "
            "the computation; loop over its values in Python instead of jit/vmap."
        )
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"`{name}` must be a float in (0, 1), got {type(value).__name__}.")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"`{name}` must lie in (0, 1), got {value}.")
    return float(value)


def flag(value, name: str) -> bool:
    """A Python bool (a string such as "no" is truthy, so it is refused, not read as True)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
    return bool(value)


def block_size(value, name: str = "block_size") -> int | None:
    """None (the default size) or a positive int: rows of a pairwise matrix held at once."""
    if value is None:
        return None
    return positive_int(value, name)


def as_traced(tree):
    """`tree` with its Python-number leaves as arrays. `equinox.filter_jit` (how user functions
    enter `jit` here) treats non-array leaves as static: a kernel built as `Gaussian(1.0)`
    would otherwise compile once per bandwidth value instead of once per shape."""

    def leaf(v):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return jnp.asarray(v)
        return v

    return jax.tree.map(leaf, tree)


# A bandwidth h enters as r^2 / h^2; outside this range h^2 under- or overflows float32 (the
# profiles divide by h twice, so the kernel itself stays finite, but a kernel that is the
# identity matrix or all ones is a misplaced scale, not a choice).
BANDWIDTH_RANGE = (1e-18, 1e18)


def check_bandwidth(bandwidth, name="bandwidth"):
    """A kernel bandwidth: a real positive number (or array of them) within `BANDWIDTH_RANGE`
    when concrete; a traced one is checked where it is concrete."""
    if isinstance(bandwidth, (str, bytes)) or bandwidth is None:
        raise TypeError(f"`{name}` must be a positive number, got {bandwidth!r}.")
    if isinstance(bandwidth, complex) or (
        hasattr(bandwidth, "dtype") and jnp.issubdtype(bandwidth.dtype, jnp.complexfloating)
    ):
        raise TypeError(f"`{name}` must be a real positive number, got {bandwidth!r}.")
    check_positive(bandwidth, name)
    if bandwidth is not None and not isinstance(bandwidth, jax.core.Tracer):
        arr = np.asarray(bandwidth)
        low, high = BANDWIDTH_RANGE
        if np.any(arr < low) or np.any(arr > high):
            raise ValueError(
                f"`{name}` must lie in [{low:g}, {high:g}], got {bandwidth!r}: its square "
                "under- or overflows float32. Rescale the data instead."
            )
