"""kmethods.debias.stein_cholesky: Stein Cholesky (SC / LSC) weighted coresets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import kmethods as km
from kmethods.debias import SteinKernel, constant_preserving_weights, rp_cholesky, stein_cholesky
from tests.kmethods.targets import biased_mixture, mixture_score


def _ksd(x, w=None):
    return float(jnp.sqrt(km.ksd2(x, mixture_score, km.IMQ(), weights=w, unbiased=False)))


def _simplex_minimum(K):
    """min of v' K v over the probability simplex, by a dense SLSQP solve (the generic QP)."""
    m = K.shape[0]
    best = scipy.optimize.minimize(
        lambda v: v @ K @ v,
        np.full(m, 1 / m),
        jac=lambda v: 2 * K @ v,
        bounds=[(0, 1)] * m,
        constraints={"type": "eq", "fun": lambda v: v.sum() - 1},
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return best.fun


def test_stein_cholesky_weights_solve_the_support_qp(x64, getkey):
    """Simplex weights; KKT of min v^T K_SS v over the simplex; the optimum of a generic
    dense float64 solver on the same support."""
    x = biased_mixture(getkey(), 64)
    kernel = km.IMQ()
    idx, w, info = stein_cholesky(getkey(), x, mixture_score, kernel, out_size=8, return_info=True)
    idx, w = np.asarray(idx), np.asarray(w)
    assert idx.shape == w.shape == (8,) and len(np.unique(idx)) == 8
    assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-12 and bool(info.converged)
    stein = SteinKernel(km.IMQ(), mixture_score)
    z = stein.augment(x[idx])
    K = np.asarray(stein.gram(z, z))
    lam = w @ K @ w
    np.testing.assert_allclose(info.objective, lam, rtol=1e-10)
    kw = K @ w
    assert np.all(kw >= lam * (1 - 2e-6))  # stationarity with multiplier lam
    assert np.all(w * np.abs(kw - lam) <= 2e-6 * lam)  # complementary slackness
    assert lam <= _simplex_minimum(K) * (1 + 1e-5)
    np.testing.assert_allclose(_ksd(x[idx], w) ** 2, lam, rtol=1e-8)


def _cp_reference(K):
    # the paper's formula with a dense least-squares solve: v = K^+ 1 / 1^T K^+ 1
    y = np.linalg.lstsq(K, np.ones(K.shape[0]), rcond=1e-12)[0]
    return y / y.sum()


def test_constant_preserving_weights(x64, getkey):
    """v = K^+ 1 / 1^T K^+ 1: sums to one, K v constant (the KKT conditions of min v^T K v
    subject to sum v = 1), the dense least-squares formula; signed where that is optimal; a
    repeated point shares its weight."""
    b = np.asarray(jax.random.normal(getkey(), (6, 6)))
    K = b @ b.T + 0.1 * np.eye(6)
    solve = jax.jit(constant_preserving_weights)
    v, info = solve(jnp.asarray(K))
    v = np.asarray(v)
    assert abs(v.sum() - 1) < 1e-13 and v.min() < 0  # this K's optimum has a negative weight
    lam = v @ K @ v
    np.testing.assert_allclose(K @ v, lam, rtol=1e-10)
    np.testing.assert_allclose(v, _cp_reference(K), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(info.objective, lam, rtol=1e-12)
    assert float(info.gap) < 1e-10 and bool(info.converged)
    # a duplicated point: K singular; the pseudo-inverse splits its weight in two
    rep = K[np.ix_([0, 1, 2, 3, 4, 5, 5], [0, 1, 2, 3, 4, 5, 5])]
    w, _ = solve(jnp.asarray(rep))
    w = np.asarray(w)
    np.testing.assert_allclose(w[:5], v[:5], atol=1e-8)
    np.testing.assert_allclose(w[5:], v[5] / 2, atol=1e-8)


def test_stein_cholesky_constant_preserving(x64, getkey):
    """The paper's SC: weights summing to one with K_SS v constant on the support, the dense
    least-squares weights of that support, and a KSD no higher than the simplex optimum's on it
    or than the simplex version of the method (same key)."""
    x = biased_mixture(getkey(), 64)
    key = getkey()
    idx, v, info = stein_cholesky(
        key, x, mixture_score, km.IMQ(), out_size=8, constant_preserving=True, return_info=True
    )
    idx, v = np.asarray(idx), np.asarray(v)
    assert idx.shape == v.shape == (8,) and len(np.unique(idx)) == 8
    assert abs(v.sum() - 1) < 1e-12 and bool(info.converged)
    stein = SteinKernel(km.IMQ(), mixture_score)
    z = stein.augment(x[idx])
    K = np.asarray(stein.gram(z, z))
    lam = v @ K @ v
    np.testing.assert_allclose(K @ v, lam, rtol=1e-9)
    np.testing.assert_allclose(v, _cp_reference(K), rtol=1e-8, atol=1e-12)
    assert lam <= _simplex_minimum(K) * (1 + 1e-9)
    i2, w2 = stein_cholesky(key, x, mixture_score, km.IMQ(), out_size=8)
    assert lam <= _ksd(x[i2], w2) ** 2 * (1 + 1e-9)
    # more swap passes (each keeps only improving swaps, then reweights): never a higher KSD
    i3, v3 = stein_cholesky(
        key, x, mixture_score, km.IMQ(), out_size=8, constant_preserving=True, swap_passes=3
    )
    z3 = stein.augment(x[np.asarray(i3)])
    assert np.asarray(v3) @ np.asarray(stein.gram(z3, z3)) @ np.asarray(v3) <= lam * (1 + 1e-9)


def test_rp_cholesky_pivots_give_the_nystrom_factor(x64, getkey):
    x = biased_mixture(getkey(), 40)
    stein = SteinKernel(km.IMQ(), mixture_score)
    z = stein.augment(x)
    K = np.asarray(stein.gram(z, z))
    column = lambda s: stein.gram(z, z[s][None])[:, 0]
    f, residual, pivots = rp_cholesky(getkey(), column, stein.diag(z), 6, return_pivots=True)
    s = np.asarray(pivots)
    assert len(np.unique(s)) == 6
    nystrom = K[:, s] @ np.linalg.solve(K[np.ix_(s, s)], K[s])
    np.testing.assert_allclose(np.asarray(f) @ np.asarray(f).T, nystrom, atol=1e-8)
    np.testing.assert_allclose(residual, np.diag(K) - np.diag(nystrom), atol=1e-8)


@pytest.mark.parametrize(
    "rank", [None, pytest.param(16, marks=pytest.mark.slow)], ids=["sc", "lsc"]
)
def test_stein_cholesky_debiases_the_mixture(x64, getkey, rank):
    """n = 256 -> 16 points, biased 0.8 / 0.2: the weighted coreset's KSD is below a uniform
    subsample's and standard thinning's of the same size."""
    n, s = 256, 16
    for _ in range(2):
        x = biased_mixture(getkey(), n)
        idx, w = stein_cholesky(getkey(), x, mixture_score, km.IMQ(), out_size=s, rank=rank)
        got = _ksd(x[idx], w)
        uniform = _ksd(x[jax.random.choice(getkey(), n, (s,), replace=False)])
        standard = _ksd(x[km.thinning.standard_thin(None, x, out_size=s)])
        assert got < uniform and got < standard, (got, uniform, standard)


def test_stein_cholesky_bad_inputs(getkey):
    x = biased_mixture(getkey(), 16)
    with pytest.raises(ValueError, match="`out_size`"):
        stein_cholesky(getkey(), x, mixture_score, km.IMQ(), out_size=17)
    with pytest.raises(ValueError, match="`rank`"):
        stein_cholesky(getkey(), x, mixture_score, km.IMQ(), out_size=4, rank=17)
    with pytest.raises(ValueError, match="`shift`"):
        stein_cholesky(getkey(), x, mixture_score, km.IMQ(), out_size=4, shift=-1.0)
    with pytest.raises(ValueError, match="`tol`"):
        stein_cholesky(getkey(), x, mixture_score, km.IMQ(), out_size=4, tol=0.0)
    with pytest.raises(ValueError, match="`swap_passes`"):
        stein_cholesky(getkey(), x, mixture_score, km.IMQ(), out_size=4, swap_passes=0)
    with pytest.raises(TypeError, match="`key`"):
        stein_cholesky(0, x, mixture_score, km.IMQ(), out_size=4)
    with pytest.raises(ValueError, match="`score`"):
        stein_cholesky(getkey(), x, jnp.zeros((15, 2)), km.IMQ(), out_size=4)


def test_low_level_solvers_check_their_inputs(getkey):
    """`constant_preserving_weights` and `rp_cholesky` name a malformed argument (they raised
    IndexError, broadcasting or MLIR errors), take integer matrices as floats, and a zero
    Stein block gets uniform weights (every weighting is optimal) instead of NaN."""
    with pytest.raises(ValueError, match="`gram`"):
        constant_preserving_weights(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="`gram`"):
        constant_preserving_weights(jnp.ones(3))
    solve = jax.jit(constant_preserving_weights)
    v, _ = solve(np.diag([2, 1, 1]))  # K^-1 1 = (1/2, 1, 1)
    np.testing.assert_allclose(v, [0.2, 0.4, 0.4], rtol=1e-6)
    v, info = solve(jnp.zeros((3, 3)))
    np.testing.assert_allclose(v, np.full(3, 1 / 3), rtol=1e-6)
    assert float(info.objective) == 0.0 and bool(info.converged)
    eye = lambda s: jnp.eye(3)[:, s]
    with pytest.raises(ValueError, match="`rank`"):
        rp_cholesky(getkey(), eye, jnp.ones(3), 0)
    with pytest.raises(ValueError, match="`column`"):
        rp_cholesky(getkey(), lambda s: jnp.eye(4)[:, s], jnp.ones(3), 2)
    with pytest.raises(ValueError, match="`diag`"):
        rp_cholesky(getkey(), eye, jnp.ones((3, 1)), 2)
    f, residual = jax.jit(lambda k, d: rp_cholesky(k, eye, d, 3))(getkey(), np.ones(3, np.int32))
    np.testing.assert_allclose(np.asarray(f) @ np.asarray(f).T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(residual, 0.0, atol=1e-6)
