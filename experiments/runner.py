"""Running a task into a run folder: `<out>/<name>/<timestamp>/`.

The folder holds `.run.json` (when the run started and its resolved config, written once
before anything else and read-only: what a resume is checked against), `config.yaml` (the
resolved config, written next), `metrics.jsonl` (one JSON line per record, flushed as it is
written), `units/*.json` (the finished units of work of tasks that declare them, which
`resume_experiment` reuses), `checkpoints/<loop>/<step>/` (orbax checkpoints of training
loops, see `experiments.checkpoints`), `plots/*.png` and `results.json` (written last).
Every file except the append-only metrics is written to a temporary name and renamed into
place, so an interrupted run never leaves a half-written file behind; files and folders get
the usual modes under the umask (0644 / 0755 under umask 022). The folder is made only after
the config, the task's optional packages and the device mesh have been checked, so a run that
cannot start leaves nothing behind.

A resumed run reads back its finished units and restores its training loops from their latest
checkpoints, and finishes with the results of an uninterrupted run; metrics lines of the work
that was in progress (since a loop's last checkpoint, or of an unfinished unit) may appear
twice in `metrics.jsonl`. A resume is refused when `config.yaml` no longer holds the config
the run started with (the finished units were computed with the old values), and when a
finished unit is corrupt; a run that had finished is not computed again (see
`resume_experiment`).

Devices. The config's `devices` section (`experiments.config.DevicesConfig`) sets the device
mesh, `RunContext.mesh`: one axis of `count` devices, or named axes and sizes (`mesh`). Tasks
split their replicate, permutation, seed and batch axes over its data axes
(`RunContext.data_axes`: every axis unless the config names some) with `RunContext.shard` (a
`NamedSharding` over the leading axis; `jax.jit` of a `vmap` then runs each device's share) or
`RunContext.map` (a function applied to every
row of a batch with `jax.shard_map` + `lax.map`, each row computed by the same program on any
number of devices, so the results are bit for bit those of one device). Data-parallel training
(`shard` on the batch inside `jax.jit`, parameters replicated) agrees with one device to float
rounding only: the batch mean is reduced across devices in another order.

Several processes. With `devices.distributed`, `jax.distributed.initialize()` is called before
anything else, the mesh spans the devices of every process and each process computes its share
of every sharded computation (arrays are made global with `jax.device_put` onto the mesh). Only
process 0 writes files: the run folder is created by process 0 and its path broadcast to the
others (so `--out` runs agree on `<timestamp>` whatever their clocks), and every other process
computes the same values and writes nothing (orbax checkpoints are saved by every process
together; orbax writes the host arrays stored here from process 0). The run folder must be on a
filesystem that all processes share (as on one machine, or NFS on a cluster): on `--resume`
every process reads the finished units and the checkpoints from it. The set of finished units
is read by every process before any process can write a new one (a barrier), so all processes
agree on what to compute.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import itertools
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from experiments.config import ConfigError, RunConfig, dump_config, resolved_dict

__all__ = [
    "RunContext",
    "RunError",
    "RunInterrupted",
    "atomic_write_text",
    "build_mesh",
    "host_array",
    "is_writer",
    "read_json",
    "resume_experiment",
    "run_experiment",
    "show_run",
    "split_leading_axis",
    "start_distributed",
    "to_jsonable",
]


def to_jsonable(obj: Any) -> Any:
    """Converts JAX/NumPy arrays and scalars, tuples and dataclasses into plain JSON values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (str, bool)) or obj is None:
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "__array__") or isinstance(obj, np.generic):
        arr = host_array(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    return str(obj)


class RunError(Exception):
    """A run that cannot start, resume or be shown as asked (a run folder that cannot be made,
    a corrupt file, a missing optional package); the message names the file or package and
    says what to do. The command line prints it without a traceback."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: a `KeyboardInterrupt` that knows the run folder (None when it was
    not made yet), so that the command line can print how to finish the run."""

    def __init__(self, run_dir: pathlib.Path | None):
        super().__init__(str(run_dir) if run_dir is not None else "")
        self.run_dir = run_dir


def _umask() -> int:
    """The process's umask, read from /proc where it can be (setting it to read it back, the
    only portable way, briefly changes it for every thread)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: pathlib.Path, text: str, *, mode: int = 0o666) -> None:
    """Writes `text` to `path` via a temporary file in the same folder and a rename.

    The file gets `mode` less the umask, as `open` would give it (`mkstemp` makes its
    temporary file 0600, which the rename would otherwise keep)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: pathlib.Path, *, what: str):
    """The JSON value in `path`; a `RunError` naming the file (and `what` to do about it) when
    it is not valid JSON."""
    path = pathlib.Path(path)
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise RunError(f"{path} is not valid JSON ({err}); {what}") from None


