"""Sweeps: one config run over the Cartesian product of values of some of its keys.

    kseq run configs/quickstart.yaml --sweep params.num_replicates=50,100 --sweep seed=0,1,2

or, in the config itself, a `sweep:` section mapping dotted keys to lists of values (nested
mappings are read as dotted keys too), which makes `kseq run CONFIG` run the sweep
(`has_sweep_section`):

    sweep:
      params.num_replicates: [50, 100]
      seed: [0, 1, 2]

Axes. `--sweep KEY=V1,V2,...` gives one axis; its values are parsed as `--set` values are (as
YAML: `100` is an integer, `[25, 50]` a list, `mmd` a string). Commas inside brackets, braces
or quotes do not split values: `params.sample_sizes=[25,50],[100]` is two values. A `;`
outside brackets and quotes makes `;` the separator instead, so commas are left alone:
`params.tests=[mmd,hsic];[ksd]`. `--set` overrides apply to every combination (and may edit
the `sweep:` section, `--set sweep.seed=[0,1]`); a `--sweep` axis replaces the section's axis
of the same key; a key may not be both `--set` and swept. The combinations are the Cartesian
product of the axes, the first axis varying slowest (section axes first, then `--sweep` ones
in their order). Every combination's config is validated before anything runs: a bad key or
value in any combination fails at once with a `ConfigError` naming the combination and the
key, and no folder is made; so do a missing optional package and an impossible device mesh.

The sweep folder, `<out>/<name>/sweep-<timestamp>/`:

    sweep.json        the plan: the config file, the `--set` overrides, the base config they
                      give (the config without its `sweep:` section), the axes, and for each
                      combination its index, values, overrides (`key=value`, as `--set`
                      takes them), folder name, run folder (relative to the sweep folder,
                      null until the run starts) and status (pending, running, finished)
    results.jsonl     one JSON line per finished combination, in order: its index, values,
                      overrides, run folder and the run's `results`
    summary.txt       one row per combination: its swept values and the headline numbers of
    summary.md        its results (a Markdown table); `format_summary` returns the text one
    <name>/<i>-<values>/
                      one ordinary run folder per combination, e.g.
                      `quickstart/3-num_replicates=100,seed=0/` (each key by its last part
                      unless two axes share it, the values made safe for a file name and
                      cut at 80 characters); `kseq show` and `kseq run --resume` take it
                      like any run folder, and its provenance (`meta.overrides`) lists the
                      sweep's `--set` items and then the combination's

`sweep.json`, `results.jsonl` and the summaries are rewritten atomically (a temporary file and
a rename, `experiments.files.atomic_write_text`) before each run starts and after each one
finishes, so an interrupted sweep never leaves a half-written one.

Resuming (`resume_sweep`, `kseq run --resume SWEEP_DIR`): the plan is read back from
`sweep.json` (the config file is not read again) and checked as at the start. Whether a
combination is done is read from its run folder, not from `sweep.json`: a finished run
(`results.json` present) is skipped and not computed again, a started one (`config.yaml`
present) is finished with `resume_experiment` (reusing its finished units), and the others are
run; a folder made just before an interruption, holding no `config.yaml`, is made afresh. So
a sweep killed at any moment (even SIGKILL, between a run's end and the rewrite of
`results.jsonl`) resumes to the outputs of an uninterrupted one. Like a run's resume, a
sweep's resume may set `devices.*` only. Ctrl-C raises `RunInterrupted` naming the sweep
folder, so the command line prints `kseq run --resume <sweep folder>`.

Several processes (`devices.distributed`): every process runs the same command and validates
the same plan; the sweep folder is made by process 0 and its path broadcast (as a run folder
is), every run is computed by every process, and only process 0 writes the sweep's files. On a
resume every process reads `sweep.json` and the run folders from the shared filesystem.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import itertools
import json
import os
import pathlib
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from experiments.config import (
    LAUNCH_FIELDS,
    ConfigError,
    RunConfig,
    apply_overrides,
    load_config,
    parse_config,
)
from experiments.distributed import is_writer
from experiments.errors import RunError, RunInterrupted
from experiments.files import atomic_write_text, read_json, to_jsonable
from experiments.packaged import find_config
from experiments.runner import new_run_dir, prepare_run, resume_experiment, run_experiment
from experiments.show import format_table, format_value, is_records

__all__ = [
    "SWEEP_FILE",
    "format_summary",
    "has_sweep_section",
    "is_sweep_dir",
    "parse_axis",
    "resume_sweep",
    "run_sweep",
]

SWEEP_FILE = "sweep.json"
_VERSION = 1
# the summary shows at most this many result columns (all of them are in results.jsonl)
MAX_RESULT_COLUMNS = 24
_OPENING, _CLOSING = "[{(", "]})"


# ----------------------------------------------------------------------------- axes


def parse_axis(spec: str) -> tuple[str, list[str]]:
    """`KEY=V1,V2,...` -> (KEY, [V1, V2, ...]), each value's text as `--set` takes it.

    Values are split at commas outside brackets, braces and quotes, or at `;` when the text
    holds one outside them (see the module docstring). Raises a `ConfigError` naming the axis
    for a missing `=`, an empty key or value, unbalanced brackets or a repeated value."""
    if "=" not in spec:
        raise ConfigError(f"sweep {spec!r} must look like key=value1,value2 (e.g. seed=0,1,2).")
    key, _, text = spec.partition("=")
    key = key.strip()
    if not key or not all(key.split(".")):
        raise ConfigError(f"sweep {spec!r} has an empty key.")
    separator = ";" if ";" in _outside_brackets(text, spec) else ","
    texts = [t.strip() for t in _split(text, separator)]
    if any(not t for t in texts):
        raise ConfigError(f"sweep {spec!r} has an empty value (values: {texts}).")
    _check_distinct(key, [_parse_value(t) for t in texts])
    return key, texts


def _outside_brackets(text: str, spec: str) -> str:
    """The characters of `text` at bracket depth 0 and outside quotes (unbalanced brackets or
    quotes: a `ConfigError` naming `spec`)."""
    kept, depth, quote = [], 0, None
    for c in text:
        if quote is not None:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in _OPENING:
            depth += 1
        elif c in _CLOSING:
            depth -= 1
            if depth < 0:
                break
        elif depth == 0:
            kept.append(c)
            continue
        kept.append("\0")  # a placeholder: the character is not a separator
    if depth != 0 or quote is not None:
        raise ConfigError(f"sweep {spec!r} has unbalanced brackets or quotes.")
    return "".join(kept)


def _split(text: str, separator: str) -> list[str]:
    """`text` split at each `separator` outside brackets and quotes."""
    shown = _outside_brackets(text, text)
    parts, start = [], 0
    for i, c in enumerate(shown):
        if c == separator:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _parse_value(text: str) -> Any:
    """A value's text parsed exactly as `--set key=<text>` parses it."""
    return apply_overrides({}, [f"v={text}"])["v"]


