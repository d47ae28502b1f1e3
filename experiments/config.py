"""Experiment configs: YAML files read into frozen dataclasses, with validation and overrides.

A config file names the task and holds the task's parameters:

    # kseq run configs/quickstart.yaml
    name: quickstart
    task: quickstart
    seed: 0
    params:
      sample_sizes: [25, 50, 100]

Each task module defines a frozen dataclass `Config` (every field with a default) for its
`params`. Loading checks every key and type against the schema and fails with an error naming
the dotted key (`params.sample_sizes`), before anything runs. `--set a.b=value` overrides are
parsed as YAML values and applied before validation.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

import yaml

__all__ = [
    "LAUNCH_FIELDS",
    "MAX_SEED",
    "ConfigError",
    "ConfigTypeError",
    "DevicesConfig",
    "RunConfig",
    "apply_overrides",
    "build_dataclass",
    "check_folder_name",
    "config_to_dict",
    "describe_config",
    "field_docs",
    "load_config",
    "parse_config",
    "require_at_least",
    "resolved_dict",
]


class ConfigError(ValueError):
    """A config file or override that does not fit its schema."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value of the wrong type (a `TypeError` and a `ConfigError`)."""


@dataclasses.dataclass(frozen=True)
class DevicesConfig:
    """Where a run computes (the config's optional `devices` section).

    The runner builds the device mesh from it (`experiments.mesh.build_mesh`): either one
    axis of `count` devices named `axis`, or the named axes of `mesh`. Tasks split their
    replicate, permutation, bootstrap, seed and batch axes over the mesh's `data_axes` with
    `jax.jit` + `NamedSharding` (`RunContext.shard`, `RunContext.map`); a mesh axis left out of
    `data_axes` sees those arrays replicated, and is free for the task's own use (e.g. a
    sequence axis for `seqmodels.parallel`). Results do not depend on the layout: tasks built
    on `RunContext.map` and the quickstart give one device's results bit for bit;
    data-parallel training (a batch mean reduced across devices) agrees to float rounding.

        devices:
          mesh: {replica: 4, seq: 2}   # 8 devices as a 4 x 2 mesh
          data_axes: [replica]         # replicates / batches split 4 ways; seq is the task's

    Attributes:
      count: how many devices to use (None: every visible device; with several processes,
        every device of every process, and `count` must be a multiple of the process count).
      axis: the name of the one-axis mesh's axis.
      mesh: instead of `count` / `axis`: the mesh's axis names and sizes, in order (a mapping
        name -> size; one size may be -1: as many as the visible devices allow). The product of
        the sizes is the number of devices used.
      data_axes: the mesh axes that replicate, seed and batch axes are split over (jointly, in
        mesh order); None: every axis.
      distributed: call `jax.distributed.initialize()` first, for runs over several processes;
        every process computes its shard, and only process 0 writes files (the run folder must
        be on a filesystem all processes share).
      coordinator: `host:port` of process 0's coordinator (None: the environment variable
        `JAX_COORDINATOR_ADDRESS`, else JAX's cluster detection, e.g. SLURM).
      num_processes: how many processes (None: `JAX_NUM_PROCESSES`, else cluster detection).
      process_id: this process's index (None: `JAX_PROCESS_ID`, else cluster detection).

    `coordinator`, `num_processes` and `process_id` describe one launch, not the experiment:
    they are not written to the run's `config.yaml`, and a resumed run is given them again
    (environment variables, or `kseq run --resume RUN_DIR --set devices.process_id=1`).
    """

    count: int | None = None
    axis: str = "batch"
    mesh: dict[str, int] | None = None
    data_axes: tuple[str, ...] | None = None
    distributed: bool = False
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        if self.count is not None and self.count < 1:
            raise ConfigError(f"`devices.count` must be >= 1, got {self.count}.")
        if not self.axis:
            raise ConfigError("`devices.axis` must be a non-empty name.")
        if self.mesh is not None:
            if self.count is not None:
                raise ConfigError(
                    "give either `devices.mesh` (axis names and sizes) or `devices.count`, "
                    "not both."
                )
            if not self.mesh:
                raise ConfigError("`devices.mesh` must name at least one axis.")
            for name, size in self.mesh.items():
                if not name:
                    raise ConfigError("`devices.mesh` axis names must be non-empty.")
                if size != -1 and size < 1:
                    raise ConfigError(
                        f"`devices.mesh.{name}` must be >= 1 (or -1: the rest), got {size}."
                    )
            if sum(size == -1 for size in self.mesh.values()) > 1:
                raise ConfigError("at most one `devices.mesh` size may be -1.")
        names = self.axis_names
        if self.data_axes is not None:
            unknown = [a for a in self.data_axes if a not in names]
            if unknown:
                raise ConfigError(
                    f"`devices.data_axes` names {unknown}, not axes of the mesh {list(names)}."
                )
            if len(set(self.data_axes)) != len(self.data_axes):
                raise ConfigError(f"`devices.data_axes` repeats an axis: {list(self.data_axes)}.")
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError(f"`devices.num_processes` must be >= 1, got {self.num_processes}.")
        if self.process_id is not None and self.process_id < 0:
            raise ConfigError(f"`devices.process_id` must be >= 0, got {self.process_id}.")

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The mesh's axis names, in order."""
        return tuple(self.mesh) if self.mesh is not None else (self.axis,)

    @property
    def split_axes(self) -> tuple[str, ...]:
        """The axes that data axes are split over: `data_axes`, else every mesh axis."""
        return self.data_axes if self.data_axes is not None else self.axis_names


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A resolved experiment: which task, with which parameters.

    Attributes:
      name: run name; runs go to `<out>/<name>/<timestamp>/`. A plain folder name (no `/`,
        `..` or absolute path), so that a run never writes outside `--out`.
      task: the task: a name of `experiments.tasks.TASKS`, or the import path of a module
        that follows the task protocol (`Config` and `run`, e.g. `mypkg.mytask`).
      seed: the root of every PRNG key of the run, in [0, 2**32 - 1].
      params: the task's own frozen `Config` dataclass.
      devices: the devices section (`DevicesConfig`).
      tensorboard: also write each metrics record's numbers as TensorBoard scalars to
        `<run>/tensorboard/` (needs `pip install 'kseq[tensorboard]'`).
    """

    name: str
    task: str
    seed: int = 0
    params: Any = None
    devices: DevicesConfig = DevicesConfig()
    tensorboard: bool = False

    def __post_init__(self):
        check_folder_name(self.name, "name")
        # `jax.random.key` keeps only the low 32 bits of a seed without x64 (2**32 gives the
        # key of 0, -1 that of 2**32 - 1) and overflows past 64 bits: outside this range two
        # configs would silently share their random numbers, or the run would crash
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"`seed` must be an integer in [0, {MAX_SEED}], got {self.seed}.")


MAX_SEED = 2**32 - 1


def check_folder_name(name: str, key: str) -> None:
    """`name` must be a plain folder name: one path component, not `.` or `..`, not hidden,
    no path separator of any platform and no NUL."""
    bad = (
        not name
        or name in (".", "..")
        or name.startswith(".")
        or any(c in name for c in "/\\\0")
        or name != name.strip()
    )
    if bad:
        raise ConfigError(
            f"`{key}` must be a plain folder name (no `/` or `\\`, no absolute path, not `..`, "
            f"no leading `.` or surrounding spaces), got {name!r}."
        )


def load_config(path_or_name, overrides: Sequence[str] = ()) -> RunConfig:
    """Reads a YAML config, a file or a packaged config by name (`quickstart`: see
    `experiments.packaged.find_config`), applies `key=value` overrides and validates it against
    the schema."""
    from experiments.packaged import find_config

    path = find_config(path_or_name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:  # unreadable, or not text
        raise ConfigError(f"cannot read the config file {path}: {err}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level.")
    return parse_config(apply_overrides(raw, overrides))


def apply_overrides(raw: dict, overrides: Sequence[str]) -> dict:
    """Returns a copy of `raw` with each `a.b.c=value` applied (value parsed as YAML)."""
    out = _deep_copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. seed=3).")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: `{part}` is not a section.")
            node = child
        node[parts[-1]] = value
    return out


def _deep_copy(raw):
    if isinstance(raw, dict):
        return {k: _deep_copy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deep_copy(v) for v in raw]
    return raw


def parse_config(raw: dict) -> RunConfig:
    """Validates a raw mapping into a `RunConfig` with the task's typed `params`."""
    from experiments.tasks import TASKS, get_task

    raw = dict(raw)
    task = raw.get("task")
    if not isinstance(task, str):
        raise ConfigError(
            "`task` must be given, one of: "
            + ", ".join(sorted(TASKS))
            + ", or the import path of a task module (e.g. mypkg.mytask)"
        )
    schema = get_task(task).Config  # a registered task or a user's module, else ConfigError
    raw.setdefault("name", task)
    params = raw.pop("params", None) or {}
    top = build_dataclass(RunConfig, {k: v for k, v in raw.items()}, prefix="", skip=("params",))
    return dataclasses.replace(top, params=build_dataclass(schema, params, prefix="params."))


