"""linear_recurrence against a Python loop; gradients against finite differences."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from seqmodels import linear_recurrence
from tests.gradcheck import check_grads

METHODS = ["sequential", "associative", "chunked", "auto"]


def loop_reference(a, b, h0, reverse=False, matrix=False):
    a, b = np.asarray(a), np.asarray(b)
    a = a if matrix else np.broadcast_to(a, b.shape)
    h = np.zeros(b.shape[1:], np.result_type(a, b)) if h0 is None else np.asarray(h0)
    out = np.zeros(b.shape, np.result_type(a, b, h))
    order = range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0])
    for t in order:
        h = (np.einsum("...ij,...j->...i", a[t], h) if matrix else a[t] * h) + b[t]
        out[t] = h
    return out


def _inputs(key, shape, complex_, dtype):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    a = jax.random.uniform(k1, shape, dtype, 0.5, 0.99)
    b = jax.random.normal(k2, shape, dtype)
    h0 = jax.random.normal(k3, shape[1:], dtype)
    if complex_:
        phase = jax.random.uniform(k4, shape, dtype, -np.pi, np.pi)
        a = jax.lax.complex(a * jnp.cos(phase), a * jnp.sin(phase))
        b = jax.lax.complex(b, jax.random.normal(k4, shape, dtype))
        h0 = jax.lax.complex(h0, 0.5 * h0)
    return a, b, h0


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("complex_", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_python_loop_float64(x64, getkey, method, complex_, reverse, with_h0):
    a, b, h0 = _inputs(getkey(), (37, 3, 2), complex_, jnp.float64)
    h0 = h0 if with_h0 else None
    got = linear_recurrence(a, b, h0, method=method, reverse=reverse, chunk_size=5)
    ref = loop_reference(a, b, h0, reverse)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_", [False, True])
def test_matches_python_loop_float32(getkey, method, complex_):
    a, b, h0 = _inputs(getkey(), (300, 4), complex_, jnp.float32)
    for reverse in (False, True):
        got = linear_recurrence(a, b, h0, method=method, reverse=reverse)
        assert got.dtype == (jnp.complex64 if complex_ else jnp.float32)
        ref = loop_reference(
            np.asarray(a, np.complex128 if complex_ else np.float64),
            np.asarray(b, np.complex128 if complex_ else np.float64),
            np.asarray(h0, np.complex128 if complex_ else np.float64),
            reverse,
        )
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
def test_matrix_transitions(x64, getkey, method):
    k1, k2, k3 = jax.random.split(getkey(), 3)
    a = 0.3 * jax.random.normal(k1, (23, 2, 3, 3))
    b = jax.random.normal(k2, (23, 2, 3))
    h0 = jax.random.normal(k3, (2, 3))
    for reverse in (False, True):
        got = linear_recurrence(a, b, h0, method=method, reverse=reverse, chunk_size=4)
        ref = loop_reference(a, b, h0, reverse, matrix=True)
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)


def test_broadcast_transitions(x64, getkey):
    a = jax.random.uniform(getkey(), (40, 1, 3), minval=0.5, maxval=1.0)
    b = jax.random.normal(getkey(), (40, 5, 3))
    for method in METHODS:
        got = linear_recurrence(a, b, method=method, chunk_size=7)
        np.testing.assert_allclose(got, loop_reference(a, b, None), rtol=1e-10)
    decay = jnp.array([0.9, 0.5, 0.1])  # time-invariant
    np.testing.assert_allclose(
        linear_recurrence(decay, b),
        loop_reference(np.broadcast_to(decay, b.shape), b, None),
        rtol=1e-10,
    )


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("complex_", [False, True])
def test_gradients_pass_finite_differences(x64, getkey, method, complex_):
    a, b, h0 = _inputs(getkey(), (11, 2), complex_, jnp.float64)
    w = jax.random.normal(getkey(), (11, 2))

    def loss(a, b, h0):
        h = linear_recurrence(a, b, h0, method=method, chunk_size=3)
        return jnp.sum(jnp.abs(h * w.astype(h.dtype)) ** 2)

    check_grads(loss, (a, b, h0), order=1, modes=["rev"])
    check_grads(
        lambda a, b, h0: jnp.sum(
            jnp.abs(linear_recurrence(a, b, h0, method=method, reverse=True)) ** 2
        ),
        (a, b, h0),
        order=1,
        modes=["rev"],
    )


@pytest.mark.parametrize("method", ["sequential", "associative", "chunked"])
@pytest.mark.parametrize("complex_", [False, True])
def test_gradient_at_length_300_forward_and_reverse(x64, getkey, method, complex_):
    """L = 300 takes the radix-8 tree through three levels and padding, and the chunked solver
    through 19 chunks of 16 with padding. Forward: gradients equal the sequential solver's.
    Reverse (solved backwards natively, the adjoint forwards): equal to autodiff of the
    forward sequential solver on the flipped sequence, to 1e-10."""
    a, b, h0 = _inputs(getkey(), (300, 3), complex_, jnp.float64)
    w = jax.random.normal(getkey(), (300, 3))

    def grads(solve):
        def loss(a, b, h0):
            h = solve(a, b, h0)
            return jnp.sum(jnp.abs(h * w.astype(h.dtype)) ** 2)

        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(a, b, h0)

    def flipped(a, b, h0):
        return jnp.flip(
            linear_recurrence(jnp.flip(a, 0), jnp.flip(b, 0), h0, method="sequential"), 0
        )

    pairs = [
        (
            grads(lambda *x: linear_recurrence(*x, method=method)),
            grads(lambda *x: linear_recurrence(*x, method="sequential")),
        ),
        (grads(lambda *x: linear_recurrence(*x, method=method, reverse=True)), grads(flipped)),
    ]
    for got_all, want_all in pairs:
        for got, want in zip(got_all, want_all, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_matrix_gradients_pass_finite_differences(x64, getkey):
    a = 0.3 * jax.random.normal(getkey(), (9, 3, 3))
    b = jax.random.normal(getkey(), (9, 3))
    h0 = jax.random.normal(getkey(), (3,))
    for method in ("sequential", "chunked"):
        f = lambda a, b, h0, method=method: jnp.sum(
            jnp.sin(linear_recurrence(a, b, h0, method=method, chunk_size=2))
        )
        check_grads(f, (a, b, h0), order=1, modes=["rev"])


def test_gradient_is_analytic_not_through_the_scan(getkey):
    """The backward pass is one more recurrence: two scans in all. The forward one stacks only
    the states and the backward one only the adjoint (grad a is formed after it; autodiff
    through a scan would stack per-step residuals as extra outputs)."""
    a, b, h0 = _inputs(getkey(), (64, 4), False, jnp.float32)
    jaxpr = jax.make_jaxpr(jax.grad(lambda b: jnp.sum(linear_recurrence(a, b, h0))))(b)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == 2
    stacked = sorted(sum(v.aval.shape[:1] == (64,) for v in e.outvars) for e in scans)
    assert stacked == [1, 1], stacked


def test_jit_vmap_grad_compose(getkey):
    a, b, _ = _inputs(getkey(), (6, 50, 3), False, jnp.float32)  # batch of 6 sequences
    h0 = jax.random.normal(getkey(), (6, 3))
    f = jax.jit(jax.vmap(lambda a, b, h0: linear_recurrence(a, b, h0, method="chunked")))
    got = f(a, b, h0)
    for i in range(6):
        np.testing.assert_allclose(got[i], loop_reference(a[i], b[i], h0[i]), rtol=1e-5, atol=1e-5)
    g = jax.vmap(jax.grad(lambda b: jnp.sum(linear_recurrence(a[0], b))))(b)
    assert g.shape == b.shape


def test_bad_input():
    b = jnp.ones((5, 3))
    with pytest.raises(ValueError, match="`method`"):
        linear_recurrence(b, b, method="fast")
    with pytest.raises(ValueError, match="`a`"):
        linear_recurrence(jnp.ones((5, 4)), b)
    with pytest.raises(ValueError, match="`h0`"):
        linear_recurrence(b, b, jnp.ones(4))
    with pytest.raises(ValueError, match="`chunk_size`"):
        linear_recurrence(b, b, method="chunked", chunk_size=0)
    with pytest.raises(ValueError, match="matrix"):
        linear_recurrence(jnp.ones((5, 3, 2)), b)


def test_a_solver_object_is_the_method_its_name_maps_to(getkey):
    """`method` names are mapped once to `Solver` objects; passing the object is the same."""
    from seqmodels._solvers import Chunked

    a, b, h0 = _inputs(getkey(), (37, 3), False, jnp.float32)
    by_name = linear_recurrence(a, b, h0, method="chunked", chunk_size=5)
    by_object = linear_recurrence(a, b, h0, method=Chunked(5))
    np.testing.assert_array_equal(by_object, by_name)
    with pytest.raises(ValueError, match="method"):
        linear_recurrence(a, b, h0, method="fast")


class TestWithAndWithoutJit(chex.TestCase):
    """Every solver gives the same states run op by op and compiled."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters("sequential", "associative", "chunked")
    def test_solvers(self, method):
        a, b, h0 = _inputs(jax.random.key(3), (23, 2), False, jnp.float32)
        solve = self.variant(lambda a, b, h0: linear_recurrence(a, b, h0, method=method))
        np.testing.assert_allclose(solve(a, b, h0), loop_reference(a, b, h0), rtol=1e-5, atol=1e-5)
