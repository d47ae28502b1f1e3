"""Kernel hypothesis tests: exact null samples, level, power, compile-once, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import kmethods as km
from kmethods.calibration import multinomial_weights, permuted_labels, wild_bootstrap_signs
from kmethods.hsic import _hsic_permutation_test
from kmethods.ksd import _ksd_bootstrap_test
from kmethods.mmd import _mmd_permutation_test

ALPHA = 0.05
REPLICATES = 500


def _level_interval(replicates=REPLICATES, alpha=ALPHA):
    """99% binomial interval for the rejection rate of a valid level-alpha test."""
    lo, hi = stats.binom.interval(0.99, replicates, alpha)
    return lo / replicates, hi / replicates


def test_test_result_is_not_collected():
    assert km.TestResult.__test__ is False


def test_p_value_convention():
    from kmethods.calibration import resample_p_value

    null = jnp.array([0.1, 0.5, 0.9, 0.2])
    assert resample_p_value(jnp.array(0.95), null) == pytest.approx(1 / 5)
    assert resample_p_value(jnp.array(0.5), null) == pytest.approx(3 / 5)
    assert resample_p_value(jnp.array(-1.0), null) == pytest.approx(1.0)


# ---------------------------------------------------------------------- exact null samples


def test_mmd_permutation_null_samples_are_relabelled_mmd2(x64, getkey):
    x = jax.random.normal(getkey(), (9, 2))
    y = 0.4 + jax.random.normal(getkey(), (7, 2))
    k = km.Gaussian(1.0)
    key = getkey()
    for unbiased in (True, False):
        res = km.mmd_test(key, x, y, k, num_permutations=20, unbiased=unbiased, block_size=4)
        np.testing.assert_allclose(res.statistic, km.mmd2(x, y, k, unbiased=unbiased), rtol=1e-10)
        z = np.concatenate([x, y])
        labels = np.asarray(permuted_labels(key, jnp.concatenate([jnp.ones(9), jnp.zeros(7)]), 20))
        for b in range(3):
            e = labels[b] == 1
            expected = km.mmd2(z[e], z[~e], k, unbiased=unbiased)
            np.testing.assert_allclose(res.null_samples[b], expected, rtol=1e-9)
        expected_p = (1 + np.sum(np.asarray(res.null_samples) >= float(res.statistic))) / 21
        assert res.p_value == pytest.approx(expected_p)


def test_hsic_permutation_null_samples_are_permuted_hsic(x64, getkey):
    x = jax.random.normal(getkey(), (11, 2))
    y = x[:, :1] + jax.random.normal(getkey(), (11, 1))
    kx, ky = km.Gaussian(1.0), km.Laplace(0.8)
    key = getkey()
    for unbiased in (False, True):
        res = km.hsic_test(
            key, x, y, kx, ky, num_permutations=10, unbiased=unbiased, permutation_batch=3
        )
        np.testing.assert_allclose(
            res.statistic, km.hsic(x, y, kx, ky, unbiased=unbiased), rtol=1e-10
        )
        keys = jax.random.split(key, 10)
        for b in (0, 4, 9):  # the last one sits in a padded batch
            perm = jax.random.permutation(keys[b], 11)
            expected = km.hsic(x, y[perm], kx, ky, unbiased=unbiased)
            np.testing.assert_allclose(res.null_samples[b], expected, rtol=1e-9)


@pytest.mark.parametrize("bootstrap", ["multinomial", "wild"])
def test_ksd_bootstrap_null_samples_match_dense_formula(x64, getkey, bootstrap):
    x = jax.random.normal(getkey(), (13, 2))
    score = lambda z: -z
    k = km.IMQ()
    key = getkey()
    res = km.ksd_test(
        key, x, score, k, num_bootstrap=15, bootstrap=bootstrap, flip_probability=0.3, block_size=5
    )
    u = np.asarray(km.Kernel.stein_gram(k, x, -x, x, -x))
    n = 13
    if bootstrap == "multinomial":
        w = np.asarray(multinomial_weights(key, n, 15, jnp.float64)) - 1 / n
        u_off = u - np.diag(np.diag(u))
        expected = np.einsum("bi,ij,bj->b", w, u_off, w)
        np.testing.assert_allclose(res.statistic, km.ksd2(x, score, k), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(w + 1 / n).sum(1), 1.0)
    else:
        w = np.asarray(wild_bootstrap_signs(key, n, 15, 0.3, jnp.float64))
        expected = np.einsum("bi,ij,bj->b", w, u, w) / n**2
        np.testing.assert_allclose(res.statistic, km.ksd2(x, score, k, unbiased=False), rtol=1e-10)
    np.testing.assert_allclose(res.null_samples, expected, rtol=1e-9, atol=1e-14)


def test_wild_bootstrap_sign_process(getkey):
    w = np.asarray(wild_bootstrap_signs(getkey(), 2000, 50, 0.1, jnp.float32))
    assert set(np.unique(w)) == {-1.0, 1.0}
    flips = np.mean(w[:, 1:] != w[:, :-1])
    assert 0.08 < flips < 0.12
    iid = np.asarray(wild_bootstrap_signs(getkey(), 2000, 50, 0.5, jnp.float32))
    assert abs(iid.mean()) < 0.02


def test_gamma_nulls_match_reference_code(x64, getkey):
    """Gamma nulls against a dense transcription of Gretton's reference (Matlab) code."""
    n = 40
    x = jax.random.normal(getkey(), (n, 2))
    y = 0.3 * x + jax.random.normal(getkey(), (n, 2))
    k = km.Gaussian(1.2)
    kk = np.asarray(k.gram(x, x))
    ll = np.asarray(k.gram(y, y))
    kl = np.asarray(k.gram(x, y))
    # mmdTestGamma.m
    stat = (kk + ll - kl - kl.T).sum() / n
    mean = 2 / n * (1 - np.trace(kl) / n)
    kz, lz, klz = (a - np.diag(np.diag(a)) for a in (kk, ll, kl))
    var = 2 / n / (n - 1) / n / (n - 1) * ((kz + lz - klz - klz.T) ** 2).sum()
    al, bet = mean**2 / var, var * n / mean
    res = km.mmd_test(None, x, y, k, null="gamma")
    np.testing.assert_allclose(res.statistic * n, stat, rtol=1e-10)
    np.testing.assert_allclose(res.p_value, stats.gamma.sf(stat, al, scale=bet), rtol=1e-8)
    # hsicTestGamma.m
    h = np.eye(n) - 1 / n
    kc, lc = h @ kk @ h, h @ ll @ h
    stat = (kc * lc).sum() / n
    var = (kc * lc / 6) ** 2
    var = (var.sum() - np.trace(var)) / n / (n - 1)
    var = 72 * (n - 4) * (n - 5) / n / (n - 1) / (n - 2) / (n - 3) * var
    mux = (kk.sum() - np.trace(kk)) / n / (n - 1)
    muy = (ll.sum() - np.trace(ll)) / n / (n - 1)
    mean = (1 + mux * muy - mux - muy) / n
    al, bet = mean**2 / var, var * n / mean
    res = km.hsic_test(None, x, y, k, k, null="gamma", block_size=7)
    np.testing.assert_allclose(res.statistic * n, stat, rtol=1e-10)
    np.testing.assert_allclose(res.p_value, stats.gamma.sf(stat, al, scale=bet), rtol=1e-8)
    assert res.null_samples.shape == (0,)