# Ctrl-C. Python raises KeyboardInterrupt in whatever Python code runs when the signal lands,
# which may be a callback whose exceptions are dropped (JAX's garbage-collection callback:
# "Exception ignored in ..."), and the run would go on as if nothing had happened. So while a
# run computes, Ctrl-C is also noted, the dropped KeyboardInterrupt is not printed, and the run
# stops at the next check: each `progress` step, each finished unit, before the results.
_interrupt = {"noted": False}


def _raise_if_interrupted() -> None:
    if _interrupt["noted"]:
        raise KeyboardInterrupt


def _checked(iterable):
    for item in iterable:
        _raise_if_interrupted()
        yield item


@contextlib.contextmanager
def _interruptible():
    """Notes Ctrl-C for `_raise_if_interrupted` during the block (main thread, default SIGINT
    handler only: a handler someone else installed is left alone)."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum, frame):
        _interrupt["noted"] = True
        raise KeyboardInterrupt

    def on_unraisable(unraisable):
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous_hook(unraisable)

    previous_hook = sys.unraisablehook
    _interrupt["noted"] = False
    signal.signal(signal.SIGINT, on_sigint)
    sys.unraisablehook = on_unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = previous_hook
        _interrupt["noted"] = False


# ----------------------------------------------------------------------------- processes


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer, got {value!r}."
        ) from None


def start_distributed(devices) -> None:
    """Calls `jax.distributed.initialize()` once, for a `DevicesConfig` with `distributed`.

    The coordinator address, number of processes and process id come from the config's
    `coordinator`, `num_processes` and `process_id`, else from the environment variables
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, else (None) from
    JAX's cluster detection (SLURM, Open MPI, Kubernetes, Cloud TPU). Must run before anything
    else touches a JAX backend; does nothing without `distributed` or when already initialised.
    """
    if not devices.distributed:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    num_processes = devices.num_processes
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    process_id = devices.process_id
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    # CPU processes exchange data through gloo (TCP): the default of recent JAX (0.10 here),
    # set explicitly where a version has no CPU collectives by default
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=devices.coordinator,  # None: JAX reads JAX_COORDINATOR_ADDRESS
        num_processes=num_processes,
        process_id=process_id,
    )


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; the only one without
    `jax.distributed`)."""
    import jax

    return jax.process_index() == 0


def _barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _broadcast_text(text: str | None) -> str:
    """Process 0's `text`, on every process."""
    import jax

    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8) if is_writer() else np.zeros(0, np.uint8)
    size = multihost_utils.broadcast_one_to_all(np.array([data.size], np.int32))
    buffer = np.zeros(int(np.asarray(size)[0]), np.int32)
    if is_writer():
        buffer[:] = data
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(out.astype(np.uint8)).decode()


def host_array(x) -> np.ndarray:
    """`x` as a NumPy array on this host, also when it is a global array sharded over the
    devices of several processes (then gathered from all of them: every process must call it)."""
    import jax

    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def _is_key(x) -> bool:
    import jax

    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _put(x, sharding):
    """`jax.device_put` that also takes typed PRNG keys onto a multi-process sharding (through
    their key data; every process passes the same host value)."""
    import jax

    if _is_key(x):
        data = _put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


def _split_axes(mesh, axes) -> tuple[str, ...]:
    """`axes` (None: every axis of `mesh`) as a checked tuple of mesh axis names."""
    if axes is None:
        return tuple(mesh.axis_names)
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown or not axes:
        raise ValueError(
            f"`axes` must name axes of the mesh {tuple(mesh.axis_names)}, got {axes!r}."
        )
    return axes


