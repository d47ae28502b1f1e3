"""Sequential tests by betting (SKIT, the MMD two-sample test): dense references, online = scan,
vmap, level and power with binomial bounds, float32 accuracy, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from scipy import stats

import kmethods as km
from kmethods import betting
from kmethods.betting import _core, _tests

ALPHA = 0.05
LEVEL_STREAMS = 500
DEFAULT_MAX_BET = {"ons": 0.5, "agrapa": 0.9}
BETTORS = {"ons": betting.ons, "agrapa": betting.agrapa}


# ------------------------------------------------------------------ dense NumPy references


def _gauss(a, b, bandwidth):
    d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return np.exp(-d2 / (2.0 * bandwidth**2))


def _dense_skit_payoffs(x, y, bw_x, bw_y):
    """SKIT's payoffs, every Gram matrix and witness recomputed from scratch at each pair."""
    payoffs, norms2 = [], []
    for t in range(x.shape[0] // 2):
        m = 2 * t
        if m == 0:
            payoffs.append(0.0)
            norms2.append(0.0)
            continue
        hx, hy = x[:m], y[:m]
        k_mat, l_mat = _gauss(hx, hx, bw_x), _gauss(hy, hy, bw_y)
        centring = np.eye(m) - np.ones((m, m)) / m
        norm2 = np.trace(k_mat @ centring @ l_mat @ centring) / m**2
        norms2.append(norm2)

        def witness(xp, yp, hx=hx, hy=hy):
            k = _gauss(xp[None], hx, bw_x)[0]
            l_vals = _gauss(yp[None], hy, bw_y)[0]
            return np.mean(k * l_vals) - np.mean(k) * np.mean(l_vals)

        a, b = 2 * t, 2 * t + 1
        value = 0.5 * (
            witness(x[b], y[b]) + witness(x[a], y[a]) - witness(x[a], y[b]) - witness(x[b], y[a])
        )
        payoffs.append(float(np.clip(value / math.sqrt(norm2), -1.0, 1.0)))
    return np.array(payoffs), np.array(norms2)


def _dense_mmd_payoffs(x, y, bandwidth):
    """The two-sample payoffs (g(x_t) - g(y_t)) / 2, g the unit-norm MMD witness of the past."""
    payoffs = []
    for t in range(x.shape[0]):
        if t == 0:
            payoffs.append(0.0)
            continue
        hx, hy = x[:t], y[:t]
        norm2 = (
            _gauss(hx, hx, bandwidth).mean()
            + _gauss(hy, hy, bandwidth).mean()
            - 2.0 * _gauss(hx, hy, bandwidth).mean()
        )

        def witness(z, hx=hx, hy=hy):
            return _gauss(z[None], hx, bandwidth).mean() - _gauss(z[None], hy, bandwidth).mean()

        value = 0.5 * (witness(x[t]) - witness(y[t])) / math.sqrt(norm2)
        payoffs.append(float(np.clip(value, -1.0, 1.0)))
    return np.array(payoffs)


def _dense_betting(payoffs, bet, alpha):
    """The bettor as a plain loop: fractions, wealth, rejection and stopping time."""
    max_bet = DEFAULT_MAX_BET[bet]
    lam, scale, total, total_sq, wealth = 0.0, 1.0, 0.0, 0.0, 1.0
    fractions, trajectory, stopping_time = [], [], None
    for t, f in enumerate(payoffs):
        if bet == "agrapa":
            lam = min(max((1e-3 + total) / (1.0 + total_sq), 0.0), max_bet)
        fractions.append(lam)
        wealth *= 1.0 + lam * f
        trajectory.append(wealth)
        if stopping_time is None and wealth >= 1.0 / alpha:
            stopping_time = t + 1
        total, total_sq = total + f, total_sq + f * f
        if bet == "ons":
            z = f / (1.0 + lam * f)
            scale += z * z
            lam = min(max(lam + 2.0 / (2.0 - math.log(3.0)) * z / scale, 0.0), max_bet)
    reject = stopping_time is not None
    return np.array(fractions), np.array(trajectory), reject, stopping_time or len(payoffs)


def _dependent_stream(key, n, beta, dx=1, dy=1):
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (n, dx))
    noise = jax.random.normal(ke, (n, dy))
    return x, beta * x[:, :dy] + noise


