"""Running a task into a run folder: `<out>/<name>/<timestamp>/`.

The folder holds `.run.json` (when the run started and its resolved config, written once
before anything else and read-only: what a resume is checked against), `config.yaml` (the
resolved config, written next), `metrics.jsonl` (one JSON line per record, flushed as it is
written), `units/*.json` (the finished units of work of tasks that declare them, which
`resume_experiment` reuses), `checkpoints/<loop>/<step>/` (orbax checkpoints of training
loops, see `experiments.checkpoints`), `plots/*.png`, `tensorboard/` (TensorBoard events of
the metrics, with the config's `tensorboard: true`) and `results.json` (written last, its
`meta` with the run's provenance: `provenance`).
Every file except the append-only metrics is written to a temporary name and renamed into
place (`experiments.files`), so an interrupted run never leaves a half-written file behind;
files and folders get the usual modes under the umask (0644 / 0755 under umask 022). The
folder is made only after the config, the task's optional packages and the device mesh have
been checked, so a run that cannot start leaves nothing behind.

A resumed run reads back its finished units and restores its training loops from their latest
checkpoints, and finishes with the results of an uninterrupted run; metrics lines of the work
that was in progress (since a loop's last checkpoint, or of an unfinished unit) may appear
twice in `metrics.jsonl`. A resume is refused when `config.yaml` no longer holds the config
the run started with (the finished units were computed with the old values), and when a
finished unit is corrupt; a run that had finished is not computed again (see
`resume_experiment`).

Devices (`experiments.mesh`, `experiments.context`): the config's `devices` section sets the
device mesh, `RunContext.mesh`, over which tasks split their replicate, permutation, seed and
batch axes.

Several processes (`experiments.distributed`): with `devices.distributed`, every process runs
the same command; the run folder is created by process 0 and its path broadcast to the others
(so `--out` runs agree on `<timestamp>` whatever their clocks), and only process 0 writes. The
run folder must be on a filesystem that all processes share (as on one machine, or NFS on a
cluster): on `--resume` every process reads the finished units and the checkpoints from it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from experiments.config import (
    ConfigError,
    RunConfig,
    config_to_dict,
    dump_config,
    load_config,
    resolved_dict,
)
from experiments.context import RunContext, check_units
from experiments.distributed import broadcast_text, is_writer, start_distributed
from experiments.errors import RunError, RunInterrupted
from experiments.files import atomic_write_text, read_json
from experiments.interrupts import interruptible, raise_if_interrupted
from experiments.mesh import build_mesh
from experiments.tasks import get_task

if TYPE_CHECKING:
    import jax

__all__ = [
    "RUN_RECORD",
    "check_requirements",
    "git_commit",
    "new_run_dir",
    "prepare_run",
    "provenance",
    "resume_experiment",
    "run_experiment",
]

# ----------------------------------------------------------------------------- runs


# The run's record, written once when the run starts and never rewritten: when it started, the
# resolved config it started with (what `resume_experiment` checks `config.yaml` against) and
# its provenance (`provenance`).
RUN_RECORD = ".run.json"

# What `run_experiment` and `resume_experiment` call with the run folder once it holds its
# config and the run is about to compute (e.g. the command line's start line).
OnStart = Callable[[pathlib.Path], None]


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def new_run_dir(out_root: str | os.PathLike, name: str, *, leaf: str | None = None) -> pathlib.Path:
    """A fresh `<out_root>/<name>/<timestamp>[-i]/` (`<leaf>[-i]` when `leaf` is given: a
    sweep names its folders), made by process 0; its path is broadcast, so every process of a
    distributed run uses process 0's folder.

    Collision-free: the folder is claimed by `mkdir` itself (which fails when another run made
    it first, even a moment ago), then `-1`, `-2`, ... are tried; checking for it beforehand
    would leave a race between two runs started in the same second."""
    run_dir, failure = None, None
    if is_writer():
        stamp = leaf or _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = pathlib.Path(out_root) / name
        try:
            base.mkdir(parents=True, exist_ok=True)
            for i in itertools.count():
                candidate = base / (stamp if i == 0 else f"{stamp}-{i}")
                try:
                    candidate.mkdir()
                except FileExistsError:
                    continue
                run_dir = candidate
                break
        except OSError as err:  # read-only, a file in the way, no space, ...
            reason = err.strerror or str(err)
            where = f" ({err.filename})" if err.filename else ""
            failure = f"cannot make a run folder in {base} (--out {out_root}): {reason}{where}"
    shared = broadcast_text("" if run_dir is None else str(run_dir))
    if failure is not None:
        raise RunError(failure)
    if not shared:
        raise RunError(f"process 0 could not make a run folder in {out_root}.")
    return pathlib.Path(shared)


def prepare_run(cfg: RunConfig) -> tuple[types.ModuleType, jax.sharding.Mesh | None]:
    """Every check a run needs before it writes anything: the task's optional packages, the
    processes and the device mesh (and tensorboardX for `tensorboard: true`). Returns (task
    module, mesh)."""
    task = get_task(cfg.task)
    check_requirements(cfg.task, task)
    if cfg.tensorboard:
        import importlib.util

        if importlib.util.find_spec("tensorboardX") is None:
            raise RunError(
                "`tensorboard: true` needs tensorboardX, which is not installed: "
                "pip install 'kseq[tensorboard]'."
            )
    start_distributed(cfg.devices)
    return task, build_mesh(cfg.devices)


def _kseq_version() -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version("kseq")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return None


def git_commit(folder: str | os.PathLike | None = None) -> dict | None:
    """`{"commit": <HEAD's hash>, "dirty": <whether tracked files differ from it>}` of the git
    work tree that holds `folder` (default: this package), when git tracks the package there
    (an installed copy inside some other repository, a venv say, is not its checkout); None
    otherwise, or when git is missing or fails. Never raises."""
    folder = pathlib.Path(folder) if folder is not None else pathlib.Path(__file__).parent

    def git(*args: str) -> str:
        command = ["git", "--no-optional-locks", "-C", str(folder), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    try:
        git("ls-files", "--error-unmatch", "__init__.py")  # tracked: this is its checkout
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return {"commit": commit, "dirty": dirty}


def provenance(overrides: Sequence[str] = ()) -> dict:
    """Where a launch comes from: kseq's installed version (None from a checkout that is not
    installed), the git commit of the checkout it runs from (`git_commit`), the Python
    version, the command line (`sys.argv`) and the `--set` overrides."""
    return {
        "kseq_version": _kseq_version(),
        "git": git_commit(),
        "python_version": platform.python_version(),
        "command": list(sys.argv),
        "overrides": list(overrides),
    }


def check_requirements(name: str, task: types.ModuleType) -> None:
    """Raises a `RunError` naming each optional package the task declares in `REQUIRES`
    (package -> how to install it) that cannot be imported."""
    import importlib

    missing = []
    for package, hint in getattr(task, "REQUIRES", {}).items():
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(f"{package} ({hint})")
    if missing:
        raise RunError(
            f"task {name!r} needs packages that are not installed: {', '.join(missing)}."
        )


def run_experiment(
    cfg: RunConfig,
    out_root: str | os.PathLike = "runs",
    *,
    quiet: bool = False,
    leaf: str | None = None,
    overrides: Sequence[str] = (),
    on_start: OnStart | None = None,
) -> pathlib.Path:
    """Runs `cfg`'s task into a fresh `<out_root>/<name>/<timestamp>/` and returns that folder
    (`<out_root>/<name>/<leaf>/` when `leaf` is given, as a sweep names its runs).

    The folder is made only after every check (config, packages, devices) has passed;
    `on_start(run_dir)` is called once it holds the config (a run that can be resumed).
    `overrides` (the `--set` items `cfg` was loaded with) are recorded with the rest of the
    run's provenance (`provenance`) in `.run.json` and in `results.json`'s `meta`. Ctrl-C or
    SIGTERM raises `RunInterrupted`, which names the folder to resume."""
    task, mesh = prepare_run(cfg)
    origin = provenance(overrides)
    run_dir = None
    try:
        with interruptible():
            run_dir = new_run_dir(out_root, cfg.name, leaf=leaf)
            started = _now()
            if is_writer():
                record = {"started": started, "config": resolved_dict(cfg), "provenance": origin}
                # read-only: a hint that it is the reference, not a file to edit
                text = json.dumps(record, indent=2) + "\n"
                atomic_write_text(run_dir / RUN_RECORD, text, mode=0o444)
                atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            if on_start is not None:
                on_start(run_dir)
            _run_in(cfg, run_dir, quiet, task=task, mesh=mesh, started=started, origin=origin)
    except KeyboardInterrupt:
        if run_dir is not None and not (run_dir / "config.yaml").is_file():
            # stopped before the run began: its fresh folder holds nothing to resume
            if is_writer():
                shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = None
        raise RunInterrupted(run_dir) from None
    return run_dir


def resume_experiment(
    run_dir: str | os.PathLike,
    *,
    quiet: bool = False,
    overrides: Sequence[str] = (),
    on_start: OnStart | None = None,
) -> pathlib.Path:
    """Finishes an interrupted run in its own folder, from the `config.yaml` it wrote first:
    finished units (`units/*.json`) are read back, training loops restored from their latest
    checkpoints, the rest computed, then `results.json` written as an uninterrupted run would
    have written it. `overrides` may set `devices.*` only (how this launch computes, e.g. the
    process id of a distributed resume), never the experiment.

    Refused (`ConfigError`, naming the dotted keys) when `config.yaml` no longer holds the
    config the run started with (its `.run.json`; runs made before that file existed are not
    checked), since finished units would be reused under the new values; refused
    (`RunError`) when a finished unit or `results.json` is not valid JSON. A run that had
    finished (`results.json` present) is not computed again: its results, `started` and
    `wall_seconds` stay, and the resume is recorded in `meta.resumed`. `on_start(run_dir)` is
    called once the checks have passed, before anything is computed.

    `meta`'s `command` and `overrides` stay those that started the run (from `.run.json`;
    None for a run folder older than that record); its versions and git commit are those of
    the launch that finished it."""
    for item in overrides:
        if not item.strip().startswith("devices."):
            raise ConfigError(
                f"a resumed run keeps its config; only `devices.*` may be set, got {item!r}."
            )
    run_dir = pathlib.Path(run_dir)
    cfg = load_config(run_dir / "config.yaml", overrides)
    record = _read_record(run_dir)
    if record is not None:
        _check_unchanged(run_dir, record["config"], cfg)
    results_path = run_dir / "results.json"
    finished = None
    if results_path.is_file():
        finished = read_json(results_path, what="delete it to finish the run again.")
    resumed_at = _now()
    try:
        if finished is not None:
            start_distributed(cfg.devices)
            meta = finished.setdefault("meta", {}) if isinstance(finished, dict) else None
            if meta is None or not isinstance(meta, dict):
                raise RunError(
                    f"{results_path} holds no `meta` mapping; delete it to finish the run again."
                )
            meta["resumed"] = [*meta.get("resumed", []), resumed_at]
            if is_writer():
                atomic_write_text(results_path, json.dumps(finished, indent=2) + "\n")
            if on_start is not None:
                on_start(run_dir)
            return run_dir
        task, mesh = prepare_run(cfg)
        check_units(run_dir)  # before anything runs, not midway
        started = record.get("started") if record is not None else None
        origin = provenance()
        first = record.get("provenance") if record is not None else None
        first = first if isinstance(first, dict) else {}  # older records have none
        origin.update(command=first.get("command"), overrides=first.get("overrides"))
        with interruptible():
            if on_start is not None:
                on_start(run_dir)
            _run_in(
                cfg,
                run_dir,
                quiet,
                task=task,
                mesh=mesh,
                started=started,
                resumed=[resumed_at],
                origin=origin,
            )
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir) from None
    return run_dir


def _read_record(run_dir: pathlib.Path) -> dict | None:
    path = run_dir / RUN_RECORD
    if not path.is_file():
        return None  # a run folder made before the record existed: nothing to check against
    record = read_json(path, what="it is the record of how the run started; restore it.")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise RunError(f"{path} holds no `config` mapping; restore the file.")
    return record


def _dotted(prefix: str, obj: Any, out: dict) -> dict:
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            _dotted(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = obj
    return out


def _check_unchanged(run_dir: pathlib.Path, original: dict, cfg: RunConfig) -> None:
    """`ConfigError` naming every dotted key whose value differs between the config the run
    started with and `cfg` (the `devices` section aside: it says how a launch computes, which
    a resume may change)."""
    before = {k: v for k, v in _dotted("", original, {}).items() if not k.startswith("devices.")}
    now = {
        k: v for k, v in _dotted("", resolved_dict(cfg), {}).items() if not k.startswith("devices.")
    }
    # a top-level key added to the schema after the run started (`tensorboard`) is absent from
    # its record: unchanged while it holds its default
    for field in dataclasses.fields(RunConfig):
        if field.name not in before and field.name in now and now[field.name] == field.default:
            before[field.name] = field.default
    # likewise a task parameter added after the run started, while it holds its default (the
    # run computed its units as that default does)
    if dataclasses.is_dataclass(cfg.params):
        for field in dataclasses.fields(cfg.params):
            if field.default is not dataclasses.MISSING:
                default = field.default
            elif field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            else:
                continue
            if default != getattr(cfg.params, field.name):
                continue
            for k, v in _dotted(f"params.{field.name}", config_to_dict(default), {}).items():
                if not any(b == k or b.startswith(k + ".") for b in before):
                    before[k] = v
    # compared as canonical JSON: a NaN equals itself, a tuple its list
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    changed = [
        f"{k} ({before.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r})"
        for k in sorted(set(before) | set(now))
        if k not in before or k not in now or not same(before[k], now[k])
    ]
    if changed:
        raise ConfigError(
            f"{run_dir / 'config.yaml'} differs from the config the run started with: "
            + ", ".join(changed)
            + ". A resumed run would reuse units computed with the old values; undo the edit, "
            "or start a new run with `kseq run` on the edited config."
        )


def _run_in(
    cfg: RunConfig,
    run_dir: pathlib.Path,
    quiet: bool,
    *,
    task: types.ModuleType,
    mesh: jax.sharding.Mesh | None,
    started: str | None = None,
    resumed: Sequence[str] = (),
    origin: dict | None = None,
) -> RunContext:
    """Runs the task in `run_dir` and writes `results.json`. Its `meta.started` is when the run
    first started (`started`; this launch when unknown), `wall_seconds` the time this launch
    computed (a resumed run's earlier launches are not counted: their ends are unknown),
    `resumed` the time of this launch when it resumes the run (`resumed`), and the provenance
    fields (`origin`, see `provenance`): `kseq_version`, `git`, `python_version`, `command`,
    `overrides`."""
    import jax

    data_axes = None if mesh is None else cfg.devices.split_axes
    ctx = RunContext(
        run_dir,
        seed=cfg.seed,
        quiet=quiet,
        mesh=mesh,
        data_axes=data_axes,
        name=cfg.name,
        tensorboard=cfg.tensorboard,
    )
    start = time.time()
    try:
        results = task.run(cfg.params, ctx)
    finally:
        ctx.close()
    raise_if_interrupted()  # never write the results of an interrupted run
    end = time.time()
    meta = {
        "task": cfg.task,
        "name": cfg.name,
        "seed": cfg.seed,
        "started": started or _dt.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
        "finished": _dt.datetime.fromtimestamp(end).isoformat(timespec="seconds"),
        "wall_seconds": round(end - start, 3),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "devices_used": ctx.mesh.size if ctx.mesh is not None else 1,
        "mesh": {} if ctx.mesh is None else dict(ctx.mesh.shape),
        "process_count": jax.process_count(),
        **(origin if origin is not None else provenance()),
    }
    if resumed:
        meta["resumed"] = list(resumed)
    if ctx.reused_units:
        meta["resumed_units"] = len(ctx.reused_units)
    ctx.write_json("results.json", {"meta": meta, "results": results})
    return ctx