def _as_text(value: Any) -> str:
    """A value as `--set` text that parses back to it (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
    return text.removesuffix("\n...").strip()


def _check_distinct(key: str, values: list) -> None:
    seen = [json.dumps(to_jsonable(v), sort_keys=True) for v in values]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"sweep `{key}` repeats a value: {values}.")


def _section_axes(section: Any, prefix: str = "") -> dict[str, list[str]]:
    """The config's `sweep:` section as {dotted key: [value texts]}."""
    where = f"sweep.{prefix}".rstrip(".")
    if not isinstance(section, dict):
        raise ConfigError(f"`{where}` must map dotted keys to lists of values, got {section!r}.")
    axes: dict[str, list[str]] = {}
    for name, values in section.items():
        key = f"{prefix}{name}"
        if isinstance(values, dict):
            axes.update(_section_axes(values, prefix=f"{key}."))
        elif isinstance(values, list) and values:
            _check_distinct(key, values)
            axes[key] = [_as_text(v) for v in values]
        else:
            raise ConfigError(f"`sweep.{key}` must be a non-empty list of values, got {values!r}.")
    return axes


def _read_raw(config: str | os.PathLike) -> dict:
    """The top-level mapping of the config file, or packaged config, that `load_config` would
    read (an unreadable or invalid one: `load_config`'s own error, which names it)."""
    path = find_config(config)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        raw = None
    if not isinstance(raw, dict):
        load_config(path)  # raises the error that names the file
        raise ConfigError(f"{path} must hold a mapping at the top level.")
    return raw


