"""Several processes (`devices.distributed`): starting them, process 0 as the writer, barriers,
broadcasts, and arrays that span the devices of every process.

With `devices.distributed`, `jax.distributed.initialize()` is called before anything else,
the mesh spans the devices of every process and each process computes its share of every
sharded computation (arrays are made global with `put` onto the mesh). Only process 0 writes
files (`is_writer`): the run folder is created by process 0 and its path broadcast to the
others (`broadcast_text`), and every other process computes the same values and writes
nothing. On one process every function here is the plain single-process operation.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.config import ConfigError, DevicesConfig

if TYPE_CHECKING:
    import jax
    from jaxtyping import ArrayLike

__all__ = [
    "barrier",
    "broadcast_text",
    "host_array",
    "is_prng_key",
    "is_writer",
    "put",
    "start_distributed",
]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer, got {value!r}."
        ) from None


def start_distributed(devices: DevicesConfig) -> None:
    """Calls `jax.distributed.initialize()` once, for a `DevicesConfig` with `distributed`.

    The coordinator address, number of processes and process id come from the config's
    `coordinator`, `num_processes` and `process_id`, else from the environment variables
    `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, else (None) from
    JAX's cluster detection (SLURM, Open MPI, Kubernetes, Cloud TPU). Must run before anything
    else touches a JAX backend; does nothing without `distributed` or when already initialised.
    """
    if not devices.distributed:
        return
    import jax

    if jax.distributed.is_initialized():
        return
    num_processes = devices.num_processes
    if num_processes is None:
        num_processes = _env_int("JAX_NUM_PROCESSES")
    process_id = devices.process_id
    if process_id is None:
        process_id = _env_int("JAX_PROCESS_ID")
    # CPU processes exchange data through gloo (TCP): the default of recent JAX (0.10 here),
    # set explicitly where a version has no CPU collectives by default
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=devices.coordinator,  # None: JAX reads JAX_COORDINATOR_ADDRESS
        num_processes=num_processes,
        process_id=process_id,
    )


def is_writer() -> bool:
    """Whether this process writes the run's files (process 0; the only one without
    `jax.distributed`)."""
    import jax

    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process has reached the barrier `name` (nothing on one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_text(text: str | None) -> str:
    """Process 0's `text`, on every process."""
    import jax

    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    data = np.frombuffer(text.encode(), np.uint8) if is_writer() else np.zeros(0, np.uint8)
    size = multihost_utils.broadcast_one_to_all(np.array([data.size], np.int32))
    buffer = np.zeros(int(np.asarray(size)[0]), np.int32)
    if is_writer():
        buffer[:] = data
    out = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return bytes(out.astype(np.uint8)).decode()


def host_array(x: ArrayLike) -> np.ndarray:
    """`x` as a NumPy array on this host, also when it is a global array sharded over the
    devices of several processes (then gathered from all of them: every process must call it)."""
    import jax

    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def is_prng_key(x: Any) -> bool:
    """Whether `x` is an array of typed PRNG keys (`jax.random.key`)."""
    import jax

    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def put(x: ArrayLike, sharding: jax.sharding.Sharding) -> jax.Array:
    """`jax.device_put` that also takes typed PRNG keys onto a multi-process sharding (through
    their key data; every process passes the same host value)."""
    import jax

    if is_prng_key(x):
        data = put(jax.random.key_data(x), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)
