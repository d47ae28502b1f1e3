"""Wall-clock timing shared by the benchmark tasks (JAX work is dispatched asynchronously, so
every timing blocks until the result is ready)."""

from __future__ import annotations

import statistics
import time

import jax

__all__ = ["first_and_warm", "timed"]


def timed(fn):
    """Runs `fn()` once and returns (seconds, its result), waiting for the result."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def first_and_warm(fn, args, repeats):
    """(first-call seconds, compilation included; median of `repeats` warm calls) of fn(*args)."""
    first, _ = timed(lambda: fn(*args))
    warm = [timed(lambda: fn(*args))[0] for _ in range(repeats)]
    return first, statistics.median(warm)