def has_sweep_section(config: str | os.PathLike) -> bool:
    """Whether the config file (or packaged config) holds a `sweep:` section, so that
    `kseq run CONFIG` runs a sweep (`run_sweep`) rather than one run."""
    return "sweep" in _read_raw(config)


def _plan(raw: dict, sweeps: Sequence[str], overrides: Sequence[str]) -> tuple[dict, dict]:
    """(base config without its `sweep:` section, {key: [value texts]})."""
    raw = apply_overrides(raw, overrides)
    section = raw.pop("sweep", None)
    axes = _section_axes(section) if section is not None else {}
    given: set[str] = set()
    for spec in sweeps:
        key, texts = parse_axis(spec)
        if key in given:
            raise ConfigError(f"`{key}` is swept twice (--sweep {spec!r}).")
        given.add(key)
        axes[key] = texts
    if not axes:
        raise ConfigError(
            "nothing to sweep: give --sweep KEY=V1,V2 or a `sweep:` section in the config."
        )
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in axes:
            raise ConfigError(f"`{key}` is both set (--set {item!r}) and swept; drop one.")
    return raw, axes


def _without_launch_fields(base: dict) -> dict:
    """`base` without the `devices` fields that describe one launch (one process of it), not
    the sweep: a resume is given them again."""
    devices = base.get("devices")
    if not isinstance(devices, dict):
        return base
    return {**base, "devices": {k: v for k, v in devices.items() if k not in LAUNCH_FIELDS}}


def _combinations(axes: dict[str, list[str]]) -> list[dict]:
    """The entries of `sweep.json`'s `combinations`, in order."""
    keys = list(axes)
    short = [k.rsplit(".", 1)[-1] for k in keys]
    labels = [s if short.count(s) == 1 else k for s, k in zip(short, keys, strict=True)]
    product = list(itertools.product(*axes.values()))
    width = len(str(len(product) - 1))
    combos = []
    for i, texts in enumerate(product):
        values = {k: _parse_value(t) for k, t in zip(keys, texts, strict=True)}
        slug = ",".join(
            f"{label}={_slug_value(v)}" for label, v in zip(labels, values.values(), strict=True)
        )
        combos.append(
            {
                "index": i,
                "values": values,
                "overrides": [f"{k}={t}" for k, t in zip(keys, texts, strict=True)],
                "folder": f"{i:0{width}d}-{slug[:80]}",
                "run_dir": None,
                "status": "pending",
            }
        )
    return combos


def _slug_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(to_jsonable(value), separators=",:")
    return re.sub(r"[^\w.,=+\-\[\]]", "_", text)


def _configs(base: dict, combos: Sequence[dict]) -> list[RunConfig]:
    """Every combination's validated config; the first bad one raises a `ConfigError` naming
    the combination and the key."""
    cfgs = []
    for combo in combos:
        try:
            cfgs.append(parse_config(apply_overrides(base, combo["overrides"])))
        except ConfigError as err:
            where = f"sweep combination {combo['index'] + 1} of {len(combos)}"
            raise type(err)(f"{where} ({' '.join(combo['overrides'])}): {err}") from None
    return cfgs


def _check_runs(cfgs: Sequence[RunConfig]) -> None:
    """What every run checks before it makes its folder (packages, processes, device mesh),
    once per distinct task and devices section, before the sweep folder is made."""
    seen = set()
    for cfg in cfgs:
        what = (cfg.task, repr(cfg.devices))
        if what not in seen:
            seen.add(what)
            prepare_run(cfg)


# ----------------------------------------------------------------------------- running


