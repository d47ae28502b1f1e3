"""Awkward input to the kernel statistics and tests: no silent wrong answer.

Each class of fault found by probing (non-finite statistics that rejected, a level lost to
rounding with a nearly constant kernel, distances that were not translation invariant in
float32, half-precision sums, bad options that reached JAX unchecked) has a test here that
failed before the fix.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

import kmethods as km
from kmethods.calibration import gamma_p_value, resample_p_value
from kmethods.pairwise import sqdist
from tests import reference as ref

ALPHA = 0.05


def _level_interval(replicates, alpha=ALPHA):
    lo, hi = stats.binom.interval(0.99, replicates, alpha)
    return lo / replicates, hi / replicates


# ------------------------------------------------------------- non-finite statistics


def test_p_value_of_a_nonfinite_statistic_is_nan():
    null = jnp.array([0.1, 0.5, 0.9])
    assert jnp.isnan(resample_p_value(jnp.array(jnp.nan), null))
    assert jnp.isnan(resample_p_value(jnp.array(jnp.inf), null))
    assert jnp.isnan(resample_p_value(jnp.array(0.3), null.at[1].set(jnp.nan)))
    # +inf draws are legitimate "at least as extreme" draws.
    assert resample_p_value(jnp.array(0.7), null.at[0].set(jnp.inf)) == pytest.approx(3 / 4)
    assert jnp.isnan(gamma_p_value(jnp.array(jnp.nan), 1.0, 1.0))


def _all_tests(key, x, y, score_x):
    kx, ky = km.Gaussian(1.0), km.Gaussian(1.5)
    return {
        "mmd permutation": km.mmd_test(key, x, y, kx, num_permutations=50),
        "mmd gamma": km.mmd_test(key, x, y, kx, null="gamma"),
        "hsic permutation": km.hsic_test(key, x, y, kx, ky, num_permutations=50),
        "hsic unbiased": km.hsic_test(key, x, y, kx, ky, num_permutations=50, unbiased=True),
        "hsic gamma": km.hsic_test(key, x, y, kx, ky, null="gamma"),
        "ksd multinomial": km.ksd_test(key, x, score_x, km.IMQ(), num_bootstrap=50),
        "ksd wild": km.ksd_test(key, x, score_x, km.IMQ(), num_bootstrap=50, bootstrap="wild"),
    }


def test_nan_data_under_jit_and_vmap_never_rejects(getkey):
    # Inside jit the eager finiteness checks cannot run; the decision must still refuse.
    x = jax.random.normal(getkey(), (3, 20, 2))
    y = 1.0 + jax.random.normal(getkey(), (3, 20, 2))  # a clear difference: rejected if finite
    x = x.at[1, 4, 0].set(jnp.nan).at[2, 7, 1].set(jnp.inf)
    results = jax.jit(jax.vmap(lambda k, a, b: _all_tests(k, a, b, -a)))(
        jax.random.split(getkey(), 3), x, y
    )
    for name, res in results.items():
        assert np.isfinite(float(res.p_value[0])), name  # the clean replicate is decided
        assert not np.any(np.asarray(res.reject[1:])), name
        assert np.all(np.isnan(np.asarray(res.p_value[1:]))), name


def test_score_function_returning_nan_is_refused(getkey):
    x = jax.random.normal(getkey(), (30, 2))
    score = lambda z: jnp.where(z[0] > 1.0, jnp.nan, -z)
    with pytest.raises(ValueError, match="score"):
        km.ksd2(x, score, km.IMQ())
    with pytest.raises(ValueError, match="score"):
        km.ksd_test(getkey(), x, score, km.IMQ())
    res = jax.jit(lambda k, a: km.ksd_test(k, a, score, km.IMQ(), num_bootstrap=50))(getkey(), x)
    assert not bool(res.reject) and bool(jnp.isnan(res.p_value))


def test_tiny_bandwidth_is_refused_and_traced_one_stays_finite(getkey):
    with pytest.raises(ValueError, match="bandwidth"):
        km.Gaussian(1e-30)
    with pytest.raises(ValueError, match="bandwidth"):
        km.IMQ(bandwidth=1e30)
    x = jax.random.normal(getkey(), (16, 2))
    # A traced bandwidth skips the eager check; h^2 underflows float32 but r^2 / h / h does not.
    gram = jax.jit(lambda h: km.Gaussian(h).gram(x, x))(jnp.float32(1e-30))
    np.testing.assert_array_equal(gram, np.eye(16, dtype=np.float32))


def test_gamma_null_on_identical_and_constant_samples_gives_p_one(getkey):
    x = jax.random.normal(getkey(), (30, 2))
    k = km.Gaussian(1.0)
    for a, b in ((x, x), (jnp.zeros((30, 2)), jnp.zeros((30, 2)))):
        res = km.mmd_test(getkey(), a, b, k, null="gamma")
        assert float(res.p_value) == 1.0 and not bool(res.reject)
    res = km.hsic_test(getkey(), x, jnp.ones((30, 1)), k, k, null="gamma")
    assert float(res.p_value) == 1.0 and not bool(res.reject)


# ------------------------------------------------------- nearly constant kernels: level


def _null_pair(key, n=40):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (n, 2)), jax.random.normal(ky, (n, 2))


@pytest.mark.parametrize("test", ["mmd", "mmd_biased", "hsic", "hsic_unbiased", "ksd", "ksd_wild"])
def test_level_with_a_nearly_constant_kernel(test, x64):
    # Bandwidth 1e4 times the data scale: every kernel value is 1 - O(1e-8), so all resampled
    # statistics agree to rounding. In float64 they still differ, and the test must keep its
    # level; before the fix HSIC's observed statistic took its own arithmetic path and
    # rounding alone made it reject 0.2-0.45 of the time.
    wide = km.Gaussian(1e4)
    replicates = 500

    def one(key):
        kd, kt = jax.random.split(key)
        x, y = _null_pair(kd)
        if test.startswith("mmd"):
            return km.mmd_test(kt, x, y, wide, num_permutations=199, unbiased=test == "mmd")
        if test.startswith("hsic"):
            return km.hsic_test(
                kt, x, y, wide, wide, num_permutations=199, unbiased=test == "hsic_unbiased"
            )
        boot = "wild" if test == "ksd_wild" else "multinomial"
        return km.ksd_test(kt, x, lambda z: -z, km.IMQ(bandwidth=1e4), bootstrap=boot,
                           num_bootstrap=199)  # fmt: skip

    res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), replicates))
    assert np.all(np.isfinite(np.asarray(res.statistic)))
    rate = float(jnp.mean(res.reject))
    lo, hi = _level_interval(replicates)
    if test == "hsic_unbiased":
        # The unbiased HSIC ignores constants added to K~ and L~, so here it is
        # (1 / (2 h^2))^2 ~ 1e-17 times an O(1) statistic: below float64's resolution of its
        # O(1) terms. Every statistic is rounding, all count as ties, and the test (rightly)
        # never rejects; before the fix rounding made it reject 0.375 of the time.
        assert rate <= hi, (test, rate)
    else:
        assert lo <= rate <= hi, (test, rate)


@pytest.mark.slow
def test_wide_kernel_at_large_n_keeps_its_power_and_level():
    # At large n the permutation statistics spread by O(1/n) around a kernel mean; with a
    # bandwidth 1e3 times the data scale every float32 kernel value is 1 - O(1e-7). The
    # statistic must still be the quadratic (mean-difference) MMD, not rounding: it scales as
    # 1 / bandwidth^2 between two bandwidths, a shift of 0.05 at n = 2^13 is rejected with the
    # smallest p-value, and the null is not (CTT's forms lost exactly this at n = 2^20).
    n, permutations = 2**13, 19
    x = jax.random.normal(jax.random.key(1), (n, 2))
    y = jax.random.normal(jax.random.key(2), (n, 2))
    shifted = y.at[:, 0].add(0.05)
    key = jax.random.key(0)
    statistics = {}
    for bw in (100.0, 1000.0):
        alt = km.mmd_test(key, x, shifted, km.Gaussian(bw), num_permutations=permutations)
        null = km.mmd_test(key, x, y, km.Gaussian(bw), num_permutations=permutations)
        assert bool(alt.reject) and float(alt.p_value) == pytest.approx(1 / (permutations + 1))
        assert 0.2 < float(null.p_value) < 1.0  # p = 1 would mean every draw tied
        statistics[bw] = float(alt.statistic)
    ratio = statistics[100.0] / statistics[1000.0]
    assert ratio == pytest.approx(100.0, rel=0.02)


@pytest.mark.parametrize("unbiased", [False, True])
def test_hsic_with_a_constant_variable_never_rejects(unbiased):
    # One variable constant: every permutation gives the same statistic, so p = 1 exactly.
    # (Before the fix 12 of 20 seeds rejected. The permutation law is a point mass here, so
    # the level is 0, the conservative end of a valid test.)
    def one(key):
        x = jax.random.normal(key, (40, 2))
        y = jnp.full((40, 1), 3.0)
        return km.hsic_test(
            key, x, y, km.Gaussian(1.0), km.Gaussian(1e4), num_permutations=99, unbiased=unbiased
        )

    res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(3), 200))
    assert not np.any(np.asarray(res.reject))
    np.testing.assert_array_equal(res.p_value, 1.0)


# ------------------------------------------------------------ far from the origin


def test_distances_far_from_the_origin_agree_with_float64():
    # The example: offset 1000, d = 17, spread 0.1.
    rng = np.random.default_rng(0)
    x = 1000.0 + 0.1 * rng.standard_normal((60, 17))
    y = 1000.0 + 0.1 * rng.standard_normal((50, 17)) + 0.05
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    exact = ref.sqdist(x32.astype(np.float64), y32.astype(np.float64))
    np.testing.assert_allclose(sqdist(x32, y32), exact, rtol=2e-4, atol=1e-5)
    h = km.median_bandwidth(x32)
    h_exact = np.median(np.sqrt(ref.sqdist(x32, x32).astype(np.float64))[np.triu_indices(60, 1)])
    assert float(h) == pytest.approx(h_exact, rel=1e-4)
    z = np.concatenate([x32, y32])
    k = km.Gaussian(km.median_bandwidth(z))
    assert float(km.mmd_test(jax.random.key(0), x32, y32, k).p_value) <= 0.01


@pytest.mark.parametrize("d", [2, 17, 40])
def test_statistics_far_from_the_origin_agree_with_float64(d):
    rng = np.random.default_rng(d)
    offset = 1000.0
    x = (offset + 0.3 * rng.standard_normal((40, d))).astype(np.float32)
    y = (offset + 0.3 * rng.standard_normal((40, d)) + 0.1).astype(np.float32)
    x64_, y64_ = x.astype(np.float64), y.astype(np.float64)
    h = 0.3 * np.sqrt(2 * d)
    kern = km.Gaussian(h)
    kxx = ref.gram("gaussian", x64_, x64_, bandwidth=h)
    kyy = ref.gram("gaussian", y64_, y64_, bandwidth=h)
    kxy = ref.gram("gaussian", x64_, y64_, bandwidth=h)
    assert float(km.mmd2(x, y, kern)) == pytest.approx(ref.mmd2(kxx, kyy, kxy, True), abs=2e-6)
    assert float(km.hsic(x, y, kern, kern)) == pytest.approx(ref.hsic(kxx, kyy, False), abs=2e-7)
    # KSD against N(offset, 0.09 I): the score is small, the Stein kernel's cross term is not.
    s = -(x64_ - offset) / 0.09
    u = ref.stein_gram("imq", x64_, s, c=1.0, beta=-0.5, bandwidth=h)
    expected = (u.sum() - np.trace(u)) / (40 * 39)
    got = km.ksd2(x, s.astype(np.float32), km.IMQ(bandwidth=h))
    assert float(got) == pytest.approx(expected, rel=1e-3, abs=1e-3)


def test_kernel_thinning_far_from_the_origin_matches_the_centred_run(getkey):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 20)).astype(np.float32)
    k = km.Gaussian(float(np.sqrt(2 * 20)))
    key = getkey()
    near = km.kernel_thin(key, x, k)
    far = km.kernel_thin(key, x + np.float32(1000.0), k)
    x64_ = x.astype(np.float64)
    kk = ref.gram("gaussian", x64_, x64_, bandwidth=float(np.sqrt(40)))
    mmd_near, mmd_far = (
        ref.mmd_to_indices(kk, np.asarray(near)),
        ref.mmd_to_indices(kk, np.asarray(far)),
    )
    mmd_iid = ref.mmd_to_indices(kk, np.arange(0, 256, 16))
    assert mmd_far < mmd_iid  # the shifted run still thins well, not at random
    assert mmd_far == pytest.approx(mmd_near, rel=0.25)


# ------------------------------------------------------------------ low precision


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_inputs_accumulate_in_float32(dtype, getkey):
    n = 2000
    x = jax.random.normal(getkey(), (n, 2)).astype(dtype)
    y = (0.05 + jax.random.normal(getkey(), (n, 2))).astype(dtype)
    k = km.Gaussian(1.0)
    with jax.enable_x64(True):
        x64_, y64_ = jnp.asarray(x, jnp.float64), jnp.asarray(y, jnp.float64)
        exact_mmd = float(km.mmd2(x64_, y64_, k))
        exact_hsic = float(km.hsic(x64_, y64_, k, k))
    got_mmd, got_hsic = km.mmd2(x, y, k), km.hsic(x, y, k, k)
    assert got_mmd.dtype == jnp.float32 and got_hsic.dtype == jnp.float32
    assert float(got_mmd) == pytest.approx(exact_mmd, rel=1e-3, abs=1e-6)
    assert float(got_hsic) == pytest.approx(exact_hsic, rel=1e-3, abs=1e-7)
    # float16 at n >= 257 used to overflow n(n - 1) and reject on the NaN.
    res = km.mmd_test(getkey(), x[:300], x[300:600], k, num_permutations=99)
    assert np.isfinite(float(res.statistic)) and res.statistic.dtype == jnp.float32


# -------------------------------------------------------------- bad options


def test_bad_options_get_clear_errors(getkey):
    x = jax.random.normal(getkey(), (20, 2))
    k = km.Gaussian(1.0)
    with pytest.raises(TypeError, match="unbiased"):
        km.mmd2(x, x, k, unbiased="no")
    with pytest.raises(TypeError, match="unbiased"):
        km.hsic_test(getkey(), x, x, k, k, unbiased="no")
    with pytest.raises(TypeError, match="unbiased"):
        km.ksd2(x, lambda z: -z, k, unbiased="no")
    for bad in (0, -3):
        with pytest.raises(ValueError, match="block_size"):
            km.mmd2(x, x, k, block_size=bad)
        with pytest.raises(ValueError, match="block_size"):
            km.ksd_test(getkey(), x, lambda z: -z, k, block_size=bad)
    with pytest.raises(TypeError, match="block_size"):
        km.hsic(x, x, k, k, block_size=2.5)
    for bad in (1j, jnp.asarray(1.0 + 0j)):
        with pytest.raises(TypeError, match="bandwidth"):
            km.Gaussian(bad)


def test_traced_alpha_is_a_level_not_an_error(getkey):
    x = jax.random.normal(getkey(), (20, 2))
    y = 0.5 + jax.random.normal(getkey(), (20, 2))
    key = getkey()
    alphas = jnp.array([0.001, 0.05, 0.5])
    res = jax.vmap(lambda a: km.mmd_test(key, x, y, km.Gaussian(1.0), alpha=a))(alphas)
    np.testing.assert_array_equal(res.reject, res.p_value <= alphas)
    # A traced level outside (0, 1) cannot be checked eagerly; it must not reject.
    bad = jnp.array([1.0, 2.0, -0.5])
    res = jax.vmap(lambda a: km.hsic_test(key, x, y, km.Gaussian(1.0), km.Gaussian(1.0), alpha=a))(
        bad
    )
    assert not np.any(np.asarray(res.reject))


# ------------------------------------------------------------------ properties

_DTYPES = {"f16": jnp.float16, "bf16": jnp.bfloat16, "f32": jnp.float32, "f64": jnp.float64}
_SETTINGS = settings(
    max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
samples = st.fixed_dictionaries(
    {
        "n": st.sampled_from([6, 11]),
        "d": st.sampled_from([1, 3, 17]),
        "dtype": st.sampled_from(sorted(_DTYPES)),
        "log_scale": st.integers(-6, 6),
        "offset": st.sampled_from([0.0, 3.0, -250.0, 1e4]),
        "seed": st.integers(0, 2**16),
    }
)


def _draw(p):
    """Two samples at the drawn scale and offset, cast to the drawn dtype, and their exact
    float64 values (what the statistic must agree with)."""
    rng = np.random.default_rng(p["seed"])
    scale = 10.0 ** p["log_scale"]
    x = p["offset"] + scale * rng.standard_normal((p["n"], p["d"]))
    y = p["offset"] + scale * (0.5 + rng.standard_normal((p["n"] + 2, p["d"])))
    cast = lambda a: jnp.asarray(a, jnp.float32 if p["dtype"] != "f64" else jnp.float64)
    xd, yd = (cast(a).astype(_DTYPES[p["dtype"]]) for a in (x, y))
    return xd, yd, np.asarray(xd, np.float64), np.asarray(yd, np.float64), scale


def _finite_or_refused(fn, *arrays):
    """Finite input must give finite output; non-finite input (a cast overflowed) an error."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        with pytest.raises(ValueError, match="NaN or inf"):
            fn()
        return None
    out = fn()
    assert np.all(np.isfinite(np.asarray(out, np.float64)))
    return out


