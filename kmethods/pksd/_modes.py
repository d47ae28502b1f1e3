"""Mode finding: BFGS from many starts, merged by Mahalanobis distance, with Hessians."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from kmethods import _checks
from kmethods.pksd._bfgs import bfgs
from kmethods.pksd._uniforms import uniform_index
from kmethods.pksd._validate import check_log_prob, check_positive_scalar

# A BFGS end point counts as a mode when a Newton step from it is shorter than this fraction of
# the merge radius (in the Mahalanobis norm of its Hessian).
_NEWTON_FRACTION = 0.5


class Modes(NamedTuple):
    """Local maxima of a log density found from M starting points, with a fixed size M.

    Attributes:
      locations: (M, d). The distinct modes come first, by decreasing log density.
      hessians: (M, d, d), H = -grad^2 log p at each location (positive definite at a mode).
      log_prob: (M,), log p at each location.
      mask: (M,) bool, True for the distinct modes (duplicates and failed starts are False).
    """

    locations: Float[Array, "M d"]
    hessians: Float[Array, "M d d"]
    log_prob: Float[Array, " M"]
    mask: Bool[Array, " M"]


def find_modes(
    start_points: Float[ArrayLike, "M d"],
    log_prob: Callable[[Float[Array, " d"]], Float[Array, ""]],
    *,
    threshold: float = 1.0,
    max_iterations: int = 100,
) -> Modes:
    """Modes of p by BFGS on -log p from each starting point, merged, with their Hessians.

    Every start runs BFGS (vmapped; a compact BFGS that compiles faster than
    `jax.scipy.optimize.minimize`, which it matches to float precision). An end point is kept as
    a candidate when log p is finite there, H = -grad^2 log p is positive definite and the
    Newton step g' H^{-1} g is below `threshold / 4` (it sits at a local maximum). Candidates
    are visited by decreasing log p and each is kept unless a kept mode lies within squared
    Mahalanobis distance `threshold` of it, (a - b)' (H_a + H_b) / 2 (a - b) < threshold. The
    authors' code merges the same way (greedily, threshold 1), with BFGS's inverse-Hessian
    estimate in place of the Hessian.

    Args:
      start_points: (M, d) starting points.
      log_prob: unnormalised log density on one point of shape (d,), returning a scalar (a
        plain function, or a bound method of an `equinox.Module`, whose arrays are traced).
      threshold: squared Mahalanobis radius under which two end points are one mode.
      max_iterations: BFGS iterations per start.

    Returns:
      `Modes` with M slots (fixed shapes, so this jits and vmaps); `mask` marks the modes.
    """
    starts = _checks.as_points(start_points, "start_points", min_points=1)
    check_log_prob(log_prob, starts)
    check_positive_scalar(threshold, "threshold")
    max_iterations = _checks.positive_int(max_iterations, "max_iterations")
    threshold = jnp.asarray(threshold, starts.dtype)
    return find_modes_core(starts, threshold, log_prob, max_iterations)


@eqx.filter_jit
def find_modes_core(starts, threshold, log_prob, max_iterations):
    """`find_modes` on checked input (jitted; also called inside `pksd_test`'s program)."""
    dtype = starts.dtype
    num, d = starts.shape

    def neg_log_prob(z):
        return -log_prob(z).astype(dtype)

    ends = jax.vmap(lambda z0: bfgs(neg_log_prob, z0, max_iterations))(starts)
    lp = jax.vmap(log_prob)(ends).astype(dtype)
    grads = jax.vmap(jax.grad(log_prob))(ends).astype(dtype)
    hess = -jax.vmap(jax.hessian(log_prob))(ends).astype(dtype)
    hess = 0.5 * (hess + jnp.swapaxes(hess, -1, -2))
    lam, vec = jnp.linalg.eigh(hess)
    coords = jnp.einsum("mij,mi->mj", vec, grads)
    newton = jnp.sum(coords**2 / jnp.where(lam > 0, lam, 1.0), axis=-1)
    valid = (
        jnp.isfinite(lp)
        & jnp.all(jnp.isfinite(ends), axis=-1)
        & jnp.all(jnp.isfinite(hess), axis=(-1, -2))
        & (jnp.min(lam, axis=-1) > 0)
        & (newton < _NEWTON_FRACTION**2 * threshold)
    )
    # Invalid slots get harmless values so that nothing downstream meets a NaN.
    eye = jnp.eye(d, dtype=dtype)
    ends = jnp.where(valid[:, None], ends, jnp.zeros_like(ends))
    hess = jnp.where(valid[:, None, None], hess, eye[None])
    lp = jnp.where(valid, lp, -jnp.inf)

    order = jnp.argsort(-lp)
    ends, hess, lp, valid = ends[order], hess[order], lp[order], valid[order]
    diff = ends[:, None, :] - ends[None, :, :]
    mean_hess = 0.5 * (hess[:, None] + hess[None, :])
    dist2 = jnp.einsum("abi,abij,abj->ab", diff, mean_hess, diff)

    def visit(keep, k):
        duplicate = jnp.any(keep & (dist2[k] < threshold))
        return keep.at[k].set(valid[k] & ~duplicate), None

    keep, _ = jax.lax.scan(visit, jnp.zeros(num, bool), jnp.arange(num))
    # Kept modes first (still by decreasing log p), so locations[:mask.sum()] are the modes.
    order = jnp.argsort(~keep, stable=True)
    return Modes(ends[order], hess[order], lp[order], keep[order])


def default_starts(u, x, spread):
    """Half of the starts are sample points, half uniform on the sample's bounding box scaled by
    `spread` about its centre (starts from the sample alone never reach a mode it missed); one
    start per row of the uniforms u, shape (M, d)."""
    n = x.shape[0]
    num_rows = u.shape[0] // 2
    rows = x[uniform_index(u[:num_rows, 0], n)]
    lo, hi = jnp.min(x, axis=0), jnp.max(x, axis=0)
    half = 0.5 * (hi - lo)
    half = jnp.where(half > 0, half, jnp.ones_like(half))
    box = (0.5 * (lo + hi))[None] + (spread * half)[None] * (2.0 * u[num_rows:] - 1.0)
    return jnp.concatenate([rows, box])


def check_modes(modes, d, dtype):
    """`modes` is a `Modes` of M slots in dimension d; returns it as arrays of `dtype`."""
    if not isinstance(modes, Modes):
        raise TypeError(f"`modes` must be a kmethods.pksd.Modes, got {type(modes).__name__}.")
    num = np.shape(modes.locations)[0] if np.ndim(modes.locations) == 2 else None
    expected = {
        "locations": (num, d),
        "hessians": (num, d, d),
        "log_prob": (num,),
        "mask": (num,),
    }
    for field, shape in expected.items():
        if num is None or np.shape(getattr(modes, field)) != shape:
            raise ValueError(
                f"`modes.{field}` must have shape {shape} for d = {d} (M modes), got "
                f"{np.shape(getattr(modes, field))}."
            )
    return Modes(
        jnp.asarray(modes.locations, dtype),
        jnp.asarray(modes.hessians, dtype),
        jnp.asarray(modes.log_prob, dtype),
        jnp.asarray(modes.mask, bool),
    )
