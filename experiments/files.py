"""The files of a run folder: JSON values, atomic writes, file modes.

Every file of a run except the append-only metrics is written to a temporary name in its
folder and renamed into place, so an interrupted run never leaves a half-written file behind;
files get the usual modes under the umask (0644 under umask 022), as `open` would give them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import tempfile
from typing import Any

import numpy as np

from experiments.distributed import host_array
from experiments.errors import RunError

__all__ = ["atomic_write_text", "file_mode", "read_json", "to_jsonable"]


def to_jsonable(obj: Any) -> Any:
    """Converts JAX/NumPy arrays and scalars, tuples and dataclasses into plain JSON values."""
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
        return _shortest(float(obj), narrow=_is_float32(obj))
    if hasattr(obj, "__array__") or isinstance(obj, np.generic):
        arr = host_array(obj)
        if arr.dtype.kind == "f":
            return _floats(arr.tolist(), narrow=arr.dtype.itemsize < 8)
        if arr.ndim == 0:
            return to_jsonable(arr.item())
        return [to_jsonable(v) for v in arr.tolist()]
    return str(obj)


def _is_float32(value: float) -> bool:
    """Whether a Python float is exactly a float32 value (as `float()` of a float32 result is);
    values beyond float32's range are not (and casting them would warn of an overflow)."""
    finite32 = math.isfinite(value) and abs(value) <= float(np.finfo(np.float32).max)
    return finite32 and float(np.float32(value)) == value


def _floats(values, *, narrow: bool):
    """A float array's nested lists (or scalar), each entry at its own precision."""
    if isinstance(values, list):
        return [_floats(v, narrow=narrow) for v in values]
    return _shortest(float(values), narrow=narrow)


def _shortest(value: float, *, narrow: bool) -> float | None:
    """`value` in the shortest decimal form that round-trips at its own precision: a float32
    value (a float32 array's entry, or a Python float that is exactly one, as `float()` of a
    float32 result is) is written as float32's shortest repr, 0.65 rather than
    0.6500000357627869. Non-finite values become None (JSON has no NaN)."""
    if not math.isfinite(value):
        return None
    if narrow:
        return float(str(np.float32(value)))
    return value


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
            os.fchmod(f.fileno(), file_mode(mode))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_json(path: pathlib.Path, *, what: str) -> Any:
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


def file_mode(mode: int = 0o666) -> int:
    """`mode` less the process's umask: the mode `open` gives a new file."""
    return mode & ~_umask()