@_SETTINGS
@given(samples)
def test_property_mmd2_hsic_agree_with_float64_on_the_same_values(p):
    with jax.enable_x64(p["dtype"] == "f64"):
        x, y, x64_, y64_, _ = _draw(p)
        if not (np.all(np.isfinite(x64_)) and np.all(np.isfinite(y64_))):
            return _finite_or_refused(lambda: km.mmd2(x, y, km.Gaussian(1.0)), x64_, y64_)
        spread = np.concatenate([x64_, y64_]) - x64_[0]
        h = float(np.median(np.sqrt(ref.sqdist(spread, spread))[np.triu_indices(len(spread), 1)]))
        if not h > 0:  # the cast collapsed every point onto one: nothing to compare
            return None
        h = float(np.clip(h, 1e-12, 1e12))
        k = km.Gaussian(h)
        got = _finite_or_refused(lambda: km.mmd2(x, y, k), x64_, y64_)
        kxx = ref.gram("gaussian", x64_, x64_, bandwidth=h)
        kyy = ref.gram("gaussian", y64_, y64_, bandwidth=h)
        kxy = ref.gram("gaussian", x64_, y64_, bandwidth=h)
        tol = 1e-9 if p["dtype"] == "f64" else 1e-5
        assert float(got) == pytest.approx(ref.mmd2(kxx, kyy, kxy, True), abs=tol)
        if p["dtype"] == "f64":
            # Translation invariance. On a grid of step 2^e every point and the shift are
            # integers times 2^e below 2^52, so the shifted sample is exactly the same points.
            step = 2.0 ** (np.floor(np.log2(10.0 ** p["log_scale"])) - 10)
            grid = lambda a: jnp.asarray(np.round(a / step) * step)
            shift = (np.round(abs(p["offset"]) / step) + 12345) * step
            xq, yq = grid(x64_), grid(y64_)
            moved = km.mmd2(xq + shift, yq + shift, k)
            assert float(moved) == pytest.approx(float(km.mmd2(xq, yq, k)), abs=1e-9)
        # Points are exchangeable: a permutation of either sample changes nothing.
        perm = np.random.default_rng(1).permutation(x.shape[0])
        assert float(km.mmd2(x[perm], y, k)) == pytest.approx(float(got), abs=tol)
        m = x.shape[0]
        got_h = km.hsic(x, y[:m], k, k)
        expected_h = ref.hsic(kxx, ref.gram("gaussian", y64_[:m], y64_[:m], bandwidth=h), False)
        assert float(got_h) == pytest.approx(expected_h, abs=tol)
        assert float(km.hsic(x[perm], y[:m][perm], k, k)) == pytest.approx(float(got_h), abs=tol)


