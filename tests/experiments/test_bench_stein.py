import sys

import pytest

from experiments.tasks import bench_stein

pytest.importorskip("goodpoints.jax.dtc")


def test_bench_stein_tiny_run(tiny_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "coreax", None)  # a missing competitor is skipped
    methods = "methods=[kseq_stein_thin,gp_stein_thin,coreax_st_noreg,input]"
    _, results = tiny_run(
        "bench_stein", f"sample_sizes=[64] {methods} measure_memory=false", ignore_warnings=True
    )
    records = {r["method"]: r for r in results["records"]}
    assert "coreax" in records["coreax_st_noreg"]["skipped"]
    # the same greedy Stein thinning in both libraries: the same coreset, the same KSD
    assert records["kseq_stein_thin"]["ksd"] == pytest.approx(records["gp_stein_thin"]["ksd"])
    assert records["kseq_stein_thin"]["out_size"] == 8
    assert records["input"]["ksd"] < records["kseq_stein_thin"]["ksd"]
    (row,) = results["summary"]
    assert row["kseq_best"] == "kseq_stein_thin" and row["ksd_ratio"] == pytest.approx(1.0)
    assert results["versions"]["goodpoints"]


def test_bench_stein_config_checks_method_names():
    with pytest.raises(Exception, match="unknown"):
        bench_stein.Config(methods=("gp_kt",))
