"""Uniforms from raw bits, all of a call's draws at once (internal).

Every random number of the test comes from one draw of `uniform`, cut into pieces: each random
call site under `vmap` added seconds of compilation on a CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def uniform(key, shape, dtype):
    """Uniforms on [0, 1) from raw bits, as `jax.random.uniform` makes them (mantissa bits under
    an exponent of 1, minus 1). Under `vmap` on a CPU, `jax.random.uniform` itself compiled in
    ~5 s where this takes under 1 s (jax 0.10), and the test is compiled for every shape."""
    info = jnp.finfo(dtype)
    if info.bits not in (32, 64):
        return jax.random.uniform(key, shape, dtype)
    uint = jnp.uint32 if info.bits == 32 else jnp.uint64
    bits = jax.random.bits(key, shape, uint)
    one = jax.lax.bitcast_convert_type(jnp.ones((), dtype), uint)
    mantissa = jax.lax.shift_right_logical(bits, jnp.asarray(info.bits - info.nmant, uint))
    return jax.lax.bitcast_convert_type(mantissa | one, dtype) - 1.0


def uniform_pieces(key, dtype, *shapes):
    """Uniforms of each of `shapes`, the consecutive pieces of one flat draw of `uniform`."""
    sizes = [int(np.prod(shape)) for shape in shapes]
    u = uniform(key, (sum(sizes),), dtype)
    out, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        out.append(u[start : start + size].reshape(shape))
        start += size
    return out


def uniform_index(u, n):
    """An index uniform on {0, ..., n - 1} from each uniform of u on [0, 1) (n may be traced)."""
    n_int = jnp.asarray(n)
    index = jnp.floor(u * n_int.astype(u.dtype)).astype(n_int.dtype)
    return jnp.minimum(index, n_int - 1)