@_SETTINGS
@given(samples)
def test_property_median_bandwidth_and_ksd2(p):
    with jax.enable_x64(p["dtype"] == "f64"):
        x, _, x64_, _, scale = _draw(p)
        h = _finite_or_refused(lambda: km.median_bandwidth(x), x64_)
        if h is None:
            return
        dist = np.sqrt(ref.sqdist(x64_, x64_))[np.triu_indices(x.shape[0], 1)]
        expected = np.median(dist) if np.median(dist) > 0 else 1.0
        rel = 1e-9 if p["dtype"] == "f64" else 1e-3
        assert float(h) == pytest.approx(expected, rel=rel, abs=1e-30)
        # KSD against N(offset, scale^2 I), with the IMQ kernel at the data's scale: the
        # statistic only sees differences, so it must agree with the float64 formula.
        s_d = jnp.asarray(-(x64_ - p["offset"]) / scale**2, x.dtype)
        s = np.asarray(s_d, np.float64)  # the reference sees the same rounded scores
        bw = float(np.clip(scale, 1e-12, 1e12))
        got = _finite_or_refused(lambda: km.ksd2(x, s_d, km.IMQ(bandwidth=bw)), x64_, s)
        u = ref.stein_gram("imq", x64_, s, c=1.0, beta=-0.5, bandwidth=bw)
        expected = (u.sum() - np.trace(u)) / (x.shape[0] * (x.shape[0] - 1))
        # Scores are O(1 / scale): compare relative to the size of the Stein kernel's terms.
        size = np.abs(u).max()
        tol = (1e-8 if p["dtype"] == "f64" else 1e-4) * size
        assert float(got) == pytest.approx(expected, abs=tol)


