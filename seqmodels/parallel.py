"""Sequence parallelism: linear recurrences and gated linear attention with the time axis split
across devices.

The scheme is LASP-2's (Sun et al., 2024, "Linear Attention Sequence Parallelism", and its
all-gather variant LASP-2, 2025), written with `jax.shard_map`:

1. every device holds one contiguous chunk of the sequence and solves it from a zero state,
   which yields the chunk's summary: the product of its transitions and its end state;
2. one `all_gather` of the summaries (per device: one transition product and one state, so the
   traffic does not depend on L);
3. every device folds the gathered summaries of the devices before it into its incoming state
   (a scan over the device axis, a few steps) and re-solves its chunk from that state.

Gradients flow through `shard_map` (the all-gather transposes to a reduce-scatter) and through
the local solves' own custom VJP.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
from jaxtyping import Array, ArrayLike, Inexact

from seqmodels._affine import act, compose
from seqmodels._checks import check_positive_int, common_dtype, compute_dtype
from seqmodels._gla import chunkwise_scan
from seqmodels._scan import check_method, linear_recurrence, prepare_recurrence

__all__ = ["gated_linear_attention_sharded", "linear_recurrence_sharded"]


def _axis_size(mesh, axis_name):
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"`axis_name` {axis_name!r} is not an axis of the mesh (axes {mesh.axis_names})."
        )
    return mesh.shape[axis_name]


def _sharded(fn, mesh, specs, out_spec, *args):
    """`jax.shard_map(fn)` on `args`.

    Inside a mesh context (`jax.set_mesh`) with explicit axis types, JAX wants the inputs
    already laid out as `specs` say, so they are resharded first, and the output is typed as
    sharded over the mesh. Outside one, an explicit-axis mesh is used as the same devices with
    automatic axes: an explicitly typed output cannot be used eagerly outside the mesh
    context (`jax.grad` run eagerly, in a notebook, would fail while making its output
    cotangent: "Length of device assignment 1 is not equal to the size of the mesh"), while
    automatic axes give an ordinary sharded array, under `jit` or not.
    """
    explicit = jax.sharding.AxisType.Explicit
    if any(t == explicit for t in getattr(mesh, "axis_types", ())):
        if jax.sharding.get_abstract_mesh().empty:
            auto = (jax.sharding.AxisType.Auto,) * len(mesh.axis_names)
            mesh = jax.sharding.Mesh(mesh.devices, mesh.axis_names, axis_types=auto)
        else:
            args = [
                jax.reshard(x, jax.sharding.NamedSharding(mesh, s))
                for x, s in zip(args, specs, strict=True)
            ]
    return jax.shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=out_spec)(*args)


def _check_length(length, num_devices, axis_name):
    if length % num_devices:
        raise ValueError(
            f"the sequence length {length} must be a multiple of the {num_devices} devices on "
            f"mesh axis {axis_name!r} (pad it, e.g. with a = 1, b = 0, which keeps the state)."
        )


def linear_recurrence_sharded(
    a: Inexact[ArrayLike, " L *state"],
    b: Inexact[ArrayLike, " L *state"],
    h0: Inexact[ArrayLike, "*state"] | None = None,
    *,
    mesh: jax.sharding.Mesh,
    axis_name: str = "seq",
    method: str = "auto",
) -> Inexact[Array, " L *state"]:
    """`linear_recurrence` with the time axis split across the devices of `mesh[axis_name]`.

    Args:
      a, b, h0: as in `seqmodels.linear_recurrence` (elementwise or matrix transitions).
      mesh: a `jax.sharding.Mesh`; the time axis is split over its axis `axis_name` (other mesh
        axes see replicated data).
      axis_name: the mesh axis that carries the sequence.
      method: the solver used on each device's chunk (see `linear_recurrence`).

    Returns:
      h of shape b.shape, equal to `linear_recurrence(a, b, h0)`, sharded over time, in the
      common dtype of a, b and h0. As there, float16 and bfloat16 inputs are solved (chunk
      summaries and exchange included) in float32 and rounded once at the end.

    L must be a multiple of the device count (each device gets an equal chunk; padding with
    identity transitions and zero inputs leaves the state unchanged). Works eagerly, under
    `jit`, and under `jax.grad` either way, inside `jax.set_mesh(mesh)` or not.
    """
    check_method(method)
    num_devices = _axis_size(mesh, axis_name)
    a, b, h0, matrix = prepare_recurrence(a, b, h0)
    _check_length(b.shape[0], num_devices, axis_name)
    return _recurrence_sharded(
        a, b, h0, mesh=mesh, axis_name=axis_name, method=method, matrix=matrix
    )


# One compiled program per (shapes, mesh, options): run eagerly, the shard_map and above all its
# gradient would otherwise run op by op, each op compiled for the mesh (5 s against 0.7 s for
# a small gradient), and under an outer `jit` it is inlined.
@functools.partial(jax.jit, static_argnames=("mesh", "axis_name", "method", "matrix"))
def _recurrence_sharded(a, b, h0, *, mesh, axis_name, method, matrix):
    dtype = b.dtype
    work = compute_dtype(dtype)
    a, b, h0 = a.astype(work), b.astype(work), h0.astype(work)  # no-ops unless low precision

    def local(a, b, h0):
        # 1. this chunk's summary, from a zero state
        # h0 arrives replicated; the states computed from it differ per device ("varying")
        h0 = jax.lax.pcast(h0, (axis_name,), to="varying")
        end = linear_recurrence(a, b, jnp.zeros_like(h0), method=method)[-1]
        prod = jax.lax.fori_loop(1, a.shape[0], lambda t, p: compose(a[t], p, matrix), a[0])
        # 2. everyone's summaries (O(state) per device, independent of L)
        prods = jax.lax.all_gather(prod, axis_name)
        ends = jax.lax.all_gather(end, axis_name)

        # 3. the state entering each device, then this chunk again from its true start
        def step(carry, summary):
            p, e = summary
            return act(p, carry, matrix) + e, carry

        _, starts = jax.lax.scan(step, h0, (prods, ends))
        start = starts[jax.lax.axis_index(axis_name)]
        return linear_recurrence(a, b, start, method=method)

    spec = PartitionSpec(axis_name)
    return _sharded(local, mesh, (spec, spec, PartitionSpec()), spec, a, b, h0).astype(dtype)


def gated_linear_attention_sharded(
    q: Inexact[Array, "L K"],
    k: Inexact[Array, "L K"],
    v: Inexact[Array, "L V"],
    log_a: Inexact[Array, "L K"],
    *,
    mesh: jax.sharding.Mesh,
    axis_name: str = "seq",
    chunk_size: int = 64,
) -> Inexact[Array, "L V"]:
    """`gated_linear_attention` (y_t = q_t H_t, H_t = diag(a_t) H_{t-1} + k_t^T v_t) with the
    time axis split across `mesh[axis_name]`, as in LASP-2.

    Each device computes, from a zero state and by the chunkwise form, its chunk's own part
    and its chunk state S = sum_s (prod_{r > s} a_r) k_s^T v_s, and its total decay; one
    all-gather of the (K x V)
    chunk states and K decays gives each device its incoming state H_in, and the inter-chunk
    part is (q_t * prod_{r <= t} a_r) H_in. Communication per device is O(K V), independent of L.

    Args:
      q, k, log_a: (L, K); v: (L, V); as in `seqmodels.layers.gated_linear_attention`.
      mesh, axis_name: the device mesh and the axis that carries the sequence. L must be a
        multiple of the axis size.
      chunk_size: chunk length of the chunkwise form inside each device.

    Returns:
      y of shape (L, V), in the common dtype of the inputs (float16 and bfloat16 are computed
      in float32 and rounded at the end).
    """
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    num_devices = _axis_size(mesh, axis_name)
    if q.shape != k.shape or log_a.shape != k.shape or v.shape[0] != k.shape[0]:
        raise ValueError(
            f"expected q, k, log_a of one shape (L, K) and v of shape (L, V); got "
            f"{q.shape}, {k.shape}, {log_a.shape}, {v.shape}."
        )
    _check_length(q.shape[0], num_devices, axis_name)
    dtype = common_dtype(q, k, v, log_a)
    work = compute_dtype(dtype)
    q, k, v, log_a = (x.astype(work) for x in (q, k, v, log_a))
    # a chunk longer than a device's part would only be padding
    chunk_size = min(chunk_size, q.shape[0] // num_devices)

    def local(q, k, v, log_a):
        intra, state = chunkwise_scan(q, k, v, log_a, chunk_size)
        decays = jax.lax.all_gather(jnp.exp(jnp.sum(log_a, axis=0)), axis_name)  # (n, K)
        states = jax.lax.all_gather(state, axis_name)  # (n, K, V)

        def step(carry, summary):
            decay, s = summary
            return decay[:, None] * carry + s, carry

        _, starts = jax.lax.scan(step, jnp.zeros_like(state), (decays, states))
        start = starts[jax.lax.axis_index(axis_name)]
        return intra + jnp.einsum("tk,kv->tv", q * jnp.exp(jnp.cumsum(log_a, axis=0)), start)

    spec = PartitionSpec(axis_name)
    return _sharded(local, mesh, (spec,) * 4, spec, q, k, v, log_a).astype(dtype)
