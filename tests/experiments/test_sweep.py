"""Sweeps (`experiments.sweep`): a 2 x 2 sweep of the quickstart (one axis from the config's
`sweep:` section, one from `--sweep`), interrupted in its third combination and resumed, its
folder, `results.jsonl` and summaries; validation of every combination up front; axis parsing."""

import contextlib
import io
import json
import pathlib
import types

import pytest

from experiments.config import ConfigError
from experiments.errors import RunError
from experiments.show import show_run
from experiments.sweep import (
    SWEEP_FILE,
    _as_text,
    _parse_value,
    _plan,
    format_summary,
    is_sweep_dir,
    parse_axis,
    resume_sweep,
    run_sweep,
)
from experiments.tasks import quickstart

TINY = [
    "params.tests=[mmd]",
    "params.sample_sizes=[8]",
    "params.num_replicates=4",
    "params.num_permutations=9",
    "devices.count=1",
]
QUICKSTART = pathlib.Path("configs/quickstart.yaml")


def _config(tmp_path, section: str) -> pathlib.Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(QUICKSTART.read_text() + section)
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2 x 2 sweep (seed from the config's `sweep:` section, `params.mmd_shift` from
    `--sweep`: neither changes the compiled programs), stopped by Ctrl-C at the start of its
    third run, then resumed; what was seen on the way."""
    tmp = tmp_path_factory.mktemp("sweep")
    config = _config(tmp, "sweep:\n  seed: [0, 1]\n")
    calls = []
    real_run = quickstart.run

    def run(cfg, ctx):
        calls.append(ctx.out_dir.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_run(cfg, ctx)

    seen = types.SimpleNamespace(out=tmp / "out", calls=calls, starts=[])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quickstart, "run", run)
        with pytest.raises(KeyboardInterrupt) as stopped:
            run_sweep(
                config,
                ["params.mmd_shift=0.5,1.0"],
                TINY,
                seen.out,
                quiet=True,
                on_start=seen.starts.append,
            )
        seen.sweep_dir = pathlib.Path(stopped.value.run_dir)
        seen.stopped_doc = json.loads((seen.sweep_dir / SWEEP_FILE).read_text())
        seen.stopped_lines = (seen.sweep_dir / "results.jsonl").read_text().splitlines()
        seen.stopped_summary = format_summary(seen.sweep_dir)
        first_two = [seen.sweep_dir / e["run_dir"] for e in seen.stopped_doc["combinations"][:2]]
        seen.mtimes = [(d / "results.json").stat().st_mtime_ns for d in first_two]
        # a kill between a run's end and the rewrite of results.jsonl; a fourth run's folder
        # made just before a kill, before its config was written
        (seen.sweep_dir / "results.jsonl").unlink()
        seen.leftover = seen.sweep_dir / "quickstart" / "3-seed=1,mmd_shift=1.0"
        seen.leftover.mkdir()
        (seen.leftover / "junk").write_text("")
        with contextlib.redirect_stderr(io.StringIO()) as stderr:
            seen.resumed = resume_sweep(seen.sweep_dir, on_start=seen.starts.append)
        seen.stderr = stderr.getvalue()
    seen.doc = json.loads((seen.sweep_dir / SWEEP_FILE).read_text())
    seen.run_dirs = [seen.sweep_dir / e["run_dir"] for e in seen.doc["combinations"]]
    return seen


def test_sweep_folder_runs_and_results(swept):
    sweep_dir = swept.sweep_dir
    assert sweep_dir.parent == swept.out / "quickstart"
    assert sweep_dir.name.startswith("sweep-") and is_sweep_dir(sweep_dir)
    assert swept.resumed == sweep_dir
    assert swept.starts == [sweep_dir, sweep_dir]  # once holding its plan, at each launch
    doc = swept.doc
    assert doc["axes"] == {"seed": [0, 1], "params.mmd_shift": [0.5, 1.0]}
    assert "sweep" not in doc["base"] and doc["base"]["params"]["num_replicates"] == 4
    combos = doc["combinations"]
    assert [c["values"] for c in combos] == [
        {"seed": s, "params.mmd_shift": m} for s in (0, 1) for m in (0.5, 1.0)
    ]
    assert [c["status"] for c in combos] == ["finished"] * 4
    assert [d.relative_to(sweep_dir).as_posix() for d in swept.run_dirs] == [
        "quickstart/0-seed=0,mmd_shift=0.5",
        "quickstart/1-seed=0,mmd_shift=1.0",
        "quickstart/2-seed=1,mmd_shift=0.5",
        "quickstart/3-seed=1,mmd_shift=1.0",
    ]
    # each one an ordinary run folder with its combination's config
    for combo, run_dir in zip(combos, swept.run_dirs, strict=True):
        results = json.loads((run_dir / "results.json").read_text())
        assert results["meta"]["seed"] == combo["values"]["seed"]
        # its provenance: the sweep's `--set` items, then the combination's values
        assert results["meta"]["overrides"] == [*TINY, *combo["overrides"]]
        assert (
            f"mmd_shift: {combo['values']['params.mmd_shift']}"
            in (run_dir / "config.yaml").read_text()
        )
        assert "rates" in show_run(run_dir)
    lines = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    for line, combo, run_dir in zip(lines, combos, swept.run_dirs, strict=True):
        assert line["values"] == combo["values"]
        assert line["overrides"] == combo["overrides"]
        assert line["results"] == json.loads((run_dir / "results.json").read_text())["results"]


def test_sweep_summary(swept):
    text = (swept.sweep_dir / "summary.txt").read_text().rstrip("\n")
    assert format_summary(swept.sweep_dir) == text
    header, _, *rows = text.splitlines()
    assert header.split()[:3] == ["#", "seed", "params.mmd_shift"]
    assert "rates[mmd,n=8].power" in header and "status" not in header
    assert len(rows) == 4
    assert [row.split()[:3] for row in rows] == [
        ["0", "0", "0.5"],
        ["1", "0", "1"],
        ["2", "1", "0.5"],
        ["3", "1", "1"],
    ]
    md = (swept.sweep_dir / "summary.md").read_text().splitlines()
    assert md[0].startswith("| # | seed | params.mmd_shift |") and len(md) == 2 + 4


def test_interrupted_sweep_resumes_without_recomputing(swept):
    # Ctrl-C names the sweep folder, and the plan says where each combination stood
    stopped = swept.stopped_doc["combinations"]
    assert [c["status"] for c in stopped] == ["finished", "finished", "running", "pending"]
    assert stopped[3]["run_dir"] is None
    assert [json.loads(line)["index"] for line in swept.stopped_lines] == [0, 1]
    assert "status" in swept.stopped_summary.splitlines()[0]
    # the resume ran the third (resumed in its folder) and the fourth, and nothing else
    assert swept.calls == [
        "0-seed=0,mmd_shift=0.5",
        "1-seed=0,mmd_shift=1.0",
        "2-seed=1,mmd_shift=0.5",
        "2-seed=1,mmd_shift=0.5",
        "3-seed=1,mmd_shift=1.0",
    ]
    mtimes = [(d / "results.json").stat().st_mtime_ns for d in swept.run_dirs[:2]]
    assert mtimes == swept.mtimes
    meta = [json.loads((d / "results.json").read_text())["meta"] for d in swept.run_dirs]
    assert ["resumed" in m for m in meta] == [False, False, True, False]
    assert not (swept.leftover / "junk").exists()  # the folder without a config was remade
    # a line per combination run (not per skipped one), naming its values and folder
    lines = [line for line in swept.stderr.splitlines() if line.startswith("[sweep")]
    assert lines == [
        f"[sweep 3/4] seed=1 params.mmd_shift=0.5: resuming {swept.run_dirs[2]}",
        f"[sweep 4/4] seed=1 params.mmd_shift=1.0: run folder {swept.run_dirs[3]}",
    ]
    # a finished sweep resumes to itself without computing anything
    resume_sweep(swept.sweep_dir, quiet=True)
    assert len(swept.calls) == 5
    assert len((swept.sweep_dir / "results.jsonl").read_text().splitlines()) == 4


def test_resume_checks(swept, tmp_path):
    with pytest.raises(ConfigError, match=r"only `devices\.\*`.*seed=3"):
        resume_sweep(swept.sweep_dir, overrides=["seed=3"])
    with pytest.raises(RunError, match="not a sweep folder"):
        resume_sweep(tmp_path)
    assert not is_sweep_dir(swept.run_dirs[0])


def test_bad_combination_fails_before_any_folder(tmp_path):
    out = tmp_path / "out"
    # the fifth of six combinations has a value its schema refuses
    sweeps = ["params.dim=1,2,0", "seed=0,1"]
    fifth = r"combination 5 of 6 \(params\.dim=0 seed=0\): .*`params\.dim` must be >= 1"
    with pytest.raises(ConfigError, match=fifth):
        run_sweep(QUICKSTART, sweeps, TINY, out, quiet=True)
    with pytest.raises(ConfigError, match=r"combination 1 of 2 .*unknown config key `params\.nn`"):
        run_sweep(QUICKSTART, ["params.nn=1,2"], TINY, out, quiet=True)
    with pytest.raises(TypeError, match=r"combination 2 of 2 .*`seed` must be an integer"):
        run_sweep(QUICKSTART, ["seed=0,x"], TINY, out, quiet=True)
    with pytest.raises(ConfigError, match=r"both set .* and swept"):
        run_sweep(QUICKSTART, ["seed=0,1"], [*TINY, "seed=2"], out, quiet=True)
    with pytest.raises(ConfigError, match="nothing to sweep"):
        run_sweep(QUICKSTART, [], TINY, out, quiet=True)
    with pytest.raises(ConfigError, match="config file not found"):
        run_sweep(tmp_path / "missing.yaml", ["seed=0,1"], TINY, out, quiet=True)
    assert not out.exists()


def test_sweep_section(tmp_path):
    raw = {"task": "quickstart", "sweep": {"params": {"alpha": [0.05, 1e-5]}, "seed": [0, 1]}}
    base, axes = _plan(raw, [], [])
    assert "sweep" not in base and "sweep" in raw
    # nested mappings are dotted keys; values as `--set` text that parses back to them
    assert axes == {"params.alpha": ["0.05", "1.0e-05"], "seed": ["0", "1"]}
    # `--sweep` replaces the section's axis; `--set` may edit the section
    _, axes = _plan(raw, ["seed=5,6,7"], ["sweep.params.alpha=[0.1]"])
    assert axes == {"params.alpha": ["0.1"], "seed": ["5", "6", "7"]}
    for section, match in [
        ("sweep:\n  seed: 3\n", r"`sweep\.seed` must be a non-empty list"),
        ("sweep:\n  seed: []\n", r"`sweep\.seed` must be a non-empty list"),
        ("sweep: [seed]\n", "`sweep` must map dotted keys"),
        ("sweep:\n  seed: [1, 1]\n", "repeats a value"),
        ("sweep:\n  params.alpha: [0.1, 2.0]\n", r"combination 2 of 2 .*params\.alpha"),
    ]:
        with pytest.raises(ConfigError, match=match):
            run_sweep(_config(tmp_path, section), [], TINY, tmp_path / "out", quiet=True)
    with pytest.raises(ConfigError, match="swept twice"):
        run_sweep(QUICKSTART, ["seed=0,1", "seed=2"], TINY, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec,key,texts",
    [
        ("seed=0,1,2", "seed", ["0", "1", "2"]),
        (" params.n = 100 , 200 ", "params.n", ["100", "200"]),
        ("params.sample_sizes=[25,50],[100]", "params.sample_sizes", ["[25,50]", "[100]"]),
        ("params.tests=[mmd,hsic];[ksd]", "params.tests", ["[mmd,hsic]", "[ksd]"]),
        ("params.sample_sizes=25,50;100", "params.sample_sizes", ["25,50", "100"]),
        (
            "devices.mesh={a: 2, b: 1},{a: 1, b: 2}",
            "devices.mesh",
            ["{a: 2, b: 1}", "{a: 1, b: 2}"],
        ),
        ("name='a,b',c", "name", ["'a,b'", "c"]),
        ("seed=7", "seed", ["7"]),
    ],
)
def test_parse_axis(spec, key, texts):
    assert parse_axis(spec) == (key, texts)


def test_axis_values_parse_as_set_values():
    assert [_parse_value(t) for t in parse_axis("x=[25,50],[100],mmd,0.5,true,null")[1]] == [
        [25, 50],
        [100],
        "mmd",
        0.5,
        True,
        None,
    ]
    for value in [1e-5, "yes", "a: b", [25, 50], {"a": [1]}, None, "x,y"]:
        assert _parse_value(_as_text(value)) == value


@pytest.mark.parametrize(
    "spec,match",
    [
        ("seed", "must look like key=value1,value2"),
        ("=1,2", "empty key"),
        ("params..n=1", "empty key"),
        ("seed=0,,1", "empty value"),
        ("seed=", "empty value"),
        ("params.sizes=[25,50", "unbalanced"),
        ("params.sizes=25]", "unbalanced"),
        ("seed=1,1", "repeats a value"),
    ],
)
def test_parse_axis_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_axis(spec)


@pytest.mark.slow
def test_sweep_over_two_processes(tmp_path):
    """A sweep run as two processes joined by `jax.distributed`: one sweep folder, written by
    process 0 alone, and the results of a one-process sweep (about a minute: `-m slow`)."""
    from tests.experiments.test_distributed import POWER_STUDY, launch

    sets = [*POWER_STUDY, "devices.distributed=true"]
    args = [a for o in sets for a in ("--set", o)]
    out = tmp_path / "two"
    outs = launch(
        ["run", "quickstart", "--sweep", "seed=0,1", *args, "--out", str(out), "--quiet"],
        processes=2,
        devices_per_process=2,
    )
    for code, _, stderr in outs:
        assert code == 0, stderr[-3000:]
    (sweep_dir,) = (out / "quickstart").iterdir()
    assert is_sweep_dir(sweep_dir)
    lines = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert [line["values"] for line in lines] == [{"seed": 0}, {"seed": 1}]
    one = run_sweep(
        QUICKSTART, ["seed=0,1"], [*POWER_STUDY, "devices.count=1"], tmp_path / "one", quiet=True
    )
    reference = [json.loads(line) for line in (one / "results.jsonl").read_text().splitlines()]
    assert [line["results"] for line in lines] == [line["results"] for line in reference]
    for line in lines:
        meta = json.loads((sweep_dir / line["run_dir"] / "results.json").read_text())["meta"]
        assert meta["process_count"] == 2 and meta["devices_used"] == 4


def test_cli_sweep_start_line_summary_and_show(tmp_path, capsys):
    from experiments.cli import main

    sets = [arg for item in TINY for arg in ("--set", item)]
    argv = ["run", str(QUICKSTART), "--sweep", "seed=0,1", "--sweep", "params.mmd_shift=0.5,1.0"]
    assert main([*argv, *sets, "--out", str(tmp_path), "--quiet"]) == 0
    out, err = capsys.readouterr()
    *table, folder = out.rstrip("\n").splitlines()
    sweep_dir = pathlib.Path(folder)
    assert is_sweep_dir(sweep_dir) and sweep_dir.parent == tmp_path / "quickstart"
    # the start line names the sweep folder and how to resume it
    assert f"kseq run --resume {sweep_dir}" in err.splitlines()[0]
    assert "\n".join(table) == format_summary(sweep_dir)
    assert len(table) == 2 + 4 and table[0].split()[:3] == ["#", "seed", "params.mmd_shift"]
    assert main(["show", str(sweep_dir)]) == 0
    assert capsys.readouterr().out.rstrip("\n") == format_summary(sweep_dir)
