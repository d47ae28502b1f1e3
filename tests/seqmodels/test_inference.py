"""Recurrent inference: every layer's `step`, run token by token under `lax.scan` from
`init_state()`, equals its parallel call (the default mode), values and gradients with
respect to the parameters, in float32 (1e-5) and float64 (1e-10), complex gates and complex
SSM states included; states are O(1) in the sequence length."""

import inspect

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels import layers
from tests.seqmodels.test_trust import small_model

LENGTH = 11

# name: (make(key), input kind, init_state kwargs, call kwargs). The gated-linear-attention
# layers run their default chunkwise form with chunks of 4 (so 3 chunks, boundaries crossed).
CASES = {
    "GateLoop": (lambda k: layers.GateLoop(6, num_heads=2, key=k), {}, {"chunk_size": 4}),
    "LinearAttention": (
        lambda k: layers.LinearAttention(6, num_heads=2, key=k),
        {},
        {"chunk_size": 4},
    ),
    "LRU": (lambda k: layers.LRU(6, 5, r_min=0.5, r_max=0.95, key=k), {}, {}),
    "S5": (lambda k: layers.S5(6, 4, key=k), {}, {}),
    "CKConv": (lambda k: layers.CKConv(6, 3, hidden_size=8, kernel_size=5, key=k), {}, {}),
    "CKConv-whole-input": (
        lambda k: layers.CKConv(6, 3, hidden_size=8, key=k),
        {"length": LENGTH},
        {},
    ),
    "ShortConv": (lambda k: layers.ShortConv(6, 3, key=k), {}, {}),
    "SequenceModel": (
        lambda k: small_model(
            lambda d, key: layers.LRU(d, 4, key=key),  # GateLoop's step is checked above
            k,
            num_tokens=7,
            conv_width=3,
        ),
        {},
        {},
    ),
}


def _inputs(name, key, dtype):
    if name == "SequenceModel":
        return jax.random.randint(key, (LENGTH,), 0, 7)
    return jax.random.normal(key, (LENGTH, 6), dtype)


def _close(got, want, tol):
    """Equal to `tol`, relative to each array's scale."""
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        scale = float(np.max(np.abs(w))) if np.size(w) else 1.0
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol * scale)


@eqx.filter_jit
def _both_ways(layer, x, init_kwargs, call_kwargs):
    """(parallel output, token-by-token output, their parameter gradients) of one layer."""

    def stepwise(layer, x):
        step = lambda state, x_t: layer.step(state, x_t)
        return jax.lax.scan(step, layer.init_state(**init_kwargs), x)[1]

    def parallel(layer, x):
        return layer(x, **call_kwargs)

    def loss(run):
        def value(layer):
            y = run(layer, x)
            weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
            return jnp.sum(y * weights), y

        grads, y = eqx.filter_grad(value, has_aux=True)(layer)
        return y, eqx.filter(grads, eqx.is_inexact_array)

    return loss(parallel), loss(stepwise)


# float64 for every case; float32 where its rounding takes another path (the chunkwise
# form's, the FFT's): the other float32 cases run the float64 program's code, so they are
# in the slow suite (the suite is compile-bound).
_SLOW_FLOAT32 = {"LRU", "S5", "ShortConv", "CKConv-whole-input", "SequenceModel"}
PAIRS = [
    pytest.param(
        dtype,
        name,
        id=f"{dtype}-{name}",
        marks=[pytest.mark.slow] if dtype == "float32" and name in _SLOW_FLOAT32 else [],
    )
    for dtype in ("float32", "float64")
    for name in CASES
]


