"""The `kseq` command never shows a traceback for a foreseeable fault: each prints one line,
`kseq <command>: error: ...`, naming the key, file or package, exits non-zero and writes
nothing outside `--out`. Also: resume refuses an edited config, a finished run keeps its
times, written files follow the umask, and non-finite test replicates are counted. What a run
prints (start line, progress lines, results table), its provenance and TensorBoard events are
checked on the one finished run the module shares.

Most checks call `experiments.cli.main` in-process (a subprocess pays a JAX import); Ctrl-C
and SIGTERM need a real process and signal."""

import contextlib
import errno
import importlib.metadata
import io
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from experiments import runner
from experiments.cli import main
from experiments.files import atomic_write_text
from experiments.show import show_run

KSEQ = [sys.executable, "-m", "experiments.cli"]
QUICKSTART = "configs/quickstart.yaml"
REPLICATES = 4
# Two units (mmd, hsic); the MMD's alternative is NaN data, so every one of its replicates has
# a NaN statistic, while HSIC's are all finite.
TINY = [
    "params.tests=[mmd,hsic]",
    "params.sample_sizes=[8]",
    f"params.num_replicates={REPLICATES}",
    "params.num_permutations=9",
    "params.mmd_shift=.nan",
    "devices.count=1",
]


def _sets(overrides):
    return [a for o in overrides for a in ("--set", o)]


def _tree(root: pathlib.Path, skip: pathlib.Path | None = None) -> dict:
    """Every path under `root` (except under `skip`) with its size, to check that nothing
    was written."""
    out = {}
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        out[str(path.relative_to(root))] = path.stat().st_size if path.is_file() else None
    return out


def _error_line(err: str, command: str, *needles: str) -> str:
    """The one `kseq` line on stderr: an error of `command` holding every needle."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("kseq")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"kseq {command}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny quickstart run with TensorBoard events, made under umask 022, not quiet,
    its stdout and stderr captured (not a terminal): (run folder, stdout, stderr)."""
    out = tmp_path_factory.mktemp("finished")
    old = os.umask(0o022)
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["run", QUICKSTART, "--out", str(out), *_sets([*TINY, "tensorboard=true"])]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert main(args) == 0
    finally:
        os.umask(old)
    (run_dir,) = (out / "quickstart").iterdir()
    return run_dir, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module")
def finished_run(finished):
    """The finished run's folder; tests copy it before changing it."""
    return finished[0]


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


# ----------------------------------------------------------------- config checks, no folder


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "nested"])
def test_run_name_must_be_a_plain_folder_name(tmp_path, capsys, kind):
    out = tmp_path / "parent" / "out"
    name = {"dotdot": "../../escaped", "absolute": str(tmp_path / "abs"), "nested": "a/b"}[kind]
    before = _tree(tmp_path)
    code = main(["run", QUICKSTART, "--out", str(out), "--quiet", "--set", f"name={name}"])
    assert code == 2
    _error_line(capsys.readouterr().err, "run", "`name`", name)
    assert _tree(tmp_path) == before  # nothing written anywhere, --out included


def test_oversized_seed_is_refused_before_any_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", QUICKSTART, "--out", str(out), "--set", f"seed={2**70}", *_sets(TINY)])
    assert code == 2
    _error_line(capsys.readouterr().err, "run", "`seed`")
    assert not out.exists()
    # seeds that `jax.random.key` would fold onto another (2**32 is seed 0) are refused too
    assert main(["run", QUICKSTART, "--out", str(out), "--set", f"seed={2**32}"]) == 2
    assert main(["run", QUICKSTART, "--out", str(out), "--set", "seed=-1"]) == 2
    assert not out.exists()


