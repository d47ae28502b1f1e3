import json
import math

import jax
import numpy as np
import pytest

import kmethods as km
from experiments import load_config, run_experiment
from experiments.config import ConfigError
from experiments.tasks.skit_power import gammas, reference_skit


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_reference_transcription_agrees_with_skit(x64, getkey, bet):
    """The NumPy transcription of the authors' per-step computation is the same test."""
    x = np.asarray(jax.random.normal(getkey(), (60, 1)))
    y = 1.5 * x + np.asarray(jax.random.normal(getkey(), (60, 1)))
    gamma_x, gamma_y = gammas(1.5)
    reject, stopping_time, wealth = reference_skit(x, y, gamma_x, gamma_y, alpha=0.2, bet=bet)
    kx = km.Gaussian(math.sqrt(1 / (2 * gamma_x)))
    ky = km.Gaussian(math.sqrt(1 / (2 * gamma_y)))
    res = km.skit(getkey(), x, y, kx, ky, alpha=0.2, bet=bet)
    np.testing.assert_allclose(np.asarray(res.wealth), wealth, rtol=1e-9)
    assert (bool(res.reject), int(res.stopping_time)) == (reject, stopping_time)


def test_skit_power_tiny_run(tiny_run):
    run_dir, results = tiny_run(
        "skit_power",
        "sample_size=200 betas=[0.0,1.0] reference_streams=2 reference_backends=[numpy]",
        "num_streams=8",  # split over the 8 simulated devices
    )
    records = results["records"]
    assert {(r["beta"], r["bet"]) for r in records} == {
        (b, bet) for b in (0.0, 1.0) for bet in ("ons", "agrapa")
    }
    for r in records:
        assert 0.0 <= r["rejection_rate"] <= 1.0 and 0.0 < r["stopping_time_mean"] <= 1.0
        assert r["kseq_s"] > 0 and r["numpy_s_per_stream"] > 0
        assert r["reference_decisions_agree"] == 1.0 and r["num_nonfinite"] == 0
        assert r["reference_max_abs_log_wealth_diff"] < 1e-3  # float32 against float64
    strong = [r for r in records if r["beta"] == 1.0]
    assert all(r["rejection_rate"] >= 0.5 for r in strong)
    assert results["num_pairs"] == 100 and "speedup_vs_numpy_median" in results
    assert (run_dir / "plots" / "skit_power.png").is_file()


def test_seq_two_sample_tiny_run(tmp_path):
    tiny = [
        "params.num_steps=40",
        "params.dim=2",
        "params.shifts=[0.0,3.0,.nan]",  # NaN data: every stream's test is void
        "params.num_streams=8",
        "params.bets=[ons]",
    ]
    outcomes = []
    for devices in ("devices.count=1", "devices.count=8"):  # streams split over 8 devices
        run_dir = run_experiment(
            load_config("configs/seq_two_sample.yaml", [*tiny, devices]), tmp_path, quiet=True
        )
        results = json.loads((run_dir / "results.json").read_text())["results"]
        outcomes.append(
            [(r["rejection_rate"], r["stopping_time_mean"]) for r in results["records"]]
        )
    assert outcomes[0] == outcomes[1]  # the layout does not change a stream's outcome
    rates = {r["shift"]: r["rejection_rate"] for r in results["records"]}
    assert set(rates) == {0.0, 3.0, None} and rates[3.0] >= 0.5  # NaN is null in JSON
    # a void stream never rejects, and the count says how many there were
    nonfinite = {r["shift"]: r["num_nonfinite"] for r in results["records"]}
    assert nonfinite == {0.0: 0, 3.0: 0, None: 8} and rates[None] == 0.0
    assert results["bandwidth"] == pytest.approx(math.sqrt(2))
    assert (run_dir / "plots" / "seq_two_sample.png").is_file()


def test_configs_reject_bad_values():
    with pytest.raises(ConfigError, match="reference_streams"):
        load_config(
            "configs/skit_power.yaml", ["params.num_streams=2", "params.reference_streams=3"]
        )
    with pytest.raises(ConfigError, match="alpha"):
        load_config("configs/seq_two_sample.yaml", ["params.alpha=1.5"])
    with pytest.raises(ConfigError, match="bets"):
        load_config("configs/skit_power.yaml", ["params.bets=[kelly]"])
