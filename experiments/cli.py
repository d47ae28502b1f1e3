"""The `kseq` command: `kseq run CONFIG`, `kseq run --resume RUN_DIR`, `kseq list`,
`kseq show RUN_DIR` (or SWEEP_DIR: its summary).

It only parses arguments and calls `experiments.load_config`, `run_experiment`,
`resume_experiment`, `show_run` and the sweeps of `experiments.sweep`.

A run, `kseq run CONFIG [--set KEY=VALUE ...]` (or `--resume RUN_DIR`), prints:

- on stderr, first, its start line, once the run folder holds its config:
  `[<name>] run folder <dir>; to resume it: kseq run --resume <dir>` (a resume:
  `[<name>] resuming <dir>; to resume it again: ...`);
- on stderr, its progress (`RunContext.progress`): tqdm bars when stderr is a terminal,
  otherwise one line per finished unit, `[<name>] unit mmd-n25 done (3/12, 4.1 s)`;
  `--quiet` silences both (not the start line, the table or the folder);
- on stdout, at the end, the results table that `kseq show RUN_DIR` prints, then the run
  folder as the last line (`$(kseq run ... | tail -n 1)` is the folder). In a run over
  several processes, the others print only the folder.

`results.json`'s `meta` records where the run came from: kseq's version, the git commit of the
checkout (and whether it was dirty), the Python and JAX versions, the command line and the
`--set` overrides (`experiments.runner.provenance`).

`kseq run CONFIG --help` prints the options and then every key the config can set: the task's
parameters, the run's and the devices' keys, each with its type, default (and this config's
value where it differs) and its doc from the `Attributes:` section of the `Config`'s docstring.
`kseq run --help` prints the options alone. `kseq run CONFIG --print-config` prints the
resolved config (after `--set`) as YAML and runs nothing.

A config's `task` is a registered task or the import path of your own task module
(`task: mypkg.mytask`, see `experiments.tasks`). `tensorboard: true` in a config also writes
the metrics as TensorBoard scalars to `<run>/tensorboard/` (`pip install 'kseq[tensorboard]'`).

Sweeps: `kseq run CONFIG --sweep params.n=100,200 --sweep seed=0,1,2` (or a config with a
`sweep:` section) runs every combination, one run folder each, in a sweep folder whose summary
table is printed at the end, the sweep folder last; `kseq run --resume SWEEP_DIR` finishes an
interrupted sweep (`experiments.sweep`).

Several processes (`devices.distributed`): start the same command once per process, e.g. on one
machine with two processes,

    JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \\
        kseq run configs/quickstart.yaml --set devices.distributed=true --out runs &
    JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \\
        kseq run configs/quickstart.yaml --set devices.distributed=true --out runs

(on a cluster, JAX detects these from the scheduler). Process 0 writes the run folder and
prints the start line and the table.

Errors. A foreseeable fault (a config or override that does not fit its schema, an `--out`
that cannot hold a run folder, a corrupt file, a missing optional package, Ctrl-C or SIGTERM)
prints one line, `kseq <command>: error: <message>` naming the key, file or package, and exits
non-zero (2: config or usage, 1: other, 130: Ctrl-C or SIGTERM, to any process of the run,
after which the message gives the `kseq run --resume` command). `KSEQ_TRACEBACK=1` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import sys

import yaml


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kseq", description="Run kseq experiments from YAML configs.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run an experiment config",
        add_help=False,  # `-h` is main's: with a CONFIG it also lists the config's keys
        description="Run an experiment config into a fresh run folder, or resume one.",
    )
    run.set_defaults(run_parser=run)
    run.add_argument(
        "config",
        nargs="?",
        help="a YAML config: a file, or a packaged config's name (e.g. quickstart; kseq list)",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="finish an interrupted run (or sweep) in its folder, reusing its finished units",
    )
    run.add_argument("--out", default="runs", help="root folder for run folders (default: runs)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set params.num_replicates=50 (with --resume, "
        "only devices.*)",
    )
    run.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run every combination of the listed values (repeatable: the product), e.g. "
        "--sweep params.n=100,200 --sweep seed=0,1,2; one run folder each, and a sweep folder",
    )
    run.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines on stderr"
    )
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (after --set) as YAML, and run nothing",
    )
    run.add_argument(
        "-h",
        "--help",
        action="store_true",
        help="show this help; after a CONFIG, also every key it can set: the task's parameters "
        "with type, default and doc",
    )
    lst = sub.add_parser("list", help="list the experiment configs")
    lst.add_argument("--dir", help="a folder of configs (default: the packaged configs)")
    show = sub.add_parser("show", help="print a finished run's results (or a sweep's summary)")
    show.add_argument("run_dir")
    return p


def list_configs(folder) -> str:
    """One line per config in `folder`: file, name, task and its run command. A file that
    cannot be read or is not a YAML mapping is skipped with a warning on stderr."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no config folder {folder}")
    lines = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            text = path.read_text()
            raw = yaml.safe_load(text) or {}
            if not isinstance(raw, dict):
                raise ValueError("not a mapping at the top level")
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
            print(f"kseq list: warning: skipping {path}: {_one_line(err)}", file=sys.stderr)
            continue
        first = text.splitlines()[0] if text else ""
        command = first.lstrip("# ").strip() if first.startswith("#") else ""
        lines.append(f"{path.name:<24} task={raw.get('task', '?')!s:<14} {command}")
    return "\n".join(lines)


