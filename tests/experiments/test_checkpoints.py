"""Training runs checkpoint with orbax and resume exactly: a run interrupted midway and resumed
with `kseq run --resume` finishes with the results of an uninterrupted run."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import RunContext, load_config, resume_experiment, run_experiment
from experiments.checkpoints import TrainCheckpoints

KSEQ = [sys.executable, "-m", "experiments.cli"]
RECALL = [
    "params.mixers=[linear_attention]",  # the quickest to compile
    "params.num_steps=6",
    "params.eval_every=1",
    "params.d_model=8",
    "params.batch_size=4",
    "params.eval_batch=8",
    "params.num_layers=1",
    "params.checkpoint_every=2",
    "devices.count=1",
]
DEER = [
    "params.length=64",
    "params.hidden_size=2",
    "params.num_train=4",
    "params.num_test=4",
    "params.num_steps=5",
    "params.control_perturbation=0",
    "params.checkpoint_every=2",
    "devices.count=1",
]


class Interrupted(Exception):
    """Stands for a kill: raised from inside the training loop."""


def _results(run_dir):
    return json.loads((pathlib.Path(run_dir) / "results.json").read_text())["results"]


def _interrupt_at(monkeypatch, **match):
    """Makes the metrics line matching `match` raise (the step after it is not logged)."""
    log = RunContext.log_metrics

    def log_or_stop(self, **record):
        if all(record.get(k) == v for k, v in match.items()):
            raise Interrupted
        return log(self, **record)

    monkeypatch.setattr(RunContext, "log_metrics", log_or_stop)


def test_checkpoints_restore_the_state_exactly(tmp_path):
    model = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
    optimiser = optax.adam(1e-2)
    state = (model, optimiser.init(eqx.filter(model, eqx.is_array)), jax.random.key(3))
    state = (*state, np.arange(3, dtype=np.int32))
    with TrainCheckpoints(tmp_path / "loop", every=2, keep=2) as ckpt:
        assert ckpt.restore(state, ["fresh"]) == (0, state, ["fresh"])  # none yet
        for step in range(1, 8):
            moved = jax.tree.map(lambda a, s=step: a + s if eqx.is_inexact_array(a) else a, state)
            saved = ckpt.save(step, moved, [{"step": step, "loss": 1.0 / step}])
            assert saved == (step % 2 == 0)
            if saved:
                last = moved
    assert sorted(p.name for p in (tmp_path / "loop").iterdir()) == ["4", "6"]  # keep=2
    with TrainCheckpoints(tmp_path / "loop", every=2) as ckpt:
        step, restored, history = ckpt.restore(state, [])
    assert step == 6 and history == [{"step": 6, "loss": 1.0 / 6}]
    assert jax.tree.structure(restored) == jax.tree.structure(last)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(last), strict=True):
        if not isinstance(b, (jax.Array, np.ndarray)):
            assert a is b  # not an array (the MLP's activation): from the fresh state
            continue
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert type(a) is type(b) and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="not this loop's checkpoint"):
        TrainCheckpoints(tmp_path / "loop", every=2).restore((jnp.zeros(2),))
    assert TrainCheckpoints(tmp_path / "off", every=0).save(2, state) is False
    assert not (tmp_path / "off").exists()


@pytest.mark.slow
def test_train_recall_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """As the DEER test below, for the recall task (15 s, mostly first compilations)."""
    cfg = load_config("configs/train_recall.yaml", RECALL)
    reference = run_experiment(cfg, tmp_path / "ref", quiet=True)
    with monkeypatch.context() as patch:
        _interrupt_at(patch, step=5)  # after the checkpoint of step 4
        with pytest.raises(Interrupted):
            run_experiment(cfg, tmp_path / "run", quiet=True)
    (run_dir,) = (tmp_path / "run" / "train_recall").iterdir()
    assert (
        sorted(p.name for p in (run_dir / "checkpoints" / "train-linear_attention").iterdir())[-1]
        == "4"
    )
    assert not (run_dir / "results.json").exists()
    resume_experiment(run_dir, quiet=True)
    assert _results(run_dir) == _results(reference)
    unit = "units/train-linear_attention.json"
    assert json.loads((run_dir / unit).read_text()) == json.loads((reference / unit).read_text())
    # steps 1-4 logged before the interruption, 5-6 by the resumed run
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_train_deer_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """Interrupted in the DEER run, after the sequential run finished: the sequential run is
    read back from its unit, DEER restored (with its warm start) from its checkpoint."""
    cfg = load_config("configs/train_deer.yaml", DEER)
    reference = _results(run_experiment(cfg, tmp_path / "ref", quiet=True))
    with monkeypatch.context() as patch:
        _interrupt_at(patch, run="newton", step=3)  # steps 0-2 done, checkpoint at 2
        with pytest.raises(Interrupted):
            run_experiment(cfg, tmp_path / "run", quiet=True)
    (run_dir,) = (tmp_path / "run" / "train_deer").iterdir()
    assert [p.name for p in (run_dir / "units").iterdir()] == ["train-sequential.json"]
    assert [p.name for p in (run_dir / "checkpoints" / "train-newton").iterdir()] == ["2"]
    resume_experiment(run_dir, quiet=True)
    resumed = _results(run_dir)
    for results in (resumed, reference):  # timings aside
        results["summary"].pop("median_step_s")
        for run in results["runs"].values():
            del run["first_step_s"], run["median_step_s"]
    assert resumed == reference


@pytest.mark.slow
def test_train_recall_sigkill_then_resume(tmp_path):
    """A real kill -9 during training (after the first checkpoint), then `kseq run --resume`
    in a fresh process: the results of an uninterrupted run (about a minute)."""
    overrides = [*RECALL[:-2], "params.num_steps=400", "params.checkpoint_every=50"]
    overrides += ["params.eval_every=50", "devices.count=1"]
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(
        [*KSEQ, "run", "configs/train_recall.yaml", *args, "--out", str(ref), "--quiet"],
        check=True,
        env=env,
        capture_output=True,
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [*KSEQ, "run", "configs/train_recall.yaml", *args, "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    checkpoints = out / "train_recall"
    try:
        while time.monotonic() < deadline:  # kill right after the first checkpoint lands
            found = list(checkpoints.glob("*/checkpoints/train-linear_attention/[0-9]*"))
            if found or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    (run_dir,) = checkpoints.iterdir()
    assert not (run_dir / "results.json").exists()
    subprocess.run(
        [*KSEQ, "run", "--resume", str(run_dir), "--quiet"],
        check=True,
        env=env,
        capture_output=True,
    )
    (ref_dir,) = (ref / "train_recall").iterdir()
    assert _results(run_dir) == _results(ref_dir)
