"""The Lotka-Volterra posterior (Riabiz et al., 2022): the RK4 solution keeps the system's
conserved quantity, the score equals finite differences of the log posterior, and the
random-walk chain moves from a far start toward the truth."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.tasks.ode_posterior import (
    TRUE_THETA,
    LotkaVolterra,
    lotka_volterra_chain,
    lotka_volterra_data,
    lotka_volterra_log_posterior,
    lotka_volterra_scores,
    lotka_volterra_solution,
)


def _conserved(path, theta):
    """theta_4 u - theta_3 log u + theta_2 v - theta_1 log v, constant along exact solutions."""
    u, v = path[:, 0], path[:, 1]
    return theta[3] * u - theta[2] * np.log(u) + theta[1] * v - theta[0] * np.log(v)


def test_solution_scores_and_chain(x64):
    model = LotkaVolterra()
    theta = np.asarray(TRUE_THETA)
    path = np.asarray(lotka_volterra_solution(jnp.asarray(theta), model))
    assert path.shape == (model.num_obs, 2) and np.all(path > 0)
    start = _conserved(np.ones((1, 2)), theta)
    np.testing.assert_allclose(_conserved(path, theta), start[0], rtol=1e-6)

    data = lotka_volterra_data(jax.random.key(0), model)
    phis = jnp.log(jnp.asarray(theta))[None] + 0.05 * jax.random.normal(jax.random.key(1), (3, 4))
    scores = np.asarray(lotka_volterra_scores(phis, data, model))
    log_p = jax.jit(jax.vmap(lambda phi: lotka_volterra_log_posterior(phi, data, model)))
    h = 1e-6
    steps = h * np.eye(4)
    for phi, score in zip(np.asarray(phis), scores, strict=True):
        fd = (np.asarray(log_p(phi + steps)) - np.asarray(log_p(phi - steps))) / (2 * h)
        np.testing.assert_allclose(score, fd, rtol=1e-5, atol=1e-4)

    chain, rate = lotka_volterra_chain(
        jax.random.key(2), data, 400, start=jnp.zeros(4), step=0.02, model=model
    )
    chain = np.asarray(chain)
    assert chain.shape == (400, 4) and np.all(np.isfinite(chain)) and 0.05 < float(rate) < 0.9
    np.testing.assert_array_equal(chain[0], np.zeros(4))
    # the burn-in: the chain climbs from a start far in the tail (log density gap > 100) to
    # within a few units of the log density at the truth
    lp = np.asarray(log_p(jnp.asarray(chain[[0, -1]])))
    at_truth = float(log_p(jnp.log(jnp.asarray(theta))[None])[0])
    assert at_truth - lp[0] > 100 and lp[1] > at_truth - 10, (lp, at_truth)
