"""Strict test settings, in the manner of equinox's conftest.

Simulated CPU devices must be requested before JAX initialises its backends, so the
environment variable is set at import time of this module, which pytest loads first.
"""

import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# The suite is compile-bound (hundreds of small programs, each compiled once): LLVM's backend
# optimisations are switched off for it, which cuts compile time by about a quarter. XLA's
# HLO passes, fusion and buffer plans are unchanged; the machine code is less tuned, and
# float results may differ in the last bits (no FMA contraction, other vectorisation), which
# the tests' tolerances allow. `KSEQ_TEST_FULL_OPT=1` tests at the default level.
if (
    os.environ.get("KSEQ_TEST_FULL_OPT") != "1"
    and "optimization_level" not in os.environ["XLA_FLAGS"]
):
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """A fresh, deterministic key on every call: `getkey()`."""
    state = {"key": jax.random.key(0)}

    def _getkey():
        state["key"], sub = jax.random.split(state["key"])
        return sub

    return _getkey


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def tiny_run(tmp_path):
    """Runs a config of `configs/` in tmp_path: `tiny_run("kt_mmd_rate", "repeats=1 dims=[2]")`.

    Each argument holds whitespace-separated `key=value` overrides, split as a shell would
    (quote a value with spaces); a key without a dot is a `params.` key. `ignore_warnings`:
    for runs of comparator libraries that warn about their own dependencies. Returns
    (run_dir, results), results being the "results" entry of the run's results.json.
    """
    import json
    import shlex
    import warnings

    from experiments import load_config, run_experiment

    def run(name, *overrides, ignore_warnings=False):
        items = [item for text in overrides for item in shlex.split(text)]
        items = [item if "." in item.split("=")[0] else f"params.{item}" for item in items]
        cfg = load_config(f"configs/{name}.yaml", items)
        with warnings.catch_warnings():
            if ignore_warnings:
                warnings.simplefilter("ignore")
            run_dir = run_experiment(cfg, tmp_path, quiet=True)
        return run_dir, json.loads((run_dir / "results.json").read_text())["results"]

    return run
