import numpy as np
import pytest

from experiments import show_run
from experiments.tasks.kt_mmd_rate import fitted_slope


def test_fitted_slope():
    ns = np.array([16, 64, 256, 1024])
    assert fitted_slope(ns, 3.0 * ns**-0.5) == pytest.approx(-0.5)


def test_kt_mmd_rate_tiny_run(tiny_run):
    run_dir, results = tiny_run(
        "kt_mmd_rate",
        "sample_sizes=[16,64] dims=[2] datasets=[gaussian] methods=[iid,kt]",
        "repeats=1 slope_range=[16,64]",
    )
    mmd = {(r["n"], r["method"]): r["mmd_median"] for r in results["mmd"]}
    assert set(mmd) == {(n, m) for n in (16, 64) for m in ("iid", "kt")}
    assert mmd[(64, "kt")] < mmd[(64, "iid")]
    assert {s["method"] for s in results["slopes"]} == {"iid", "kt"}
    assert (run_dir / "plots" / "mmd_rate.png").is_file()


def test_bench_thinning_tiny_run(tiny_run):
    pytest.importorskip("goodpoints")
    run_dir, results = tiny_run(
        "bench_thinning",
        "sample_sizes=[64] dims=[2] repeats=1 g=1 compresspp_only_sizes=[]",
        "methods=[kt]",
    )
    (record,) = results["records"]
    assert record["n"] == 64 and record["out_size"] == 8
    for path in ("gp_matrix", "gp_thin"):
        assert record[f"{path}_s"] > 0 and record[f"{path}_mmd"] > 0
    # the fresh-process measurement ran and saw the libraries' baseline below the peak
    assert record["kseq_peak_mb"] >= record["kseq_peak_over_base_mb"] > 0
    assert (run_dir / "plots" / "thinning.png").is_file()
    assert "gp_matrix_ratio_warm" in show_run(run_dir)  # records render as one table


def test_bench_thinning_plot_with_no_mmd_measured(tmp_path):
    # Every n above `mmd_max_n`: the MMD axis has labelled but empty lines, which matplotlib
    # refused to log-scale at savefig (the run then failed after all its work).
    from experiments.tasks import bench_thinning

    records = [
        {"d": 2, "method": m, "n": 1024, "kseq_warm_s": 0.01, "kseq_mmd": None}
        for m in ("kt", "compresspp")
    ]
    records[1]["gp_compresspp_kt"] = {"s": 0.03, "mmd": None}
    saved = []

    class Context:
        def save_figure(self, fig, name):
            path = tmp_path / f"{name}.png"
            fig.savefig(path)
            saved.append(path)

    bench_thinning._plot(records, Context())
    assert saved and saved[0].stat().st_size > 0
