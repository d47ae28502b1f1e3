"""The device mesh of a run, and splitting a leading axis over it.

The config's `devices` section (`experiments.config.DevicesConfig`) sets the mesh: one axis of
`count` devices, or named axes and sizes (`mesh`); `build_mesh` makes it. Tasks split their
replicate, permutation, seed and batch axes over its data axes (every axis unless the config
names some) with `split_leading_axis` (a `NamedSharding` over the leading axis; `jax.jit` of a
`vmap` then runs each device's share), usually through `RunContext.shard`. With several
processes the mesh spans the devices of every process (`experiments.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from experiments.config import ConfigError, DevicesConfig
from experiments.distributed import put, start_distributed

if TYPE_CHECKING:
    import jax
    from jaxtyping import PyTree

__all__ = ["axes_size", "build_mesh", "check_axes", "split_leading_axis"]


def _mesh_shape(devices: DevicesConfig, available: int) -> tuple[int, ...]:
    """The mesh's axis sizes for `available` devices: (`count`,) or `mesh`'s sizes with a -1
    resolved."""
    if devices.mesh is None:
        count = available if devices.count is None else devices.count
        if not 1 <= count <= available:
            raise ConfigError(
                f"`devices.count` must be between 1 and the {available} visible devices, "
                f"got {count}."
            )
        return (count,)
    known = math.prod(size for size in devices.mesh.values() if size != -1)
    rest = available // known
    sizes = tuple(rest if size == -1 else size for size in devices.mesh.values())
    if math.prod(sizes) > available or rest < 1:
        raise ConfigError(
            f"`devices.mesh` {dict(devices.mesh)} needs {known} devices or more; "
            f"{available} are visible."
        )
    return sizes


def build_mesh(devices: DevicesConfig) -> jax.sharding.Mesh | None:
    """The run's device mesh from a `DevicesConfig` (None for a single device).

    One axis of `count` devices (default: all) named `axis`, or the axes of `mesh`, over the
    first devices of `jax.devices()`. With several processes the mesh spans them all, the same
    number of devices of each (taken process by process), so the device count must be a
    multiple of the number of processes."""
    import jax

    start_distributed(devices)
    available = jax.devices()
    shape = _mesh_shape(devices, len(available))
    count = math.prod(shape)
    processes = jax.process_count()
    if count % processes:
        raise ConfigError(
            f"the mesh's {count} devices (`devices.count` or `devices.mesh`) must be a "
            f"multiple of the {processes} processes."
        )
    if count == 1:
        return None
    per_process = count // processes
    owned = [[d for d in available if d.process_index == p] for p in range(processes)]
    chosen = [d for devices_of_p in owned for d in devices_of_p[:per_process]]
    return jax.make_mesh(
        shape,
        devices.axis_names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
        devices=chosen,
    )


def check_axes(mesh: jax.sharding.Mesh, axes: str | Sequence[str] | None) -> tuple[str, ...]:
    """`axes` (None: every axis of `mesh`) as a checked tuple of mesh axis names."""
    if axes is None:
        return tuple(mesh.axis_names)
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown or not axes:
        raise ValueError(
            f"`axes` must name axes of the mesh {tuple(mesh.axis_names)}, got {axes!r}."
        )
    return axes


def axes_size(mesh: jax.sharding.Mesh, axes: Sequence[str]) -> int:
    """How many parts the mesh `axes` split an axis into (the product of their sizes)."""
    return math.prod(mesh.shape[a] for a in axes)


def split_leading_axis(
    x: PyTree, mesh: jax.sharding.Mesh | None, axes: str | Sequence[str] | None = None
) -> PyTree:
    """`x` (an array or a pytree of arrays) with its leading axis (replicates, seeds, a batch)
    split over the device `mesh`'s `axes` (None: all of them, jointly in mesh order), so that
    `jax.jit` of a `vmap` over that axis runs each device's share; mesh axes not in `axes` hold
    copies. Inside `jax.jit` (traced arrays) it is a sharding constraint.

    Arrays whose leading axis does not divide evenly, and a `mesh` of None (one device), stay
    as they are; in a multi-process run, concrete ones are replicated over the mesh instead
    (every array that meets a sharded one must be global there). The results do not depend
    on the layout."""
    import jax

    if mesh is None:
        return x
    axes = check_axes(mesh, axes)
    parts = axes_size(mesh, axes)
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    several = jax.process_count() > 1

    def one(a):
        if not hasattr(a, "shape"):
            return a
        divides = a.ndim > 0 and a.shape[0] % parts == 0
        if isinstance(a, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(a, split) if divides else a
        if divides:
            return put(a, split)
        return put(a, whole) if several else a

    return jax.tree.map(one, x)
