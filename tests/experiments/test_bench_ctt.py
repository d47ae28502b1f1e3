import pytest

pytest.importorskip("goodpoints")


def test_bench_ctt_tiny_run(tiny_run):
    _, results = tiny_run(
        "bench_ctt",
        "sample_sizes=[256] g_values=[1] bins_per_sample=4 num_features=16 repeats=1",
        "rate_sizes=[256] replicates=2 kseq_only_sizes=[1024]",
        ignore_warnings=True,
    )
    records = results["records"]
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
