"""Mixed precision in the layers (flax's `dtype` and `param_dtype`): bfloat16 weights and
inputs computed with `dtype=bfloat16` are within 1e-2 of float32 on the same values, states
and decays stay float32, and parameters are created in `param_dtype`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels import layers
from seqmodels.layers._common import cast
from tests.seqmodels.test_trust import small_model

BF16 = jnp.bfloat16

# name: make(key, **dtypes), input shape
MAKERS = {
    "GateLoop": (lambda k, **d: layers.GateLoop(8, num_heads=2, key=k, **d), (24, 8)),
    "LinearAttention": (lambda k, **d: layers.LinearAttention(8, num_heads=2, key=k, **d), (24, 8)),
    "LRU": (lambda k, **d: layers.LRU(8, 6, key=k, **d), (24, 8)),
    "S5": (lambda k, **d: layers.S5(8, 6, key=k, **d), (24, 8)),
    "CKConv": (lambda k, **d: layers.CKConv(8, 4, hidden_size=8, key=k, **d), (24, 8)),
    "ShortConv": (lambda k, **d: layers.ShortConv(8, key=k, **d), (24, 8)),
    "SequenceModel": (
        lambda k, **d: small_model(
            lambda dm, key: layers.LRU(dm, 4, key=key, **d),  # GateLoop's bfloat16: above
            k,
            input_dim=5,
            conv_width=3,
            **d,
        ),
        (24, 5),
    ),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_bfloat16_layer_against_float32_on_the_same_values(getkey, name):
    """A layer with bfloat16 weights computing in bfloat16 (`dtype`) against the float32
    layer holding the same (bfloat16-rounded) weights, on the same inputs: relative 1e-2."""
    make, shape = MAKERS[name]
    key = getkey()
    low = make(key, dtype=BF16, param_dtype=BF16)
    ref = cast(make(key, param_dtype=BF16), jnp.float32)  # dtype None: computes in float32
    real = [x for x in jax.tree.leaves(eqx.filter(low, eqx.is_inexact_array))]
    assert real and all(x.dtype in (BF16, jnp.complex64) for x in real), name
    x = jax.random.normal(getkey(), shape).astype(BF16)
    call = eqx.filter_jit(lambda layer, x: layer(x))
    got, want = call(low, x), call(ref, x.astype(jnp.float32))
    assert got.dtype == BF16 and want.dtype == jnp.float32, name
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(
        np.asarray(got.astype(jnp.float32)), want, rtol=1e-2, atol=1e-2 * scale, err_msg=name
    )
    # the recurrent state accumulates in float32 (complex64) whatever the dtype
    for leaf in jax.tree.leaves(low.init_state(**({"length": 4} if name == "CKConv" else {}))):
        assert leaf.dtype in (jnp.float32, jnp.complex64), name


def test_bfloat16_step_keeps_a_float32_state(getkey):
    layer = layers.GateLoop(8, num_heads=2, dtype=BF16, param_dtype=BF16, key=getkey())
    x = jax.random.normal(getkey(), (24, 8)).astype(BF16)

    @eqx.filter_jit
    def run(layer, x):
        state, ys = jax.lax.scan(lambda s, x_t: layer.step(s, x_t), layer.init_state(), x)
        return state, ys, layer(x)

    state, ys, y = run(layer, x)
    assert state.dtype == jnp.complex64 and ys.dtype == BF16
    scale = float(jnp.max(jnp.abs(y.astype(jnp.float32))))
    np.testing.assert_allclose(
        np.asarray(ys.astype(jnp.float32)),
        np.asarray(y.astype(jnp.float32)),
        atol=2e-2 * scale,
    )


def test_param_dtype_and_dtype_choices(getkey):
    lru = layers.LRU(4, 3, param_dtype=BF16, key=getkey())
    assert lru.nu_log.dtype == BF16 and lru.b.dtype == jnp.complex64  # no bfloat16 complex
    gate = layers.GateLoop(4, num_heads=2, param_dtype=BF16, key=getkey())
    assert {x.dtype for x in jax.tree.leaves(eqx.filter(gate, eqx.is_array))} == {jnp.dtype(BF16)}
    x = jnp.ones((3, 4))
    # dtype None: float32 inputs with bfloat16 weights compute in float32 and return float32
    assert gate(x).dtype == jnp.float32
    assert layers.GateLoop(4, num_heads=2, dtype=BF16, key=getkey())(x).dtype == BF16
    with jax.enable_x64(True):  # (complex128 states: test_inference's float64 cases)
        conv = layers.ShortConv(4, param_dtype=jnp.float64, key=getkey())
        assert conv.weight.dtype == jnp.float64 and conv.init_state().dtype == jnp.float64
    for bad in ("int32", jnp.complex64, "nonsense"):
        with pytest.raises(ValueError, match="`dtype`"):
            layers.ShortConv(4, dtype=bad, key=getkey())
        with pytest.raises(ValueError, match="`param_dtype`"):
            layers.LRU(4, 3, param_dtype=bad, key=getkey())
