import pytest

from experiments import load_config
from experiments.config import ConfigError


def test_tests_at_scale_tiny_run(tiny_run):
    """Two methods at tiny sizes through the task's code path: one record per alternative,
    method and size, rates in [0, 1], times and the figure written."""
    run_dir, results = tiny_run(
        "tests_at_scale",
        "methods=[exact,block] 'sizes={exact: [32], block: [64]}'",
        "replicates=4 num_permutations=19",
        ignore_warnings=True,
    )
    records = results["records"]
    assert {(r["alternative"], r["method"], r["n"]) for r in records} == {
        (a, m, n) for a in ("shift", "mixture") for m, n in (("exact", 32), ("block", 64))
    }
    for r in records:
        assert 0 <= r["power"] <= 1 and 0 <= r["level"] <= 1
        assert r["replicates"] == 4 and r["time_s"] > 0 and r["compile_s"] > 0
        assert r["num_nonfinite_null"] == r["num_nonfinite_alt"] == 0
    assert set(results["best"]) == {"shift", "mixture"}
    assert (run_dir / "plots" / "tests_at_scale.png").exists()


@pytest.mark.parametrize(
    ("override", "name"),
    [
        ("params.methods=[exact, quadratic]", "methods"),
        ("params.sizes={exact: [8]}", "sizes.exact"),
        ("params.weight_difference=0.9", "weight_difference"),
        ("params.agg_permutations=10", "agg_permutations"),
    ],
)
def test_bad_config_names_the_key(override, name):
    with pytest.raises(ConfigError, match=name):
        load_config("configs/tests_at_scale.yaml", [override])


def test_harder_alternative_reaches_the_samplers():
    """`shift` and `weight_difference` (the keys of the harder alternative of the docs) set the
    shift family's second centre and the mixture's weights; the nulls stay the same."""
    import numpy as np

    from experiments.tasks.tests_at_scale import Config, mixtures

    easy, hard = mixtures(Config()), mixtures(Config(shift=0.02, weight_difference=0.01))
    centres, wx, wy = hard["shift"]
    assert centres[1, 0] == np.float32(0.02) and not centres[0].any()
    np.testing.assert_array_equal(wx, [1, 0, 0])
    np.testing.assert_array_equal(wy, [0, 1, 0])
    _, wx, wy = hard["mixture"]
    np.testing.assert_allclose(wx, [1 / 3] * 3, atol=1e-7)
    np.testing.assert_allclose(wy - wx, [0.01, -0.005, -0.005], atol=1e-7)
    for name in ("shift", "mixture"):  # the null (y from x's weights) does not depend on them
        np.testing.assert_array_equal(easy[name][1], hard[name][1])
    np.testing.assert_array_equal(easy["mixture"][0], hard["mixture"][0])
