import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels.layers import (
    LRU,
    S5,
    CKConv,
    GateLoop,
    LinearAttention,
    SequenceModel,
    causal_fft_conv,
)


def test_fft_convolution_equals_direct(getkey):
    x = jax.random.normal(getkey(), (37, 3))
    kernel = jax.random.normal(getkey(), (37, 2, 3))
    direct = np.zeros((37, 2))
    xn, kn = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    for t in range(37):
        for s in range(t + 1):
            direct[t] += kn[s] @ xn[t - s]
    np.testing.assert_allclose(causal_fft_conv(x, kernel), direct, rtol=1e-5, atol=1e-5)


def test_ckconv_is_causal_and_generates_its_kernel(getkey):
    layer = CKConv(3, 4, key=getkey())
    assert layer.kernel(10).shape == (10, 4, 3)
    x = jax.random.normal(getkey(), (20, 3))
    y = layer(x)
    # changing the future never changes the past
    y2 = layer(x.at[15:].set(0.0))
    np.testing.assert_allclose(y[:15], y2[:15], rtol=1e-5, atol=1e-6)
    assert not np.allclose(y[15:], y2[15:])


MIXERS = {
    "gateloop": lambda d, key: GateLoop(d, num_heads=2, key=key),
    "linear_attention": lambda d, key: LinearAttention(d, num_heads=2, key=key),
    "lru": lambda d, key: LRU(d, 8, r_min=0.5, r_max=0.99, key=key),
    "s5": lambda d, key: S5(d, 8, key=key),
    "ckconv": lambda d, key: CKConv(d, d, key=key),
}


# Every mixer has its own tests; two of them (one recurrent-attention, one SSM) check the
# stack in the default suite and the rest run with -m slow (suite time, compile-bound).
_SLOW_MIXERS = {"linear_attention", "lru", "ckconv"}


@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in _SLOW_MIXERS else m for m in MIXERS]
)
def test_sequence_model_takes_any_mixer(getkey, name):
    model = SequenceModel(
        MIXERS[name], d_model=8, num_layers=2, num_outputs=5, num_tokens=11, key=getkey()
    )
    tokens = jax.random.randint(getkey(), (2, 16), 0, 11)
    logits = eqx.filter_jit(lambda m, t: jax.vmap(m)(t))(model, tokens)  # eager: op by op, slow
    assert logits.shape == (2, 16, 5)

    @eqx.filter_jit
    @eqx.filter_value_and_grad
    def loss(m, tokens):
        return jnp.mean(jax.nn.log_softmax(jax.vmap(m)(tokens))[..., 0])

    value, grads = loss(model, tokens)
    assert bool(jnp.isfinite(value))
    assert all(
        bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    )


def test_sequence_model_input_checks(getkey):
    with pytest.raises(ValueError, match="num_tokens"):
        SequenceModel(MIXERS["lru"], d_model=4, num_layers=1, num_outputs=2, key=getkey())


def test_short_conv_is_a_causal_depthwise_convolution(getkey):
    from seqmodels.layers import ShortConv

    conv = ShortConv(5, 3, key=getkey())
    x = np.asarray(jax.random.normal(getkey(), (9, 5)))
    w = np.asarray(conv.weight)
    expected = np.stack([sum(w[j] * x[t - j] for j in range(3) if t - j >= 0) for t in range(9)])
    np.testing.assert_allclose(eqx.filter_jit(lambda c, x: c(x))(conv, x), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="width"):
        ShortConv(5, 0, key=getkey())
    with pytest.raises(ValueError, match="conv_width"):
        SequenceModel(
            lambda d, key: ShortConv(d, key=key),
            d_model=4,
            num_layers=1,
            num_outputs=2,
            num_tokens=3,
            conv_width=-1,
            key=getkey(),
        )
