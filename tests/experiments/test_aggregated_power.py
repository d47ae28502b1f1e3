"""The aggregated_power task: its samplers, its binomial interval, and a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import load_config, run_experiment
from experiments.config import ConfigError
from experiments.tasks.aggregated_power import (
    binomial_interval,
    perturbed_density,
    perturbed_uniform,
    rbm_gibbs,
    rbm_model,
    rbm_score,
)

TINY = [
    "params.num_replicates=3",
    "params.num_permutations=19",
    "params.dimensions=[1]",
    "params.sample_sizes=[12]",
    "params.perturbations=[[0, 2]]",
    "params.perturbation_multipliers=[2.7]",
    "params.paper_sample_size=12",
    "params.paper_perturbations=[0, 1]",
    "params.rbm_sample_size=10",
    "params.rbm_sigmas=[0.0, 0.05]",
    "params.rbm_pool=30",
    "params.rbm_burnin=3",
    "devices.count=1",
]


def test_density_integrates_to_one_and_matches_the_paper_bump():
    """f is a density on [0, 1]^d (the perturbation integrates to 0), stays >= 0 at the
    paper's c_d, and one cell of d = 1 is 1 + c P^-s (G(P u - 1)) with G the paper's bump."""
    density = jax.jit(perturbed_density)
    p, c = 3, 2.7
    grid = (jnp.arange(4000, dtype=jnp.float32) + 0.5) / 4000
    theta = jnp.asarray([1.0, -1.0, 1.0])
    f = density(grid[:, None], theta, float(p), c / p)
    assert abs(float(jnp.mean(f)) - 1.0) < 1e-4 and float(jnp.min(f)) >= 0.0
    u = 0.1  # in the first cell, the bump half: G(t) = exp(-1 / (1 - (4 t + 3)^2))
    t = p * u - 1
    expected = 1 + c / p * np.exp(-1 / (1 - (4 * t + 3) ** 2))
    got = density(jnp.asarray([[u]]), theta, float(p), c / p)
    np.testing.assert_allclose(float(got[0]), expected, rtol=1e-5)
    g2 = (jnp.stack(jnp.meshgrid(grid[::20], grid[::20]), -1)).reshape(-1, 2)
    f2 = density(g2, jnp.ones(4), 2.0, 7.3 / 2)
    assert abs(float(jnp.mean(f2)) - 1.0) < 1e-3 and float(jnp.min(f2)) >= 0.0


def test_perturbed_uniform_samples_the_density():
    """Histogram of 40000 draws at P = 1, d = 1 against the density's cell means."""
    x, short = perturbed_uniform(jax.random.key(0), 40000, 1, 1, 2.7, 1.0, 1)
    assert not bool(short) and x.shape == (40000, 1)
    assert float(jnp.min(x)) >= 0.0 and float(jnp.max(x)) <= 1.0
    # with P = 1 the density is above 1 on (0, 1/2) or below it, by the sign theta
    left = float(jnp.mean(x < 0.5))
    assert abs(left - 0.5) > 0.1


def test_rbm_score_is_the_gradient_of_the_log_density():
    weights, b, c, _ = rbm_model(jax.random.key(1), dx=5, dh=3)

    def log_density(x):  # log sum_h exp(x'Bh/2 + b'x + c'h - |x|^2/2), h in {-1, 1}^dh
        a = 0.5 * x @ weights + c
        return x @ b - 0.5 * x @ x + jnp.sum(jnp.logaddexp(a, -a))

    x = jax.random.normal(jax.random.key(2), (4, 5))
    np.testing.assert_allclose(
        rbm_score(x, weights, b, c), jax.vmap(jax.grad(log_density))(x), rtol=1e-5, atol=1e-5
    )
    pool = rbm_gibbs(jax.random.key(3), weights, b, c, rows=7, burnin=2)
    assert pool.shape == (7, 5) and bool(jnp.all(jnp.isfinite(pool)))


def test_binomial_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for reps in (3, 60, 100, 500):
        assert binomial_interval(reps, 0.05) == tuple(
            int(v) for v in stats.binom.interval(0.99, reps, 0.05)
        )


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="experiments"):
        load_config("configs/aggregated_power.yaml", ["params.experiments=[mmdd]"])
    with pytest.raises(ConfigError, match="one entry per"):
        load_config("configs/aggregated_power.yaml", ["params.sample_sizes=[10]"])


@pytest.mark.parametrize(
    "experiments",
    [
        # the default suite leaves out the paper's setting (more programs to compile)
        ["mmd", "ksd"],
        pytest.param(["mmd", "mmd_paper", "ksd"], marks=pytest.mark.slow),
    ],
)
def test_aggregated_power_tiny_run(tmp_path, experiments):
    cfg = load_config(
        "configs/aggregated_power.yaml", [*TINY, f"params.experiments=[{','.join(experiments)}]"]
    )
    run_dir = run_experiment(cfg, tmp_path, quiet=True)
    results = json.loads((run_dir / "results.json").read_text())["results"]
    records = results["records"]
    levels = {"mmd": (0, 2), "mmd_paper": (0, 1), "ksd": (0.0, 0.05)}
    assert [(r["experiment"], r["level"]) for r in records] == [
        (e, level) for e in experiments for level in levels[e]
    ]
    for r in records:
        assert r["replicates"] == 3 and 0.0 <= r["agg"] <= 1.0 and 0.0 <= r["single"] <= 1.0
        assert r["difference"] == pytest.approx(r["agg"] - r["single"])
        assert ("level_interval99" in r) == (r["level"] == 0)
    assert all(r["num_sampling_shortfall"] == 0 for r in records if r["experiment"] != "ksd")
    assert set(results) >= {*experiments, "records"}
    assert (run_dir / "plots" / "aggregated_power.png").is_file()
