"""Array conventions: the equinox layers map one (L, d_model) sequence and refuse any other
rank with an error naming the argument and the expected shape; `linear_recurrence` takes its
time axis from `axis=` (batch-first arrays need axis=1). The flax adapters' batch-first
convention is tested in test_flax.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels import layers, linear_recurrence

# name: (make(key), argument name, width label)
LAYERS = {
    "GateLoop": (lambda k: layers.GateLoop(4, num_heads=2, key=k), "x", "d_model"),
    "LinearAttention": (lambda k: layers.LinearAttention(4, num_heads=2, key=k), "x", "d_model"),
    "LRU": (lambda k: layers.LRU(4, 3, key=k), "u", "d_model"),
    "S5": (lambda k: layers.S5(4, 2, key=k), "u", "d_model"),
    "CKConv": (lambda k: layers.CKConv(4, 2, key=k), "x", "in_channels"),
    "ShortConv": (lambda k: layers.ShortConv(4, key=k), "x", "d_model"),
    "SequenceModel": (
        lambda k: layers.SequenceModel(
            lambda d, key: layers.ShortConv(d, key=key),
            d_model=4,
            num_layers=1,
            num_outputs=2,
            input_dim=4,
            key=k,
        ),
        "x",
        "input_dim",
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_other_ranks_are_refused_naming_the_argument(getkey, name):
    make, argument, label = LAYERS[name]
    layer = make(getkey())
    for shape in [(2, 5, 4), (4,), (1, 2, 5, 4)]:
        with pytest.raises(ValueError) as info:
            layer(jnp.ones(shape))
        message = str(info.value)
        assert f"`{argument}`" in message and f"(L, {label}) = (L, 4)" in message, message
        assert str(shape) in message and f"rank {len(shape)}" in message, message
    # one step takes one token
    state = layer.init_state(**({"length": 3} if name == "CKConv" else {}))
    with pytest.raises(
        ValueError, match=rf"\.step expected \({label},\) = \(4,\) for `{argument}_t`"
    ):
        layer.step(state, jnp.ones((5, 4)))


@jax.jit
def _axis_cases(a, b, h0):
    """(axis=1, axis=-2, without axis, per-sequence reference; a time-invariant decay in
    reverse with axis=1 and its reference; the gradient through axis=1 and its reference)."""
    per_sequence = jax.vmap(lambda a, b, h0: linear_recurrence(a, b, h0))(a, b, h0)
    decay = jnp.array([0.9, 0.5])
    rev = linear_recurrence(decay, b, reverse=True, axis=1)
    rev_ref = jax.vmap(lambda b: linear_recurrence(decay, b, reverse=True))(b)
    grad = jax.grad(lambda b: jnp.sum(linear_recurrence(a, b, axis=1) ** 2))(b)
    grad_ref = jax.grad(lambda b: jnp.sum(jax.vmap(linear_recurrence)(a, b) ** 2))(b)
    return (
        linear_recurrence(a, b, h0, axis=1),
        linear_recurrence(a, b, h0, axis=-2),
        linear_recurrence(a, b),
        per_sequence,
        (rev, rev_ref),
        (grad, grad_ref),
    )


def test_linear_recurrence_axis_chooses_the_time_axis(getkey):
    a = jax.random.uniform(getkey(), (3, 9, 2), minval=0.5, maxval=1.0)  # (B, L, D)
    b = jax.random.normal(getkey(), (3, 9, 2))
    h0 = jax.random.normal(getkey(), (3, 2))
    axis1, axis_neg, wrong, want, reverse, grads = _axis_cases(a, b, h0)
    np.testing.assert_allclose(axis1, want, rtol=1e-6)
    np.testing.assert_allclose(axis_neg, want, rtol=1e-6)
    # without axis=, a batch-first array is run along its batch axis: shapes fit, values not
    assert wrong.shape == b.shape and not np.allclose(wrong[:, -1], want[:, -1])
    # a time-invariant decay (D,) broadcasts as always; reverse and gradients follow the axis
    np.testing.assert_allclose(*reverse, rtol=1e-6)
    np.testing.assert_allclose(*grads, rtol=1e-5)


def test_linear_recurrence_axis_for_matrix_transitions_and_errors(getkey):
    a = 0.3 * jax.random.normal(getkey(), (2, 7, 3, 3))  # (B, L, D, D)
    b = jax.random.normal(getkey(), (2, 7, 3))
    want = jax.vmap(linear_recurrence)(a, b)
    np.testing.assert_allclose(linear_recurrence(a, b, axis=1), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`axis`"):
        linear_recurrence(a, b, axis=2)  # the state axis
    with pytest.raises(ValueError, match="`axis`"):
        linear_recurrence(b, b, axis=3)
