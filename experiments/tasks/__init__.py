"""The experiment tasks. Each module defines a frozen dataclass `Config` and
`run(cfg: Config, ctx: RunContext) -> dict`; modules are imported only when used.

Each field of a `Config` is documented in the class docstring's `Attributes:` section, one
entry per field (`name: what it is`; fields that go together may share one entry, `a, b:
...`), as in `experiments.tasks.quickstart`: `kseq run CONFIG --help` prints the first line of
each entry next to the field's type and default (`experiments.config.describe_config`).

Your own tasks. A config's `task` is one of the registered names of `TASKS`, or the import
path of any module that follows the same protocol, a frozen dataclass `Config` (its
`params`) and a callable `run(cfg, ctx) -> dict`:

    # mypkg/mytask.py, importable (installed, or its folder on PYTHONPATH)
    @dataclasses.dataclass(frozen=True)
    class Config:
        '''My task.

        Attributes:
          n: sample size.
        '''

        n: int = 100

    def run(cfg: Config, ctx) -> dict:
        return ctx.unit("draw", lambda: {"n": cfg.n, "mean": 0.0})

    # my.yaml:  task: mypkg.mytask
    #           params: {n: 200}

A task that cannot be imported, or lacks `Config` or `run`, is refused with a `ConfigError`
naming the `task` key before anything runs; a resumed run imports its task again, so the
module must still be importable then.

A task that needs an optional package (a comparator library) names it in a module-level
`REQUIRES = {package: how to install it}`: the runner checks that each imports before it makes
the run folder (`experiments.runner.check_requirements`).

Tasks that run hypothesis tests report, next to each rejection rate, how many replicates were
not finite (`num_nonfinite`): a test whose statistic or p-value is not finite does not reject
(`kmethods.calibration.decide`), so such replicates lower the rate rather than raise it, and the
count says how many there were."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types

TASKS: dict[str, str] = {
    "quickstart": "experiments.tasks.quickstart",
    "bench_tests": "experiments.tasks.bench_tests",
    "bench_scan": "experiments.tasks.bench_scan",
    "bench_layers": "experiments.tasks.bench_layers",
    "bench_thinning": "experiments.tasks.bench_thinning",
    "bench_ctt": "experiments.tasks.bench_ctt",
    "train_recall": "experiments.tasks.train_recall",
    "kt_mmd_rate": "experiments.tasks.kt_mmd_rate",
    "bench_deer": "experiments.tasks.bench_deer",
    "train_deer": "experiments.tasks.train_deer",
    "skit_power": "experiments.tasks.skit_power",
    "seq_two_sample": "experiments.tasks.seq_two_sample",
    "ksd_seq": "experiments.tasks.ksd_seq",
    "pksd_bimodal": "experiments.tasks.pksd_bimodal",
    "aggregated_power": "experiments.tasks.aggregated_power",
    "tests_at_scale": "experiments.tasks.tests_at_scale",
    "train_text": "experiments.tasks.train_text",
    "stein_compression": "experiments.tasks.stein_compression",
    "bench_stein": "experiments.tasks.bench_stein",
}


def get_task(name: str) -> types.ModuleType:
    """The task module registered under `name`, else the importable module `name` (a user's
    task, e.g. `mypkg.mytask`), once checked to follow the task protocol (a frozen dataclass
    `Config` and a callable `run`). A `ConfigError` naming the `task` key otherwise."""
    from experiments.config import ConfigError

    if name in TASKS:
        return importlib.import_module(TASKS[name])
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        parts = name.split(".")
        if err.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise ConfigError(f"`task`: importing the task module {name!r} failed: {err}") from err
        hint = difflib.get_close_matches(name, TASKS, n=1)
        raise ConfigError(
            f"unknown task {name!r} (`task`)"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f": neither a registered task ({', '.join(sorted(TASKS))}) nor an importable "
            f"module (no module named {err.name!r}; is its folder on PYTHONPATH?)"
        ) from None
    except (ImportError, ValueError, TypeError) as err:  # e.g. `a..b`, or a broken import
        raise ConfigError(f"`task`: importing the task module {name!r} failed: {err}") from err
    config = getattr(module, "Config", None)
    frozen = dataclasses.is_dataclass(config) and config.__dataclass_params__.frozen
    if not (isinstance(config, type) and frozen):
        raise ConfigError(
            f"`task`: module {name!r} does not follow the task protocol: it needs a frozen "
            "dataclass `Config` (`@dataclasses.dataclass(frozen=True)`), the task's `params`."
        )
    if not callable(getattr(module, "run", None)):
        raise ConfigError(
            f"`task`: module {name!r} does not follow the task protocol: it needs a function "
            "`run(cfg, ctx) -> dict`."
        )
    return module


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
