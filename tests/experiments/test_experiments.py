import json
import subprocess
import sys

import pytest

from experiments import load_config, run_experiment
from experiments.cli import list_configs, main
from experiments.config import ConfigError, apply_overrides, parse_config

TINY = [
    "params.sample_sizes=[8]",
    "params.num_replicates=4",
    "params.num_permutations=9",
    "devices.count=1",  # sharding has its own test below; one device compiles faster
]


def test_load_config_and_overrides():
    cfg = load_config(
        "configs/quickstart.yaml", ["seed=3", "params.alpha=0.1", "params.sample_sizes=[10, 20]"]
    )
    assert cfg.seed == 3 and cfg.task == "quickstart" and cfg.name == "quickstart"
    assert cfg.params.alpha == 0.1
    assert cfg.params.sample_sizes == (10, 20)


def test_int_accepted_for_float():
    cfg = parse_config({"task": "quickstart", "params": {"mmd_shift": 1}})
    assert cfg.params.mmd_shift == 1.0 and isinstance(cfg.params.mmd_shift, float)


@pytest.mark.parametrize(
    "raw,exc,match",
    [
        (
            {"task": "quickstart", "params": {"num_replicate": 3}},
            ConfigError,
            r"params\.num_replicate.*did you mean `params\.num_replicates`",
        ),
        ({"task": "quickstart", "sede": 1}, ConfigError, "`sede`"),
        (
            {"task": "quickstart", "params": {"num_replicates": "many"}},
            TypeError,
            r"params\.num_replicates.*integer",
        ),
        (
            {"task": "quickstart", "params": {"sample_sizes": 5}},
            TypeError,
            r"params\.sample_sizes.*list",
        ),
        (
            {"task": "quickstart", "params": {"sample_sizes": [5, "a"]}},
            TypeError,
            r"params\.sample_sizes\[1\]",
        ),
        ({"task": "quickstart", "seed": 1.5}, TypeError, "`seed`"),
        ({"task": "quickstart", "params": {"alpha": 2.0}}, ConfigError, r"params\.alpha"),
        ({"task": "quikstart"}, ConfigError, "did you mean 'quickstart'"),
        ({"name": "x"}, ConfigError, "`task`"),
    ],
)
def test_config_errors_name_the_key(raw, exc, match):
    with pytest.raises(exc, match=match):
        parse_config(raw)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["seed"])
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_list_configs():
    text = list_configs("configs")
    assert "quickstart.yaml" in text and "kseq run configs/quickstart.yaml" in text