def build_dataclass(cls, raw, *, prefix: str = "", skip: Sequence[str] = ()):
    """Builds the frozen dataclass `cls` from a mapping, checking every key and type."""
    if not isinstance(raw, dict):
        raise ConfigError(f"`{prefix.rstrip('.') or 'config'}` must be a mapping, got {raw!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = [k for k in raw if k not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), list(fields), n=1)
        raise ConfigError(
            f"unknown config key `{prefix}{key}`"
            + (f" (did you mean `{prefix}{hint[0]}`?)" if hint else "")
            + "; allowed: "
            + ", ".join(f"{prefix}{name}" for name in fields)
        )
    values = {}
    for name, field in fields.items():
        if name in raw:
            values[name] = _convert(raw[name], hints[name], f"{prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key `{prefix}{name}`.")
    return cls(**values)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, key: str):
    """Checks `value` against the annotation `tp`; converts lists to tuples and ints to floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # `X | None`: X's own error, naming the entry that is wrong
            return _convert(value, options[0], key)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError:
                pass
        raise ConfigTypeError(f"`{key}` must be {_type_name(tp)}, got {value!r}.")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"`{key}` must be one of {list(args)}, got {value!r}.")
        return value
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, prefix=key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigTypeError(f"`{key}` must be a mapping, got {value!r}.")
        k_type, v_type = args if args else (Any, Any)
        return {
            _convert(k, k_type, f"{key} (a key)"): _convert(v, v_type, f"{key}.{k}")
            for k, v in value.items()
        }
    if origin in (tuple, list, Sequence) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigTypeError(f"`{key}` must be a list, got {value!r}.")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigTypeError(f"`{key}` must have {len(args)} entries, got {len(value)}.")
            return tuple(
                _convert(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(value, args, strict=True))
            )
        inner = args[0] if args else Any
        return tuple(_convert(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigTypeError(f"`{key}` must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigTypeError(f"`{key}` must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigTypeError(f"`{key}` must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigTypeError(f"`{key}` must be a string, got {value!r}.")
        return value
    raise ConfigTypeError(f"`{key}` has an unsupported annotation {tp!r}.")


def require_at_least(params, names: Sequence[str], minimum: int = 1) -> None:
    """For a task's `__post_init__`: each named field of `params` must be >= `minimum`."""
    for name in names:
        if getattr(params, name) < minimum:
            raise ConfigError(f"`params.{name}` must be >= {minimum}, got {getattr(params, name)}.")


