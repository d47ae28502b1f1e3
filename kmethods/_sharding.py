"""The `mesh=` argument of the kernel statistics: checking it, and placing inputs on it.

A statistic given a `jax.sharding.Mesh` splits its row blocks over every axis of the mesh
(`kmethods.pairwise.map_row_blocks`); its inputs enter the compiled program replicated over
the mesh. With several processes (`jax.distributed`) every process passes the same values and
gets the (replicated) result.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def check_mesh(mesh, name: str = "mesh") -> Mesh | None:
    """None, or `mesh` as a `jax.sharding.Mesh` with automatic axes (the same devices and axis
    names): the statistics run `jax.shard_map` over it under `jit`, where explicitly typed
    axes would require the inputs already sharded as the `shard_map` reads them. Refused
    (ValueError) inside a `jax.set_mesh` context of explicit axes."""
    if mesh is None:
        return None
    if not isinstance(mesh, Mesh):
        raise TypeError(f"`{name}` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}.")
    current = jax.sharding.get_abstract_mesh()
    if not current.empty and any(t == AxisType.Explicit for t in current.axis_types):
        raise ValueError(
            f"`{name}`: call the kernel statistics outside a `jax.set_mesh` context of explicitly "
            "typed axes (they place their inputs on the mesh and split the rows themselves); "
            "a context of automatic axes, or none, is fine."
        )
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def replicate(tree, mesh: Mesh | None):
    """The array leaves of `tree` (data, kernels, PRNG keys) copied onto every device of `mesh`
    (unchanged for None, and for traced leaves: inside an outer `jit` the program places
    them). With several processes, each passes the same host values."""
    if mesh is None:
        return tree
    whole = NamedSharding(mesh, PartitionSpec())

    def put(leaf):
        if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
            return leaf
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = jax.device_put(jax.random.key_data(leaf), whole)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.device_put(leaf, whole)

    return jax.tree.map(put, tree)