# ------------------------------------------------------------------------- level and power


def _rate(fn, key, replicates=REPLICATES):
    keys = jax.random.split(key, replicates)
    return float(jnp.mean(jax.jit(jax.vmap(fn))(keys)))


def _mmd_case(shift, n=25, **kw):
    k = km.Gaussian(1.5)

    def fn(key):
        kx, ky, kt = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, 2))
        y = shift + jax.random.normal(ky, (n, 2))
        return km.mmd_test(kt, x, y, k, **kw).reject

    return fn


def _hsic_case(rho, n=30, **kw):
    k = km.Gaussian(1.0)

    def fn(key):
        kx, ky, kt = jax.random.split(key, 3)
        x = jax.random.normal(kx, (n, 1))
        y = rho * x + jax.random.normal(ky, (n, 1))
        return km.hsic_test(kt, x, y, k, k, **kw).reject

    return fn


def _ksd_case(shift, n=40, **kw):
    k = km.IMQ()

    def fn(key):
        kx, kt = jax.random.split(key)
        x = shift + jax.random.normal(kx, (n, 2))
        return km.ksd_test(kt, x, lambda z: -z, k, **kw).reject

    return fn


CASES = {
    "mmd-permutation": (_mmd_case, 0.0, 1.0, {"num_permutations": 199}),
    "mmd-gamma": (_mmd_case, 0.0, 1.0, {"null": "gamma", "n": 100}),
    "hsic-permutation": (_hsic_case, 0.0, 1.0, {"num_permutations": 199}),
    "hsic-permutation-unbiased": (
        _hsic_case,
        0.0,
        1.0,
        {"num_permutations": 199, "unbiased": True},
    ),
    "hsic-gamma": (_hsic_case, 0.0, 1.0, {"null": "gamma", "n": 100}),
    "ksd-multinomial": (_ksd_case, 0.0, 0.8, {"num_bootstrap": 199}),
    "ksd-wild": (_ksd_case, 0.0, 0.8, {"num_bootstrap": 199, "bootstrap": "wild"}),
}