def _one_line(err: BaseException) -> str:
    """An error's message on one line (YAML errors span several)."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _error(command: str, err: BaseException | str) -> None:
    message = err if isinstance(err, str) else _one_line(err)
    print(f"kseq {command}: error: {message}", file=sys.stderr)


def _resume(run_dir) -> str:
    """The command that resumes `run_dir`."""
    return f"kseq run --resume {shlex.quote(str(run_dir))}"


def _announce(*, resumed: bool):
    """The start line, printed on stderr (process 0) once the run folder holds its config."""

    def on_start(run_dir: pathlib.Path) -> None:
        from experiments.distributed import is_writer

        if is_writer():
            what, again = ("resuming", " again") if resumed else ("run folder", "")
            line = f"[{run_dir.parent.name}] {what} {run_dir}; to resume it{again}: "
            print(line + _resume(run_dir), file=sys.stderr, flush=True)

    return on_start


def _load_shown(source, overrides, sweep) -> tuple:
    """(the resolved config that `--help` and `--print-config` show, its `sweep:` section or
    None): a config with a sweep section is shown without it, as the base of its runs."""
    from experiments.config import apply_overrides, load_config, parse_config

    if not sweep.has_sweep_section(source):
        return load_config(source, overrides), None
    from experiments.packaged import find_config

    raw = apply_overrides(yaml.safe_load(find_config(source).read_text()), overrides)
    section = raw.pop("sweep")
    return parse_config(raw), section


def _run(args: argparse.Namespace) -> None:
    """`kseq run`: the help or resolved config of a config, a sweep, or one run (fresh or
    resumed): start line on stderr, progress, then the results table and the folder."""
    from experiments.config import ConfigError, describe_config, dump_config, load_config
    from experiments.distributed import is_writer
    from experiments.runner import resume_experiment, run_experiment
    from experiments.show import show_run

    source = args.config
    if source is None and args.resume is not None:
        source = pathlib.Path(args.resume) / "config.yaml"
    from experiments import sweep

    if args.help:
        args.run_parser.print_help()
        if source is not None:
            cfg, _ = _load_shown(source, args.overrides, sweep)
            print(f"\nkeys of {source} (task {cfg.task}; set with --set KEY=VALUE):")
            print(describe_config(cfg))
        return
    if (args.config is None) == (args.resume is None):
        raise ConfigError("give either a CONFIG or --resume RUN_DIR.")
    if args.print_config:
        cfg, section = _load_shown(source, args.overrides, sweep)
        print(dump_config(cfg), end="")
        if section is not None:
            print(
                yaml.safe_dump({"sweep": section}, sort_keys=False, default_flow_style=None), end=""
            )
        return
    if args.sweep and args.resume is not None:
        raise ConfigError("--sweep goes with a CONFIG; a sweep folder resumes with --resume alone.")
    if (
        args.sweep
        or (args.config is not None and sweep.has_sweep_section(args.config))
        or (args.resume is not None and sweep.is_sweep_dir(args.resume))
    ):
        if args.resume is None:
            folder = sweep.run_sweep(
                args.config,
                args.sweep,
                args.overrides,
                args.out,
                quiet=args.quiet,
                on_start=_announce(resumed=False),
            )
        else:
            folder = sweep.resume_sweep(
                args.resume,
                quiet=args.quiet,
                overrides=args.overrides,
                on_start=_announce(resumed=True),
            )
        if is_writer():
            print(sweep.format_summary(folder))
        print(folder)
        return
    if args.resume is not None:
        # only `devices.*` (how this launch computes) may change on a resume
        run_dir = resume_experiment(
            args.resume,
            quiet=args.quiet,
            overrides=args.overrides,
            on_start=_announce(resumed=True),
        )
    else:
        cfg = load_config(args.config, args.overrides)
        run_dir = run_experiment(
            cfg,
            args.out,
            quiet=args.quiet,
            overrides=args.overrides,
            on_start=_announce(resumed=False),
        )
    if is_writer():  # process 0 wrote the results
        print(show_run(run_dir))
    print(run_dir)


def main(argv=None) -> int:
    """Runs the command; returns the exit status: 0, 1 for a failure with a reason (a file, a
    package, a folder), 2 for a config or usage error, 130 after Ctrl-C or SIGTERM.

    Foreseeable faults print `kseq <command>: error: <message>` on one line, without a
    traceback; set KSEQ_TRACEBACK=1 to see one."""
    args = _parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    from experiments.config import ConfigError
    from experiments.errors import RunError
    from experiments.packaged import check_package

    expected_errors: tuple[type[BaseException], ...] = (
        OSError,  # a read-only or missing path, a file in the way, a full disk
        ValueError,  # checks of values, corrupt JSON (JSONDecodeError is one)
        TypeError,
        KeyError,
        yaml.YAMLError,
    )
    try:
        check_package()  # a folder named experiments/ in the working directory shadows ours
        if args.command == "run":
            from experiments.interrupts import terminate_as_interrupt

            with terminate_as_interrupt():  # SIGTERM ends as Ctrl-C does
                _run(args)
        elif args.command == "list":
            from experiments.packaged import config_folder

            print(list_configs(args.dir or config_folder()))
        elif args.command == "show":
            from experiments.show import show_run
            from experiments.sweep import format_summary, is_sweep_dir

            print((format_summary if is_sweep_dir(args.run_dir) else show_run)(args.run_dir))
    except KeyboardInterrupt as err:
        from experiments.interrupts import last_signal

        run_dir, what = getattr(err, "run_dir", None), last_signal()
        if run_dir is not None:
            _error(args.command, f"interrupted ({what}); finish the run with: {_resume(run_dir)}")
        elif args.command == "run":
            # before the run folder held its config, or after the results were written
            _error(args.command, f"interrupted ({what}) outside a run; nothing to resume.")
        else:
            _error(args.command, f"interrupted ({what}).")
        return 130
    except (ConfigError, FileNotFoundError) as err:
        if os.environ.get("KSEQ_TRACEBACK") == "1":
            raise
        _error(args.command, err)
        return 2
    except (RunError, *expected_errors) as err:
        if os.environ.get("KSEQ_TRACEBACK") == "1":
            raise
        _error(args.command, err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