def run_sweep(
    config: str | os.PathLike,
    sweeps: Sequence[str],
    overrides: Sequence[str],
    out: str | os.PathLike,
    *,
    quiet: bool = False,
    on_start: Callable[[pathlib.Path], None] | None = None,
) -> pathlib.Path:
    """Runs `config` once per combination of the sweep's axes (`sweeps`: `KEY=V1,V2,...`, and
    the config's `sweep:` section), each with `overrides` (`KEY=VALUE`) applied, into a fresh
    sweep folder `<out>/<name>/sweep-<timestamp>/`, and returns that folder (layout: the
    module docstring).

    Every combination is validated first: a `ConfigError` naming the combination and the key,
    and no folder is made. `on_start(sweep_dir)` is called once the folder holds its plan (a
    sweep that can be resumed), e.g. to print how to resume it. Ctrl-C raises
    `RunInterrupted` naming the sweep folder (finish it with `resume_sweep`)."""
    base, axes = _plan(_read_raw(config), sweeps, overrides)
    combos = _combinations(axes)
    cfgs = _configs(base, combos)
    _check_runs(cfgs)
    doc = {
        "kind": "kseq sweep",
        "version": _VERSION,
        "config": str(config),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "overrides": list(overrides),
        "base": _without_launch_fields(base),
        "axes": {k: [_parse_value(t) for t in texts] for k, texts in axes.items()},
        "combinations": combos,
    }
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    sweep_dir = None
    try:
        sweep_dir = new_run_dir(out, cfgs[0].name, leaf=f"sweep-{stamp}")
        sweep = _Sweep(sweep_dir, doc, cfgs)
        sweep.write()
    except KeyboardInterrupt:
        # stopped before the plan was written: the fresh folder holds nothing to resume
        if sweep_dir is not None and is_writer() and not is_sweep_dir(sweep_dir):
            shutil.rmtree(sweep_dir, ignore_errors=True)
        raise RunInterrupted(None) from None
    return sweep.run(quiet=quiet, on_start=on_start)


def resume_sweep(
    sweep_dir: str | os.PathLike,
    *,
    quiet: bool = False,
    overrides: Sequence[str] = (),
    on_start: Callable[[pathlib.Path], None] | None = None,
) -> pathlib.Path:
    """Finishes an interrupted sweep in its folder: finished runs are skipped, a started one
    is finished with `resume_experiment`, the others run; then `results.jsonl` and the
    summaries hold every combination. `overrides` may set `devices.*` only (how this launch
    computes). `on_start(sweep_dir)` is called once the checks have passed. Returns the
    sweep folder."""
    for item in overrides:
        if not item.strip().startswith("devices."):
            raise ConfigError(
                f"a resumed sweep keeps its config; only `devices.*` may be set, got {item!r}."
            )
    sweep_dir = pathlib.Path(sweep_dir)
    doc = _read_doc(sweep_dir)
    cfgs = _configs(apply_overrides(doc["base"], overrides), doc["combinations"])
    _check_runs(cfgs)
    return _Sweep(sweep_dir, doc, cfgs).run(quiet=quiet, overrides=overrides, on_start=on_start)


def is_sweep_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is a sweep folder (it holds `sweep.json`)."""
    return (pathlib.Path(path) / SWEEP_FILE).is_file()


def _read_doc(sweep_dir: pathlib.Path) -> dict:
    path = sweep_dir / SWEEP_FILE
    if not path.is_file():
        raise RunError(f"{sweep_dir} is not a sweep folder: it holds no {SWEEP_FILE}.")
    doc = read_json(path, what="it is the plan of the sweep; restore it.")
    keys = ("base", "axes", "combinations")
    if not isinstance(doc, dict) or not all(k in doc for k in keys):
        raise RunError(f"{path} is not a sweep plan (it needs {', '.join(keys)}); restore it.")
    if doc.get("version") != _VERSION:
        raise RunError(f"{path} has version {doc.get('version')!r}; this kseq reads {_VERSION}.")
    return doc


def _status(run_dir: pathlib.Path | None) -> str:
    """A combination's status, read from its run folder."""
    if run_dir is not None and (run_dir / "results.json").is_file():
        return "finished"
    if run_dir is not None and (run_dir / "config.yaml").is_file():
        return "running"  # started and not finished: running, or interrupted
    return "pending"


