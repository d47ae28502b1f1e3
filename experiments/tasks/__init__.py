"""The experiment tasks. Each module defines a frozen dataclass `Config` and
`run(cfg: Config, ctx: RunContext) -> dict`; modules are imported only when used."""

from __future__ import annotations

import importlib
import types

TASKS: dict[str, str] = {
    "quickstart": "experiments.tasks.quickstart",
    "bench_tests": "experiments.tasks.bench_tests",
    "bench_scan": "experiments.tasks.bench_scan",
    "bench_thinning": "experiments.tasks.bench_thinning",
    "train_recall": "experiments.tasks.train_recall",
    "kt_mmd_rate": "experiments.tasks.kt_mmd_rate",
    "bench_deer": "experiments.tasks.bench_deer",
    "train_deer": "experiments.tasks.train_deer",
    "skit_power": "experiments.tasks.skit_power",
    "seq_two_sample": "experiments.tasks.seq_two_sample",
    "ksd_seq": "experiments.tasks.ksd_seq",
    "pksd_bimodal": "experiments.tasks.pksd_bimodal",
}


def get_task(name: str) -> types.ModuleType:
    """Imports and returns the task module registered under `name`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    return importlib.import_module(TASKS[name])