def test_quickstart_run_writes_the_run_folder(tmp_path, capsys):
    code = main(
        [
            "run",
            "configs/quickstart.yaml",
            "--out",
            str(tmp_path),
            "--quiet",
            *[a for o in TINY for a in ("--set", o)],
        ]
    )
    assert code == 0
    run_dir = tmp_path / "quickstart"
    (run_dir,) = list(run_dir.iterdir())
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)  # after the table
    for name in ("config.yaml", "results.json", "metrics.jsonl", "plots/rejection_rates.png"):
        assert (run_dir / name).is_file(), name
    # the written config is the resolved one and loads back
    again = load_config(run_dir / "config.yaml")
    assert again.params.sample_sizes == (8,) and again.params.num_replicates == 4
    results = json.loads((run_dir / "results.json").read_text())
    rates = results["results"]["rates"]
    assert len(rates) == 3  # (mmd, hsic, ksd) x one n
    assert all(0.0 <= r["size"] <= 1.0 and 0.0 <= r["power"] <= 1.0 for r in rates)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines]
    # one metrics line per resumable unit, named after it
    assert [m.pop("unit") for m in logged] == [f"{r['test']}-n{r['n']}" for r in rates]
    assert logged == rates
    assert main(["show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "results.rates" in shown and "power" in shown


def test_cli_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: quickstart\nparams:\n  num_replicates: lots\n")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cli", "run", str(bad), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "params.num_replicates" in proc.stderr and "Traceback" not in proc.stderr
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert main(["show", str(tmp_path)]) == 2


def test_bench_scan_tiny_run(tiny_run):
    run_dir, results = tiny_run("bench_scan", "lengths=[64] batch=1 channels=4 repeats=1")
    records = results["records"]
    methods = {"sequential", "associative", "chunked", "lax.associative_scan"}
    assert {(r["method"], r["direction"]) for r in records} == {
        (m, d) for m in methods for d in ("forward", "forward+backward")
    }
    assert all(r["warm_s"] > 0 and r["ratio_to_floor"] > 0 for r in records)
    assert (run_dir / "plots" / "ratio_to_floor.png").is_file()


def test_mqar_batches_are_well_formed(getkey):
    from experiments.tasks.train_recall import Config, mqar_batch

    cfg = Config(num_keys=6, num_values=5, num_pairs=4, num_queries=3)
    tokens, targets, mask = mqar_batch(getkey(), cfg, 7)
    assert tokens.shape == targets.shape == mask.shape == (7, 11)
    for tok, tgt, m in zip(tokens.tolist(), targets.tolist(), mask.tolist(), strict=True):
        pairs = dict(zip(tok[0:8:2], tok[1:8:2], strict=True))
        assert len(pairs) == 4 and all(k < 6 <= v < 11 for k, v in pairs.items())
        assert m == [False] * 8 + [True] * 3
        assert [pairs[q] for q in tok[8:]] == tgt[8:]


def test_train_recall_tiny_run(tiny_run):
    run_dir, results = tiny_run(
        "train_recall",
        "mixers=[lru] num_steps=3 eval_every=2 d_model=8 batch_size=4",
        "eval_batch=8 num_layers=1",
    )
    assert [s["mixer"] for s in results["summary"]] == ["lru"]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2  # steps 2 and 3
    assert (run_dir / "plots" / "accuracy.png").is_file()


def test_devices_section_shards_replicates_with_identical_results(tmp_path):
    """The quickstart's replicates split over 8 (simulated) devices give exactly the results of
    one device."""
    import jax

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    tiny = [
        "params.tests=[ksd]",  # one test suffices for the layout; fewer programs to compile
        "params.sample_sizes=[16]",
        "params.num_replicates=8",
        "params.num_permutations=20",
    ]
    layouts = {
        "one": ["devices.count=1"],
        "eight": ["devices.count=8"],
        # a 4 x 2 mesh: replicates split over `replica` only, copies along `seq`
        "4x2": ["devices.mesh={replica: 4, seq: 2}", "devices.data_axes=[replica]"],
    }
    results = {}
    for name, devices in layouts.items():
        cfg = load_config("configs/quickstart.yaml", [*tiny, *devices])
        data = json.loads((run_experiment(cfg, tmp_path, quiet=True) / "results.json").read_text())
        results[name] = data["results"]
        if name == "4x2":
            assert data["meta"]["mesh"] == {"replica": 4, "seq": 2}
            assert data["meta"]["devices_used"] == 8
        else:
            assert data["meta"]["devices_used"] == cfg.devices.count
    assert results["one"] == results["eight"] == results["4x2"]


def test_devices_mesh_axes_and_sizes_are_checked():
    from experiments.config import dump_config

    cfg = load_config(
        "configs/quickstart.yaml", ["devices.mesh={data: -1, seq: 2}", "devices.data_axes=[data]"]
    )
    assert cfg.devices.mesh == {"data": -1, "seq": 2}
    assert cfg.devices.axis_names == ("data", "seq") and cfg.devices.split_axes == ("data",)
    assert "seq: 2" in dump_config(cfg)  # the written config keeps the mesh
    bad = {
        r"devices\.mesh\.seq": ["devices.mesh={data: 2, seq: 0}"],
        r"devices\.mesh\.seq`": ["devices.mesh={data: 2, seq: two}"],
        r"at most one `devices\.mesh`": ["devices.mesh={data: -1, seq: -1}"],
        r"either `devices\.mesh`": ["devices.mesh={data: 2}", "devices.count=2"],
        r"devices\.data_axes": ["devices.mesh={data: 2}", "devices.data_axes=[model]"],
        r"devices\.mesh` must be a mapping": ["devices.mesh=[2, 4]"],
        r"devices\.count` must be >= 1": ["devices.count=0"],
    }
    for message, overrides in bad.items():
        with pytest.raises(ValueError, match=message):
            load_config("configs/quickstart.yaml", overrides)


def test_devices_section_is_checked():
    with pytest.raises(ValueError, match=r"devices\.count"):
        load_config("configs/quickstart.yaml", ["devices.count=two"])
    with pytest.raises(ValueError, match=r"devices\.cores"):
        load_config("configs/quickstart.yaml", ["devices.cores=2"])


def test_shard_splits_the_leading_axis(tmp_path):
    import jax

    from experiments import RunContext
    from experiments.config import DevicesConfig
    from experiments.mesh import build_mesh

    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    ctx = RunContext(tmp_path, mesh=build_mesh(DevicesConfig(count=4)))
    x = ctx.shard(jax.numpy.arange(16.0))
    assert len(x.sharding.device_set) == 4
    assert ctx.shard(jax.numpy.arange(6.0)).shape == (6,)  # 6 does not split 4 ways: as is
    with pytest.raises(ValueError, match=r"devices\.count"):
        build_mesh(DevicesConfig(count=jax.device_count() + 1))

    # a two-axis mesh: the leading axis split over the data axis only, copies along the other
    devices = DevicesConfig(mesh={"data": -1, "seq": 2}, data_axes=("data",))
    mesh = build_mesh(devices)
    assert dict(mesh.shape) == {"data": jax.device_count() // 2, "seq": 2}
    ctx = RunContext(tmp_path, mesh=mesh, data_axes=devices.split_axes)
    assert ctx.num_shards == mesh.shape["data"]
    x = ctx.shard(jax.numpy.arange(16.0))
    assert len(x.sharding.device_set) == jax.device_count()
    assert {s.data.shape for s in x.addressable_shards} == {(16 // ctx.num_shards,)}
    whole = RunContext(tmp_path, mesh=mesh)  # default: split over every axis
    assert whole.num_shards == jax.device_count()
    with pytest.raises(ValueError, match=r"devices\.mesh"):
        build_mesh(DevicesConfig(mesh={"data": jax.device_count() + 1}))


def test_nonfinite_counts_what_a_task_reports():
    """The per-replicate flag behind `num_nonfinite`: a statistic or p-value that is not
    finite; for betting streams, a NaN wealth (+inf is a float32 overflow, still evidence)."""
    import jax.numpy as jnp

    from experiments.tasks import nonfinite, nonfinite_streams
    from kmethods.betting import SequentialResult
    from kmethods.calibration import TestResult

    nan, inf = float("nan"), float("inf")
    res = TestResult(
        statistic=jnp.array([0.1, nan, inf, 0.2]),
        p_value=jnp.array([0.5, nan, nan, nan]),
        reject=jnp.zeros(4, bool),
        null_samples=jnp.zeros((4, 0)),
    )
    assert nonfinite(res).tolist() == [False, True, True, True]
    streams = SequentialResult(
        reject=jnp.zeros(3, bool),
        stopping_time=jnp.ones(3, jnp.int32),
        wealth=jnp.array([[1.0, 2.0], [1.0, nan], [1.0, inf]]),
    )
    assert nonfinite_streams(streams) == 1


def _significant_digits(value: float) -> int:
    mantissa = repr(value).lower().split("e")[0].replace("-", "").replace(".", "")
    return len(mantissa.strip("0")) or 1


def _floats_in(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _floats_in(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _floats_in(v)
    elif isinstance(tree, float):
        yield tree


def test_results_floats_are_written_at_their_own_precision(tmp_path):
    import jax.numpy as jnp

    from experiments.files import to_jsonable

    # float() of a float32 result used to be written as 0.6500000357627869.
    values = {
        "rate": float(jnp.float32(13) / jnp.float32(20)),
        "array": jnp.array([0.05, 0.65], jnp.float32),
        "scalar": jnp.float32(0.05),
        "exact64": 1.0 / 3.0,
        "nan": float("nan"),
        "huge": 1e300,  # beyond float32: written as is, without an overflow warning
    }
    out = to_jsonable(values)
    assert out["huge"] == 1e300
    assert out["rate"] == 0.65 and out["array"] == [0.05, 0.65] and out["scalar"] == 0.05
    assert out["exact64"] == 1.0 / 3.0 and out["nan"] is None
    # A whole quickstart run: no float in results.json has more than 9 significant digits.
    cfg = load_config("configs/quickstart.yaml", [*TINY, "params.num_replicates=20"])
    results = json.loads((run_experiment(cfg, tmp_path, quiet=True) / "results.json").read_text())
    floats = list(_floats_in(results))
    assert floats and max(_significant_digits(f) for f in floats) <= 9, floats
