"""Sequence parallelism on simulated CPU devices (conftest asks for 8): the sharded solvers
against the single-device ones, forward and backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqmodels import linear_recurrence
from seqmodels.layers import gated_linear_attention
from seqmodels.parallel import gated_linear_attention_sharded, linear_recurrence_sharded


def _mesh(n, name="seq"):
    if len(jax.devices()) < n:
        pytest.skip(f"needs {n} devices")
    return jax.make_mesh((n,), (name,), devices=jax.devices()[:n])


def _close(x, y, tol=1e-6):
    # float32: relative to the size of the values
    np.testing.assert_allclose(x, y, atol=tol * (1.0 + float(jnp.max(jnp.abs(y)))), rtol=tol)


@pytest.mark.parametrize("devices", [2, 4, 8])
def test_elementwise_forward_and_backward(devices, getkey):
    mesh = _mesh(devices)
    length = 96
    a = jax.random.uniform(getkey(), (length, 3, 5), minval=0.5, maxval=1.0)
    b = jax.random.normal(getkey(), (length, 3, 5))
    h0 = jax.random.normal(getkey(), (3, 5))
    g = jax.random.normal(getkey(), (length, 3, 5))
    sharded = jax.jit(lambda a, b, h0: linear_recurrence_sharded(a, b, h0, mesh=mesh))
    _close(sharded(a, b, h0), linear_recurrence(a, b, h0))

    def loss(fn):
        return lambda a, b, h0: jnp.sum(g * fn(a, b, h0))

    grads = jax.jit(jax.grad(loss(lambda *x: linear_recurrence_sharded(*x, mesh=mesh)), (0, 1, 2)))
    ref = jax.grad(loss(linear_recurrence), (0, 1, 2))(a, b, h0)
    for got, want in zip(grads(a, b, h0), ref, strict=True):
        _close(got, want)


def test_matrix_transitions_and_complex(getkey):
    mesh = _mesh(4)
    a = 0.4 * jax.random.normal(getkey(), (64, 3, 3))
    b = jax.random.normal(getkey(), (64, 3))
    _close(linear_recurrence_sharded(a, b, mesh=mesh), linear_recurrence(a, b))
    ac = jax.lax.complex(a[:, 0] * 0.5, a[:, 1] * 0.5)
    bc = jax.lax.complex(b, -b)
    _close(linear_recurrence_sharded(ac, bc, mesh=mesh), linear_recurrence(ac, bc))


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_mesh_with_another_axis(axis_type, getkey):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    kind = getattr(jax.sharding.AxisType, axis_type)
    mesh = jax.make_mesh((2, 4), ("data", "seq"), axis_types=(kind, kind))
    a = jax.random.uniform(getkey(), (32, 6), minval=0.5, maxval=1.0)
    b = jax.random.normal(getkey(), (32, 6))
    _close(linear_recurrence_sharded(a, b, mesh=mesh), linear_recurrence(a, b))


@pytest.mark.parametrize("devices", [2, 8])
def test_gated_linear_attention_sharded(devices, getkey):
    mesh = _mesh(devices)
    length, kdim, vdim = 64, 4, 3
    q = jax.random.normal(getkey(), (length, kdim))
    k = jax.random.normal(getkey(), (length, kdim))
    v = jax.random.normal(getkey(), (length, vdim))
    log_a = jax.lax.complex(
        jax.nn.log_sigmoid(jax.random.normal(getkey(), (length, kdim)) + 2.0),
        0.3 * jax.random.normal(getkey(), (length, kdim)),
    )
    fn = lambda q, k, v: gated_linear_attention_sharded(q, k, v, log_a, mesh=mesh, chunk_size=4)
    ref = lambda q, k, v: gated_linear_attention(q, k, v, log_a, mode="recurrent")
    _close(jax.jit(fn)(q, k, v), ref(q, k, v), 1e-5)
    loss = lambda f: lambda *x: jnp.sum(jnp.real(f(*x)) ** 2)
    for got, want in zip(
        jax.jit(jax.grad(loss(fn), (0, 1, 2)))(q, k, v),
        jax.grad(loss(ref), (0, 1, 2))(q, k, v),
        strict=True,
    ):
        _close(got, want, 1e-5)


def test_bad_input(getkey):
    mesh = _mesh(2)
    a = jnp.ones((8, 2))
    with pytest.raises(ValueError, match="axis_name"):
        linear_recurrence_sharded(a, a, mesh=mesh, axis_name="time")
    with pytest.raises(ValueError, match="method"):
        linear_recurrence_sharded(a, a, mesh=mesh, method="fast")
    with pytest.raises(ValueError, match="broadcast"):
        linear_recurrence_sharded(jnp.ones((8, 3)), a, mesh=mesh)
    with pytest.raises(ValueError, match="multiple"):
        linear_recurrence_sharded(jnp.ones((7, 2)), jnp.ones((7, 2)), mesh=mesh)
    with pytest.raises(ValueError, match="multiple"):
        x = jnp.ones((7, 2))
        gated_linear_attention_sharded(x, x, x, x, mesh=mesh)


@pytest.mark.parametrize("layer_name", ["GateLoop"])  # LinearAttention shares the same path
def test_sharded_layers_equal_single_device(layer_name, getkey):
    from seqmodels import layers

    mesh = _mesh(4)
    layer = getattr(layers, layer_name)(16, num_heads=2, key=getkey())
    x = jax.random.normal(getkey(), (64, 16))
    _close(
        jax.jit(lambda x: layer(x, mesh=mesh, chunk_size=8))(x), layer(x, mode="recurrent"), 1e-5
    )
    grad = lambda **kw: jax.grad(lambda x: jnp.sum(layer(x, **kw) ** 2))
    _close(jax.jit(grad(mesh=mesh, chunk_size=8))(x), grad(mode="recurrent")(x), 1e-5)


def test_grad_eagerly_and_under_jit_with_an_explicit_mesh(getkey):
    """`jax.make_mesh` gives explicit axes; `jax.grad` run eagerly (as in a notebook) used to
    fail outside `jax.set_mesh` ("Length of device assignment 1 is not equal to the size of
    the mesh 2"). Eager and jitted gradients, in the mesh context or not, equal the
    single-device ones."""
    mesh = _mesh(2)
    assert mesh.axis_types == (jax.sharding.AxisType.Explicit,)
    a = jax.random.uniform(getkey(), (16, 3), minval=0.5, maxval=1.0)
    b = jax.random.normal(getkey(), (16, 3))
    h0 = jax.random.normal(getkey(), (3,))
    g = jax.random.normal(getkey(), (16, 3))

    def loss(fn):
        return lambda a, b, h0: jnp.sum(g * fn(a, b, h0))

    sharded = lambda *x: linear_recurrence_sharded(*x, mesh=mesh)
    grad = jax.grad(loss(sharded), (0, 1, 2))
    want = jax.grad(loss(linear_recurrence), (0, 1, 2))(a, b, h0)
    _close(sharded(a, b, h0), linear_recurrence(a, b, h0))
    for got_all in (grad(a, b, h0), jax.jit(grad)(a, b, h0)):
        for got, ref in zip(got_all, want, strict=True):
            _close(got, ref)
    with jax.set_mesh(mesh):  # as before: in the mesh context, eagerly
        for got, ref in zip(grad(a, b, h0), want, strict=True):
            _close(got, ref)


def test_low_precision_sharded_solves_in_float32(getkey):
    """float16 / bfloat16: chunk summaries and their exchange in float32, rounded once; equal
    to the float32 solution of the same values to the output precision."""
    mesh, dtype = _mesh(4), jnp.bfloat16
    a = jax.random.uniform(getkey(), (256, 3), minval=0.95, maxval=1.0).astype(dtype)
    b = jax.random.normal(getkey(), (256, 3)).astype(dtype)
    got = jax.jit(lambda a, b: linear_recurrence_sharded(a, b, mesh=mesh))(a, b)
    assert got.dtype == dtype
    want = linear_recurrence(a.astype(jnp.float32), b.astype(jnp.float32))
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(
        np.asarray(got, np.float32), want, rtol=eps, atol=1e-5 * float(jnp.max(jnp.abs(want)))
    )
    # the gradient too: the adjoint recurrence runs in float32 and is rounded once
    w = jax.random.normal(getkey(), b.shape).astype(dtype)
    grad = jax.jit(jax.grad(lambda a, b: jnp.sum(w * linear_recurrence_sharded(a, b, mesh=mesh))))
    got_grad = grad(a, b)
    assert got_grad.dtype == dtype
    want_grad = jax.grad(lambda a, b: jnp.sum(w.astype(jnp.float32) * linear_recurrence(a, b)))(
        a.astype(jnp.float32), b.astype(jnp.float32)
    )
    np.testing.assert_allclose(
        np.asarray(got_grad, np.float32),
        want_grad,
        rtol=eps,
        atol=1e-5 * float(jnp.max(jnp.abs(want_grad))),
    )
    q, k, v = (jax.random.normal(getkey(), (64, 4)).astype(dtype) for _ in range(3))
    log_a = jax.nn.log_sigmoid(jax.random.normal(getkey(), (64, 4)) + 3.0).astype(dtype)
    y = jax.jit(lambda *x: gated_linear_attention_sharded(*x, mesh=mesh, chunk_size=64))(
        q, k, v, log_a
    )
    assert y.dtype == dtype
    ref = gated_linear_attention(*(x.astype(jnp.float32) for x in (q, k, v, log_a)))
    scale = float(jnp.max(jnp.abs(ref)))
    np.testing.assert_allclose(np.asarray(y, np.float32), ref, rtol=1e-2, atol=1e-2 * scale)
    with pytest.raises(ValueError, match="`chunk_size`"):
        gated_linear_attention_sharded(q, k, v, log_a, mesh=mesh, chunk_size=0)
