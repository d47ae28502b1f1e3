import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import quad_vec

from seqmodels.layers import LRU, S5


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
        np.testing.assert_allclose(layer(u, method=method), expected, rtol=1e-4, atol=1e-4)


def test_s5_zero_order_hold(x64, getkey):
    layer = S5(2, 4, key=getkey())
    lam = -np.exp(np.asarray(layer.lambda_re_log)) + 1j * np.asarray(layer.lambda_im)
    step = np.exp(np.asarray(layer.log_step))
    lam_bar, b_bar = layer.discretise()
    np.testing.assert_allclose(lam_bar, np.exp(lam * step), rtol=1e-10)
    # B_bar = int_0^Delta exp(Lambda s) ds B
    for p in range(4):
        exact = quad_vec(lambda s, p=p: np.exp(lam[p] * s), 0, step[p], epsabs=1e-14)[0]
        np.testing.assert_allclose(b_bar[p], exact * np.asarray(layer.b)[p], rtol=1e-8)
    u = jax.random.normal(getkey(), (25, 2))
    scale = jax.random.uniform(getkey(), (25,), minval=0.5, maxval=2.0)
    lam_t, b_t = layer.discretise(scale)
    bu = np.einsum("tph,th->tp", np.asarray(b_t), np.asarray(u))
    expected = np.real(loop(np.asarray(lam_t), bu) @ np.asarray(layer.c).T) + np.asarray(
        layer.d
    ) * np.asarray(u)
    np.testing.assert_allclose(layer(u, step_scale=scale), expected, rtol=1e-10)
    constant = layer(u, step_scale=jnp.ones(25))
    np.testing.assert_allclose(constant, layer(u), rtol=1e-10)


@pytest.mark.parametrize("cls", [LRU, S5])
def test_ssm_layers_compose(getkey, cls):
    import equinox as eqx

    layer = cls(4, 6, key=getkey())
    x = jax.random.normal(getkey(), (3, 20, 4))
    grads = eqx.filter_grad(lambda m: jnp.mean(jax.vmap(m)(x) ** 2))(layer)
    leaves = jax.tree.leaves(eqx.filter(grads, eqx.is_array))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves)
