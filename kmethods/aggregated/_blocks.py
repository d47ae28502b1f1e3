"""Row-blocked sums for the aggregated tests: every kernel against every draw, in one pass.

The statistic of kernel i on draw b is a quadratic form v_b' K_i v_b (or a few bilinear ones) of
the kernel matrix with the draw's vector. Rows are taken `block_size` at a time: each block of
every kernel's matrix multiplies all the draws' vectors at once, and only the per-kernel,
per-draw partial sums are kept, so memory is O(N block_size n + n B + N B) for N kernels and
B draws, never n^2 (`kmethods.pairwise.map_row_blocks` keeps one output per row, which here
would be N n B numbers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["default_block_size", "family_map", "sum_row_blocks"]

# Entries of the (N, block, n) slabs of one block: 2^21 floats = 8 MiB in float32.
_BLOCK_ELEMENTS = 2**21


def default_block_size(n: int, width: int, num_kernels: int) -> int:
    """Rows per block so that the N kernels' slabs of `width` columns hold about 2^21 entries."""
    return int(max(1, min(n, _BLOCK_ELEMENTS // max(num_kernels * width, 1))))


def sum_row_blocks(fn, *arrays, block_size: int):
    """sum over row blocks of `fn(rows, *blocks)`, a pytree of arrays.

    `rows` are the global indices of the block's rows; the last block is padded with zero
    rows whose indices are >= n, which `fn` must give no weight (e.g. through zero entries
    of a draw's vector, or a mask `rows < n`).
    """
    n = arrays[0].shape[0]
    b = int(min(block_size, n))
    num_blocks = -(-n // b)
    if num_blocks == 1:
        return fn(jnp.arange(n), *arrays)
    pad = num_blocks * b - n
    blocks = [
        jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape(num_blocks, b, *a.shape[1:])
        for a in arrays
    ]
    rows = jnp.arange(num_blocks * b).reshape(num_blocks, b)
    shapes = jax.eval_shape(fn, rows[0], *(blk[0] for blk in blocks))
    start = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(total, args):
        part = fn(*args)
        return jax.tree.map(jnp.add, total, part), None

    total, _ = jax.lax.scan(body, start, (rows, *blocks))
    return total


def family_map(fn, collection):
    """`fn(kernel)` vmapped over each family of a `KernelCollection`, the outputs concatenated
    along a new leading axis of length N (one entry per kernel, in the collection's order)."""
    outs = [jax.vmap(fn)(family) for family in collection.families]
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)
