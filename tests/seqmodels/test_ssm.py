import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad_vec

from seqmodels.layers import LRU, S5


@eqx.filter_jit
def apply(layer, u, **kwargs):
    """The layer's call, compiled (eager calls dispatch every primitive one by one)."""
    return layer(u, **kwargs)


def loop(lam, bu):
    x = np.zeros(bu.shape[1], complex)
    out = []
    for t in range(bu.shape[0]):
        x = (lam[t] if lam.ndim == 2 else lam) * x + bu[t]
        out.append(x)
    return np.stack(out)


def test_lru_matches_its_equations(getkey):
    layer = LRU(3, 5, r_min=0.4, r_max=0.9, key=getkey())
    lam = np.asarray(layer.eigenvalues())
    assert np.all((np.abs(lam) >= 0.4 - 1e-6) & (np.abs(lam) <= 0.9 + 1e-6))
    np.testing.assert_allclose(
        np.exp(np.asarray(layer.gamma_log)), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-5
    )
    u = jax.random.normal(getkey(), (30, 3))
    un = np.asarray(u, np.float64)
    bu = un @ np.asarray(layer.b).T * np.exp(np.asarray(layer.gamma_log))
    expected = np.real(loop(lam, bu) @ np.asarray(layer.c).T) + np.asarray(layer.d) * un
    for method in ("sequential", "associative", "chunked"):
        np.testing.assert_allclose(apply(layer, u, method=method), expected, rtol=1e-4, atol=1e-4)


def test_s5_zero_order_hold(x64, getkey):
    layer = S5(2, 4, key=getkey())
    lam = -np.exp(np.asarray(layer.lambda_re_log)) + 1j * np.asarray(layer.lambda_im)
    step = np.exp(np.asarray(layer.log_step))
    lam_bar, b_bar = eqx.filter_jit(lambda m: m.discretise())(layer)
    np.testing.assert_allclose(lam_bar, np.exp(lam * step), rtol=1e-10)
    # B_bar = int_0^Delta exp(Lambda s) ds B
    for p in range(4):
        exact = quad_vec(lambda s, p=p: np.exp(lam[p] * s), 0, step[p], epsabs=1e-14)[0]
        np.testing.assert_allclose(b_bar[p], exact * np.asarray(layer.b)[p], rtol=1e-8)
    u = jax.random.normal(getkey(), (25, 2))
    scale = jax.random.uniform(getkey(), (25,), minval=0.5, maxval=2.0)
    lam_t, b_t = eqx.filter_jit(lambda m, s: m.discretise(s))(layer, scale)
    bu = np.einsum("tph,th->tp", np.asarray(b_t), np.asarray(u))
    expected = np.real(loop(np.asarray(lam_t), bu) @ np.asarray(layer.c).T) + np.asarray(
        layer.d
    ) * np.asarray(u)
    np.testing.assert_allclose(apply(layer, u, step_scale=scale), expected, rtol=1e-10)
    constant = apply(layer, u, step_scale=jnp.ones(25))
    np.testing.assert_allclose(constant, apply(layer, u), rtol=1e-10)


@pytest.mark.parametrize("cls", [LRU, S5])
def test_ssm_layers_compose(getkey, cls):
    layer = cls(4, 6, key=getkey())
    x = jax.random.normal(getkey(), (3, 20, 4))
    grads = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2)))(layer)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)


def test_hippo_n_is_diagonalised_exactly(x64):
    from seqmodels.layers import hippo_n

    legs = lambda n, k: -np.sqrt((2 * n + 1) * (2 * k + 1)) if n > k else -(n + 1.0) * (n == k)
    size = 6
    a_legs = np.array([[legs(n, k) for k in range(size)] for n in range(size)])
    p = np.sqrt(np.arange(size) + 0.5)
    a_n, lam, v = hippo_n(size)
    np.testing.assert_allclose(a_n, a_legs + np.outer(p, p), atol=1e-12)
    np.testing.assert_allclose(v @ v.conj().T, np.eye(size), atol=1e-12)
    np.testing.assert_allclose(v @ np.diag(lam) @ v.conj().T, a_n, atol=1e-10)
    np.testing.assert_allclose(lam.real, -0.5, atol=1e-12)


def test_s5_hippo_init_equals_the_dense_system(x64, getkey):
    """With one timescale for every state, the diagonal S5 layer (HiPPO-N init, two blocks)
    is the dense system x' = blockdiag(A_N, A_N) x + B u, y = Re(C x) + D u discretised by ZOH,
    with B = V b real (b = V^H B) and C = c V^H."""
    from scipy.linalg import block_diag, expm

    from seqmodels.layers import hippo_n

    layer = S5(3, 8, blocks=2, key=getkey())
    layer = eqx.tree_at(lambda m: m.log_step, layer, jnp.full(8, np.log(0.05)))
    a_n, _, v = hippo_n(4)
    a, v = block_diag(a_n, a_n), block_diag(v, v)
    b = v @ np.asarray(layer.b)
    np.testing.assert_allclose(b.imag, 0.0, atol=1e-12)  # B is real
    c = np.asarray(layer.c) @ v.conj().T
    a_bar = expm(0.05 * a)
    b_bar = np.linalg.solve(a, (a_bar - np.eye(8)) @ b.real)
    u = np.asarray(jax.random.normal(getkey(), (20, 3)))
    x, ys = np.zeros(8), []
    for t in range(20):
        x = a_bar @ x + b_bar @ u[t]
        ys.append(np.real(c @ x) + np.asarray(layer.d) * u[t])
    np.testing.assert_allclose(apply(layer, jnp.asarray(u)), np.stack(ys), atol=1e-10)
    with pytest.raises(ValueError, match="blocks"):
        S5(3, 8, blocks=3, key=getkey())
    with pytest.raises(ValueError, match="init"):
        S5(3, 8, init="legs", key=getkey())
