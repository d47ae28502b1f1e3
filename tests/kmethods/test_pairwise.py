import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import kmethods as km
from kmethods import pairwise


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(2, 23),
    m=st.integers(1, 9),
    block=st.integers(1, 30),
    columns=st.sampled_from([None, 1, 3]),
    exclude=st.booleans(),
)
def test_blocked_matvec_equals_dense(n, m, block, columns, exclude):
    rng = np.random.default_rng(n * 1000 + m * 10 + block)
    x = rng.normal(size=(n, 2)).astype(np.float32)
    y = x if exclude else rng.normal(size=(m, 2)).astype(np.float32)
    v_shape = (y.shape[0],) if columns is None else (y.shape[0], columns)
    v = rng.normal(size=v_shape).astype(np.float32)
    k = km.Gaussian(0.9)
    dense = np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * 0.81))
    if exclude:
        np.fill_diagonal(dense, 0.0)
    got = pairwise.kernel_matvec(k, x, y, v, exclude_diagonal=exclude, block_size=block)
    np.testing.assert_allclose(got, dense @ v, rtol=1e-5, atol=1e-5)
    sums = pairwise.kernel_row_sums(k, x, y, exclude_diagonal=exclude, block_size=block)
    np.testing.assert_allclose(sums, dense.sum(1), rtol=1e-5, atol=1e-5)


def test_map_row_blocks_pytree_outputs_and_global_rows():
    x = jnp.arange(10.0)[:, None]
    rows, doubled = pairwise.map_row_blocks(lambda r, xb: (r, 2 * xb[:, 0]), x, block_size=3)
    np.testing.assert_array_equal(rows, np.arange(10))
    np.testing.assert_array_equal(doubled, 2 * np.arange(10.0))


def test_default_block_size_bounds_memory():
    assert pairwise.default_block_size(10, 10) == 10
    b = pairwise.default_block_size(100_000, 100_000)
    assert 1 <= b and b * 100_000 <= 2**21


def test_blocked_gradient_memory_does_not_store_blocks():
    """Reverse mode over the blocked sum keeps O(n * block) temporaries, not O(n^2)."""
    n = 20_000
    x = jax.ShapeDtypeStruct((n, 3), jnp.float32)
    f = jax.jit(jax.grad(lambda x: pairwise.kernel_sum(km.Gaussian(1.0), x, x, block_size=100)))
    temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
    assert temp < n * n * 4 / 20, temp  # a dense n x n float32 would be 1.6 GB
