"""Row-blocked sums for the aggregated tests: every kernel against every draw, in one pass.

The statistic of kernel i on draw b is a quadratic form v_b' K_i v_b (or a few bilinear ones) of
the kernel matrix with the draw's vector. Rows are taken `block_size` at a time: each block of
every kernel's matrix multiplies all the draws' vectors at once, and only the per-kernel,
per-draw partial sums are kept, so memory is O(N block_size n + n B + N B) for N kernels and
B draws, never n^2 (`kmethods.pairwise.map_row_blocks` keeps one output per row, which here
would be N n B numbers).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from kmethods import _checks
from kmethods.aggregated._aggregate import aggregate, check_quantile_draws

__all__ = [
    "Plan",
    "default_block_size",
    "draw_rows",
    "family_map",
    "rademacher_rows",
    "row_block",
    "sum_row_blocks",
]

# Entries of the (N, block, n) slabs of one block: 2^21 floats = 8 MiB in float32.
_BLOCK_ELEMENTS = 2**21


class Plan(NamedTuple):
    """How an aggregated test draws and decides, static under `jit` (one compile per plan):
    B1 draws for the per-kernel quantiles, B2 draws for the level correction, B3 bisection
    steps on u, and the rows of every kernel matrix held at once (None: `rows_per_block`)."""

    num_quantile: int
    num_correction: int
    bisection_steps: int
    block_size: int | None

    @property
    def num_draws(self) -> int:
        return self.num_quantile + self.num_correction

    @classmethod
    def checked(
        cls, quantile_name, num_quantile, num_correction, bisection_steps, block_size, alpha
    ):
        """The plan of a test's arguments, each checked under its name (`quantile_name`: the
        name of B1, which must be large enough for the level `alpha`:
        `check_quantile_draws`)."""
        return cls(
            check_quantile_draws(num_quantile, quantile_name, alpha),
            _checks.positive_int(num_correction, "num_correction"),
            _checks.positive_int(bisection_steps, "bisection_steps"),
            _checks.block_size(block_size),
        )

    def decide(self, draws, scale, weights, alpha, kernels, inputs):
        """The `AggregatedTestResult` of the statistics `draws` (N, 1 + B1 + B2): `aggregate`
        with this plan's B1 and bisection steps."""
        return aggregate(
            draws,
            weights,
            alpha,
            scale,
            inputs=inputs,
            num_quantile=self.num_quantile,
            num_steps=self.bisection_steps,
            kernels=kernels,
        )

    def rows_per_block(self, rows: int, num_kernels: int) -> int:
        """`block_size`, or by default about 2^21 entries of the slabs of `num_kernels` kernel
        matrices of `rows` rows, each as wide as its matrix or the draws."""
        if self.block_size is not None:
            return self.block_size
        return default_block_size(rows, max(rows, self.num_draws + 1), num_kernels)


def default_block_size(n: int, width: int, num_kernels: int) -> int:
    """Rows per block so that the N kernels' slabs of `width` columns hold about 2^21 entries."""
    return int(max(1, min(n, _BLOCK_ELEMENTS // max(num_kernels * width, 1))))


def sum_row_blocks(fn, n: int, *, block_size: int):
    """sum over the row blocks of an n-row matrix of `fn(start, rows)`, a pytree of arrays.

    Block i covers rows [start, start + b) with start = min(i b, n - b), so every block has b
    rows and no array is padded or copied: `fn` slices what it needs at `start` (e.g. with
    `jax.lax.dynamic_slice_in_dim`). `rows` holds the global index of each of the b rows, or
    n for a row that an earlier block already covered (the last block overlaps the one
    before); `fn` must give those rows no weight (e.g. a mask `rows < n`).
    """
    b = int(min(block_size, n))
    num_blocks = -(-n // b)
    offsets = jnp.arange(b)  # the default integer type, as `mask_diagonal`'s columns

    def one(i):
        first = i * b
        start = jnp.minimum(first, n - b)
        rows = start + offsets
        return fn(start, jnp.where(rows >= first, rows, n))

    if num_blocks == 1:
        return one(jnp.zeros((), offsets.dtype))
    shapes = jax.eval_shape(one, jnp.zeros((), offsets.dtype))
    start = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(total, i):
        return jax.tree.map(jnp.add, total, one(i)), None

    total, _ = jax.lax.scan(body, start, jnp.arange(num_blocks, dtype=offsets.dtype))
    return total


def row_block(a, start, size, axis=0):
    """`size` consecutive entries of `a` along `axis` from `start` (a traced index)."""
    return jax.lax.dynamic_slice_in_dim(a, start, size, axis)


def draw_rows(draw, key, num_draws: int, observed, *, batch: int = 64):
    """`observed`, then `draw(k)` for `num_draws` keys split from `key`, stacked, shape
    (1 + num_draws, ...): rows 1.. are those of `jax.vmap(draw)(jax.random.split(key,
    num_draws))` (`calibration.permuted_labels` for a permutation). Computed `batch` draws at
    a time, so that a draw's temporaries (a sort, for a permutation) exist for `batch` draws
    only, and written in place: the (1 + B, n) result is the only array of its size."""
    keys = jax.random.split(key, num_draws)
    keys = jnp.concatenate([keys[:1], keys])
    total = num_draws + 1
    b = min(batch, total)

    def rows(start):
        index = start + jnp.arange(b, dtype=start.dtype)
        k = jax.lax.dynamic_slice_in_dim(keys, start, b)
        return jax.vmap(lambda ki, i: jnp.where(i == 0, observed, draw(ki)))(k, index)

    # Batches overwrite a preallocated array (the last one overlaps the one before, with the
    # same rows): a `lax.map` would concatenate its remainder into a second copy.
    out = jnp.zeros((total, *observed.shape), observed.dtype)

    def body(i, out):
        start = jnp.minimum(i * b, total - b)
        return jax.lax.dynamic_update_slice_in_dim(out, rows(start), start, 0)

    return jax.lax.fori_loop(0, -(-total // b), body, out)


def rademacher_rows(key, n: int, num_draws: int, dtype):
    """A row of ones, then `num_draws` rows of n i.i.d. Rademacher signs, one key each (split
    from `key`), shape (1 + num_draws, n): the wild bootstrap's sign vectors (Chwialkowski,
    Strathmann & Gretton 2016) with the statistic's own weights first."""
    ones = jnp.ones(n, dtype)
    return draw_rows(lambda k: jax.random.rademacher(k, (n,), dtype), key, num_draws, ones)


def family_map(fn, collection):
    """`fn(kernel)` vmapped over each family of a `KernelCollection`, the outputs concatenated
    along a new leading axis of length N (one entry per kernel, in the collection's order)."""
    outs = [jax.vmap(fn)(family) for family in collection.families]
    return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)
