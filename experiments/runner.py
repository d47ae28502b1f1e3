"""Running a task into a run folder: `<out>/<name>/<timestamp>/`.

The folder holds `config.yaml` (the resolved config, written first), `metrics.jsonl` (one JSON
line per record, flushed as it is written), `units/*.json` (the finished units of work of tasks
that declare them, which `resume_experiment` reuses), `plots/*.png` and `results.json`
(written last).
Every file except the append-only metrics is written to a temporary name and renamed into
place, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import numpy as np

from experiments.config import RunConfig, dump_config

__all__ = [
    "RunContext",
    "atomic_write_text",
    "resume_experiment",
    "run_experiment",
    "show_run",
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
        arr = np.asarray(obj)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    return str(obj)


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` via a temporary file in the same folder and a rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunContext:
    """What a task gets besides its config: the run folder, keys, logging and progress.

    Attributes:
      out_dir: the run folder.
      seed: the run's seed.
      quiet: no progress bars.
    """

    def __init__(self, out_dir, *, seed: int = 0, quiet: bool = False, mesh=None):
        self.out_dir = pathlib.Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(seed)
        self.quiet = bool(quiet)
        self.mesh = mesh
        self._metrics_path = self.out_dir / "metrics.jsonl"
        self.computed_units: list[str] = []
        self.reused_units: list[str] = []

    def unit(self, name: str, compute):
        """A resumable unit of work: `compute()` (returning JSON-able data) runs once per run
        folder. Its result is written atomically to `units/<name>.json` and logged as a metrics
        line; if that file already exists (a resumed run), it is read back instead, so a run
        killed at any moment recomputes only the unit it was in. Units must be deterministic
        functions of the config (derive their keys from `key()` and the unit's index)."""
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"unit names must be plain file names, got {name!r}.")
        path = self.out_dir / "units" / f"{name}.json"
        if path.is_file():
            self.reused_units.append(name)
            return json.loads(path.read_text())
        result = json.loads(json.dumps(to_jsonable(compute())))
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps(result) + "\n")
        if isinstance(result, dict):
            self.log_metrics(unit=name, **result)
        self.computed_units.append(name)
        return result

    def shard(self, x):
        """`x` with its leading axis (replicates, seeds, a batch) split over the run's device
        mesh, so that `jax.jit` of a `vmap` over that axis runs each device's share. Arrays
        whose leading axis does not divide evenly, and runs on one device, stay as they are
        (the results do not depend on the layout)."""
        import jax

        if self.mesh is None or self.mesh.size == 1:
            return x
        axis = self.mesh.axis_names[0]
        if x.shape[0] % self.mesh.size:
            return x
        spec = jax.sharding.PartitionSpec(axis)
        return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, spec))

    def key(self):
        """The run's root PRNG key, `jax.random.key(seed)`."""
        import jax

        return jax.random.key(self.seed)

    def log_metrics(self, **record) -> None:
        """Appends one JSON line to `metrics.jsonl` and flushes it to disk."""
        line = json.dumps(to_jsonable(record), sort_keys=False)
        with open(self._metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def progress(self, iterable, *, desc: str | None = None, total: int | None = None):
        """Wraps `iterable` in a tqdm bar on a terminal; a plain iterator when quiet."""
        if self.quiet or not sys.stderr.isatty():
            return iterable
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return iterable
        return tqdm(iterable, desc=desc, total=total, leave=False)

    def save_figure(self, fig, name: str) -> pathlib.Path:
        """Saves a matplotlib figure as `plots/<name>.png` (atomically) and closes it."""
        import matplotlib.pyplot as plt

        path = self.out_dir / "plots" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{name}.", suffix=".png")
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
            os.replace(tmp, path)
        finally:
            plt.close(fig)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def write_json(self, name: str, obj) -> pathlib.Path:
        """Writes `obj` as JSON to `<run>/<name>` atomically."""
        path = self.out_dir / name
        atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")
        return path


def _new_run_dir(out_root, name: str) -> pathlib.Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = pathlib.Path(out_root) / name
    run_dir, i = base / stamp, 1
    while run_dir.exists():
        run_dir, i = base / f"{stamp}-{i}", i + 1
    run_dir.mkdir(parents=True)
    return run_dir


def run_experiment(cfg: RunConfig, out_root="runs", *, quiet: bool = False) -> pathlib.Path:
    """Runs `cfg`'s task into a fresh `<out_root>/<name>/<timestamp>/` and returns that folder."""
    run_dir = _new_run_dir(out_root, cfg.name)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    _run_in(cfg, run_dir, quiet)
    return run_dir


def resume_experiment(run_dir, *, quiet: bool = False) -> pathlib.Path:
    """Finishes an interrupted run in its own folder, from the `config.yaml` it wrote first:
    finished units (`units/*.json`) are read back, the rest computed, then `results.json`
    written as an uninterrupted run would have written it."""
    from experiments.config import load_config

    run_dir = pathlib.Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    _run_in(cfg, run_dir, quiet)
    return run_dir


def build_mesh(devices):
    """The run's one-axis device mesh from a `DevicesConfig` (None for a single device)."""
    import jax

    from experiments.config import ConfigError

    if devices.distributed:
        jax.distributed.initialize()
    available = jax.devices()
    count = len(available) if devices.count is None else devices.count
    if not 1 <= count <= len(available):
        raise ConfigError(
            f"`devices.count` must be between 1 and the {len(available)} visible devices, "
            f"got {count}."
        )
    if count == 1:
        return None
    return jax.make_mesh(
        (count,),
        (devices.axis,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=available[:count],
    )


def _run_in(cfg: RunConfig, run_dir: pathlib.Path, quiet: bool) -> RunContext:
    import jax

    from experiments.tasks import get_task

    task = get_task(cfg.task)
    ctx = RunContext(run_dir, seed=cfg.seed, quiet=quiet, mesh=build_mesh(cfg.devices))
    start = time.time()
    results = task.run(cfg.params, ctx)
    end = time.time()
    meta = {
        "task": cfg.task,
        "name": cfg.name,
        "seed": cfg.seed,
        "started": _dt.datetime.fromtimestamp(start).isoformat(timespec="seconds"),
        "finished": _dt.datetime.fromtimestamp(end).isoformat(timespec="seconds"),
        "wall_seconds": round(end - start, 3),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device_count": jax.device_count(),
        "devices_used": ctx.mesh.size if ctx.mesh is not None else 1,
    }
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
    data = json.loads(path.read_text())
    rows: list = []
    _flatten("", data, rows)
    scalars = [(k, v) for k, v in rows if not _is_records(v)]
    tables = [(k, v) for k, v in rows if _is_records(v)]
    width = max((len(k) for k, _ in scalars), default=0)
    out = [f"{k.ljust(width)}  {_format_value(v)}" for k, v in scalars]
    for k, v in tables:
        out += ["", f"{k}:", _table(v)]
    return "\n".join(out)
