import jax
import numpy as np

from experiments.tasks import stein_compression as sc


def test_coreset_ksd_weights_and_repeats_agree():
    with jax.enable_x64(True):
        x, scores = sc.target_sample(jax.random.key(0), "mixture", 64, sc.Config())
    repeated = sc.coreset_ksd(x, scores, np.array([0, 0, 1, 5]))
    weighted = sc.coreset_ksd(x, scores, np.array([0, 1, 5]), np.array([2.0, 1.0, 1.0]))
    assert np.isclose(repeated, weighted, rtol=1e-12) and repeated > 0
    assert np.isclose(sc.left_mass(x, np.arange(64)), np.mean(np.asarray(x)[:, 0] < 0))
    # the burn-in chain (the tiny run below covers the ODE posterior's)
    with jax.enable_x64(True):
        chain, chain_scores = sc.target_sample(jax.random.key(1), "mcmc", 64, sc.Config())
    np.testing.assert_array_equal(np.asarray(chain)[0], sc.Config().mcmc_start)
    assert chain.shape == chain_scores.shape == (64, 2) and np.all(np.isfinite(chain_scores))


def test_stein_compression_tiny_run(tiny_run):
    run_dir, results = tiny_run(
        "stein_compression",
        "sample_sizes=[32,64] methods=[uniform,stein_thin] targets=[lotka_volterra]",
    )
    rows = {(r["target"], r["n"], r["method"]): r for r in results["ksd"]}
    assert len(rows) == 2 * 3  # two n, two methods and the input
    assert rows["lotka_volterra", 64, "stein_thin"]["left_mass_median"] is None
    for target in ("lotka_volterra",):
        # Stein thinning beats the uniform subsample of the biased sample
        ksd = {m: rows[target, 64, m]["ksd_median"] for m in ("stein_thin", "uniform")}
        assert ksd["stein_thin"] < ksd["uniform"]
    assert {s["method"] for s in results["slopes"]} >= {"uniform", "stein_thin", "input"}
    assert (run_dir / "plots" / "stein_compression.png").is_file()
