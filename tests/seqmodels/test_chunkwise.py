"""The chunkwise form of gated linear attention, the layers' default (`seqmodels._gla`, Yang et
al., 2024): equal to the recurrence forward and backward, in float32 and float64, with complex
gates, ragged lengths and strong decays, in memory linear in L."""

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels.layers import GateLoop, LinearAttention, gated_linear_attention
from tests.seqmodels.test_gated_linear_attention import gla_inputs, loop_reference

# (L, chunk_size, complex gates, strong decays): L not a multiple of the chunk, with 3
# sub-chunks of 16 per chunk (blocks between non-adjacent sub-chunks), twice; a chunk of 8, its
# own sub-chunk; a chunk of 20, rounded up to 32; a chunk longer than L, cut to L.
CASES = [
    (101, 48, True, True),
    (101, 48, False, True),
    (37, 8, True, False),
    (45, 20, False, False),
    (13, 64, True, False),
]


def _close(got, want, tol):
    """Equal to `tol`, relative to each array's scale."""
    for g, w in zip(got, want, strict=True):
        scale = float(np.max(np.abs(w)))
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize(("length", "chunk_size", "complex_gates", "strong"), CASES)
def test_forward_equals_the_loop_in_float64(x64, getkey, length, chunk_size, complex_gates, strong):
    args = gla_inputs(getkey(), length, complex_gates, strong=strong, dtype=jnp.float64)
    form = jax.jit(lambda *a: gated_linear_attention(*a, mode="chunkwise", chunk_size=chunk_size))
    _close([form(*args)], [loop_reference(*args)], 1e-10)


def _loss(mode, chunk_size):
    def loss(q, k, v, log_a):
        y = gated_linear_attention(q, k, v, log_a, mode=mode, chunk_size=chunk_size)
        weights = jnp.cos(jnp.arange(y.size, dtype=jnp.real(y).dtype)).reshape(y.shape)
        return jnp.sum(jnp.real(y) * weights) + jnp.sum(jnp.abs(y) ** 2)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


# Each dtype with complex gates and strong decays, and with the other two: every pair of
# options (the suite is compile-bound).
@pytest.mark.parametrize(
    ("dtype", "tol", "complex_gates", "strong"),
    [
        (jnp.float32, 1e-5, True, True),
        (jnp.float32, 1e-5, False, False),
        (jnp.float64, 1e-10, True, True),
        (jnp.float64, 1e-10, False, True),
        (jnp.float64, 1e-10, True, False),
    ],
    ids=[
        "float32-complex-strong",
        "float32",
        "float64-complex-strong",
        "float64-strong",
        "float64-complex",
    ],
)
def test_value_and_gradients_equal_the_recurrence(getkey, dtype, tol, complex_gates, strong):
    with jax.enable_x64(dtype == jnp.float64):
        args = gla_inputs(getkey(), 101, complex_gates, strong=strong, dtype=dtype)
        value, grads = _loss("chunkwise", 48)(*args)
        ref_value, ref_grads = _loss("recurrent", 48)(*args)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
        _close([value, *grads], [ref_value, *ref_grads], tol)


def test_strong_decays_overflow_the_naive_factorisation(getkey):
    """The case the stabilised factorisation exists for: with gates of e^-1000 the naive
    (q e^{b}) (k e^{-b})^T is inf * 0 in float32 and float64, the chunkwise form is finite
    and equal to the recurrence (forward here, backward above)."""
    q, k, v, log_a = gla_inputs(getkey(), 101, True, strong=True)
    growth = jnp.exp(-jnp.cumsum(jnp.real(log_a[:48]), axis=0))
    assert not bool(jnp.all(jnp.isfinite(growth)))
    got = jax.jit(lambda *a: gated_linear_attention(*a, mode="chunkwise", chunk_size=48))(
        q, k, v, log_a
    )
    _close([got], [gated_linear_attention(q, k, v, log_a, mode="recurrent")], 1e-5)


@pytest.mark.parametrize(
    ("make", "dtype", "tol"),
    [
        (lambda key: GateLoop(8, num_heads=2, key=key), jnp.float32, 1e-5),
        (lambda key: GateLoop(8, num_heads=2, key=key), jnp.float64, 1e-10),
        (lambda key: LinearAttention(8, num_heads=2, key=key), jnp.float32, 1e-5),
    ],
    ids=["GateLoop-float32", "GateLoop-float64", "LinearAttention-float32"],
)
def test_layers_default_to_chunkwise_and_match_the_recurrence(getkey, make, dtype, tol):
    """Parameters' and input's gradients of the default mode against mode="recurrent"."""
    assert inspect.signature(type(make(getkey())).__call__).parameters["mode"].default == (
        "chunkwise"
    )
    with jax.enable_x64(dtype == jnp.float64):
        layer = make(getkey())
        x = jax.random.normal(getkey(), (45, 8), dtype)

        def grads(mode):
            loss = lambda m, x: jnp.sum(jnp.sin(m(x, chunk_size=32, **mode)))
            return eqx.filter_jit(eqx.filter_value_and_grad(loss))(layer, x)

        got = jax.tree.leaves(eqx.filter(grads({}), eqx.is_array))
        ref = grads({"mode": "recurrent"})
        want = jax.tree.leaves(eqx.filter(ref, eqx.is_array))
        assert got[0].dtype == dtype
        _close(got, want, tol)


def _planned_temp_bytes(length, d_model, mode):
    """XLA's planned temporary memory of forward+backward through one GateLoop layer (4 heads,
    complex gates), or None where the backend does not say."""
    layer = GateLoop(d_model, num_heads=4, key=jax.random.key(0))
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    loss = lambda p, x: jnp.sum(eqx.combine(p, static)(x, mode=mode) ** 2)
    x = jax.ShapeDtypeStruct((length, d_model), jnp.float32)
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
    analysis = compiled.memory_analysis()
    return None if analysis is None else analysis.temp_size_in_bytes


def test_forward_backward_memory_is_linear_in_length():
    """O(L d + (L / C) K V): at L = 1024, d = 64 (4 heads of K = V = 16, C = 64) the bound is
    24 complex (L, d) arrays (the layer keeps about a dozen for its backward pass: its
    projections, the heads' complex q, k, v, log_a, their cotangents) plus 4 copies of the
    chunk-boundary states. Measured on CPU: 8.6 MB, against 12.6 MB for the bound, 25 MB for
    `recurrent` (all L states, O(L K V)) and 176 MB for the former chunkwise form
    ((L / C, C, C, K) decays, O(L C K)); doubling L adds 1.6x."""
    length, d_model, heads, chunk = 1024, 64, 4, 64
    temp = _planned_temp_bytes(length, d_model, "chunkwise")
    if temp is None:
        pytest.skip("this backend gives no memory analysis")
    head_dim, complex_bytes = d_model // heads, 8
    states = (length // chunk) * heads * head_dim * head_dim * complex_bytes
    bound = 24 * length * d_model * complex_bytes + 4 * states
    assert temp < bound, (temp, bound)
    assert _planned_temp_bytes(2 * length, d_model, "chunkwise") < 2.2 * temp
