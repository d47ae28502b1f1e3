import json
import warnings

import pytest

from experiments import load_config, run_experiment

pytest.importorskip("goodpoints")


def test_bench_ctt_tiny_run(tmp_path):
    cfg = load_config(
        "configs/bench_ctt.yaml",
        [
            "params.sample_sizes=[256]",
            "params.g_values=[1]",
            "params.bins_per_sample=4",
            "params.num_features=16",
            "params.repeats=1",
            "params.rate_sizes=[256]",
            "params.replicates=2",
            "params.kseq_only_sizes=[1024]",
        ],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_dir = run_experiment(cfg, tmp_path, quiet=True)
    records = json.loads((run_dir / "results.json").read_text())["results"]["records"]
    assert {(r["method"], r["n"]) for r in records} == {
        ("ctt", 256),
        ("lrctt", 256),
        ("rff", 256),
        ("ctt", 1024),
    }
    for r in records:
        assert r["kseq_warm_s"] > 0
        if r["n"] == 256:
            assert r["gp_s"] > 0 and r["ratio_warm"] > 0
            assert 0 <= r["kseq_rate_null"] <= 1 and 0 <= r["gp_rate_alt"] <= 1
            assert r["kseq_num_nonfinite_null"] == 0
            assert -1 <= r["rate_difference_alt"] <= 1 and r["rate_difference_se_null"] >= 0
            assert 0 <= r["gp_halfwidth95_null"] <= 1
