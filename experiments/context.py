"""`RunContext`: what a task gets besides its config.

The run folder, the run's keys, the device mesh and its data axes, resumable units of work,
checkpoints of training loops, metrics lines (and their TensorBoard scalars, with the config's
`tensorboard: true`), progress (tqdm bars on a terminal, one line per finished unit elsewhere:
`RunContext.progress`) and figures.

Devices. Tasks split their replicate, permutation, seed and batch axes over the mesh's data
axes (`RunContext.data_axes`: every axis unless the config names some) with
`RunContext.shard` (a `NamedSharding` over the leading axis; `jax.jit` of a `vmap` then runs
each device's share) or `RunContext.map` (a function applied to every row of a batch with
`jax.shard_map` + `lax.map`, each row computed by the same program on any number of devices,
so the results are bit for bit those of one device). Data-parallel training (`shard` on the
batch inside `jax.jit`, parameters replicated) agrees with one device to float rounding only:
the batch mean is reduced across devices in another order.

Several processes. Only process 0 writes files, and every other process computes the same
values and writes nothing (orbax checkpoints are saved by every process together; orbax writes
the host arrays stored here from process 0). The set of finished units is read by every
process before any process can write a new one (a barrier), so all processes agree on what to
compute.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from experiments.checkpoints import TrainCheckpoints
from experiments.distributed import barrier, host_array, is_writer, put
from experiments.files import atomic_write_text, file_mode, read_json, to_jsonable
from experiments.interrupts import checked, raise_if_interrupted
from experiments.mesh import axes_size, check_axes, split_leading_axis

if TYPE_CHECKING:
    import jax
    from jaxtyping import PRNGKeyArray, PyTree

__all__ = ["RunContext", "check_units"]

T = TypeVar("T")

_MAP_PROGRAMS_KEPT = 16  # programs of `RunContext.map` kept per run
_UNIT_HINT = "delete it and resume again to recompute that unit."


class RunContext:
    """What a task gets besides its config: the run folder, keys, devices, logging, progress.

    Only process 0 (`writes_files`) writes; in a multi-process run every other process computes
    the same values and its writes are skipped.

    Attributes:
      out_dir: the run folder.
      seed: the run's seed.
      quiet: no progress bars or lines (always quiet on processes other than 0).
      name: the run's name, which heads its progress lines (default: the folder's name).
      mesh: the run's device mesh (`jax.sharding.Mesh`), or None for one device.
      data_axes: the mesh axes that `shard` and `map` split over (every axis by default).
      writes_files: whether this process writes files (process 0).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        seed: int = 0,
        quiet: bool = False,
        mesh: jax.sharding.Mesh | None = None,
        data_axes: str | Sequence[str] | None = None,
        name: str | None = None,
        tensorboard: bool = False,
    ):
        self.out_dir = pathlib.Path(out_dir)
        self.name = name or self.out_dir.name
        self.writes_files = is_writer()
        if self.writes_files:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(seed)
        self.quiet = bool(quiet) or not self.writes_files
        self.mesh = mesh
        self.data_axes = None if mesh is None else check_axes(mesh, data_axes)
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
        # the `progress` loops running now, outermost first: [desc, steps done, total, units]
        self._loops: list[list] = []
        self._tensorboard = None
        if tensorboard and self.writes_files:
            from tensorboardX import SummaryWriter

            self._tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
        self._records = 0
        barrier("kseq-run-context")

    def unit(self, name: str, compute: Callable[[], Any], *, log: bool = True) -> Any:
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
        loop = self._loops[-1] if self._loops else None
        if name in self._stored_units:
            result = read_json(path, what=_UNIT_HINT)
            self.reused_units.append(name)
            self._line(f"unit {name} reused{_position(loop, '')}")
        else:
            start = time.perf_counter()
            result = json.loads(json.dumps(to_jsonable(compute())))
            raise_if_interrupted()  # before the unit is stored as finished
            if self.writes_files:
                atomic_write_text(path, json.dumps(result) + "\n")
            if log and isinstance(result, dict):
                self.log_metrics(unit=name, **result)
            self.computed_units.append(name)
            seconds = f"{time.perf_counter() - start:.1f} s"
            self._line(f"unit {name} done{_position(loop, seconds)}")
        if loop is not None:
            loop[3] += 1
        self._unit_results[name] = result
        return result

    def checkpoints(self, name: str, *, every: int, keep: int = 2) -> TrainCheckpoints:
        """Orbax checkpoints of one training loop in `checkpoints/<name>/`, every `every` steps
        (0: none), the last `keep` kept: an `experiments.checkpoints.TrainCheckpoints`."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"checkpoint names must be plain file names, got {name!r}.")
        return TrainCheckpoints(self.out_dir / "checkpoints" / name, every=every, keep=keep)

    @property
    def num_shards(self) -> int:
        """How many parts `shard` and `map` split a leading axis into (1 on one device)."""
        return 1 if self.mesh is None else axes_size(self.mesh, self.data_axes)

    def shard(self, x: PyTree) -> PyTree:
        """`x` (an array or a pytree of arrays) with its leading axis split over the run's
        data axes: `split_leading_axis(x, ctx.mesh, ctx.data_axes)`."""
        return split_leading_axis(x, self.mesh, self.data_axes)

    def replicate(self, tree: PyTree) -> PyTree:
        """Every array of `tree` (a model, an optimiser state) copied to all devices of the
        mesh, as data-parallel training keeps its parameters. Needed in multi-process runs
        (arrays must be global there); on one process arrays stay as they are (`jax.jit`
        replicates them as needed), so a batch that cannot be split costs no extra copies."""
        import jax

        if self.mesh is None or jax.process_count() == 1:
            return tree
        whole = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
        return jax.tree.map(
            lambda a: put(a, whole) if isinstance(a, (jax.Array, np.ndarray)) else a, tree
        )

    def map(
        self,
        fn: Callable[..., PyTree],
        *args: PyTree,
        in_axes: int | Sequence[int | None] | None = 0,
    ) -> PyTree[np.ndarray]:
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
        mapped = jax.tree.map(lambda a: put(a, jax.sharding.NamedSharding(self.mesh, spec)), mapped)
        fixed = jax.tree.map(lambda a: put(a, jax.sharding.NamedSharding(self.mesh, whole)), fixed)
        out = program(mapped, fixed)
        return jax.tree.map(lambda a: host_array(a)[:rows], out)

    def _map_program(self, fn: Callable[..., PyTree], axes: tuple, local: bool) -> Callable:
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

    def key(self) -> PRNGKeyArray:
        """The run's root PRNG key, `jax.random.key(seed)`."""
        import jax

        return jax.random.key(self.seed)

    def log_metrics(self, **record: Any) -> None:
        """Appends one JSON line to `metrics.jsonl` and flushes it to disk (process 0).

        With the config's `tensorboard: true`, the record's numbers are also written as
        TensorBoard scalars to `tensorboard/`: each tagged `<the record's text values, joined
        by />/<key>` (e.g. `gateloop/eval_loss`), at the record's integer `step`, else at the
        count of records logged before it."""
        plain = to_jsonable(record)
        line = json.dumps(plain, sort_keys=False)
        self._records += 1
        if not self.writes_files:
            return
        with open(self._metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tensorboard is not None:
            self._write_scalars(plain)

    def _write_scalars(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int) or isinstance(step, bool):
            step = self._records - 1
        group = "/".join(v for v in record.values() if isinstance(v, str))
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self._tensorboard.add_scalar(f"{group}/{key}" if group else key, value, step)

    def close(self) -> None:
        """Flushes and closes what the run keeps open (the TensorBoard writer); the runner
        calls it when the task returns or stops."""
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    def progress(
        self, iterable: Iterable[T], *, desc: str | None = None, total: int | None = None
    ) -> Iterator[T]:
        """`iterable`, its progress shown: a tqdm bar when stderr is a terminal; otherwise
        (a log file, a pipe, a batch job) one line on stderr per finished unit (`unit`) of a
        step, `[<run name>] unit <unit> done (3/12, 4.1 s)` (step and total of the innermost
        loop, and the unit's time), or for a loop whose steps hold no units, a line every
        twentieth of the loop (`[<run name>] <desc> 75/1500 (12.3 s)`: steps done and time
        since the loop began). Nothing when quiet. Each step is also a point where a Ctrl-C
        or SIGTERM that was swallowed stops the run (see `experiments.interrupts`)."""
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        if self.quiet:
            return checked(iterable)
        if sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                iterable = tqdm(iterable, desc=desc, total=total, leave=False)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                pass
            return checked(iterable)
        return self._logged(checked(iterable), desc or "progress", total)

    def _logged(self, iterable: Iterator[T], desc: str, total: int | None) -> Iterator[T]:
        """The items of `iterable`, with `progress`'s lines for a terminal-less stderr."""
        loop = [desc, 0, total, 0]  # desc, steps done, total, units in the current step
        every = max(1, -(-total // 20)) if total else 1
        start = time.perf_counter()
        self._loops.append(loop)
        try:
            for item in iterable:
                loop[3] = 0
                yield item  # the caller runs the step
                loop[1] += 1
                done, units = loop[1], loop[3]
                if not units and (done % every == 0 or done == total):
                    of = f"/{total}" if total else ""
                    elapsed = time.perf_counter() - start
                    self._line(f"{desc} {done}{of} ({elapsed:.1f} s)")
        finally:
            self._loops = [other for other in self._loops if other is not loop]

    def _line(self, text: str) -> None:
        """One progress line on stderr, `[<run name>] text`, when stderr is not a terminal
        (a bar shows progress there) and the run is not quiet."""
        if not self.quiet and not sys.stderr.isatty():
            print(f"[{self.name}] {text}", file=sys.stderr, flush=True)

    def save_figure(self, fig: Any, name: str) -> pathlib.Path:
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
            os.chmod(tmp, file_mode())  # mkstemp's 0600, as `open` would have made it
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def write_json(self, name: str, obj: Any) -> pathlib.Path:
        """Writes `obj` as JSON to `<run>/<name>` atomically (process 0)."""
        path = self.out_dir / name
        text = json.dumps(to_jsonable(obj), indent=2) + "\n"
        if self.writes_files:
            atomic_write_text(path, text)
        return path


def _position(loop: list | None, seconds: str) -> str:
    """` (3/12, 4.1 s)`: the step of the innermost `progress` loop (when a unit runs in one)
    and the unit's time."""
    parts = []
    if loop is not None:
        parts.append(f"{loop[1] + 1}/{loop[2]}" if loop[2] else f"{loop[1] + 1}")
    if seconds:
        parts.append(seconds)
    return f" ({', '.join(parts)})" if parts else ""


def check_units(run_dir: pathlib.Path) -> None:
    """Reads every finished unit of `run_dir` (`units/*.json`): a `RunError` naming the first
    that is not valid JSON, before a resumed run computes anything rather than midway."""
    units = pathlib.Path(run_dir) / "units"
    for path in sorted(units.glob("*.json")) if units.is_dir() else ():
        read_json(path, what=_UNIT_HINT)