class _Sweep:
    """A sweep folder, its plan (`sweep.json`'s contents) and its combinations' configs."""

    def __init__(self, sweep_dir: pathlib.Path, doc: dict, cfgs: Sequence[RunConfig]):
        self.dir, self.doc, self.cfgs = sweep_dir, doc, list(cfgs)
        self.results: dict[int, Any] = {}  # finished combinations' results, read once

    def run_dir(self, entry: dict, cfg: RunConfig) -> pathlib.Path:
        """Where the combination's run folder is (or will be)."""
        return self.dir / (entry["run_dir"] or f"{cfg.name}/{entry['folder']}")

    def run(
        self,
        *,
        quiet: bool,
        overrides: Sequence[str] = (),
        on_start: Callable[[pathlib.Path], None] | None = None,
    ) -> pathlib.Path:
        entries = self.doc["combinations"]
        try:
            self.write()  # a resume first catches up on runs that finished before a kill
            if on_start is not None:
                on_start(self.dir)
            for entry, cfg in zip(entries, self.cfgs, strict=True):
                run_dir = self.run_dir(entry, cfg)
                status = _status(run_dir)
                if status == "finished":
                    continue
                entry["run_dir"] = run_dir.relative_to(self.dir).as_posix()
                entry["status"] = "running"
                self.write(running=entry)
                if not quiet and is_writer():
                    what = "resuming" if status == "running" else "run folder"
                    print(
                        f"[sweep {entry['index'] + 1}/{len(entries)}] "
                        f"{' '.join(entry['overrides'])}: {what} {run_dir}",
                        file=sys.stderr,
                        flush=True,
                    )
                if status == "running":
                    resume_experiment(run_dir, quiet=quiet, overrides=overrides)
                else:
                    if run_dir.exists() and is_writer():
                        # made just before an interruption, before its config: nothing in it
                        shutil.rmtree(run_dir)
                    made = run_experiment(
                        cfg,
                        self.dir,
                        quiet=quiet,
                        leaf=entry["folder"],
                        overrides=[*self.doc["overrides"], *entry["overrides"]],
                    )
                    entry["run_dir"] = made.relative_to(self.dir).as_posix()
                self.write()
        except KeyboardInterrupt:
            with contextlib.suppress(KeyboardInterrupt):
                self.write()
            raise RunInterrupted(self.dir) from None
        return self.dir

    def write(self, running: dict | None = None) -> None:
        """Rewrites `sweep.json`, `results.jsonl` and the summaries (process 0), each
        combination's status read from its run folder (but that of `running`, the entry whose
        run is about to start)."""
        _refresh(self.dir, self.doc["combinations"], self.results, running=running)
        if not is_writer():
            return
        doc = json.dumps(to_jsonable(self.doc), indent=2) + "\n"
        atomic_write_text(self.dir / SWEEP_FILE, doc)
        lines = [
            json.dumps(
                {
                    **{k: entry[k] for k in ("index", "values", "overrides", "run_dir")},
                    "results": self.results[entry["index"]],
                }
            )
            for entry in to_jsonable(self.doc["combinations"])
            if entry["status"] == "finished"
        ]
        atomic_write_text(self.dir / "results.jsonl", "".join(f"{line}\n" for line in lines))
        rows = _summary_rows(self.doc, self.results)
        atomic_write_text(self.dir / "summary.txt", _text_table(rows) + "\n")
        atomic_write_text(self.dir / "summary.md", _markdown_table(rows) + "\n")


