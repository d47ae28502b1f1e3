"""The experiment tasks. Each module defines a frozen dataclass `Config` and
`run(cfg: Config, ctx: RunContext) -> dict`; modules are imported only when used.

A task that needs an optional package (a comparator library) names it in a module-level
`REQUIRES = {package: how to install it}`: the runner checks that each imports before it makes
the run folder (`experiments.runner.check_requirements`).

Tasks that run hypothesis tests report, next to each rejection rate, how many replicates were
not finite (`num_nonfinite`): a test whose statistic or p-value is not finite does not reject
(`kmethods.calibration.decide`), so such replicates lower the rate rather than raise it, and the
count says how many there were."""

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


def nonfinite(result):
    """Whether each test of `result` (a `kmethods.TestResult`, or a vmapped batch of them) had
    a statistic or p-value that is not finite: the replicates a task counts as `num_nonfinite`
    (works on traced values, inside `jit` / `vmap`)."""
    import jax.numpy as jnp

    return ~(jnp.isfinite(result.statistic) & jnp.isfinite(result.p_value))


def nonfinite_streams(result):
    """How many streams of a vmapped `kmethods.betting.SequentialResult` have a NaN wealth
    (a +inf wealth is a float32 overflow of a large one, and counts as finite evidence)."""
    import jax.numpy as jnp

    return int(jnp.sum(jnp.any(jnp.isnan(result.wealth), axis=-1)))
