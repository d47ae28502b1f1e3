"""A posterior over the parameters of an ODE: the Lotka-Volterra target of Riabiz et al. (2022).

The predator-prey system

  du/dt = theta_1 u - theta_2 u v,    dv/dt = theta_4 u v - theta_3 v,    (u, v)(0) = (1, 1),

is observed at `num_obs` equally spaced times on (0, `horizon`] with independent Gaussian noise
of standard deviation `noise` on each coordinate; the parameters are phi = log theta in R^4
with a standard normal prior. The posterior of phi has no closed form, and its score
grad log p(phi | data) comes from JAX's automatic differentiation through a fixed-step
Runge-Kutta (RK4) solver, as in `seqmodels.cells.NeuralODECell`. Riabiz, Chen, Cockayne,
Swietach, Niederer, Mackey & Oates, "Optimal thinning of MCMC output", JRSS-B 2022, Section
4.2, thin MCMC output on this posterior (theta = (0.67, 1.33, 1, 1), 2400 observations on
[0, 25], noise 0.2); the sizes here are smaller (`LotkaVolterra`'s defaults), so that a chain of
2^12 states and its scores take seconds on a CPU.

A random-walk Metropolis chain started away from the posterior (`lotka_volterra_chain`) is the
biased sample: its burn-in contaminates it, as in the paper's MCMC output.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = [
    "LotkaVolterra",
    "lotka_volterra_chain",
    "lotka_volterra_data",
    "lotka_volterra_log_posterior",
    "lotka_volterra_scores",
    "lotka_volterra_solution",
    "random_walk_chain",
]

TRUE_THETA = (0.67, 1.33, 1.0, 1.0)


class LotkaVolterra(NamedTuple):
    """The observation model: `num_obs` times on (0, horizon], `steps_per_obs` RK4 steps
    between observations, Gaussian noise of standard deviation `noise`."""

    num_obs: int = 40
    horizon: float = 10.0
    steps_per_obs: int = 5
    noise: float = 0.2


DEFAULT_MODEL = LotkaVolterra()


def _field(state, theta):
    u, v = state[0], state[1]
    return jnp.stack([theta[0] * u - theta[1] * u * v, theta[3] * u * v - theta[2] * v])


def lotka_volterra_solution(
    theta: Float[Array, " 4"], model: LotkaVolterra = DEFAULT_MODEL
) -> Float[Array, "num_obs 2"]:
    """(u, v) at the observation times by RK4 from (1, 1), one `lax.scan` over the
    observations with `steps_per_obs` steps each."""
    dt = model.horizon / (model.num_obs * model.steps_per_obs)

    def rk4(state, _):
        k1 = _field(state, theta)
        k2 = _field(state + 0.5 * dt * k1, theta)
        k3 = _field(state + 0.5 * dt * k2, theta)
        k4 = _field(state + dt * k3, theta)
        return state + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), None

    def observe(state, _):
        state, _ = jax.lax.scan(rk4, state, None, length=model.steps_per_obs)
        return state, state

    _, path = jax.lax.scan(observe, jnp.ones(2, theta.dtype), None, length=model.num_obs)
    return path


def lotka_volterra_data(
    key: PRNGKeyArray, model: LotkaVolterra = DEFAULT_MODEL, dtype=jnp.float64
) -> Float[Array, "num_obs 2"]:
    """Noisy observations of the solution at the true parameters (0.67, 1.33, 1, 1)."""
    clean = lotka_volterra_solution(jnp.asarray(TRUE_THETA, dtype), model)
    return clean + model.noise * jax.random.normal(key, clean.shape, dtype)


def lotka_volterra_log_posterior(
    phi: Float[Array, " 4"], data: Float[Array, "num_obs 2"], model: LotkaVolterra = DEFAULT_MODEL
) -> Float[Array, ""]:
    """log p(phi | data) + const, phi = log theta: Gaussian likelihood of the RK4 solution,
    standard normal prior on phi."""
    residual = data - lotka_volterra_solution(jnp.exp(phi), model)
    return -0.5 * jnp.sum(residual**2) / model.noise**2 - 0.5 * jnp.sum(phi**2)


def lotka_volterra_scores(
    phis: Float[Array, "n 4"],
    data: Float[Array, "num_obs 2"],
    model: LotkaVolterra = DEFAULT_MODEL,
) -> Float[Array, "n 4"]:
    """grad log p(phi | data) at each row of phis, by reverse-mode autodiff through RK4."""
    return _scores(phis, data, model)


# One jitted function for every call (a jit built inside the call would compile each time).
_scores = jax.jit(
    jax.vmap(jax.grad(lotka_volterra_log_posterior), in_axes=(0, None, None)), static_argnums=2
)


def lotka_volterra_chain(
    key: PRNGKeyArray,
    data: Float[Array, "num_obs 2"],
    n: int,
    *,
    start: Float[Array, " 4"],
    step: float,
    model: LotkaVolterra = DEFAULT_MODEL,
) -> tuple[Float[Array, "n 4"], Float[Array, ""]]:
    """n states of a random-walk Metropolis chain on the posterior of phi from `start` (kept:
    the start is the first state), Gaussian proposals of standard deviation `step`; returns
    (states, acceptance rate)."""
    return _chain(
        key, data, jnp.asarray(start, data.dtype), jnp.asarray(step, data.dtype), n, model
    )


@partial(jax.jit, static_argnums=(4, 5))
def _chain(key, data, start, step, n, model):
    log_p = lambda phi: lotka_volterra_log_posterior(phi, data, model)
    return random_walk_chain(key, start, step, log_p, n)


def random_walk_chain(key, start, step, log_prob, n: int):
    """n states of a random-walk Metropolis chain on exp(log_prob) from `start` (d,) (the first
    state), Gaussian proposals of standard deviation `step`, one `lax.scan` (trace it inside
    `jit`); returns (states (n, d), acceptance rate). A proposal whose log density is not
    finite (an ODE solution that blew up) is rejected."""

    def move(carry, k):
        x, lp = carry
        k_prop, k_accept = jax.random.split(k)
        proposal = x + step * jax.random.normal(k_prop, x.shape, x.dtype)
        lp_proposal = log_prob(proposal)
        accept = jnp.log(jax.random.uniform(k_accept, (), x.dtype)) < lp_proposal - lp
        accept = accept & jnp.isfinite(lp_proposal)
        x, lp = jnp.where(accept, proposal, x), jnp.where(accept, lp_proposal, lp)
        return (x, lp), (x, accept)

    _, (chain, accepted) = jax.lax.scan(
        move, (start, log_prob(start)), jax.random.split(key, n - 1)
    )
    return jnp.concatenate([start[None], chain]), jnp.mean(accepted.astype(start.dtype))
