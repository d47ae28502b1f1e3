"""Runs over several devices and several processes give the results of one device.

- 8 simulated CPU devices (conftest): a thinning experiment (`kt_mmd_rate`, its repeats split
  with `RunContext.map`) equals one device bit for bit (the quickstart's power study has its
  own test in test_experiments.py).
- Two processes joined by `jax.distributed` on localhost (CPU, gloo collectives), two
  simulated devices each: a power study (the quickstart's replicates split over the four
  devices of both processes) writes, from process 0 alone, the results file of a one-process
  run.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
import pytest

from experiments import load_config, run_experiment

KSEQ = [sys.executable, "-m", "experiments.cli"]
ROOT = pathlib.Path(__file__).resolve().parents[2]
POWER_STUDY = [  # the KSD test's size and power (its compilation is the quickest)
    "params.tests=[ksd]",
    "params.sample_sizes=[16]",
    "params.num_replicates=8",
    "params.num_permutations=20",
]

TINY_RECALL = [  # four training steps of a small linear-attention model, batches of 8
    "params.mixers=[linear_attention]",
    "params.num_steps=4",
    "params.eval_every=2",
    "params.d_model=8",
    "params.batch_size=8",
    "params.eval_batch=8",
    "params.num_layers=1",
]


def _results(run_dir):
    return json.loads((pathlib.Path(run_dir) / "results.json").read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_thinning_repeats_over_8_devices_equal_one_device(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    tiny = [
        "params.sample_sizes=[16]",
        "params.dims=[2]",
        "params.datasets=[gaussian]",
        "params.methods=[kt]",
        "params.repeats=3",  # padded to 8 rows, one per device
        "params.slope_range=[16,64]",
    ]
    results = {}
    for count in (1, 8):
        cfg = load_config("configs/kt_mmd_rate.yaml", [*tiny, f"devices.count={count}"])
        data = _results(run_experiment(cfg, tmp_path, quiet=True))
        assert data["meta"]["devices_used"] == count
        results[count] = data["results"]
    assert results[1] == results[8]  # bit for bit: every repeat runs the same program


def launch(args, *, processes: int, devices_per_process: int, timeout: float = 180):
    """Runs `kseq ARGS` as `processes` processes joined by `jax.distributed` on localhost, each
    with `devices_per_process` simulated CPU devices; returns their (returncode, stdout,
    stderr). All are killed when one fails (its peers would wait for it) or time runs out."""
    port = _free_port()
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
        "JAX_PLATFORMS": "cpu",
        "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
        "JAX_NUM_PROCESSES": str(processes),
    }
    with tempfile.TemporaryDirectory() as logs:
        files = [
            (open(f"{logs}/{i}.out", "w+"), open(f"{logs}/{i}.err", "w+")) for i in range(processes)
        ]
        procs = [
            subprocess.Popen(
                [*KSEQ, *args],
                cwd=ROOT,
                env={**env, "JAX_PROCESS_ID": str(i)},
                stdout=out,
                stderr=err,
                text=True,
            )
            for i, (out, err) in enumerate(files)
        ]
        deadline = time.monotonic() + timeout
        try:
            while any(p.poll() is None for p in procs):
                failed = any(p.returncode not in (None, 0) for p in procs)
                if failed or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
        outs = []
        for p, (out, err) in zip(procs, files, strict=True):
            out.seek(0)
            err.seek(0)
            outs.append((p.returncode, out.read(), err.read()))
            out.close()
            err.close()
    return outs


def launch_run(task: str, overrides, out) -> list:
    """`kseq run configs/TASK.yaml` with `overrides` (KEY=VALUE) into `out`, as two processes
    of two devices each; checks that both exit 0 and returns their (returncode, stdout,
    stderr)."""
    args = [a for o in [*overrides, "devices.distributed=true"] for a in ("--set", o)]
    outs = launch(
        ["run", f"configs/{task}.yaml", *args, "--out", str(out), "--quiet"],
        processes=2,
        devices_per_process=2,
    )
    for code, _, stderr in outs:
        assert code == 0, stderr[-3000:]
    return outs


def test_two_processes_write_the_results_of_one(tmp_path):
    out = tmp_path / "two"
    outs = launch_run("quickstart", POWER_STUDY, out)
    (run_dir,) = (out / "quickstart").iterdir()  # one folder, process 0's
    assert [o[1].strip().splitlines()[-1] for o in outs] == [str(run_dir)] * 2
    data = _results(run_dir)
    assert data["meta"]["process_count"] == 2 and data["meta"]["devices_used"] == 4
    # only process 0 wrote: one metrics line per unit, not one per process
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    # the launch fields are not part of the written config
    assert "process_id" not in (run_dir / "config.yaml").read_text()

    cfg = load_config("configs/quickstart.yaml", [*POWER_STUDY, "devices.count=1"])
    reference = _results(run_experiment(cfg, tmp_path / "one", quiet=True))
    assert data["results"] == reference["results"]


def test_map_gives_rows_in_order_on_any_number_of_devices(tmp_path):
    from experiments import RunContext
    from experiments.config import DevicesConfig
    from experiments.mesh import build_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    keys = jax.random.split(jax.random.key(0), 5)
    shift = jax.numpy.float32(0.5)
    outs = []
    for count in (1, 4, 8):  # 5 rows: one device; padded to 8 rows; one row per device
        ctx = RunContext(tmp_path, mesh=build_mesh(DevicesConfig(count=count)))
        out = ctx.map(
            lambda k, i, s: (jax.random.normal(k, (3,)) + s, i * 2),
            keys,
            np.arange(5),
            shift,
            in_axes=(0, 0, None),
        )
        assert isinstance(out[0], np.ndarray) and out[0].shape == (5, 3)
        outs.append(out)
    for out in outs:
        np.testing.assert_array_equal(out[1], 2 * np.arange(5))
        np.testing.assert_array_equal(out[0], outs[0][0])
    with pytest.raises(ValueError, match="in_axes"):
        ctx.map(lambda a: a, np.arange(3), in_axes=(1,))
    with pytest.raises(ValueError, match="leading size"):
        ctx.map(lambda a, b: a, np.arange(3), np.arange(4))
    # inside jit, `shard` constrains the leading axis (a training batch)
    y = jax.jit(lambda x: ctx.shard(2 * x))(jax.numpy.arange(16.0))
    assert len(y.sharding.device_set) == 8

    # a 4 x 2 mesh, rows split over one axis: the same rows again; the program is made once
    # per function and compiled once per shape, however often `map` is called
    traces = []

    def row(k, s):
        traces.append(None)
        return jax.random.normal(k, (3,)) + s

    devices = DevicesConfig(mesh={"rows": 4, "other": 2}, data_axes=("rows",))
    ctx = RunContext(tmp_path, mesh=build_mesh(devices), data_axes=devices.split_axes)
    np.testing.assert_array_equal(ctx.map(row, keys, shift, in_axes=(0, None)), outs[0][0])
    moved = ctx.map(row, keys, shift + 1, in_axes=(0, None))
    np.testing.assert_allclose(moved, outs[0][0] + 1, rtol=1e-6)
    assert len(traces) == 1


def test_devices_launch_fields_are_checked():
    with pytest.raises(ValueError, match=r"devices\.num_processes"):
        load_config("configs/quickstart.yaml", ["devices.num_processes=0"])
    cfg = load_config(
        "configs/quickstart.yaml",
        ["devices.coordinator=localhost:1234", "devices.num_processes=2", "devices.process_id=1"],
    )
    assert (cfg.devices.coordinator, cfg.devices.num_processes) == ("localhost:1234", 2)
    from experiments.config import dump_config

    assert "process_id" not in dump_config(cfg) and "coordinator" not in dump_config(cfg)


@pytest.mark.slow
def test_two_processes_resume_and_train(tmp_path):
    """Slower multi-process checks (about two minutes): a two-process run with a lost unit is
    resumed by two processes; a thinning experiment over two processes equals one device bit
    for bit; data-parallel training over two processes agrees with one device to float32
    rounding (the batch mean is reduced in another order) and checkpoints from both."""
    out = tmp_path / "quick"
    launch_run("quickstart", POWER_STUDY, out)
    (run_dir,) = (out / "quickstart").iterdir()
    reference = _results(run_dir)
    (run_dir / "units" / "ksd-n16.json").unlink()
    (run_dir / "results.json").unlink()
    outs = launch(["run", "--resume", str(run_dir), "--quiet"], processes=2, devices_per_process=2)
    assert all(code == 0 for code, _, _ in outs), outs
    assert _results(run_dir)["results"] == reference["results"]

    tasks = {
        "kt_mmd_rate": [
            "params.sample_sizes=[16,64]",
            "params.dims=[2]",
            "params.datasets=[gaussian]",
            "params.methods=[iid,kt]",
            "params.repeats=3",
            "params.slope_range=[16,64]",
        ],
        "train_recall": [*TINY_RECALL, "params.checkpoint_every=2"],
    }
    for task, overrides in tasks.items():
        out = tmp_path / task
        launch_run(task, overrides, out / "two")
        (two,) = (out / "two" / task).iterdir()
        cfg = load_config(f"configs/{task}.yaml", [*overrides, "devices.count=1"])
        one = _results(run_experiment(cfg, out / "one", quiet=True))["results"]
        if task == "kt_mmd_rate":
            assert _results(two)["results"] == one
        else:
            (summary,) = _results(two)["results"]["summary"]
            assert summary.pop("mixer") == one["summary"][0].pop("mixer")
            assert summary == pytest.approx(one["summary"][0], rel=1e-5)
            assert sorted(
                p.name for p in (two / "checkpoints" / "train-linear_attention").iterdir()
            ) == ["2", "4"]


@pytest.mark.slow
def test_training_batches_over_8_devices_agree_with_one_device(tmp_path):
    """Data-parallel training (the batch split over 8 devices, the batch mean reduced across
    them) agrees with one device to float32 rounding, not bit for bit: the reduction order
    changes."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    tasks = {
        "train_recall": TINY_RECALL,
        "train_deer": [
            "params.length=64",
            "params.hidden_size=2",
            "params.num_train=8",
            "params.num_test=4",
            "params.num_steps=4",
            "params.control_perturbation=0",
        ],
    }
    for task, overrides in tasks.items():
        runs = {}
        for count in (1, 8):
            cfg = load_config(f"configs/{task}.yaml", [*overrides, f"devices.count={count}"])
            runs[count] = _results(run_experiment(cfg, tmp_path, quiet=True))["results"]
        if task == "train_recall":
            (one,), (eight,) = runs[1]["summary"], runs[8]["summary"]
            assert eight.pop("mixer") == one.pop("mixer")
            assert eight == pytest.approx(one, rel=1e-5)
        else:
            for label in ("sequential", "newton"):
                one, eight = runs[1]["runs"][label], runs[8]["runs"][label]
                assert eight["losses"] == pytest.approx(one["losses"], rel=1e-5)