def _split_size(mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def split_leading_axis(x, mesh, axes=None):
    """`x` (an array or a pytree of arrays) with its leading axis (replicates, seeds, a batch)
    split over the device `mesh`'s `axes` (None: all of them, jointly in mesh order), so that
    `jax.jit` of a `vmap` over that axis runs each device's share; mesh axes not in `axes` hold
    copies. Inside `jax.jit` (traced arrays) it is a sharding constraint.

    Arrays whose leading axis does not divide evenly, and a `mesh` of None (one device), stay
    as they are; in a multi-process run, concrete ones are replicated over the mesh instead
    (every array that meets a sharded one must be global there). The results do not depend
    on the layout."""
    import jax

    if mesh is None:
        return x
    axes = _split_axes(mesh, axes)
    parts = _split_size(mesh, axes)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    several = jax.process_count() > 1

    def one(a):
        if not hasattr(a, "shape"):
            return a
        divides = a.ndim > 0 and a.shape[0] % parts == 0
        if isinstance(a, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(a, split) if divides else a
        if divides:
            return _put(a, split)
        return _put(a, whole) if several else a

    return jax.tree.map(one, x)


# ----------------------------------------------------------------------------- the context

_MAP_PROGRAMS_KEPT = 16  # programs of `RunContext.map` kept per run
_UNIT_HINT = "delete it and resume again to recompute that unit."


class RunContext:
    """What a task gets besides its config: the run folder, keys, devices, logging, progress.

    Only process 0 (`writes_files`) writes; in a multi-process run every other process computes
    the same values and its writes are skipped.

    Attributes:
      out_dir: the run folder.
      seed: the run's seed.
      quiet: no progress bars (always quiet on processes other than 0).
      mesh: the run's device mesh (`jax.sharding.Mesh`), or None for one device.
      data_axes: the mesh axes that `shard` and `map` split over (every axis by default).
      writes_files: whether this process writes files (process 0).
    """

    def __init__(self, out_dir, *, seed: int = 0, quiet: bool = False, mesh=None, data_axes=None):
        self.out_dir = pathlib.Path(out_dir)
        self.writes_files = is_writer()
        if self.writes_files:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(seed)
        self.quiet = bool(quiet) or not self.writes_files
        self.mesh = mesh
        self.data_axes = None if mesh is None else _split_axes(mesh, data_axes)
        # (fn, in_axes, placement) -> program, the most recent few (a task's one-off closures
        # and their compiled programs are dropped in time)
        self._map_programs: collections.OrderedDict = collections.OrderedDict()
        self._metrics_path = self.out_dir / "metrics.jsonl"
        self.computed_units: list[str] = []
        self.reused_units: list[str] = []
        units = self.out_dir / "units"
        # the finished units, as every process sees them before any of them writes a new one
        self._stored_units = {p.stem for p in units.glob("*.json")} if units.is_dir() else set()
        self._unit_results: dict[str, Any] = {}
        _barrier("kseq-run-context")

    def unit(self, name: str, compute, *, log: bool = True):
        """A resumable unit of work: `compute()` (returning JSON-able data) runs once per run
        folder. Its result is written atomically to `units/<name>.json` and, when it is a dict
        and `log`, logged as a metrics line; if that file already existed when the run started
        (a resumed run), it is read back instead, so a run killed at any moment recomputes only
        the unit it was in. Units must be deterministic functions of the config (derive their
        keys from `key()` and the unit's index). In a multi-process run every process computes
        the unit (its share of the sharded work) and process 0 writes it."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"unit names must be plain file names, got {name!r}.")
        if name in self._unit_results:
            return self._unit_results[name]
        path = self.out_dir / "units" / f"{name}.json"
        if name in self._stored_units:
            result = read_json(path, what=_UNIT_HINT)
            self.reused_units.append(name)
        else:
            result = json.loads(json.dumps(to_jsonable(compute())))
            _raise_if_interrupted()  # before the unit is stored as finished
            if self.writes_files:
                atomic_write_text(path, json.dumps(result) + "\n")
            if log and isinstance(result, dict):
                self.log_metrics(unit=name, **result)
            self.computed_units.append(name)
        self._unit_results[name] = result
        return result

    def checkpoints(self, name: str, *, every: int, keep: int = 2):
        """Orbax checkpoints of one training loop in `checkpoints/<name>/`, every `every` steps
        (0: none), the last `keep` kept: an `experiments.checkpoints.TrainCheckpoints`."""
        from experiments.checkpoints import TrainCheckpoints

        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"checkpoint names must be plain file names, got {name!r}.")
        return TrainCheckpoints(self.out_dir / "checkpoints" / name, every=every, keep=keep)

    @property
    def num_shards(self) -> int:
        """How many parts `shard` and `map` split a leading axis into (1 on one device)."""
        return 1 if self.mesh is None else _split_size(self.mesh, self.data_axes)

    def shard(self, x):
        """`x` (an array or a pytree of arrays) with its leading axis split over the run's
        data axes: `split_leading_axis(x, ctx.mesh, ctx.data_axes)`."""
        return split_leading_axis(x, self.mesh, self.data_axes)

    def replicate(self, tree):
        """Every array of `tree` (a model, an optimiser state) copied to all devices of the
        mesh, as data-parallel training keeps its parameters. Needed in multi-process runs
        (arrays must be global there); on one process arrays stay as they are (`jax.jit`
        replicates them as needed), so a batch that cannot be split costs no extra copies."""
        import jax

        if self.mesh is None or jax.process_count() == 1:
            return tree
        whole = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.tree.map(
            lambda a: _put(a, whole) if isinstance(a, (jax.Array, np.ndarray)) else a, tree
        )

    def map(self, fn, *args, in_axes: int | Sequence[int | None] | None = 0):
        """`fn` applied to every row of the arguments mapped over their leading axis, the rows
        split over the run's data axes; returns host NumPy arrays (a pytree like `fn`'s output)
        with the rows in order.

        `in_axes` is 0 (mapped) or None (the same value for every row) per argument, as in
        `jax.vmap`. Each device runs `lax.map` over its rows inside `jax.shard_map`, so every
        row is computed by the same program whatever the number of devices: the results are
        bit for bit those of one device. Rows are padded (with copies of the first) to a
        multiple of the number of shards; with fewer rows than shards, a single process
        computes them on one device. For expensive rows (a thinning run, an MMD over n points);
        cheap ones batch better with `jax.jit(jax.vmap(fn))` over `shard`.

        The compiled program is kept per `fn` (and argument structure), so calling `map` again
        with the same function and shapes compiles nothing: pass a module-level function and
        give changing values (a constant, a bandwidth) as arguments with `in_axes=None`, not
        through a fresh closure.
        """
        import jax

        axes = (in_axes,) * len(args) if not isinstance(in_axes, Sequence) else tuple(in_axes)
        if len(axes) != len(args) or any(a not in (0, None) for a in axes):
            raise ValueError(f"`in_axes` must be 0 or None per argument, got {in_axes!r}.")
        mapped = [a for a, ax in zip(args, axes, strict=True) if ax == 0]
        fixed = [a for a, ax in zip(args, axes, strict=True) if ax is None]
        if not mapped:
            raise ValueError("`map` needs at least one argument mapped over (in_axes 0).")
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(mapped)}
        if len(sizes) != 1:
            raise ValueError(f"mapped arguments must share their leading size, got {sizes}.")
        (rows,) = sizes

        several = jax.process_count() > 1
        local = self.mesh is None or (rows < self.num_shards and not several)
        program = self._map_program(fn, axes, local)
        if local:
            return jax.tree.map(host_array, program(mapped, fixed))
        size = self.num_shards
        padded = -(-rows // size) * size
        if padded != rows:
            mapped = jax.tree.map(
                lambda a: jax.numpy.concatenate(
                    [a, jax.numpy.repeat(a[:1], padded - rows, axis=0)]
                ),
                mapped,
            )
        spec, whole = jax.sharding.PartitionSpec(self.data_axes), jax.sharding.PartitionSpec()
        mapped = jax.tree.map(
            lambda a: _put(a, jax.sharding.NamedSharding(self.mesh, spec)), mapped
        )
        fixed = jax.tree.map(lambda a: _put(a, jax.sharding.NamedSharding(self.mesh, whole)), fixed)
        out = program(mapped, fixed)
        return jax.tree.map(lambda a: host_array(a)[:rows], out)

    def _map_program(self, fn, axes: tuple, local: bool):
        """The jitted program of `map(fn, ...)`, made once per (fn, in_axes, placement); jax's
        own cache then compiles it once per argument shape."""
        import jax

        cache_key = (fn, axes, local)
        program = self._map_programs.get(cache_key)
        if program is not None:
            self._map_programs.move_to_end(cache_key)
            return program

        def rows_fn(mapped, fixed):
            def row(r):
                it_m, it_f = iter(r), iter(fixed)
                return fn(*(next(it_m) if ax == 0 else next(it_f) for ax in axes))

            return jax.lax.map(row, mapped)

        if local:
            program = jax.jit(rows_fn)
        else:
            spec, whole = jax.sharding.PartitionSpec(self.data_axes), jax.sharding.PartitionSpec()
            body = jax.shard_map(
                rows_fn, mesh=self.mesh, in_specs=(spec, whole), out_specs=spec, check_vma=False
            )
            program = jax.jit(body, out_shardings=jax.sharding.NamedSharding(self.mesh, whole))
        self._map_programs[cache_key] = program
        if len(self._map_programs) > _MAP_PROGRAMS_KEPT:
            self._map_programs.popitem(last=False)
        return program

    def key(self):
        """The run's root PRNG key, `jax.random.key(seed)`."""
        import jax

        return jax.random.key(self.seed)

    def log_metrics(self, **record) -> None:
        """Appends one JSON line to `metrics.jsonl` and flushes it to disk (process 0)."""
        line = json.dumps(to_jsonable(record), sort_keys=False)
        if not self.writes_files:
            return
        with open(self._metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def progress(self, iterable, *, desc: str | None = None, total: int | None = None):
        """Wraps `iterable` in a tqdm bar on a terminal; a plain iterator when quiet. Each step
        is also a point where a Ctrl-C that was swallowed stops the run (see
        `_interruptible`)."""
        if not (self.quiet or not sys.stderr.isatty()):
            try:
                from tqdm.auto import tqdm

                iterable = tqdm(iterable, desc=desc, total=total, leave=False)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                pass
        return _checked(iterable)

    def save_figure(self, fig, name: str) -> pathlib.Path:
        """Saves a matplotlib figure as `plots/<name>.png` (atomically; process 0) and closes
        it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / "plots" / f"{name}.png"
        if not self.writes_files:
            plt.close(fig)
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600, as `open` would have made it
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def write_json(self, name: str, obj) -> pathlib.Path:
        """Writes `obj` as JSON to `<run>/<name>` atomically (process 0)."""
        path = self.out_dir / name
        text = json.dumps(to_jsonable(obj), indent=2) + "\n"
        if self.writes_files:
            atomic_write_text(path, text)
        return path


# ----------------------------------------------------------------------------- runs


# The run's record, written once when the run starts and never rewritten: when it started and
# the resolved config it started with (what `resume_experiment` checks `config.yaml` against).
RUN_RECORD = ".run.json"


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _new_run_dir(out_root, name: str) -> pathlib.Path:
    """A fresh `<out_root>/<name>/<timestamp>[-i]/`, made by process 0; its path is broadcast,
    so every process of a distributed run uses process 0's folder.

    Collision-free: the folder is claimed by `mkdir` itself (which fails when another run made
    it first, even a moment ago), then `-1`, `-2`, ... are tried; checking for it beforehand
    would leave a race between two runs started in the same second."""
    run_dir, failure = None, None
    if is_writer():
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
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
    shared = _broadcast_text("" if run_dir is None else str(run_dir))
    if failure is not None:
        raise RunError(failure)
    if not shared:
        raise RunError(f"process 0 could not make a run folder in {out_root}.")
    return pathlib.Path(shared)


def _prepare(cfg: RunConfig):
    """Every check a run needs before it writes anything: the task's optional packages, the
    processes and the device mesh. Returns (task module, mesh)."""
    from experiments.tasks import get_task

    task = get_task(cfg.task)
    check_requirements(cfg.task, task)
    start_distributed(cfg.devices)
    return task, build_mesh(cfg.devices)


def check_requirements(name: str, task) -> None:
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


def run_experiment(cfg: RunConfig, out_root="runs", *, quiet: bool = False) -> pathlib.Path:
    """Runs `cfg`'s task into a fresh `<out_root>/<name>/<timestamp>/` and returns that folder.

    The folder is made only after every check (config, packages, devices) has passed. Ctrl-C
    raises `RunInterrupted`, which names the folder to resume."""
    task, mesh = _prepare(cfg)
    run_dir = None
    try:
        with _interruptible():
            run_dir = _new_run_dir(out_root, cfg.name)
            started = _now()
            if is_writer():
                record = {"started": started, "config": resolved_dict(cfg)}
                # read-only: a hint that it is the reference, not a file to edit
                text = json.dumps(record, indent=2) + "\n"
                atomic_write_text(run_dir / RUN_RECORD, text, mode=0o444)
                atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            _run_in(cfg, run_dir, quiet, task=task, mesh=mesh, started=started)
    except KeyboardInterrupt:
        if run_dir is not None and not (run_dir / "config.yaml").is_file():
            # stopped before the run began: its fresh folder holds nothing to resume
            if is_writer():
                shutil.rmtree(run_dir, ignore_errors=True)
            run_dir = None
        raise RunInterrupted(run_dir) from None
    return run_dir


def resume_experiment(
    run_dir, *, quiet: bool = False, overrides: Sequence[str] = ()
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
    `wall_seconds` stay, and the resume is recorded in `meta.resumed`."""
    from experiments.config import load_config

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
            return run_dir
        task, mesh = _prepare(cfg)
        units = run_dir / "units"
        for path in sorted(units.glob("*.json")) if units.is_dir() else ():
            read_json(path, what=_UNIT_HINT)  # before anything runs, not midway
        started = record.get("started") if record is not None else None
        with _interruptible():
            _run_in(
                cfg, run_dir, quiet, task=task, mesh=mesh, started=started, resumed=[resumed_at]
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


def _dotted(prefix: str, obj, out: dict) -> dict:
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


def _mesh_shape(devices, available: int) -> tuple[int, ...]:
    """The mesh's axis sizes for `available` devices: (`count`,) or `mesh`'s sizes with a -1
    resolved."""
    if devices.mesh is None:
        count = available if devices.count is None else devices.count
        if not 1 <= count <= available:
            raise ConfigError(
                f"`devices.count` must be between 1 and the {available} visible devices, "
                f"got {count}."
            )
        return (count,)
    known = math.prod(size for size in devices.mesh.values() if size != -1)
    rest = available // known
    sizes = tuple(rest if size == -1 else size for size in devices.mesh.values())
    if math.prod(sizes) > available or rest < 1:
        raise ConfigError(
            f"`devices.mesh` {dict(devices.mesh)} needs {known} devices or more; "
            f"{available} are visible."
        )
    return sizes


def build_mesh(devices):
    """The run's device mesh from a `DevicesConfig` (None for a single device).

    One axis of `count` devices (default: all) named `axis`, or the axes of `mesh`, over the
    first devices of `jax.devices()`. With several processes the mesh spans them all, the same
    number of devices of each (taken process by process), so the device count must be a
    multiple of the number of processes."""
    import jax

    start_distributed(devices)
    available = jax.devices()
    shape = _mesh_shape(devices, len(available))
    count = math.prod(shape)
    processes = jax.process_count()
    if count % processes:
        raise ConfigError(
            f"the mesh's {count} devices (`devices.count` or `devices.mesh`) must be a "
            f"multiple of the {processes} processes."
        )
    if count == 1:
        return None
    per_process = count // processes
    owned = [[d for d in available if d.process_index == p] for p in range(processes)]
    chosen = [d for devices_of_p in owned for d in devices_of_p[:per_process]]
    return jax.make_mesh(
        shape,
        devices.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
        devices=chosen,
    )


def _run_in(
    cfg: RunConfig,
    run_dir: pathlib.Path,
    quiet: bool,
    *,
    task,
    mesh,
    started: str | None = None,
    resumed: Sequence[str] = (),
) -> RunContext:
    """Runs the task in `run_dir` and writes `results.json`. Its `meta.started` is when the run
    first started (`started`; this launch when unknown), `wall_seconds` the time this launch
    computed (a resumed run's earlier launches are not counted: their ends are unknown), and
    `resumed` the time of this launch when it resumes the run (`resumed`)."""
    import jax

    data_axes = None if mesh is None else cfg.devices.split_axes
    ctx = RunContext(run_dir, seed=cfg.seed, quiet=quiet, mesh=mesh, data_axes=data_axes)
    start = time.time()
    results = task.run(cfg.params, ctx)
    _raise_if_interrupted()  # never write the results of an interrupted run
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
    }
    if resumed:
        meta["resumed"] = list(resumed)
    if ctx.reused_units:
        meta["resumed_units"] = len(ctx.reused_units)
    ctx.write_json("results.json", {"meta": meta, "results": results})
    return ctx


def _flatten(prefix: str, obj, rows: list) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, obj))


def _is_records(v) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def _format_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_format_value(x) for x in v) + "]"
    return str(v)


def _table(records: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in records for k in r))
    cells = [[_format_value(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def show_run(run_dir) -> str:
    """A finished run's `results.json` as text: key = value lines, lists of records as tables."""
    path = pathlib.Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {run_dir} (has the run finished?)")
    data = read_json(
        path, what="the run can be finished again with `kseq run --resume` after deleting it."
    )
    rows: list = []
    _flatten("", data, rows)
    scalars = [(k, v) for k, v in rows if not _is_records(v)]
    tables = [(k, v) for k, v in rows if _is_records(v)]
    width = max((len(k) for k, _ in scalars), default=0)
    out = [f"{k.ljust(width)}  {_format_value(v)}" for k, v in scalars]
    for k, v in tables:
        out += ["", f"{k}:", _table(v)]
    return "\n".join(out)
