"""A compact BFGS whose line search has no inner loop (internal)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Step lengths tried at once by the backtracking line search: 1, 1/2, ..., 2^-19.
_LINE_SEARCH_STEPS = 20
_ARMIJO = 1e-4


def bfgs(fun, z0, max_iterations):
    """Minimises `fun` from z0 by BFGS (Nocedal & Wright, 2006, Algorithm 6.1) with a
    backtracking Armijo line search whose step lengths 1, 1/2, 1/4, ... are evaluated all at
    once, so the loop body has no inner loop: this compiles in a fraction of the time of
    `jax.scipy.optimize.minimize(method="BFGS")` (whose zoom line search nests while loops)
    and vmaps over starts and replicates. Stops after `max_iterations` or when the gradient
    is zero to working precision. Returns the end point."""
    dtype, d = z0.dtype, z0.shape[0]
    eye = jnp.eye(d, dtype=dtype)
    steps = 0.5 ** jnp.arange(_LINE_SEARCH_STEPS, dtype=dtype)
    tol = jnp.finfo(dtype).eps ** 0.75

    def cond(state):
        it, _, f, g, _ = state
        return (it < max_iterations) & jnp.isfinite(f) & (jnp.max(jnp.abs(g)) > tol)

    def body(state):
        it, z, f, g, inv_h = state
        direction = -inv_h @ g
        slope = g @ direction
        ascent = ~(slope < 0)  # a stale inverse Hessian: fall back to steepest descent
        direction = jnp.where(ascent, -g, direction)
        slope = jnp.where(ascent, -(g @ g), slope)
        trials = z[None, :] + steps[:, None] * direction[None, :]
        values = jax.vmap(fun)(trials)
        good = jnp.isfinite(values) & (values <= f + _ARMIJO * steps * slope)
        moved = jnp.any(good)
        z_new = jnp.where(moved, trials[jnp.argmax(good)], z)
        f_new, g_new = jax.value_and_grad(fun)(z_new)
        s, y = z_new - z, g_new - g
        sy = s @ y
        # Scale the first inverse Hessian to the curvature just seen (N & W, eq. 6.20).
        inv_h = jnp.where((it == 0) & (sy > 0), sy / (y @ y) * eye, inv_h)
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        left = eye - rho * jnp.outer(s, y)
        updated = left @ inv_h @ left.T + rho * jnp.outer(s, s)
        inv_h = jnp.where(sy > 1e-10 * jnp.sqrt((s @ s) * (y @ y)), updated, inv_h)
        # No acceptable step: stop (the gradient test alone would loop to max_iterations).
        it = jnp.where(moved, it + 1, max_iterations)
        return it, z_new, f_new, g_new, inv_h

    f0, g0 = jax.value_and_grad(fun)(z0)
    state = (jnp.zeros((), jnp.int32), z0, f0, g0, eye)
    return jax.lax.while_loop(cond, body, state)[1]