def require_non_empty(params, names: Sequence[str]) -> None:
    """For a task's `__post_init__`: each named list field of `params` must be non-empty."""
    if not all(getattr(params, name) for name in names):
        keys = " and ".join(f"`params.{name}`" for name in names)
        raise ConfigError(f"{keys} must be non-empty lists.")


def require_sizes(params, name: str, minimum: int, symbol: str = "n") -> None:
    """For a task's `__post_init__`: the named list field of `params` (sizes or lengths) must
    be non-empty with every entry >= `minimum`; `symbol` names an entry in the message."""
    values = getattr(params, name)
    if not values or min(values) < minimum:
        raise ConfigError(f"`params.{name}` must be a non-empty list of {symbol} >= {minimum}.")


def require_probability(params, name: str = "alpha") -> None:
    """For a task's `__post_init__`: the named field of `params` (a level) must lie in (0, 1)."""
    if not 0.0 < getattr(params, name) < 1.0:
        raise ConfigError(f"`params.{name}` must lie in (0, 1).")


def config_to_dict(cfg) -> dict:
    """A plain nested dict (tuples as lists), ready for YAML or JSON."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


# Fields of the `devices` section that describe one launch of a run, not the experiment.
LAUNCH_FIELDS = ("coordinator", "num_processes", "process_id")


def resolved_dict(cfg: RunConfig) -> dict:
    """The resolved config as plain values, without the launch fields of `devices`
    (`coordinator`, `num_processes`, `process_id`): they differ between the processes of one
    run and between a run and its resumption."""
    plain = config_to_dict(cfg)
    for name in LAUNCH_FIELDS:
        plain.get("devices", {}).pop(name, None)
    return plain


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (after overrides, see `resolved_dict`), headed by a comment
    naming its task."""
    plain = resolved_dict(cfg)
    body = yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)
    return f"# resolved config of a `kseq run` ({cfg.task})\n{body}"


