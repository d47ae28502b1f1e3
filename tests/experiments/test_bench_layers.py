"""bench_layers at tiny sizes: records for each layer, form and direction, ratios to the default
form and to softmax attention, the Markdown table and the plot; over-budget plans skipped."""

import json

import pytest

from experiments import load_config, run_experiment
from experiments.config import ConfigError

TINY = [
    "params.lengths=[24]",
    "params.d_model=8",
    "params.num_heads=2",
    "params.state_size=4",
    "params.num_features=4",
    "params.chunk_size=8",
    "params.repeats=1",
    "devices.count=1",
]


def _records(tmp_path, overrides):
    run_dir = run_experiment(
        load_config("configs/bench_layers.yaml", overrides), tmp_path, quiet=True
    )
    return run_dir, json.loads((run_dir / "results.json").read_text())["results"]


def test_bench_layers_tiny_run(tmp_path):
    layers = "params.layers=[gateloop,gateloop:parallel,softmax]"
    run_dir, results = _records(tmp_path, [*TINY, layers])
    records = results["records"]
    assert {(r["layer"], r["form"]) for r in records} == {
        ("gateloop", "chunkwise"),
        ("gateloop", "parallel"),
        ("softmax", "-"),
    }
    assert len(records) == 6  # forward and forward+backward each
    for r in records:
        assert r["warm_s"] > 0 and r["temp_mb"] >= 0 and r["floor_mb"] > 0
        assert r["time_vs_softmax"] > 0
        if r["form"] == "-":
            assert r["time_vs_default"] is None
        else:
            assert r["time_vs_default"] > 0
    table = (run_dir / "table.md").read_text()
    assert table.startswith("| L | layer | form |") and table.count("\n") == 8
    assert (run_dir / "plots" / "layers.png").is_file()


def test_bench_layers_skips_over_budget(tmp_path):
    overrides = [*TINY, "params.layers=[lru]", "params.memory_budget_mb=0.000001"]
    _, results = _records(tmp_path, overrides)
    assert all("skipped" in r and "warm_s" not in r for r in results["records"])


@pytest.mark.parametrize("entry", ["lru:parallel", "gateloop:attention", "mamba"])
def test_bench_layers_rejects_unknown_entries(entry):
    with pytest.raises(ConfigError, match=r"params\.layers"):
        load_config("configs/bench_layers.yaml", [f"params.layers=[{entry}]"])
