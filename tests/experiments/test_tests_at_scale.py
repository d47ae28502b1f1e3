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
