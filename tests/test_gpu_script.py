"""benchmarks/gpu.sh: valid bash, and every config it runs loads with the overrides it passes,
in the profile and in the smoke mode (read from the script's own table of runs)."""

import pathlib
import re
import shutil
import subprocess

import pytest

from experiments.config import load_config

ROOT = pathlib.Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.sh"


def runs() -> list[dict]:
    """The rows of the script's table: label, config, time limit, profile and smoke overrides."""
    text = SCRIPT.read_text()
    match = re.search(r"<<'END_OF_RUNS'\n(.*?)\nEND_OF_RUNS\n", text, re.S)
    assert match, "gpu.sh has no table of runs"
    rows = []
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        label, config, limit, full, smoke = line.split("|")
        rows.append(
            {
                "label": label,
                "config": config,
                "limit": int(limit),
                "full": full.split(),
                "smoke": smoke.split(),
            }
        )
    return rows


def test_gpu_script_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(SCRIPT)], check=True)


def test_gpu_script_usage_without_out():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    proc = subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_gpu_script_runs_the_bench_configs_within_its_budget():
    table = runs()
    configs = {row["config"] for row in table}
    for name in ("bench_tests", "bench_thinning", "bench_scan", "bench_deer"):
        assert f"configs/{name}.yaml" in configs
    # the time limits leave room for start-up and the hardware report in 8 minutes
    assert sum(row["limit"] for row in table) <= 7.5 * 60
    labels = [row["label"] for row in table]
    assert len(set(labels)) == len(labels)


@pytest.mark.parametrize("mode", ["full", "smoke"])
@pytest.mark.parametrize("row", runs(), ids=lambda row: row["label"])
def test_gpu_script_configs_load(row, mode):
    assert (ROOT / row["config"]).is_file()
    for kv in row[mode]:
        assert "=" in kv, kv
    cfg = load_config(ROOT / row["config"], row[mode])
    # the run's folder name under OUT: distinct runs of one config get distinct names
    if row["label"] != row["config"].rsplit("/", 1)[1].removesuffix(".yaml"):
        assert cfg.name == row["label"]