# One shape per dimension keeps this to a few compiles (the suite is compile-bound).
few_shapes = samples.map(lambda p: {**p, "n": 8})


@settings(_SETTINGS, max_examples=12)
@given(few_shapes, st.sampled_from(["mmd", "hsic", "ksd"]), st.booleans())
def test_property_reject_implies_a_finite_statistic(p, test, poison):
    with jax.enable_x64(p["dtype"] == "f64"):
        x, y, *_ = _draw(p)
        y = y[: x.shape[0]]
        if poison:  # a NaN that only jit lets through
            x = x.at[0, 0].set(jnp.nan)
        k = km.Gaussian(10.0 ** p["log_scale"])

        def run(key, a, b):
            if test == "mmd":
                return km.mmd_test(key, a, b, k, num_permutations=39)
            if test == "hsic":
                return km.hsic_test(key, a, b, k, k, num_permutations=39)
            return km.ksd_test(key, a, -(a - p["offset"]), k, num_bootstrap=39)

        res = jax.jit(run)(jax.random.key(p["seed"]), x, y)
        assert not bool(res.reject) or np.isfinite(float(res.statistic))
        assert not bool(res.reject) or np.isfinite(float(res.p_value))
        if poison:
            assert not bool(res.reject) and np.isnan(float(res.p_value))


def test_thinning_half_precision_is_thinning_of_the_same_values_in_float32(getkey):
    x = jax.random.normal(getkey(), (256, 2)).astype(jnp.bfloat16)
    k = km.Gaussian(1.0)
    key = getkey()
    same_values = jnp.asarray(x, jnp.float32)
    np.testing.assert_array_equal(km.kernel_thin(key, x, k), km.kernel_thin(key, same_values, k))
    np.testing.assert_array_equal(
        km.compresspp(key, x, k, g=1), km.compresspp(key, same_values, k, g=1)
    )
