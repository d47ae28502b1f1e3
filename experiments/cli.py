"""The `kseq` command: `kseq run CONFIG`, `kseq run --resume RUN_DIR`, `kseq list`,
`kseq show RUN_DIR`.

It only parses arguments and calls `experiments.load_config`, `run_experiment` and `show_run`.

Several processes (`devices.distributed`): start the same command once per process, e.g. on one
machine with two processes,

    JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        kseq run configs/quickstart.yaml --set devices.distributed=true --out runs &
    JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 \
        kseq run configs/quickstart.yaml --set devices.distributed=true --out runs

(on a cluster, JAX detects these from the scheduler). Process 0 writes the run folder.

Errors. A foreseeable fault (a config or override that does not fit its schema, an `--out`
that cannot hold a run folder, a corrupt file, a missing optional package, Ctrl-C) prints one
line, `kseq <command>: error: <message>` naming the key, file or package, and exits non-zero
(2: config or usage, 1: other, 130: Ctrl-C, after which the message gives the
`kseq run --resume` command). `KSEQ_TRACEBACK=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import yaml


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kseq", description="Run kseq experiments from YAML configs.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config")
    run.add_argument(
        "config",
        nargs="?",
        help="a YAML config: a file, or a packaged config's name (e.g. quickstart; kseq list)",
    )
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="finish an interrupted run in its folder, reusing its finished units",
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
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    lst = sub.add_parser("list", help="list the experiment configs")
    lst.add_argument("--dir", help="a folder of configs (default: the packaged configs)")
    show = sub.add_parser("show", help="print a finished run's results")
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


def main(argv=None) -> int:
    """Runs the command; returns the exit status: 0, 1 for a failure with a reason (a file, a
    package, a folder), 2 for a config or usage error, 130 after Ctrl-C.

    Foreseeable faults print `kseq <command>: error: <message>` on one line, without a
    traceback; set KSEQ_TRACEBACK=1 to see one."""
    args = _parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    from experiments.config import ConfigError, load_config
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
            from experiments.runner import resume_experiment, run_experiment

            if (args.config is None) == (args.resume is None):
                raise ConfigError("give either a CONFIG or --resume RUN_DIR.")
            if args.resume is not None:
                # only `devices.*` (how this launch computes) may change on a resume
                run_dir = resume_experiment(args.resume, quiet=args.quiet, overrides=args.overrides)
            else:
                cfg = load_config(args.config, args.overrides)
                run_dir = run_experiment(cfg, args.out, quiet=args.quiet)
            print(run_dir)
        elif args.command == "list":
            from experiments.packaged import config_folder

            print(list_configs(args.dir or config_folder()))
        elif args.command == "show":
            from experiments.show import show_run

            print(show_run(args.run_dir))
    except KeyboardInterrupt as err:
        run_dir = getattr(err, "run_dir", None)
        if run_dir is not None:
            _error(
                args.command,
                f"interrupted (Ctrl-C); finish the run with: kseq run --resume {run_dir}",
            )
        elif args.command == "run":
            _error(args.command, "interrupted (Ctrl-C) before the run started; nothing to resume.")
        else:
            _error(args.command, "interrupted (Ctrl-C).")
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
