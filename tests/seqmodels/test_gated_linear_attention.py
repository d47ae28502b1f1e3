import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels.layers import gated_linear_attention, multihead_gated_linear_attention

MODES = ("recurrent", "parallel", "attention", "chunkwise")


def loop_reference(q, k, v, log_a):
    q, k, v, a = map(np.asarray, (q, k, v, jnp.exp(log_a)))
    h = np.zeros((k.shape[1], v.shape[1]), np.result_type(q, k, v, a))
    out = []
    for t in range(q.shape[0]):
        h = a[t][:, None] * h + np.outer(k[t], v[t])
        out.append(q[t] @ h)
    return np.stack(out)


def gla_inputs(key, length, complex_gates, *, strong=False, dtype=float):
    """q, k (L, 4), v (L, 3) and log gates (L, 4) of one head: gates in [0.6, 0.99], with
    `strong` a fifth of them e^-1000 (hard resets: the naive factorisation's e^{-cumsum}
    overflows after one, and a difference of cumulative sums would lose ulp(1000) ~ 6e-5 of
    every later decay in float32), with `complex_gates` rotating by a phase in [-1, 1]."""
    kq, kk, kv, ka, ks, kp = jax.random.split(key, 6)
    q = jax.random.normal(kq, (length, 4), dtype)
    k = jax.random.normal(kk, (length, 4), dtype)
    v = jax.random.normal(kv, (length, 3), dtype)
    log_a = jnp.log(jax.random.uniform(ka, (length, 4), dtype, minval=0.6, maxval=0.99))
    if strong:
        log_a = jnp.where(jax.random.bernoulli(ks, 0.2, (length, 4)), -1000.0, log_a)
    if complex_gates:
        phase = jax.random.uniform(kp, (length, 4), dtype, minval=-1, maxval=1)
        log_a = jax.lax.complex(log_a, phase)
    return q, k, v, log_a


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("complex_gates", [False, True])
def test_modes_match_the_recurrence(x64, getkey, mode, complex_gates):
    q, k, v, log_a = gla_inputs(getkey(), 29, complex_gates)
    got = gated_linear_attention(q, k, v, log_a, mode=mode, chunk_size=8)
    np.testing.assert_allclose(got, loop_reference(q, k, v, log_a), rtol=1e-10, atol=1e-10)


def test_gradients_agree_across_modes(x64, getkey):
    q, k, v, log_a = gla_inputs(getkey(), 9, True)

    def loss(mode):
        return lambda q, k, v, la: jnp.sum(
            jnp.abs(gated_linear_attention(q, k, v, la, mode=mode, chunk_size=4)) ** 2
        )

    ref = jax.jit(jax.grad(loss("recurrent"), argnums=(0, 1, 2, 3)))(q, k, v, log_a)
    for mode in ("attention", "chunkwise"):  # "parallel" differentiates through scan's VJP
        got = jax.jit(jax.grad(loss(mode), argnums=(0, 1, 2, 3)))(q, k, v, log_a)
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-8, atol=1e-10)


def test_multihead_is_heads_side_by_side(x64, getkey):
    heads = [gla_inputs(getkey(), 11, True) for _ in range(2)]
    q, k, v, log_a = (jnp.concatenate(parts, axis=1) for parts in zip(*heads, strict=True))
    got = multihead_gated_linear_attention(q, k, v, log_a, 2, mode="chunkwise", chunk_size=4)
    want = np.concatenate([loop_reference(*head) for head in heads], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="`v`"):
        multihead_gated_linear_attention(q, k, v[:, :5], log_a, 2)


def test_bad_mode():
    x = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="`mode`"):
        gated_linear_attention(x, x, x, x, mode="fast")


@pytest.mark.parametrize("layer_cls", ["GateLoop", "LinearAttention"])
def test_layer_modes_agree(getkey, layer_cls):
    """Gradients through the layers are checked in test_layers.py (SequenceModel)."""
    from seqmodels import layers

    layer = getattr(layers, layer_cls)(16, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (2, 24, 16))
    # jitted: eagerly, op by op, the scans cost far more than their compilation
    outs = {m: jax.jit(jax.vmap(lambda s, m=m: layer(s, mode=m, chunk_size=8)))(x) for m in MODES}
    for m in MODES[1:]:
        np.testing.assert_allclose(outs[m], outs["recurrent"], rtol=1e-5, atol=1e-5)
    assert outs["recurrent"].shape == x.shape


def test_a_form_function_is_accepted_as_mode(getkey):
    """`mode` names map to form functions; passing the function is the same."""
    from seqmodels._gla import recurrent_form

    q, k, v, log_a = gla_inputs(getkey(), 11, False)
    by_name = gated_linear_attention(q, k, v, log_a, mode="recurrent")
    by_form = gated_linear_attention(q, k, v, log_a, mode=recurrent_form)
    np.testing.assert_array_equal(by_form, by_name)
    with pytest.raises(ValueError, match="mode"):
        gated_linear_attention(q, k, v, log_a, mode="fast")
