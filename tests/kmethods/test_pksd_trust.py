"""Trust checks of the perturbed KSD test (issue 14): `log_prob` is checked at the sample and
along the chains (a clear error eagerly, a NaN statistic and no rejection under jit/vmap), NaN
data under jit, half precision computed in float32, a traced alpha, and the level with a
nearly constant kernel."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import kmethods as km
from experiments.tasks.pksd_bimodal import bimodal_log_prob
from kmethods import pksd_test
from kmethods.pksd import Modes, perturb

MODES = Modes(jnp.array([[0.0], [6.0]]), jnp.ones((2, 1, 1)), jnp.zeros(2), jnp.ones(2, bool))
KW = dict(thetas=(1.0,), num_steps=2, num_bootstrap=49, modes=MODES)
X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 1)), jnp.float32)


EDGE = 3.5  # the sample lies below; only jumps towards the mode at 6 propose points beyond


def bimodal6(z):
    return bimodal_log_prob(z, 6.0)


def nan_far(z):
    """The bimodal log density, NaN beyond EDGE."""
    return jnp.where(z[0] > EDGE, jnp.nan, bimodal_log_prob(z, 6.0))


def inf_far(z):
    """The bimodal log density, +inf beyond EDGE."""
    return jnp.where(z[0] > EDGE, jnp.inf, bimodal_log_prob(z, 6.0))


def _assert_void(result):
    assert np.all(np.isnan(np.asarray(result.statistic)))
    assert np.all(np.isnan(np.asarray(result.p_value)))
    assert not np.any(np.asarray(result.reject))


def test_log_prob_garbage_along_the_chains():
    """Before the fix a NaN log p at a proposal was a silently refused move and +inf a
    silently accepted one: a finite statistic from a chain that is not p-invariant. Now it is
    a ValueError eagerly (pksd_test and perturb, mode jumps and MALA) and, under jit, a NaN
    statistic with no rejection and NaN points from perturb."""
    assert float(jnp.max(X)) < EDGE
    key = jax.random.key(0)
    match = "`log_prob` returned NaN or \\+inf at a point proposed"
    with pytest.raises(ValueError, match=match):
        pksd_test(key, X, nan_far, **KW)
    for log_prob in (nan_far, inf_far):
        with pytest.raises(ValueError, match=match):
            perturb(key, X, log_prob, MODES, 1.0, num_steps=2)
    with pytest.raises(ValueError, match=match):  # MALA proposals cross EDGE too
        perturb(key, X, nan_far, None, 2.0, num_steps=3, transition="mala")
    _assert_void(jax.jit(lambda x: pksd_test(key, x, nan_far, **KW))(X))
    moved = jax.jit(lambda x: perturb(key, x, nan_far, MODES, 1.0, num_steps=2))(X)
    assert np.isnan(np.asarray(moved)).any() and np.isfinite(np.asarray(moved)).any()


def test_log_prob_garbage_at_the_sample_and_nan_data_under_jit():
    """A sample point where log p is NaN (before: its chain never moved and its score, finite,
    entered the statistic) raises eagerly, for pksd_test and perturb; under jit it and NaN
    data (for ospKSD also in the half that chooses theta) give a NaN statistic and no
    rejection."""
    x = X.at[3, 0].set(5.0)
    key = jax.random.key(1)
    for call in (
        lambda: pksd_test(key, x, nan_far, **KW),
        lambda: perturb(key, x, nan_far, MODES, 1.0, num_steps=2),
    ):
        with pytest.raises(ValueError, match=r"`log_prob` is nan at x\[3\]"):
            call()
    test = jax.jit(lambda x: pksd_test(key, x, nan_far, **KW))
    _assert_void(test(x))
    _assert_void(test(X.at[0, 0].set(jnp.nan)))
    # ospKSD: a NaN in the half that only chooses theta (it used to pick an arbitrary theta
    # and test the clean half as if nothing had happened)
    ospksd = jax.jit(lambda x: pksd_test(key, x, bimodal6, method="ospksd", **KW))
    assert np.isfinite(float(ospksd(X).statistic))
    _assert_void(ospksd(X.at[0, 0].set(jnp.nan)))


def half_log_prob(z):
    """The bimodal log density, answered in float16."""
    return bimodal_log_prob(z, 6.0).astype(jnp.float16)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    """The sample is computed in float32 (the result too), and so are log p and the scores
    whatever dtype `log_prob` returns."""
    xh = X.astype(dtype)
    res = pksd_test(jax.random.key(2), xh, half_log_prob, **KW)
    ref = pksd_test(jax.random.key(2), xh.astype(jnp.float32), half_log_prob, **KW)
    assert res.statistic.dtype == jnp.float32 and np.isfinite(float(res.statistic))
    np.testing.assert_array_equal(res.statistic, ref.statistic)


def test_traced_alpha_matches_a_loop():
    key = jax.random.key(3)
    alphas = jnp.asarray([0.01, 0.5, 0.99])
    res = jax.vmap(lambda a: pksd_test(key, X, half_log_prob, **KW, alpha=a))(alphas)
    single = pksd_test(key, X, half_log_prob, **KW)
    np.testing.assert_allclose(res.p_value, single.p_value)
    np.testing.assert_array_equal(res.reject, single.p_value <= alphas)


def _standard_normal(z):
    return -0.5 * jnp.sum(z**2)


def test_level_with_a_nearly_constant_kernel():
    """IMQ with bandwidth 1e4 on unit-scale data: k within 1e-8 of 1 and its derivatives near
    zero, so the Stein kernel is almost s(x).s(y). The statistic is column 0 of the same
    product as the bootstrap draws: over 500 vmapped replicates (n = 100, MALA perturbation of
    N(0, 1) samples) the rejection rate lies in the 99% binomial interval at level 0.05."""
    replicates, n = 500, 100
    kernel = km.IMQ(bandwidth=1e4)

    def one(key):
        k_data, k_test = jax.random.split(key)
        x = jax.random.normal(k_data, (n, 1))
        return pksd_test(
            k_test,
            x,
            _standard_normal,
            kernel,
            transition="mala",
            thetas=(0.5,),
            num_steps=2,
            num_bootstrap=199,
        )

    res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(4), replicates))
    assert np.all(np.isfinite(np.asarray(res.statistic)))
    lo, hi = stats.binom.interval(0.99, replicates, 0.05)
    assert lo <= int(np.sum(res.reject)) <= hi, int(np.sum(res.reject))