def field_docs(cls) -> dict[str, str]:
    """Each field's entry in the `Attributes:` section of the dataclass `cls`'s docstring, the
    convention of the task `Config`s: `name: what it is`, continued on more indented lines,
    or `a, b: ...` for fields described together; the section ends at a blank line. Fields
    without an entry are absent."""
    docs: dict[str, str] = {}
    names: list[str] = []
    indent = None
    lines = iter((inspect.getdoc(cls) or "").splitlines())
    for line in lines:
        if line.strip() == "Attributes:":
            break
    for line in lines:
        depth = len(line) - len(line.lstrip())
        if not line.strip() or depth == 0:
            break
        indent = depth if indent is None else indent
        entry = re.fullmatch(r"(\w+(?:,\s*\w+)*):\s*(.*)", line.strip())
        if depth == indent and entry:
            names = [n.strip() for n in entry[1].split(",")]
            docs.update((n, entry[2]) for n in names)
        elif depth > indent:
            docs.update((n, f"{docs[n]} {line.strip()}".strip()) for n in names)
    return docs


def _annotation(tp) -> str:
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _yaml_value(value) -> str:
    """A value as one line of YAML, as it would be written after `--set KEY=`."""
    text = yaml.safe_dump(config_to_dict(value), default_flow_style=True, width=10**9)
    return text.removesuffix("...\n").strip()


def describe_config(cfg: RunConfig) -> str:
    """The keys a config can set, one entry per field of the task's `params`, of `RunConfig`
    and of `devices`: dotted key, type and default (and this config's value where it
    differs), then the field's doc (`field_docs`). What `kseq run CONFIG --help` prints."""
    sections = [
        ("params.", type(cfg.params), cfg.params, ()),
        ("", RunConfig, cfg, ("task", "params", "devices")),
        ("devices.", DevicesConfig, cfg.devices, LAUNCH_FIELDS),
    ]
    out = []
    for prefix, cls, values, skip in sections:
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for field in dataclasses.fields(cls):
            if field.name in skip:
                continue
            if field.default is not dataclasses.MISSING:
                default = _yaml_value(field.default)
            elif field.default_factory is not dataclasses.MISSING:
                default = _yaml_value(field.default_factory())
            else:
                default = "(required)"
            value = _yaml_value(getattr(values, field.name))
            here = f"  (this config: {value})" if value != default else ""
            kind = _annotation(hints[field.name])
            out.append(f"  {prefix}{field.name}: {kind} = {default}{here}")
            doc = docs.get(field.name, "(undocumented)")
            out += textwrap.wrap(doc, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(out)
