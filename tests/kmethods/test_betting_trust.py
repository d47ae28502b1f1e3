"""Trust checks of the sequential tests by betting (issue 14): non-finite data under jit/vmap
never reject, an online step past its state's capacity never reports a wealth, half-precision
input is computed in float32, a traced alpha works, and nearly constant kernels keep the level.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy import stats

import kmethods as km
from kmethods import betting

ALPHA = 0.05
STREAMS = 500
BETS = ("ons", "agrapa")


N = 60  # one stream length throughout, so that the compiled scans are shared


def _dependent(key, n=N, dim=1):
    """x and y = x + small noise: SKIT rejects on them, and the two-sample test on (x, y + 2),
    both before step 29."""
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n, dim))
    return x, x + 0.1 * jax.random.normal(ke, (n, dim))


KERNEL = km.Gaussian(1.0)


def _skit(x, y, bet="ons", alpha=ALPHA, kernel=KERNEL):
    return km.skit(None, x, y, kernel, kernel, bet=bet, alpha=alpha)


def _mmd(x, y, bet="ons", alpha=ALPHA, kernel=KERNEL):
    return km.mmd_betting_test(None, x, y + 2.0, kernel, bet=bet, alpha=alpha)


def _assert_void_from(result, first_bad):
    """Finite wealth before step `first_bad` (0-based), NaN from it on, and no rejection."""
    wealth = np.asarray(result.wealth)
    assert np.all(np.isfinite(wealth[:first_bad]))
    assert np.all(np.isnan(wealth[first_bad:]))
    assert not bool(result.reject)
    assert int(result.stopping_time) == wealth.shape[0]


# ------------------------------------------------------------------ non-finite data


@pytest.mark.parametrize("bet", [*BETS[:1], pytest.param(BETS[1], marks=pytest.mark.slow)])
def test_non_finite_data_under_jit_void_the_test(bet):
    """A NaN or an infinity at the first step (where the zero-norm guard used to turn it into
    payoff 0 and wealth 1 for good), before the rejection, or after it (point 58: both clean
    streams have rejected by then) gives NaN wealth from that step on and no rejection. Before
    the fix: a bad first step gave a finite wealth of 1, an inf finite garbage, and a NaN after
    the rejection left `reject=True`."""
    x, y = _dependent(jax.random.key(0))
    clean_skit, clean_mmd = _skit(x, y, bet), _mmd(x, y, bet)
    assert bool(clean_skit.reject) and int(clean_skit.stopping_time) < 29
    assert bool(clean_mmd.reject) and int(clean_mmd.stopping_time) < 58
    skit, mmd = jax.jit(_skit, static_argnums=2), jax.jit(_mmd, static_argnums=2)
    for bad in (np.nan, np.inf, -np.inf):
        for point in (0, 1, 9, 58):  # pairs 0, 0, 4 and 29 of SKIT
            res = skit(x.at[point, 0].set(bad), y, bet)
            _assert_void_from(res, point // 2)
            np.testing.assert_array_equal(res.wealth[: point // 2], clean_skit.wealth[: point // 2])
            _assert_void_from(skit(x, y.at[point, 0].set(bad), bet), point // 2)
            res = mmd(x.at[point, 0].set(bad), y, bet)
            _assert_void_from(res, point)
            np.testing.assert_array_equal(res.wealth[:point], clean_mmd.wealth[:point])
            _assert_void_from(mmd(x, y.at[point, 0].set(bad), bet), point)


def test_non_finite_data_under_vmap_are_void_not_rejections():
    """A vmapped power study: the replicates with a NaN are void (NaN wealth, no rejection),
    the others are untouched."""
    keys = jax.random.split(jax.random.key(2), 6)
    xs, ys = jax.vmap(_dependent)(keys)
    bad = xs.at[1, 0, 0].set(jnp.nan).at[5, 58, 0].set(jnp.nan)
    for test in (_skit, _mmd):
        clean = jax.vmap(test)(xs, ys)
        assert np.all(np.asarray(clean.reject)[[1, 5]])  # by step 29
        res = jax.vmap(test)(bad, ys)
        void = np.isnan(np.asarray(res.wealth[:, -1]))
        np.testing.assert_array_equal(void, [False, True, False, False, False, True])
        assert not np.any(np.asarray(res.reject)[void])
        np.testing.assert_array_equal(res.reject[~void], clean.reject[~void])
        np.testing.assert_array_equal(res.wealth[~void], clean.wealth[~void])


def test_online_step_with_nan_under_jit_voids_the_state():
    """Online monitoring under jit: a NaN point after the rejection voids the state."""
    x, y = _dependent(jax.random.key(0))
    kernel = km.Gaussian(1.0)
    skit, mmd = betting.skit_test(kernel, kernel), betting.mmd_betting(kernel)
    skit_step, mmd_step = jax.jit(skit.step), jax.jit(mmd.step)
    skit_state, mmd_state = skit.init(N // 2 + 1, 1, 1), mmd.init(N, 1)
    for t in range(N // 2):
        skit_state = skit_step(skit_state, x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2])
    for t in range(N - 1):
        mmd_state = mmd_step(mmd_state, x[t], y[t] + 2.0)
    assert bool(skit_state.rejected) and bool(mmd_state.rejected)
    skit_state = skit_step(skit_state, x[:2].at[0, 0].set(jnp.nan), y[:2])
    mmd_state = mmd_step(mmd_state, jnp.full((1,), jnp.nan), y[-1] + 2.0)
    for state in (skit_state, mmd_state):
        assert np.isnan(float(state.wealth)) and not bool(state.rejected)
        assert not bool(state.overflow)


# ------------------------------------------------------------------ capacity


def test_steps_past_capacity_under_jit_and_vmap_void_and_freeze_the_state():
    """Six pairs into a 2-pair SKIT state (and 6 observations into a 3-step two-sample
    state) under jit: the steps that fit match the batch test, the first one past the
    capacity voids the state (NaN wealth, no rejection, `overflow`) and nothing updates after
    it; under vmap only the streams that run out of room are voided. Before the fix the step
    wrote past the buffers and reported a wrong, finite wealth."""
    x, y = _dependent(jax.random.key(3))
    kernel = km.Gaussian(1.0)
    reference = _skit(x[:4], y[:4], alpha=0.5)
    skit = betting.skit_test(kernel, kernel, alpha=0.5)
    step, state = jax.jit(skit.step), skit.init(2, 1, 1)
    for t in range(2):
        state = step(state, x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2])
        assert not bool(state.overflow)
        np.testing.assert_allclose(state.wealth, reference.wealth[t], rtol=1e-6)
    full = state
    for t in range(2, 6):
        state = step(state, x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2])
        assert bool(state.overflow) and not bool(state.rejected)
        assert np.isnan(float(state.wealth))
        assert int(state.step) == 2 and int(state.witness.count) == 4
        for a, b in zip(jax.tree.leaves(state.witness), jax.tree.leaves(full.witness), strict=True):
            np.testing.assert_array_equal(a, b)
    # Under vmap, with one full state and one empty one: only the full one is voided.
    states = jax.tree.map(lambda a, b: jnp.stack([a, b]), full, skit.init(2, 1, 1))
    step = jax.jit(jax.vmap(skit.step))
    states = step(states, jnp.stack([x[4:6]] * 2), jnp.stack([y[4:6]] * 2))
    np.testing.assert_array_equal(states.overflow, [True, False])
    assert np.isnan(float(states.wealth[0])) and np.isfinite(float(states.wealth[1]))
    np.testing.assert_array_equal(states.witness.count, [4, 2])

    reference = _mmd(x[:3], y[:3], alpha=0.5)
    mmd = betting.mmd_betting(kernel, alpha=0.5)
    step, state = jax.jit(mmd.step), mmd.init(3, 1)
    for t in range(6):
        state = step(state, x[t], y[t] + 2.0)
        if t < 3:
            np.testing.assert_allclose(state.wealth, reference.wealth[t], rtol=1e-6)
            assert not bool(state.overflow)
        else:
            assert bool(state.overflow) and not bool(state.rejected)
            assert np.isnan(float(state.wealth)) and int(state.witness.count) == 3


# ------------------------------------------------------------------ dtypes and alpha


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    """The stream and an explicitly requested half-precision state are float32: the running
    sums hold O(m^2) kernel values."""
    x, y = _dependent(jax.random.key(5))
    xh, yh = x.astype(dtype), y.astype(dtype)
    res = _skit(xh, yh)
    ref = _skit(xh.astype(jnp.float32), yh.astype(jnp.float32))
    assert res.wealth.dtype == jnp.float32
    np.testing.assert_allclose(res.wealth, ref.wealth, rtol=1e-5)
    assert _mmd(xh, yh).wealth.dtype == jnp.float32
    skit, mmd = betting.skit_test(KERNEL, KERNEL), betting.mmd_betting(KERNEL)
    for state in (skit.init(4, 1, 1, dtype=dtype), mmd.init(4, 1, dtype=dtype)):
        assert state.log_wealth.dtype == jnp.float32
        assert state.witness.x.dtype == jnp.float32


def test_traced_alpha_matches_a_loop_and_out_of_range_never_rejects():
    """A level vmapped over is supported (it only sets the threshold log(1 / alpha)); an alpha
    outside (0, 1), which cannot be checked when traced, never rejects."""
    x, y = _dependent(jax.random.key(6))
    alphas = jnp.asarray([0.001, 0.05, 0.3, 0.0, 1.0, 2.0, jnp.nan])
    for test in (_skit, _mmd):
        res = jax.vmap(lambda a, test=test: test(x, y, alpha=a))(alphas)
        for i, a in enumerate([0.001, 0.05, 0.3]):
            single = test(x, y, alpha=a)
            assert bool(res.reject[i]) == bool(single.reject)
            assert int(res.stopping_time[i]) == int(single.stopping_time)
        assert not np.any(np.asarray(res.reject[3:]))


def test_bad_options_raise_clear_errors():
    x = jnp.ones((8, 1))
    k = km.Gaussian(1.0)
    with pytest.raises(TypeError, match="`dtype`"):
        betting.skit_test(k, k).init(2, 1, 1, dtype="not a dtype")
    with pytest.raises(TypeError, match="`dtype`"):
        betting.mmd_betting(k).init(2, 1, dtype=jnp.int32)
    with pytest.raises(TypeError, match="`max_bet`"):
        jax.vmap(lambda b: km.skit(None, x, x, k, k, max_bet=b))(jnp.asarray([0.5, 0.6]))
    with pytest.raises(TypeError, match="`alpha`"):
        km.mmd_betting_test(None, x, x, k, alpha="0.05")
    with pytest.raises(ValueError, match="`max_bet`"):
        km.mmd_betting_test(None, x, x, k, max_bet=0.0)
    with pytest.raises(TypeError, match="`num_steps`"):
        betting.mmd_betting(k).init(2.5, 1)
    with pytest.raises(TypeError, match="`max_bet`"):
        jax.vmap(betting.agrapa)(jnp.asarray([0.5, 0.6]))


# ------------------------------------------------------------------ nearly constant kernels


def _max_rejections(streams=STREAMS, alpha=ALPHA):
    return stats.binom.ppf(0.99, streams, alpha)


@pytest.mark.parametrize("bet", [*BETS[:1], pytest.param(BETS[1], marks=pytest.mark.slow)])
def test_level_with_nearly_constant_kernels(bet):
    """Bandwidth 1e4 on unit-scale independent data (kernel values within 1e-8 of 1, so every
    payoff is decided by rounding), and SKIT with one variable constant: the payoff is exactly
    odd under the swap that H0 leaves invariant, so over 500 vmapped streams the rejection
    rate stays below the 99% binomial bound of a level-0.05 test (the tests are anytime-valid,
    so only the upper end applies). Same shapes as the level tests of test_betting.py,
    whose compiled scans this reuses; aGRAPA runs under `slow`."""
    key = jax.random.key(14)
    xs = jax.random.normal(jax.random.fold_in(key, 0), (STREAMS, 200, 1))
    ys = jax.random.normal(jax.random.fold_in(key, 1), (STREAMS, 200, 1))
    flat = km.Gaussian(1e4)
    res = jax.vmap(lambda x, y: _skit(x, y, bet, kernel=flat))(xs, ys)
    assert np.all(np.isfinite(np.asarray(res.wealth)))
    assert int(np.sum(res.reject)) <= _max_rejections()
    constant = jnp.full_like(ys, 3.0)
    res = jax.vmap(lambda x, y: _skit(x, y, bet))(xs, constant)
    assert int(np.sum(res.reject)) <= _max_rejections()

    xs2 = jax.random.normal(jax.random.fold_in(key, 2), (STREAMS, 200, 2))
    ys2 = jax.random.normal(jax.random.fold_in(key, 3), (STREAMS, 200, 2))
    flat = km.Gaussian(1.5e4)
    res = jax.vmap(lambda x, y: km.mmd_betting_test(None, x, y, flat, bet=bet))(xs2, ys2)
    assert np.all(np.isfinite(np.asarray(res.wealth)))
    assert int(np.sum(res.reject)) <= _max_rejections()


# ------------------------------------------------------------------ properties

_DTYPES = {"f16": jnp.float16, "bf16": jnp.bfloat16, "f32": jnp.float32, "f64": jnp.float64}
_STREAMS = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(_DTYPES)),
        "log_scale": st.integers(-6, 6),
        "offset": st.sampled_from([0.0, 3.0, -250.0, 1e4]),
        "poison": st.sampled_from([None, 0, 7, 19]),  # where a NaN goes (jit lets it through)
        "seed": st.integers(0, 2**16),
    }
)
# Jitted once per dtype (the kernel is traced): four compilations for the whole property test.
_SKIT = jax.jit(lambda a, b, k: km.skit(None, a, b, k, k, alpha=0.2))
_MMD = jax.jit(lambda a, b, k: km.mmd_betting_test(None, a, b, k, alpha=0.2))


@settings(max_examples=24, deadline=None, derandomize=True, phases=[Phase.generate])
@given(_STREAMS)
def test_property_betting_wealth_is_finite_translation_invariant_and_never_rejects_on_nan(p):
    """Over dtypes, scales 1e-6..1e6 and offsets up to 1e4, in d = 17 (where squared distances
    take the Gram form, the one that cancelled on shifted data): the wealth is float32 or
    wider; before any bad step it matches the float64 wealth of the same values moved to the
    origin (a Gaussian kernel at the data's scale sees only differences); a NaN point, or an
    infinity from a cast that overflowed, makes the wealth NaN from its step on, and then the
    test never rejects; `reject` implies a finite wealth."""
    n, d = 20, 17
    with jax.enable_x64(p["dtype"] == "f64"):
        rng = np.random.default_rng(p["seed"])
        scale = 10.0 ** p["log_scale"]
        x = rng.standard_normal((n, d))
        y = x + 0.5 * rng.standard_normal((n, d))
        wide = jnp.float64 if p["dtype"] == "f64" else jnp.float32
        cast = lambda a: jnp.asarray(p["offset"] + scale * a, wide).astype(_DTYPES[p["dtype"]])
        clean, yd, shifted = cast(x), cast(y), cast(y + 1.0)  # shifted: the two-sample test's y
        xd = clean if p["poison"] is None else clean.at[p["poison"], 0].set(jnp.nan)
        kernel = km.Gaussian(scale * np.sqrt(d))
        runs = {"skit": (_SKIT, xd, yd, 2), "mmd": (_MMD, xd, shifted, 1)}
        results = {name: run(a, b, kernel) for name, (run, a, b, _) in runs.items()}
    for name, (run, a, b, per_step) in runs.items():
        res = results[name]
        wealth = np.asarray(res.wealth, np.float64)
        assert res.wealth.dtype == (jnp.float64 if p["dtype"] == "f64" else jnp.float32)
        assert not bool(res.reject) or np.all(np.isfinite(wealth))
        # The first step with a NaN or an infinity (the NaN put there, or a cast overflow).
        rows = np.all(np.isfinite(np.asarray(a)), 1) & np.all(np.isfinite(np.asarray(b)), 1)
        steps = rows[: per_step * wealth.shape[0]].reshape(-1, per_step).all(1)
        first = int(np.argmin(steps)) if not steps.all() else wealth.shape[0]
        assert np.all(np.isnan(wealth[first:])) and np.all(np.isfinite(wealth[:first]))
        assert bool(res.reject) <= (first == wealth.shape[0])
        # The same values moved to the origin exactly, in float64 (bad rows zeroed: the wealth
        # before a step depends on the steps before it only).
        with jax.enable_x64(True):
            a64 = np.where(rows[:, None], np.asarray(a, np.float64) - p["offset"], 0.0)
            b64 = np.where(rows[:, None], np.asarray(b, np.float64) - p["offset"], 0.0)
            ref = np.asarray(run(a64, b64, kernel).wealth)
        np.testing.assert_allclose(np.log(wealth[:first]), np.log(ref[:first]), atol=1e-3)
