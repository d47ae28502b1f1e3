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
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import yaml


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kseq", description="Run kseq experiments from YAML configs.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an experiment config")
    run.add_argument(
        "config", nargs="?", help="path to a YAML config, e.g. configs/quickstart.yaml"
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
    lst.add_argument("--dir", default="configs", help="folder of configs (default: configs)")
    show = sub.add_parser("show", help="print a finished run's results")
    show.add_argument("run_dir")
    return p


def list_configs(folder) -> str:
    """One line per config in `folder`: file, name, task and its run command."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no config folder {folder}")
    lines = []
    for path in sorted(folder.glob("*.yaml")):
        text = path.read_text()
        first = text.splitlines()[0] if text else ""
        command = first.lstrip("# ").strip() if first.startswith("#") else ""
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError:
            raw = {}
        lines.append(f"{path.name:<24} task={raw.get('task', '?'):<14} {command}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from experiments.config import ConfigError, load_config

    try:
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
            print(list_configs(args.dir))
        elif args.command == "show":
            from experiments.runner import show_run

            print(show_run(args.run_dir))
    except (ConfigError, FileNotFoundError) as err:
        print(f"kseq {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
