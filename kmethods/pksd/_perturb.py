"""`perturb`: every point moved by T steps of a p-invariant transition."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from kmethods import _checks
from kmethods.pksd._modes import Modes, check_modes
from kmethods.pksd._transitions import Transition, as_transition
from kmethods.pksd._uniforms import uniform
from kmethods.pksd._validate import check_log_prob, check_log_prob_values, check_positive_scalar

PERTURB_MESSAGE = (
    "`log_prob` returned NaN or +inf at a point proposed by the perturbation (or, for MALA, "
    "its gradient was not finite where log p is): it must be finite, or -inf outside the "
    "support, everywhere the chains go."
)


def perturb(
    key: jax.Array,
    x: Float[ArrayLike, "n d"],
    log_prob: Callable[[Float[Array, " d"]], Float[Array, ""]],
    modes: Modes | None,
    theta: float | Float[ArrayLike, ""],
    *,
    num_steps: int = 10,
    transition: str | Transition = "mh_jump",
    pair: str = "uniform",
) -> Float[Array, "n d"]:
    """Moves every point of `x` by `num_steps` steps of a Markov kernel that leaves p invariant.

    Args:
      key: PRNG key.
      x: (n, d) sample.
      log_prob: unnormalised log density on one point, returning a scalar (a plain function,
        or a bound method of an `equinox.Module`, whose arrays are traced).
      modes: `Modes` (from `find_modes`) for a transition that needs them (mh_jump); unused
        (may be None) for MALA.
      theta: jump scale (mh_jump) or step size (mala), a positive scalar.
      num_steps: T, the number of transitions.
      transition: "mh_jump" (MH with the mode-jumping proposal), "mala", or a `Transition`
        (e.g. `kmethods.pksd.mh_jump(pair="nearest")`).
      pair: "uniform" or "nearest", how "mh_jump" picks the pair of modes (package docstring).

    Returns:
      (n, d), the perturbed sample, of x's dtype (float32 for float16 / bfloat16 input); each
      point moves independently of the others. Eagerly, a `log_prob` that is not finite at a
      point of `x`, or NaN or +inf at a proposed point, raises a ValueError naming it; under
      `jit`/`vmap` the points whose chains met such a value are NaN.
    """
    x, modes, transition = check_transition_args(x, log_prob, modes, transition, pair, min_points=1)
    num_steps = _checks.positive_int(num_steps, "num_steps")
    check_positive_scalar(theta, "theta")
    check_log_prob_values(log_prob, x)
    theta = jnp.asarray(theta, x.dtype)
    moved = perturb_core(key, x, theta, modes, log_prob, num_steps, transition)
    if _checks.is_concrete(moved) and not bool(jnp.all(jnp.isfinite(moved))):
        raise ValueError(PERTURB_MESSAGE)
    return moved


@eqx.filter_jit
def perturb_core(key, x, theta, modes, log_prob, num_steps, transition):
    params = transition.prepare(modes, x.dtype)
    u = uniform(key, (num_steps, x.shape[0], transition.uniforms_per_step(x.shape[1])), x.dtype)
    return run_chains(transition, u, x, theta, params, log_prob)


def run_chains(transition, u, x, theta, params, log_prob):
    """Transitions applied to every point independently, one per leading slice of the uniforms
    u, shape (T, n, k) (all drawn at once: each random call site costs compile time); theta is
    a scalar or one value per point, shape (n,).

    A point whose chain met garbage from `log_prob` (not finite at the start, NaN or +inf at a
    proposal; for MALA also a non-finite score where log p is finite) comes back as NaN: the
    chain is no longer p-invariant, and a NaN point makes the statistic NaN (no rejection)
    instead of a silently different sample.
    """
    theta = jnp.broadcast_to(theta, (x.shape[0],))
    step = lambda s, v, t: transition.step(s, v, t, params, log_prob)

    def advance(state, u_step):
        return jax.vmap(step)(state, u_step, theta), None

    state, _ = jax.lax.scan(advance, transition.init(x, log_prob), u)
    return jnp.where(state.bad[:, None], jnp.nan, state.x)


def perturb_all(transition, u, x, thetas, params, log_prob):
    """x perturbed at each theta from uniforms u of shape (L, T, n, k); (L, n, d). The L copies
    of x run as one batch of L n points (one vmap, not two: it compiles ~2x faster)."""
    num, (n, d) = thetas.shape[0], x.shape
    points = jnp.broadcast_to(x[None], (num, n, d)).reshape(num * n, d)
    u = jnp.swapaxes(u, 0, 1).reshape(u.shape[1], num * n, u.shape[-1])
    moved = run_chains(transition, u, points, jnp.repeat(thetas, n), params, log_prob)
    return moved.reshape(num, n, d)


def check_transition_args(
    x, log_prob, modes, transition, pair, *, min_points, modes_optional=False
):
    """Shared checks of `perturb` and `pksd_test`; returns x, the modes (or None) and the
    `Transition`."""
    transition = as_transition(transition, pair)
    x = _checks.as_points(x, "x", min_points=min_points)
    check_log_prob(log_prob, x)
    if modes is None:
        if transition.needs_modes and not modes_optional:
            raise ValueError(
                f"`modes` is required for a transition that jumps between modes ({transition!r}"
                "); see find_modes."
            )
        return x, None, transition
    return x, check_modes(modes, x.shape[1], x.dtype), transition