def _refresh(
    sweep_dir: pathlib.Path,
    entries: Sequence[dict],
    results: dict[int, Any],
    *,
    running: dict | None = None,
) -> None:
    """Reads each combination's status from its run folder (all but `running`), and the
    results of the finished ones that `results` lacks into it."""
    for entry in entries:
        if entry is running:
            continue
        run_dir = sweep_dir / entry["run_dir"] if entry.get("run_dir") else None
        entry["status"] = _status(run_dir)
        if entry["status"] == "pending" and run_dir is not None and not run_dir.exists():
            entry["run_dir"] = None  # removed when its run was stopped before it began
        if entry["status"] == "finished" and entry["index"] not in results:
            results[entry["index"]] = _read_results(run_dir)


def _read_results(run_dir: pathlib.Path) -> Any:
    data = read_json(
        run_dir / "results.json",
        what="delete it and run `kseq run --resume` on the sweep folder to compute it again.",
    )
    if not isinstance(data, dict) or "results" not in data:
        raise RunError(f"{run_dir / 'results.json'} holds no `results`.")
    return data["results"]


# ----------------------------------------------------------------------------- summary


def format_summary(sweep_dir: str | os.PathLike) -> str:
    """The sweep's summary table as text (what `summary.txt` holds): one row per combination,
    its swept values, then the headline numbers of its results (every number of `results`,
    records labelled by their leading non-float fields, e.g. `rates[mmd,n=25].power`; at most
    `MAX_RESULT_COLUMNS`); a status column while some combination is not finished."""
    sweep_dir = pathlib.Path(sweep_dir)
    doc = _read_doc(sweep_dir)
    results: dict[int, Any] = {}
    _refresh(sweep_dir, doc["combinations"], results)
    return _text_table(_summary_rows(doc, results))


def _summary_rows(doc: dict, results: dict[int, Any]) -> tuple[list[str], list[dict], int]:
    """(columns, rows, number of result columns left out)."""
    entries = doc["combinations"]
    axes = list(doc["axes"])
    headline = {i: _headline(r) for i, r in results.items()}
    found = list(dict.fromkeys(k for h in headline.values() for k in h))
    shown = found[:MAX_RESULT_COLUMNS]
    fixed = ["#", *axes]
    if any(e["status"] != "finished" for e in entries):
        fixed.append("status")
    rename = {k: f"results.{k}" if k in fixed else k for k in shown}
    rows = []
    for entry in entries:
        row = {"#": entry["index"], "status": entry["status"], **entry["values"]}
        h = headline.get(entry["index"], {})
        row.update({rename[k]: h[k] for k in shown if k in h})
        rows.append(row)
    return [*fixed, *rename.values()], rows, len(found) - len(shown)


def _headline(results: Any) -> dict[str, Any]:
    """The numbers of a run's results, by dotted key; records labelled by their leading
    non-float fields (`rates[mmd,n=25].power`), else by their index."""
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif is_records(obj):
            for i, record in enumerate(obj):
                label, rest = _record_label(record)
                walk(f"{prefix}[{label or i}]", rest)
        elif obj is None or (isinstance(obj, (int, float)) and not isinstance(obj, bool)):
            out[prefix] = obj

    walk("", results)
    return out


def _record_label(record: dict) -> tuple[str, dict]:
    """(label, the other fields): the leading fields that are not floats (strings shown bare,
    others as `key=value`), when some fields follow them."""
    names = list(record)
    n = next((i for i, k in enumerate(names) if isinstance(record[k], float)), len(names))
    if n == 0 or n == len(names) or any(isinstance(record[k], (dict, list)) for k in names[:n]):
        return "", record
    parts = [v if isinstance(v, str) else f"{k}={v}" for k, v in list(record.items())[:n]]
    return ",".join(parts), {k: record[k] for k in names[n:]}


def _text_table(table: tuple[list[str], list[dict], int]) -> str:
    columns, rows, left_out = table
    text = format_table([{c: row.get(c, "") for c in columns} for row in rows])
    if left_out:
        text += f"\n({left_out} more result columns in results.jsonl)"
    return text


def _markdown_table(table: tuple[list[str], list[dict], int]) -> str:
    columns, rows, left_out = table
    cell = lambda v: format_value(v).replace("|", "\\|")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    if left_out:
        lines += ["", f"({left_out} more result columns in results.jsonl)"]
    return "\n".join(lines)
