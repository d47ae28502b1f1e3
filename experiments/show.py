"""`show_run`: a finished run's `results.json` as text (`kseq show RUN_DIR`)."""

from __future__ import annotations

import os
import pathlib
from typing import Any

from experiments.files import read_json

__all__ = ["format_table", "format_value", "is_records", "show_run"]


def _flatten(prefix: str, obj: Any, rows: list) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, obj))


def is_records(v: Any) -> bool:
    """Whether `v` is a non-empty list of mappings: a table of records."""
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def format_value(v: Any) -> str:
    """One cell of a table: floats to 4 significant digits, lists element by element."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    return str(v)


def format_table(records: list[dict]) -> str:
    """Records as an aligned text table, one column per key (in order of first appearance)."""
    cols = list(dict.fromkeys(k for r in records for k in r))
    cells = [[format_value(r.get(c, "")) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def show_run(run_dir: str | os.PathLike) -> str:
    """A finished run's `results.json` as text: key = value lines, lists of records as tables."""
    path = pathlib.Path(run_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"no results.json in {run_dir} (has the run finished?)")
    data = read_json(
        path, what="the run can be finished again with `kseq run --resume` after deleting it."
    )
    rows: list = []
    _flatten("", data, rows)
    scalars = [(k, v) for k, v in rows if not is_records(v)]
    tables = [(k, v) for k, v in rows if is_records(v)]
    width = max((len(k) for k, _ in scalars), default=0)
    out = [f"{k.ljust(width)}  {format_value(v)}" for k, v in scalars]
    for k, v in tables:
        out += ["", f"{k}:", format_table(v)]
    return "\n".join(out)