def _assert_stopping_consistent(result, alpha):
    """stopping_time is the first step with W >= 1/alpha, or T when there is none."""
    wealth = np.asarray(result.wealth)
    crossed = wealth >= 1.0 / alpha
    hits = crossed.any(axis=-1)
    np.testing.assert_array_equal(np.asarray(result.reject), hits)
    expected = np.where(hits, np.argmax(crossed, axis=-1) + 1, wealth.shape[-1])
    np.testing.assert_array_equal(np.asarray(result.stopping_time), expected)


# ------------------------------------------------------------------ exact against the references


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_skit_matches_dense_reference(x64, getkey, bet):
    alpha = 0.5  # a threshold that the short stream crosses, so the stopping time is checked
    x, y = _dependent_stream(getkey(), 41, 3.0, dx=2)  # an odd last point is left out
    x, y = np.asarray(x), np.asarray(y)
    bw_x, bw_y = 1.3, 2.7
    res = km.skit(getkey(), x, y, km.Gaussian(bw_x), km.Gaussian(bw_y), alpha=alpha, bet=bet)
    payoffs, _ = _dense_skit_payoffs(x, y, bw_x, bw_y)
    _, wealth, reject, stopping_time = _dense_betting(payoffs, bet, alpha)
    assert res.wealth.shape == (20,) and res.wealth.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(res.wealth), wealth, rtol=1e-10)
    assert bool(res.reject) == reject and int(res.stopping_time) == stopping_time
    assert reject and stopping_time < 20


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_mmd_betting_matches_dense_reference(x64, getkey, bet):
    alpha = 0.2
    x = np.asarray(jax.random.normal(getkey(), (40, 2)))
    y = np.asarray(0.8 + jax.random.normal(getkey(), (40, 2)))
    res = km.mmd_betting_test(getkey(), x, y, km.Gaussian(1.5), alpha=alpha, bet=bet)
    _, wealth, reject, stopping_time = _dense_betting(_dense_mmd_payoffs(x, y, 1.5), bet, alpha)
    np.testing.assert_allclose(np.asarray(res.wealth), wealth, rtol=1e-10)
    assert bool(res.reject) == reject and int(res.stopping_time) == stopping_time
    assert reject and stopping_time < 40