@pytest.mark.parametrize(("dtype", "name"), PAIRS)
def test_step_equals_the_parallel_call(getkey, name, dtype):
    make, init_kwargs, call_kwargs = CASES[name]
    with jax.enable_x64(dtype == "float64"):
        layer = make(getkey())
        x = _inputs(name, getkey(), dtype)
        (y, grads), (y_step, grads_step) = _both_ways(layer, x, init_kwargs, call_kwargs)
        assert y_step.dtype == y.dtype and y.shape[0] == LENGTH
        tol = 1e-5 if dtype == "float32" else 1e-10
        _close(y_step, y, tol)
        _close(grads_step, grads, tol)
        assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads))


def test_s5_step_with_step_scale(x64, getkey):
    layer = layers.S5(3, 4, key=getkey())
    u = jax.random.normal(getkey(), (LENGTH, 3), jnp.float64)
    scale = jax.random.uniform(getkey(), (LENGTH,), jnp.float64, minval=0.0, maxval=2.0)

    @eqx.filter_jit
    def run(layer, u, scale):
        step = lambda s, inputs: layer.step(s, inputs[0], step_scale=inputs[1])
        return layer(u, step_scale=scale), jax.lax.scan(step, layer.init_state(), (u, scale))[1]

    y, y_step = run(layer, u, scale)
    _close(y_step, y, 1e-10)


def test_states_are_constant_size_and_init_state_takes_no_arguments(getkey):
    sizes = {
        "GateLoop": [(2, 3, 3)],
        "LinearAttention": [(2, 3, 3)],
        "LRU": [(5,)],
        "S5": [(4,)],
        "CKConv": [(4, 6)],  # the last kernel_size - 1 inputs
        "ShortConv": [(2, 6)],  # the last width - 1 inputs
    }
    for name, shapes in sizes.items():
        layer = CASES[name][0](getkey())
        required = [
            p
            for p in inspect.signature(layer.init_state).parameters.values()
            if p.default is inspect.Parameter.empty
        ]
        assert not required, name
        state = layer.init_state()
        assert [s.shape for s in jax.tree.leaves(state)] == shapes, name
    state = layers.GateLoop(6, num_heads=2, key=getkey()).init_state()
    assert jnp.iscomplexobj(state) and state.dtype == jnp.complex64  # rotating gates
    assert layers.LRU(6, 5, key=getkey()).init_state().dtype == jnp.complex64
    # the model's state: per block, (short conv state, mixer state)
    model = CASES["SequenceModel"][0](getkey())
    shapes = [s.shape for s in jax.tree.leaves(model.init_state())]
    assert shapes == [(2, 8), (4,)]


def test_step_errors(getkey):
    whole = layers.CKConv(6, 3, key=getkey())
    with pytest.raises(ValueError, match=r"init_state\(length=L\)"):
        whole.init_state()
    layer = layers.GateLoop(6, num_heads=2, key=getkey())
    with pytest.raises(ValueError, match=r"GateLoop.step expected \(d_model,\).*`x_t`.*\(2, 6\)"):
        layer.step(layer.init_state(), jnp.ones((2, 6)))
    model = layers.SequenceModel(
        lambda d, key: eqx.nn.Identity(),
        d_model=4,
        num_layers=1,
        num_outputs=2,
        num_tokens=3,
        key=getkey(),
    )
    with pytest.raises(TypeError, match="Identity"):
        model.init_state()


def test_softmax_attention_step_and_a_full_cache(getkey):
    """SoftmaxAttention's step equals its call while the cache has room; a token beyond the
    cache's length gets a NaN output and leaves the cache as it was (it overwrote the last
    key and value, and returned finite outputs 0.07 and 0.28 away from the call's)."""
    layer = layers.SoftmaxAttention(8, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (5, 8))
    full = layer(x)
    state = layer.init_state(3)
    for t in range(3):
        state, y = layer.step(state, x[t])
        np.testing.assert_allclose(y, full[t], rtol=1e-5, atol=1e-6)
    cache = state
    for t in (3, 4):
        state, y = layer.step(state, x[t])
        assert bool(jnp.all(jnp.isnan(y)))
    for got, want in zip(state, cache, strict=True):
        np.testing.assert_array_equal(got, want)