# The biased HSIC permutation test shares its permutation machinery with the unbiased one,
# which stays in the default suite; its own level check runs with -m slow (suite time).
_SLOW_CASES = {"hsic-permutation"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c in _SLOW_CASES else c for c in CASES],
)
def test_level_and_power(case):
    make, null_param, alt_param, kw = CASES[case]
    level = _rate(make(null_param, **kw), jax.random.key(1))
    lo, hi = _level_interval()
    assert lo <= level <= hi, (case, level, (lo, hi))
    power = _rate(make(alt_param, **kw), jax.random.key(2), replicates=200)
    assert power > 0.9, (case, power)


# --------------------------------------------------------------------------- compilation


def test_one_compilation_per_shape(getkey):
    x = jax.random.normal(getkey(), (20, 2))
    y = jax.random.normal(getkey(), (20, 2))
    cores = (_mmd_permutation_test, _hsic_permutation_test, _ksd_bootstrap_test)

    def run(key, x, y, bw):
        km.mmd_test(key, x, y, km.Gaussian(bw), num_permutations=50)
        km.hsic_test(key, x, y, km.Gaussian(bw), km.Gaussian(2 * bw), num_permutations=50)
        km.ksd_test(key, x, lambda z: -z, km.IMQ(bandwidth=bw), num_bootstrap=50)

    run(getkey(), x, y, 1.0)
    before = [c._cache_size() for c in cores]
    run(getkey(), x + 1.0, y * 2.0, 0.7)
    run(getkey(), y, x, 1.3)
    assert [c._cache_size() for c in cores] == before


# ------------------------------------------------------------------------------ bad input

GOOD = jnp.ones((5, 2)) + jnp.arange(10.0).reshape(5, 2)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (
            lambda: km.mmd_test(None, GOOD.at[0, 0].set(jnp.nan), GOOD, km.Gaussian()),
            ValueError,
            "`x`.*NaN",
        ),
        (
            lambda: km.mmd_test(None, GOOD, GOOD.at[1, 1].set(jnp.inf), km.Gaussian()),
            ValueError,
            "`y`.*NaN",
        ),
        (lambda: km.mmd2(GOOD[None], GOOD, km.Gaussian()), ValueError, "`x`.*shape"),
        (lambda: km.mmd2(GOOD, GOOD[:, :1], km.Gaussian()), ValueError, "dimension"),
        (lambda: km.mmd2(GOOD[:1], GOOD, km.Gaussian()), ValueError, "at least 2"),
        (lambda: km.mmd2(GOOD, GOOD, "gaussian"), TypeError, "`kernel`"),
        (lambda: km.mmd_test(None, GOOD, GOOD, km.Gaussian(), null="chi2"), ValueError, "`null`"),
        (
            lambda: km.mmd_test(None, GOOD, GOOD[:4], km.Gaussian(), null="gamma"),
            ValueError,
            "same number",
        ),
        (lambda: km.mmd_test(None, GOOD, GOOD, km.Gaussian(), alpha=1.5), ValueError, "`alpha`"),
        (
            lambda: km.mmd_test(None, GOOD, GOOD, km.Gaussian(), num_permutations=0),
            ValueError,
            "`num_permutations`",
        ),
        (
            lambda: km.mmd_test(None, GOOD, GOOD, km.Gaussian(), num_permutations=10.0),
            TypeError,
            "`num_permutations`",
        ),
        (lambda: km.hsic(GOOD, GOOD[:4], km.Gaussian(), km.Gaussian()), ValueError, "same number"),
        (lambda: km.hsic_test(None, GOOD, GOOD, km.Gaussian(), None), TypeError, "`kernel_y`"),
        (
            lambda: km.hsic_test(
                None, GOOD[:4], GOOD[:4], km.Gaussian(), km.Gaussian(), null="gamma"
            ),
            ValueError,
            "n >= 6",
        ),
        (lambda: km.ksd2(GOOD, -GOOD[:3], km.IMQ()), ValueError, "`score`"),
        (lambda: km.ksd2(GOOD, lambda z: z[0], km.IMQ()), ValueError, "`score`"),
        (
            lambda: km.ksd_test(None, GOOD, -GOOD, km.IMQ(), bootstrap="block"),
            ValueError,
            "`bootstrap`",
        ),
        (
            lambda: km.ksd_test(None, GOOD, lambda z: jnp.nan * z, km.IMQ()),
            ValueError,
            "`score`.*NaN",
        ),
        (lambda: km.mmd2(np.array(["a", "b"]), GOOD, km.Gaussian()), TypeError, "`x`"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
