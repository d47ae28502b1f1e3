import pytest

from experiments import load_config


def test_bench_deer_tiny_run(tiny_run):
    # a Jacobian cap that skips Newton at H = 4 (200 * 16 float32 = 0.0122 MB) but not at H = 2
    run_dir, results = tiny_run(
        "bench_deer", "lengths=[200] hidden_sizes=[2,4] repeats=1 newton_max_jacobian_mb=0.01"
    )
    records = results["records"]
    by = {(r["H"], r["method"]): r for r in records}
    assert set(by) == {(h, m) for h in (2, 4) for m in ("sequential", "newton", "quasi")}
    assert "skipped" in by[(4, "newton")]
    for key in [(2, "newton"), (2, "quasi"), (4, "quasi")]:
        assert by[key]["converged"] and by[key]["max_deviation"] < 1e-4
        assert by[key]["iterations"] >= 1 and by[key]["warm_s"] > 0
    assert by[(2, "sequential")]["ratio_to_sequential"] == 1.0
    assert (run_dir / "plots" / "time_vs_hidden.png").is_file()


def test_train_deer_tiny_run_curves_coincide(tiny_run):
    run_dir, results = tiny_run("train_deer", "length=300 num_steps=4 num_train=4 num_test=4")
    seq, deer = results["runs"]["sequential"]["losses"], results["runs"]["newton"]["losses"]
    assert len(seq) == len(deer) == 4
    assert seq[0] != seq[-1]  # the parameters moved
    assert deer == pytest.approx(seq, abs=1e-5)
    assert results["summary"]["max_loss_gap"] < 1e-5
    assert results["summary"]["agreement_steps"] == {"newton": 4, "control": 4}
    assert (run_dir / "plots" / "loss_curves.png").is_file()


def test_agreement_steps():
    from experiments.tasks.train_deer import agreement_steps

    assert agreement_steps([1.0, 2.0, 3.0], [1.0, 2.05, 3.0], 0.1) == 3
    assert agreement_steps([1.0, 2.0, 3.0], [1.0, 2.5, 3.0], 0.1) == 1


def test_bench_deer_config_errors():
    with pytest.raises(ValueError, match="sequential"):
        load_config("configs/bench_deer.yaml", ["params.methods=[newton]"])
