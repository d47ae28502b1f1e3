"""Runs survive SIGKILL: killed at random moments and resumed with `kseq run --resume`, the
quickstart gives the results of an uninterrupted run and recomputes no finished unit."""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import pytest

from experiments import load_config, resume_experiment, run_experiment

TINY = [
    "params.tests=[mmd,ksd]",
    "params.sample_sizes=[20]",
    "params.num_replicates=8",
    "params.num_permutations=20",
    "devices.count=1",
]
UNITS = 2  # (mmd, ksd) x one n
KSEQ = [sys.executable, "-m", "experiments.cli"]


def _results(run_dir):
    return json.loads((pathlib.Path(run_dir) / "results.json").read_text())


def test_resume_in_process_reuses_units(tmp_path):
    cfg = load_config("configs/quickstart.yaml", TINY)
    run_dir = run_experiment(cfg, tmp_path, quiet=True)
    first = _results(run_dir)
    reference = first["results"]
    units = sorted((run_dir / "units").glob("*.json"))
    assert len(units) == UNITS
    # lose a unit and the results, as a kill would
    units[1].unlink()
    (run_dir / "results.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in units if p.exists()}
    # a resume may change how it computes (the devices), never the experiment
    resume_experiment(run_dir, quiet=True, overrides=["devices.count=2"])
    resumed = _results(run_dir)
    assert resumed["results"] == reference
    assert resumed["meta"]["resumed_units"] == UNITS - 1
    # the run keeps the time it first started, and records the resume
    assert resumed["meta"]["started"] == first["meta"]["started"]
    assert len(resumed["meta"]["resumed"]) == 1
    assert {p.name: p.stat().st_mtime_ns for p in units if p.name in mtimes} == mtimes


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Five kills at random moments of a run (seeded), each followed by a resume (about two
    minutes: eleven fresh processes, each importing JAX and compiling; `pytest -m slow`)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    overrides = [a for o in TINY for a in ("--set", o)]
    start = time.perf_counter()
    subprocess.run(
        [
            *KSEQ,
            "run",
            "configs/quickstart.yaml",
            *overrides,
            "--out",
            str(tmp_path / "ref"),
            "--quiet",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    full = time.perf_counter() - start
    (ref_dir,) = (tmp_path / "ref" / "quickstart").iterdir()
    reference = _results(ref_dir)["results"]
    rng = random.Random(0)
    outcomes = []
    for trial in range(5):
        out = tmp_path / f"trial{trial}"
        proc = subprocess.Popen(
            [*KSEQ, "run", "configs/quickstart.yaml", *overrides, "--out", str(out), "--quiet"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            proc.wait(timeout=rng.uniform(0.3, 1.0) * full)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        runs = list((out / "quickstart").glob("*")) if (out / "quickstart").exists() else []
        if not runs or not (runs[0] / "config.yaml").exists():
            outcomes.append("before config")
            continue  # killed before the run folder was made: nothing to resume
        (run_dir,) = runs
        units = list((run_dir / "units").glob("*.json")) if (run_dir / "units").exists() else []
        mtimes = {p.name: p.stat().st_mtime_ns for p in units}
        for p in units:  # atomic writes: whatever a kill left behind is whole
            json.loads(p.read_text())
        finished = (run_dir / "results.json").exists()  # killed while exiting
        subprocess.run(
            [*KSEQ, "run", "--resume", str(run_dir), "--quiet"],
            check=True,
            env=env,
            capture_output=True,
        )
        resumed = _results(run_dir)
        assert resumed["results"] == reference
        if finished:  # a finished run is not computed again; the resume is recorded
            assert len(resumed["meta"]["resumed"]) == 1
        else:
            assert resumed["meta"].get("resumed_units", 0) == len(units)
        assert {p.name: p.stat().st_mtime_ns for p in units} == mtimes  # none recomputed
        outcomes.append(len(units))
    # the seeded kill times land at different stages, including mid-run
    assert any(isinstance(o, int) and 0 < o < UNITS for o in outcomes), outcomes


def test_resume_errors(tmp_path, capsys):
    from experiments.cli import main

    assert main(["run", "--resume", str(tmp_path)]) == 2  # no config.yaml there
    assert main(["run", "--resume", str(tmp_path), "--set", "params.alpha=0.1"]) == 2
    assert "only `devices.*`" in capsys.readouterr().err
    assert main(["run"]) == 2
    with pytest.raises(ValueError, match="plain file names"):
        from experiments import RunContext

        RunContext(tmp_path).unit("../x", dict)


def test_resume_after_a_parameter_was_added_with_its_default(tmp_path):
    # A run started before the task grew a parameter has no value for it in its record; it
    # resumes while the parameter holds its default (the units were computed as the default
    # computes them), and is refused while config.yaml holds another value.
    import dataclasses

    from experiments.config import ConfigError

    cfg = load_config("configs/quickstart.yaml", TINY)
    run_dir = run_experiment(cfg, tmp_path, quiet=True)
    (run_dir / "results.json").unlink()
    added = "num_permutations"  # stands for a parameter the task did not have yet
    default = {f.name: f.default for f in dataclasses.fields(cfg.params)}[added]
    assert cfg.params.num_permutations == 20 != default
    record = json.loads((run_dir / ".run.json").read_text())
    del record["config"]["params"][added]
    (run_dir / ".run.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=f"params.{added}"):
        resume_experiment(run_dir, quiet=True)
    config = (run_dir / "config.yaml").read_text()
    assert f"{added}: 20\n" in config
    (run_dir / "config.yaml").write_text(config.replace(f"{added}: 20\n", f"{added}: {default}\n"))
    resume_experiment(run_dir, quiet=True)
    assert _results(run_dir)["meta"]["resumed_units"] == UNITS
