import warnings

import jax
import numpy as np
import pytest

from experiments.tasks.bench_tests import hyppo_hsic_in_kseq, hyppo_mmd_in_kseq

hyppo = pytest.importorskip("hyppo")


def _hyppo(stat_fn, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stat_fn(*args))


def test_bench_tests_tiny_run_and_the_hyppo_mapping(tiny_run, getkey):
    """A tiny run of the benchmark, then the mapping written in bench_tests' docstring against
    hyppo's statistics at equal and unequal sample sizes. One test, so that hyppo's numba
    functions compile once (about 40 CPU s each time on a fresh install)."""
    run_dir, results = tiny_run(
        "bench_tests",
        "sample_sizes=[30] num_permutations=20 repeats=1 hyppo_reps_large=10",
        ignore_warnings=True,  # hyppo/numba deprecation warnings
    )
    records = results["records"]
    assert {(r["test"], r["null"]) for r in records} == {
        ("hsic", "permutation"),
        ("hsic", "gamma vs hyppo default"),
        ("mmd", "permutation"),
        ("mmd", "gamma vs hyppo default"),
    }
    for r in records:
        assert r["kseq_warm_s"] > 0 and r["hyppo_s"] > 0 and 0 < r["kseq_p"] <= 1
        assert r["kseq_num_nonfinite"] == 0
        if r["null"] == "permutation":
            assert r["statistic_rel_diff"] < 1e-8
    assert (run_dir / "plots" / "times.png").is_file()

    from hyppo.independence import Hsic
    from hyppo.ksample import MMD

    with jax.enable_x64(True):
        for n, m in [(40, 40), (30, 45)]:
            x = np.asarray(jax.random.normal(getkey(), (n, 3)))
            y = np.asarray(0.5 * x[:, :2] + jax.random.normal(getkey(), (n, 2)))
            hsic = _hyppo(Hsic().statistic, x, y)
            np.testing.assert_allclose(hyppo_hsic_in_kseq(x, y), hsic, rtol=1e-9)
            z = np.asarray(0.3 + jax.random.normal(getkey(), (m, 3)))
            mmd = _hyppo(MMD().statistic, x, z)
            np.testing.assert_allclose(hyppo_mmd_in_kseq(x, z), mmd, rtol=1e-9)