def test_scans_in_growing_phases_match_the_dense_reference(x64, getkey, monkeypatch):
    """Long streams are scanned in stretches with growing buffers; force that on a short one."""
    monkeypatch.setattr(_core, "PHASE_MIN_STEPS", 3)
    monkeypatch.setattr(_core, "PHASES", 3)
    x, y = _dependent_stream(getkey(), 26, 2.0)
    x, y = np.asarray(x), np.asarray(y)
    test = betting.skit_test(km.Gaussian(1.0), km.Gaussian(2.0), alpha=0.5)
    res = _tests._run_skit.__wrapped__(test, x, y)  # unjitted, so the patched constant is read
    payoffs, _ = _dense_skit_payoffs(x, y, 1.0, 2.0)
    _, wealth, reject, stopping_time = _dense_betting(payoffs, "ons", 0.5)
    np.testing.assert_allclose(np.asarray(res.wealth), wealth, rtol=1e-10)
    assert bool(res.reject) == reject and int(res.stopping_time) == stopping_time

    y = y + 1.0
    test = betting.mmd_betting(km.Gaussian(1.0), alpha=0.5, bettor=betting.agrapa(0.9))
    res = _tests._run_mmd.__wrapped__(test, x, y)
    _, wealth, reject, stopping_time = _dense_betting(_dense_mmd_payoffs(x, y, 1.0), "agrapa", 0.5)
    np.testing.assert_allclose(np.asarray(res.wealth), wealth, rtol=1e-10)
    assert bool(res.reject) == reject and int(res.stopping_time) == stopping_time


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_online_steps_match_dense_payoffs_norms_and_fractions(x64, getkey, bet):
    """Step by step: the payoff, the incremental witness norm and the next betting fraction."""
    x, y = _dependent_stream(getkey(), 30, 0.7)
    x, y = np.asarray(x), np.asarray(y)
    kx, ky = km.Gaussian(1.0), km.Gaussian(1.4)
    payoffs, norms2 = _dense_skit_payoffs(x, y, 1.0, 1.4)
    fractions, wealth, _, _ = _dense_betting(payoffs, bet, ALPHA)
    test = betting.checked(betting.skit_test(kx, ky, bettor=BETTORS[bet]()))
    state = test.init(15, 1, 1)
    for t in range(15):
        state = test.step(state, x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2])
        np.testing.assert_allclose(float(state.payoff), payoffs[t], rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(float(state.wealth), wealth[t], rtol=1e-10)
        m = 2 * (t + 1)
        k_mat, l_mat = _gauss(x[:m], x[:m], 1.0), _gauss(y[:m], y[:m], 1.4)
        centring = np.eye(m) - np.ones((m, m)) / m
        dense_norm2 = np.trace(k_mat @ centring @ l_mat @ centring) / m**2
        np.testing.assert_allclose(float(state.witness.norm2()), dense_norm2, 1e-9)
        if t + 1 < 15:
            assert norms2[t + 1] == pytest.approx(dense_norm2, rel=1e-12)
        w = state.witness
        np.testing.assert_allclose(
            np.asarray(w.k_dev[:m]), k_mat.sum(1) - k_mat.sum() / m, rtol=1e-9, atol=1e-12
        )
        assert float(w.k_mean) == pytest.approx(k_mat.mean(), rel=1e-12)
        assert int(state.step) == t + 1
    # the fraction of the next bet
    last = float(state.bettor.fraction) if bet == "ons" else None
    if bet == "ons":
        z = payoffs[-1] / (1.0 + fractions[-1] * payoffs[-1])
        scale = 1.0 + sum(
            (f / (1.0 + lam * f)) ** 2 for f, lam in zip(payoffs, fractions, strict=True)
        )
        expected = min(max(fractions[-1] + 2.0 / (2.0 - math.log(3.0)) * z / scale, 0.0), 0.5)
        assert last == pytest.approx(expected, rel=1e-10)


def test_mmd_incremental_norm_matches_dense(x64, getkey):
    x = np.asarray(jax.random.normal(getkey(), (12, 3)))
    y = np.asarray(0.3 + jax.random.normal(getkey(), (12, 3)))
    kernel = km.Gaussian(2.0)
    test = betting.checked(betting.mmd_betting(kernel))
    state = test.init(12, 3)
    for t in range(12):
        state = test.step(state, x[t], y[t])
        hx, hy = x[: t + 1], y[: t + 1]
        dense = (
            _gauss(hx, hx, 2.0).sum() + _gauss(hy, hy, 2.0).sum() - 2 * _gauss(hx, hy, 2.0).sum()
        )
        assert float(state.witness.h_sum) == pytest.approx(dense, rel=1e-10)


# ------------------------------------------------------------------ online = scan, vmap = loop


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_skit_online_equals_scan(getkey, bet):
    x, y = _dependent_stream(getkey(), 24, 1.0, dx=2, dy=2)
    kx, ky = km.Gaussian(1.5), km.Gaussian(1.5)
    res = km.skit(getkey(), x, y, kx, ky, bet=bet, alpha=0.2)
    test = betting.skit_test(kx, ky, alpha=0.2, bettor=BETTORS[bet]())
    state, step = test.init(12, 2, 2), jax.jit(test.step)
    wealth = []
    for t in range(12):
        state = step(state, x[2 * t : 2 * t + 2], y[2 * t : 2 * t + 2])
        wealth.append(float(state.wealth))
    np.testing.assert_allclose(wealth, np.asarray(res.wealth), rtol=1e-5)
    assert bool(state.rejected) == bool(res.reject)
    assert int(state.stopping_time) == int(res.stopping_time)


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_mmd_online_equals_scan(getkey, bet):
    x = jax.random.normal(getkey(), (20, 2))
    y = 1.0 + jax.random.normal(getkey(), (20, 2))
    kernel = km.Gaussian(1.5)
    res = km.mmd_betting_test(getkey(), x, y, kernel, bet=bet, alpha=0.2)
    test = betting.checked(betting.mmd_betting(kernel, alpha=0.2, bettor=BETTORS[bet]()))
    state = test.init(20, 2)
    wealth = []
    for t in range(20):
        state = test.step(state, x[t], y[t])
        wealth.append(float(state.wealth))
    np.testing.assert_allclose(wealth, np.asarray(res.wealth), rtol=1e-5)
    assert int(state.stopping_time) == int(res.stopping_time)


def test_vmap_over_streams_equals_a_loop(getkey):
    xs = jax.random.normal(getkey(), (4, 30, 1))
    ys = 0.8 * xs + jax.random.normal(getkey(), (4, 30, 1))
    kx, ky = km.Gaussian(1.0), km.Gaussian(1.2)
    key = getkey()
    batched = jax.vmap(lambda x, y: km.skit(key, x, y, kx, ky, alpha=0.2))(xs, ys)
    mmd_batched = jax.vmap(lambda x, y: km.mmd_betting_test(key, x, y, kx, alpha=0.2))(xs, ys)
    # online monitoring of many streams: the step vmapped over a batch of states
    test = betting.skit_test(kx, ky, alpha=0.2)
    states = jax.vmap(lambda _: test.init(15, 1, 1))(jnp.arange(4))
    step = jax.jit(jax.vmap(test.step))
    for t in range(15):
        states = step(states, xs[:, 2 * t : 2 * t + 2], ys[:, 2 * t : 2 * t + 2])
        np.testing.assert_allclose(states.wealth, batched.wealth[:, t], rtol=1e-5)
    np.testing.assert_array_equal(states.stopping_time, batched.stopping_time)
    for i in range(4):
        single = km.skit(key, xs[i], ys[i], kx, ky, alpha=0.2)
        np.testing.assert_allclose(batched.wealth[i], single.wealth, rtol=1e-5)
        assert int(batched.stopping_time[i]) == int(single.stopping_time)
        assert bool(batched.reject[i]) == bool(single.reject)
        single = km.mmd_betting_test(key, xs[i], ys[i], kx, alpha=0.2)
        np.testing.assert_allclose(mmd_batched.wealth[i], single.wealth, rtol=1e-5)
        assert int(mmd_batched.stopping_time[i]) == int(single.stopping_time)


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_lax_scan_over_the_pure_step_equals_the_one_call(getkey, bet):
    """The factories' `step` is pure: a whole stream in one `lax.scan` (here under `jit`, with
    the test passed in as a pytree argument) gives the one-call test's wealth, rejection and
    stopping time, also with a non-default bettor passed as `bet`."""
    x, y = _dependent_stream(getkey(), 40, 0.8, dx=2)
    kx, ky = km.Gaussian(1.2), km.Gaussian(1.5)
    bettor = BETTORS[bet](0.6)
    skit = betting.skit_test(kx, ky, alpha=0.2, bettor=bettor)
    mmd = betting.mmd_betting(kx, alpha=0.2, bettor=bettor)

    def run(test, init, steps):
        def body(state, step_points):
            state = test.step(state, *step_points)
            return state, state.wealth

        return lax.scan(body, init, steps)

    run = jax.jit(run)
    state, wealth = run(skit, skit.init(20, 2, 1), (x.reshape(20, 2, 2), y.reshape(20, 2, 1)))
    res = km.skit(None, x, y, kx, ky, alpha=0.2, bet=bettor)
    np.testing.assert_allclose(wealth, res.wealth, rtol=1e-6)
    assert bool(state.rejected) == bool(res.reject)
    assert int(state.stopping_time) == int(res.stopping_time)

    shifted = jnp.concatenate([y, y], axis=1) + 0.7
    state, wealth = run(mmd, mmd.init(40, 2), (x, shifted))
    res = km.mmd_betting_test(None, x, shifted, kx, alpha=0.2, bet=bettor)
    np.testing.assert_allclose(wealth, res.wealth, rtol=1e-6)
    assert bool(state.rejected) == bool(res.reject)
    assert int(state.stopping_time) == int(res.stopping_time)


def test_lax_scan_over_the_pure_step_under_vmap_over_streams(getkey):
    """`vmap` over streams of a `lax.scan` over the pure step: each stream as the one-call
    test on it alone; one stream with a NaN is void, one that outgrows its state overflows."""
    xs = jax.random.normal(getkey(), (3, 24, 1))
    ys = 0.9 * xs + jax.random.normal(getkey(), (3, 24, 1))
    kx, ky = km.Gaussian(1.0), km.Gaussian(1.3)
    test = betting.skit_test(kx, ky, alpha=0.2, bettor=betting.agrapa())

    def stream(x, y, num_pairs):
        def body(state, pair):
            state = test.step(state, *pair)
            return state, state.log_wealth

        pairs = (x.reshape(12, 2, 1), y.reshape(12, 2, 1))
        return lax.scan(body, test.init(num_pairs, 1, 1), pairs)

    run = jax.jit(jax.vmap(stream, in_axes=(0, 0, None)), static_argnums=2)
    states, log_wealth = run(xs, ys, 12)
    for i in range(3):
        single = km.skit(None, xs[i], ys[i], kx, ky, alpha=0.2, bet="agrapa")
        np.testing.assert_allclose(np.exp(log_wealth[i]), single.wealth, rtol=1e-6)
        assert bool(states.rejected[i]) == bool(single.reject)
        assert int(states.stopping_time[i]) == int(single.stopping_time)
    assert not np.any(np.asarray(states.overflow))

    bad = xs.at[1, 7, 0].set(jnp.nan)
    clean = log_wealth
    states, log_wealth = run(bad, ys, 12)
    assert np.all(np.isnan(log_wealth[1, 3:])) and not bool(states.rejected[1])
    assert np.all(np.isfinite(log_wealth[1, :3]))
    np.testing.assert_array_equal(log_wealth[np.array([0, 2])], clean[np.array([0, 2])])
    states, log_wealth = run(xs, ys, 8)
    np.testing.assert_array_equal(states.overflow, [True] * 3)
    assert np.all(np.isnan(log_wealth[:, 8:])) and not np.any(np.asarray(states.rejected))
    np.testing.assert_array_equal(states.step, [8] * 3)


def test_float32_tracks_float64_on_long_streams(getkey):
    """The centred running sums keep float32 close to float64 over 500 pairs."""
    x, y = _dependent_stream(getkey(), 1000, 0.1)
    kx, ky = km.Gaussian(math.sqrt(2.0)), km.Gaussian(math.sqrt(2.02))
    single = km.skit(getkey(), x, y, kx, ky)
    with jax.enable_x64(True):
        double = km.skit(getkey(), np.asarray(x, np.float64), np.asarray(y, np.float64), kx, ky)
        log_double = np.log(np.asarray(double.wealth))
    assert single.wealth.dtype == jnp.float32
    np.testing.assert_allclose(np.log(np.asarray(single.wealth)), log_double, atol=1e-4)


# ------------------------------------------------------------------ level and power


def _max_rejections(streams, alpha=ALPHA):
    """Largest rejection count that is consistent with a level-alpha test (99% binomial)."""
    return stats.binom.ppf(0.99, streams, alpha)


_KX = km.Gaussian(1.0)
# test name -> (seed, dimension, run(key, x, y, bet)), the test under independent data.
_LEVEL_CASES = {
    "skit": (11, 1, lambda key, x, y, bet: km.skit(key, x, y, _KX, _KX, bet=bet)),
    "mmd_betting": (
        12,
        2,
        lambda key, x, y, bet: km.mmd_betting_test(key, x, y, km.Gaussian(1.5), bet=bet),
    ),
}


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
@pytest.mark.parametrize("test", list(_LEVEL_CASES))
def test_level_under_continuous_monitoring(test, bet):
    seed, dim, run = _LEVEL_CASES[test]
    key = jax.random.key(seed)
    xs = jax.random.normal(jax.random.fold_in(key, 0), (LEVEL_STREAMS, 200, dim))
    ys = jax.random.normal(jax.random.fold_in(key, 1), (LEVEL_STREAMS, 200, dim))
    res = jax.vmap(lambda x, y: run(key, x, y, bet))(xs, ys)
    _assert_stopping_consistent(res, ALPHA)
    assert int(np.sum(res.reject)) <= _max_rejections(LEVEL_STREAMS)


@pytest.mark.parametrize("bet", ["ons", "agrapa"])
def test_power_against_clear_alternatives(bet):
    key = jax.random.key(13)
    streams = LEVEL_STREAMS  # the level tests' shapes, so the compiled scans are reused
    xs = jax.random.normal(jax.random.fold_in(key, 0), (streams, 200, 1))
    ys = xs + 0.5 * jax.random.normal(jax.random.fold_in(key, 1), (streams, 200, 1))
    kx, ky = km.Gaussian(1.0), km.Gaussian(1.1)
    res = jax.vmap(lambda x, y: km.skit(key, x, y, kx, ky, bet=bet))(xs, ys)
    _assert_stopping_consistent(res, ALPHA)
    assert float(np.mean(res.reject)) >= 0.9
    assert float(np.median(res.stopping_time)) < 100  # rejects well before the end

    xs = jax.random.normal(jax.random.fold_in(key, 2), (streams, 200, 2))
    ys = 1.0 + jax.random.normal(jax.random.fold_in(key, 3), (streams, 200, 2))
    kernel = km.Gaussian(1.5)
    res = jax.vmap(lambda x, y: km.mmd_betting_test(key, x, y, kernel, bet=bet))(xs, ys)
    _assert_stopping_consistent(res, ALPHA)
    assert float(np.mean(res.reject)) >= 0.9


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_clear_errors(getkey):
    key = getkey()
    x = jax.random.normal(getkey(), (20, 1))
    k = km.Gaussian(1.0)
    with pytest.raises(ValueError, match="same number of points"):
        km.skit(key, x, x[:18], k, k)
    with pytest.raises(ValueError, match="`x`"):
        km.skit(key, x[:0], x[:0], k, k)
    with pytest.raises(ValueError, match="at least 4 points"):
        km.skit(key, x[:3], x[:3], k, k)
    for alpha in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="`alpha`"):
            km.skit(key, x, x, k, k, alpha=alpha)
        with pytest.raises(ValueError, match="`alpha`"):
            km.mmd_betting_test(key, x, x, k, alpha=alpha)
    with pytest.raises(ValueError, match="`bet`"):
        km.skit(key, x, x, k, k, bet="kelly")
    with pytest.raises(ValueError, match="`bet`"):
        km.mmd_betting_test(key, x, x, k, bet="kelly")
    with pytest.raises(ValueError, match="`max_bet`"):
        km.skit(key, x, x, k, k, max_bet=1.0)
    with pytest.raises(TypeError, match="`kernel_y`"):
        km.skit(key, x, x, k, "rbf")
    with pytest.raises(ValueError, match="NaN"):
        km.skit(key, x.at[3, 0].set(jnp.nan), x, k, k)

    with pytest.raises(ValueError, match="same number of points"):
        km.mmd_betting_test(key, x, x[:10], k)
    with pytest.raises(ValueError, match="at least 2 observations"):
        km.mmd_betting_test(key, x[:1], x[:1], k)
    with pytest.raises(ValueError, match="same dimension"):
        km.mmd_betting_test(key, x, jnp.ones((20, 2)), k)

    with pytest.raises(ValueError, match="`max_bet` is fixed"):
        km.skit(key, x, x, k, k, bet=betting.ons(), max_bet=0.3)
    with pytest.raises(TypeError, match="`bettor`"):
        betting.skit_test(k, k, bettor="ons")

    skit, mmd = betting.checked(betting.skit_test(k, k)), betting.checked(betting.mmd_betting(k))
    state = skit.init(2, 1, 1)
    with pytest.raises(ValueError, match="`x_pair`"):
        skit.step(state, x[:3], x[:2])
    state = skit.step(state, x[:2], x[:2])
    state = skit.step(state, x[2:4], x[2:4])
    with pytest.raises(ValueError, match="history is full"):
        skit.step(state, x[4:6], x[4:6])
    with pytest.raises(TypeError, match="the test's `init`"):
        skit.step(mmd.init(2, 1), x[:2], x[:2])
    with pytest.raises(TypeError, match="the test's `init`"):
        skit.step((), x[:2], x[:2])
    with pytest.raises(ValueError, match="`num_pairs`"):
        skit.init(0, 1, 1)
    with pytest.raises(ValueError, match="`y_new`"):
        mmd.step(mmd.init(4, 2), jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match="NaN"):
        mmd.step(mmd.init(4, 1), jnp.ones(1), jnp.full(1, jnp.nan))