def test_too_many_devices_is_refused_before_any_folder(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", QUICKSTART, "--out", str(out), "--set", "devices.count=999"])
    assert code == 2
    _error_line(capsys.readouterr().err, "run", "`devices.count`")
    assert not out.exists()


def test_config_that_is_not_text(tmp_path, capsys):
    config = tmp_path / "binary.yaml"
    config.write_bytes(b"task: quickstart\n\xff\xfe")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    _error_line(capsys.readouterr().err, "run", str(config))
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- --out


def test_read_only_out(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes anyway: make mkdir under --out fail as it would
        real_mkdir = os.mkdir

        def mkdir(path, *args, **kwargs):
            if out in pathlib.Path(path).parents:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", mkdir)
    before = _tree(tmp_path)
    try:
        code = main(["run", QUICKSTART, "--out", str(out), *_sets(TINY)])
    finally:
        out.chmod(0o755)
    assert code == 1
    _error_line(capsys.readouterr().err, "run", str(out), "Permission denied")
    assert _tree(tmp_path) == before


def test_out_that_is_a_file(tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("not a folder\n")
    before = _tree(tmp_path)
    assert main(["run", QUICKSTART, "--out", str(out), *_sets(TINY)]) == 1
    _error_line(capsys.readouterr().err, "run", str(out))
    assert _tree(tmp_path) == before


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path, monkeypatch):
    """Another run may take a timestamp's folder between any check and the `mkdir`: simulated
    by a fixed clock, a folder that never seems to exist, and threads racing."""

    class Clock:
        class datetime:
            @staticmethod
            def now():
                import datetime

                return datetime.datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(runner, "_dt", Clock)
    monkeypatch.setattr(pathlib.Path, "exists", lambda self: False)
    made = [runner.new_run_dir(tmp_path, "q") for _ in range(3)]
    assert [p.name for p in made] == ["20260102-030405", "20260102-030405-1", "20260102-030405-2"]

    results, errors = [], []

    def start():
        try:
            results.append(runner.new_run_dir(tmp_path, "r"))
        except Exception as err:  # pragma: no cover - the failure this test is about
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 8


# ----------------------------------------------------------------- corrupt files


def test_corrupt_unit_on_resume(run_copy, capsys):
    (run_copy / "results.json").unlink()
    unit = run_copy / "units" / "mmd-n8.json"
    unit.write_text('{"test": "mmd", "si')  # cut short, as by a copy gone wrong
    before = _tree(run_copy)
    assert main(["run", "--resume", str(run_copy), "--quiet"]) == 1
    _error_line(capsys.readouterr().err, "run", str(unit), "delete it")
    assert _tree(run_copy) == before  # refused before anything ran


def test_corrupt_results_on_show(run_copy, capsys):
    (run_copy / "results.json").write_bytes(b"\x00\xff{")
    assert main(["show", str(run_copy)]) == 1
    _error_line(capsys.readouterr().err, "show", str(run_copy / "results.json"))


# ----------------------------------------------------------------- missing packages


@pytest.mark.parametrize(
    "task,package", [("bench_tests", "hyppo"), ("bench_thinning", "goodpoints")]
)
def test_missing_comparator_package(tmp_path, capsys, monkeypatch, task, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    out = tmp_path / "out"
    assert main(["run", f"configs/{task}.yaml", "--out", str(out), "--quiet"]) == 1
    _error_line(capsys.readouterr().err, "run", package, f"pip install {package}")
    assert not out.exists()  # checked before the run folder is made


# ----------------------------------------------------------------- kseq list


def test_list_skips_unreadable_configs(tmp_path, capsys):
    shutil.copy(QUICKSTART, tmp_path / "good.yaml")
    (tmp_path / "broken.yaml").write_text("task: [quickstart\n")
    (tmp_path / "sequence.yaml").write_text("- a\n- b\n")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00task")
    (tmp_path / "odd_task.yaml").write_text("task: [1, 2]\n")
    assert main(["list", "--dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "good.yaml" in captured.out and "task=quickstart" in captured.out
    assert "odd_task.yaml" in captured.out
    warned = [line for line in captured.err.splitlines() if line.startswith("kseq list: warning")]
    assert sorted(re.findall(r"\w+\.yaml", " ".join(warned))) == [
        "binary.yaml",
        "broken.yaml",
        "sequence.yaml",
    ]
    assert "Traceback" not in captured.err


# ----------------------------------------------------------------- resume


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_resume_refuses_an_edited_config(run_copy, capsys):
    config = run_copy / "config.yaml"
    text = config.read_text()
    assert f"num_replicates: {REPLICATES}\n" in text
    config.write_text(
        text.replace(f"num_replicates: {REPLICATES}\n", "num_replicates: 500\n").replace(
            "alpha: 0.05", "alpha: 0.1"
        )
    )
    before = _tree(run_copy)
    assert main(["run", "--resume", str(run_copy), "--quiet"]) == 2
    line = _error_line(
        capsys.readouterr().err, "run", "params.num_replicates", "500", "params.alpha"
    )
    assert "params.num_permutations" not in line  # only the changed keys
    assert _tree(run_copy) == before
    # undoing the edit makes the run resumable again; `devices` (how a launch computes, not
    # the experiment) may differ
    assert "count: 1" in text
    config.write_text(text.replace("count: 1", "count: 2"))
    assert main(["run", "--resume", str(run_copy), "--quiet"]) == 0


def test_resume_of_a_finished_run_keeps_its_times(run_copy, capsys):
    original = _results(run_copy)
    for count in (1, 2):
        assert main(["run", "--resume", str(run_copy), "--quiet"]) == 0
        resumed = _results(run_copy)
        assert resumed["results"] == original["results"]
        for key in ("started", "finished", "wall_seconds"):
            assert resumed["meta"][key] == original["meta"][key], key
        assert len(resumed["meta"]["resumed"]) == count
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_copy)


def test_resume_of_a_run_folder_without_its_record(run_copy):
    """Run folders made before `.run.json` existed resume as before (nothing to check)."""
    reference = _results(run_copy)
    (run_copy / runner.RUN_RECORD).unlink()
    (run_copy / "results.json").unlink()
    assert main(["run", "--resume", str(run_copy), "--quiet"]) == 0
    resumed = _results(run_copy)
    assert resumed["results"] == reference["results"]
    assert resumed["meta"]["resumed_units"] == 2 and len(resumed["meta"]["resumed"]) == 1


# ----------------------------------------------------------------- files and results


def test_written_files_follow_the_umask(finished_run, tmp_path):
    files = [
        finished_run / "config.yaml",
        finished_run / "results.json",
        finished_run / "metrics.jsonl",
        *(finished_run / "units").iterdir(),
        *(finished_run / "plots").iterdir(),
    ]
    assert len(files) == 6
    assert {p.name: p.stat().st_mode & 0o777 for p in files} == {p.name: 0o644 for p in files}
    folders = [finished_run, finished_run / "units", finished_run / "plots"]
    assert {p.stat().st_mode & 0o777 for p in folders} == {0o755}
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "sub" / "x.json", "{}\n")
    finally:
        os.umask(old)
    assert (tmp_path / "sub" / "x.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o750


def test_nonfinite_replicates_are_counted(finished_run):
    rates = {r["test"]: r for r in _results(finished_run)["results"]["rates"]}
    mmd, hsic = rates["mmd"], rates["hsic"]
    # NaN data: every replicate's statistic is NaN, none rejects, and the count says so
    assert mmd["num_nonfinite_power"] == REPLICATES and mmd["power"] == 0.0
    assert mmd["num_nonfinite_size"] == 0
    assert hsic["num_nonfinite_size"] == hsic["num_nonfinite_power"] == 0


# ----------------------------------------------------------------- what a run prints


def test_start_line_progress_lines_and_results_table(finished):
    run_dir, out, err = finished
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert (
        lines[0] == f"[quickstart] run folder {run_dir}; to resume it: kseq run --resume {run_dir}"
    )
    # stderr is not a terminal: one line per finished unit, with its step and its time
    assert len(lines) == 3, lines
    for step, (line, unit) in enumerate(zip(lines[1:], ["mmd-n8", "hsic-n8"], strict=True), 1):
        assert re.fullmatch(rf"\[quickstart\] unit {unit} done \({step}/2, \d+\.\d s\)", line)
    # stdout: the table `kseq show` prints, then the run folder as the last line
    assert out == f"{show_run(run_dir)}\n{run_dir}\n"
    assert "results.rates:" in out and "num_nonfinite_power" in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stderr", ["terminal", "log", "quiet"])
def test_progress_bars_on_a_terminal_lines_elsewhere(tmp_path, monkeypatch, stderr):
    from experiments.context import RunContext

    stream = _Terminal() if stderr == "terminal" else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    ctx = RunContext(tmp_path, name="demo", quiet=stderr == "quiet")
    for i in ctx.progress(range(3), desc="units"):
        ctx.unit(f"u{i}", lambda i=i: {"i": i})
    for _ in ctx.progress(range(40), desc="steps"):  # steps that are not units
        pass
    text = stream.getvalue()
    if stderr == "quiet":
        assert text == ""
    elif stderr == "terminal":  # tqdm bars, no lines
        assert "units" in text and "steps" in text and "[demo]" not in text
    else:
        lines = text.splitlines()
        assert [line.split(" (")[0] for line in lines[:3]] == [
            f"[demo] unit u{i} done" for i in range(3)
        ]
        assert lines[0].startswith("[demo] unit u0 done (1/3, ")
        # a loop without units: a line every twentieth of it
        steps = [line.split(" (")[0] for line in lines[3:]]
        assert steps == [f"[demo] steps {n}/40" for n in range(2, 41, 2)]


def test_provenance_in_meta_and_run_record(finished_run, tmp_path):
    import jax

    meta = _results(finished_run)["meta"]
    try:
        version = importlib.metadata.version("kseq")
    except importlib.metadata.PackageNotFoundError:
        version = None
    assert meta["kseq_version"] == version
    assert meta["python_version"] == platform.python_version()
    assert meta["jax_version"] == jax.__version__
    assert meta["overrides"] == [*TINY, "tensorboard=true"]
    assert meta["command"] == sys.argv  # in-process: this process's command line
    package = pathlib.Path(runner.__file__).parent
    tracked = subprocess.run(
        ["git", "-C", str(package), "ls-files", "--error-unmatch", "__init__.py"],
        capture_output=True,
    )
    if shutil.which("git") and tracked.returncode == 0:  # the tests run from a checkout
        assert re.fullmatch("[0-9a-f]{40}", meta["git"]["commit"]), meta["git"]
        assert isinstance(meta["git"]["dirty"], bool)
    record = json.loads((finished_run / runner.RUN_RECORD).read_text())["provenance"]
    assert record == {key: meta[key] for key in record}
    # no commit, and no error, outside a git work tree or where git does not track the package
    assert runner.git_commit(tmp_path) is None
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        (tmp_path / "pkg").mkdir()
        (tmp_path / "pkg" / "__init__.py").write_text("")
        assert runner.git_commit(tmp_path / "pkg") is None


def test_tensorboard_events(finished_run):
    (events,) = (finished_run / "tensorboard").glob("events.out.tfevents.*")
    data = events.read_bytes()
    # each metrics record's numbers, tagged by its text values (the unit and the test)
    for tag in (b"mmd-n8/mmd/power", b"hsic-n8/hsic/size", b"hsic-n8/hsic/num_nonfinite_size"):
        assert tag in data, tag


def test_tensorboard_needs_its_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` now fails
    out = tmp_path / "out"
    assert main(["run", QUICKSTART, "--out", str(out), "--set", "tensorboard=true"]) == 1
    _error_line(capsys.readouterr().err, "run", "tensorboardX", "kseq[tensorboard]")
    assert not out.exists()  # checked before the run folder is made


# ----------------------------------------------------------------- Ctrl-C and SIGTERM

# A user's task, outside the package: a few units, each taking KSEQ_TEST_UNIT_SECONDS (long in
# the process that is stopped, short in the resume).
USER_TASK = """
import dataclasses
import os
import time


@dataclasses.dataclass(frozen=True)
class Config:
    \"\"\"A slow task.

    Attributes:
      units: how many units.
    \"\"\"

    units: int = 3


def run(cfg, ctx):
    seconds = float(os.environ.get("KSEQ_TEST_UNIT_SECONDS", "0"))
    done = []
    for i in ctx.progress(range(cfg.units), desc="slow"):
        done.append(ctx.unit(f"u{i}", lambda i=i: (time.sleep(seconds), {"i": i})[1]))
    return {"done": done}
"""


def _interrupt(command, out, sig, env=None):
    """Starts `kseq` with `command`, sends `sig` once the start line is on stderr, and returns
    (return code, stdout, stderr)."""
    err_path, out_path = out.parent / "stderr.txt", out.parent / "stdout.txt"
    with open(err_path, "w") as err_file, open(out_path, "w") as out_file:
        # The child starts with Ctrl-C as from a terminal: a pytest-xdist worker ignores
        # SIGINT, an ignored SIGINT survives exec, and Python then leaves it ignored (as it
        # must for a background job); a handler, unlike SIG_IGN, is reset to the default.
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            proc = subprocess.Popen(
                [*KSEQ, *command],
                stdout=out_file,
                stderr=err_file,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            deadline = time.monotonic() + 120
            while "] run folder " not in err_path.read_text():
                assert proc.poll() is None, err_path.read_text()
                assert time.monotonic() < deadline, "no start line appeared"
                time.sleep(0.02)
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return proc.returncode, out_path.read_text(), err_path.read_text()


def test_ctrl_c_prints_the_resume_command(tmp_path, capsys):
    out = tmp_path / "out"
    command = ["run", QUICKSTART, "--out", str(out), *_sets(TINY)]
    code, stdout, stderr = _interrupt(command, out, signal.SIGINT)
    assert code == 130, (stdout, stderr)
    (run_dir,) = (out / "quickstart").iterdir()
    line = _error_line(stderr, "run", "interrupted (Ctrl-C)", f"kseq run --resume {run_dir}")
    assert not (run_dir / "results.json").exists()
    # the printed command finishes the run
    resume = line.split("kseq run ", 2)[-1].split()
    assert main(["run", *resume, "--quiet"]) == 0
    printed = capsys.readouterr()
    assert printed.out.strip().splitlines()[-1] == str(run_dir)
    assert printed.err.startswith(f"[quickstart] resuming {run_dir}; to resume it again: ")
    results = _results(run_dir)
    assert len(results["results"]["rates"]) == 2
    # the provenance is that of the command that started the run
    assert results["meta"]["command"][1:] == command and results["meta"]["overrides"] == TINY


def test_sigterm_stops_a_user_task_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    """A task module outside the package (`task: kseq_user_tasks.slow`, on PYTHONPATH) run by
    the command, stopped by SIGTERM, resumed."""
    package = tmp_path / "lib" / "kseq_user_tasks"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "slow.py").write_text(USER_TASK)
    config = tmp_path / "slow.yaml"
    config.write_text("task: kseq_user_tasks.slow\nname: slow\nparams: {units: 3}\n")
    out = tmp_path / "out"
    lib = str(tmp_path / "lib")
    path = os.pathsep.join(p for p in (lib, os.environ.get("PYTHONPATH")) if p)
    command = ["run", str(config), "--out", str(out)]
    env = {"PYTHONPATH": path, "KSEQ_TEST_UNIT_SECONDS": "60"}
    code, stdout, stderr = _interrupt(command, out, signal.SIGTERM, env=env)
    assert code == 130, (stdout, stderr)
    (run_dir,) = (out / "slow").iterdir()
    _error_line(stderr, "run", "interrupted (SIGTERM)", f"kseq run --resume {run_dir}")
    assert not (run_dir / "results.json").exists()
    monkeypatch.syspath_prepend(lib)
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    results = _results(run_dir)
    assert results["results"]["done"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert results["meta"]["task"] == "kseq_user_tasks.slow"


# ----------------------------------------------------------------- user tasks, help, config


@pytest.mark.parametrize(
    "task,needle",
    [
        ("kseq_no_such_package.task", "no module named 'kseq_no_such_package'"),
        ("kseq_bad_tasks.no_config", "frozen dataclass `Config`"),
        ("kseq_bad_tasks.no_run", "`run(cfg, ctx) -> dict`"),
        ("kseq_bad_tasks.broken", "No module named 'kseq_missing_dependency'"),
        ("quikstart", "did you mean 'quickstart'"),
    ],
)
def test_user_task_that_does_not_follow_the_protocol(tmp_path, capsys, monkeypatch, task, needle):
    package = tmp_path / "kseq_bad_tasks"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "no_config.py").write_text("def run(cfg, ctx):\n    return {}\n")
    (package / "no_run.py").write_text(USER_TASK.replace("def run(", "def not_run("))
    (package / "broken.py").write_text("import kseq_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = tmp_path / "bad.yaml"
    config.write_text(f"task: {task}\n")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    _error_line(capsys.readouterr().err, "run", "`task`", task, needle)
    assert not out.exists()


def test_help_for_a_config(capsys):
    assert main(["run", QUICKSTART, "--help", "--set", "params.num_replicates=7"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: kseq run")
    assert "params.num_replicates: int = 100  (this config: 7)\n" in text
    assert "      replicates per (test, n, hypothesis).\n" in text
    assert "params.tests: tuple[Literal['mmd', 'hsic', 'ksd'], ...] = [mmd, hsic, ksd]" in text
    assert "tensorboard: bool = false" in text and "devices.count: int | None = null" in text
    # without a config, argparse's help of `kseq run`
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: kseq run") and "--print-config" in text
    assert "keys of" not in text and "params.num_replicates:" not in text


def test_every_task_parameter_is_documented():
    """`kseq run CONFIG --help` prints each field's entry of its Config's `Attributes:`."""
    import dataclasses

    from experiments.config import field_docs
    from experiments.tasks import TASKS, get_task

    for name in TASKS:
        config = get_task(name).Config
        docs = field_docs(config)
        fields = [f.name for f in dataclasses.fields(config)]
        assert [f for f in fields if not docs.get(f)] == [], name
        assert set(docs) <= set(fields), name


def test_print_config(tmp_path, capsys):
    import yaml

    out = tmp_path / "out"
    code = main(["run", QUICKSTART, "--out", str(out), "--print-config", "--set", "seed=5"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["task"] == "quickstart"
    assert printed["params"]["sample_sizes"] == [25, 50, 100, 200]
    assert not out.exists()  # nothing ran
