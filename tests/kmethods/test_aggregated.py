"""Aggregated tests (MMDAgg, HSICAgg, KSDAgg): dense references, level correction, validity.

Shapes and options are shared between tests so that each jitted program compiles once: the
level and power checks of MMDAgg run through one vmapped program, and the references run
under x64 (so that their counts agree exactly with a float64 NumPy computation).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import kmethods
from kmethods import aggregated
from kmethods.aggregated import L1Laplace
from kmethods.aggregated._mmdagg import _mmdagg
from kmethods.calibration import permuted_labels
from kmethods.kernels import IMQ, Gaussian, Linear

ALPHA = 0.05
B1, B2, B3 = 60, 60, 50  # draws of the reference checks


# ---------------------------------------------------------------- NumPy references


def np_gram(kernel, a, b):
    """Dense kernel matrix in float64 for the kernels of the default collections."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a[:, None, :] - b[None, :, :]
    h = float(kernel.bandwidth)
    if isinstance(kernel, L1Laplace):
        return np.exp(-np.abs(diff).sum(-1) / h)
    if isinstance(kernel, Gaussian):
        return np.exp(-(diff**2).sum(-1) / (2 * h**2))
    raise TypeError(type(kernel))


def np_imq_stein(kernel, x, s):
    """Dense Langevin Stein matrix of IMQ(c, beta, h) (Liu et al. 2016), float64."""
    x, s = np.asarray(x, np.float64), np.asarray(s, np.float64)
    c, beta, h = float(kernel.c), float(kernel.beta), float(kernel.bandwidth)
    d = x.shape[1]
    diff = x[:, None, :] - x[None, :, :]
    r2 = (diff**2).sum(-1)
    base = c**2 + r2 / h**2
    k = base**beta
    grad_x = 2 * beta / h**2 * base ** (beta - 1)  # times (x - y): grad_x k
    trace = -2 * beta / h**2 * d * base ** (beta - 1) - 4 * beta * (
        beta - 1
    ) / h**4 * r2 * base ** (beta - 2)
    ss = s @ s.T
    cross = np.einsum("ijd,jd->ij", diff, s) - np.einsum("ijd,id->ij", diff, s)
    return ss * k + grad_x * cross + trace


def np_signs(key, n, num_draws):
    """Ones, then one Rademacher vector per key of `jax.random.split(key, num_draws)`."""
    keys = jax.random.split(key, num_draws)
    signs = np.stack([np.asarray(jax.random.rademacher(k, (n,), jnp.float64)) for k in keys])
    return np.concatenate([np.ones((1, n)), signs])


def np_aggregate(draws, w, alpha, b1, b3):
    """Schrab et al. (JMLR 2023), Algorithm 1 step by step, as in their code: sorted quantiles,
    bisection on u. A level u w_i >= 1 gives the quantile -inf (their code's index would wrap
    or fail there)."""
    num = draws.shape[0]
    observed, m1, m2 = draws[:, 0], np.sort(draws[:, : b1 + 1], 1), draws[:, b1 + 1 :]

    def quantiles(u):
        idx = np.ceil((b1 + 1) * (1 - u * w)).astype(int) - 1
        q = m1[np.arange(num), np.clip(idx, 0, b1)]
        return np.where(idx >= 0, q, -np.inf)

    low, high = 0.0, np.min(1 / w)
    for _ in range(b3):
        u = (low + high) / 2
        if np.mean(np.any(m2 > quantiles(u)[:, None], 0)) <= alpha:
            low = u
        else:
            high = u
    q = quantiles(low)
    return low, q, observed > q


def np_mmd_draws(x, y, kernels, labels):
    """Unbiased MMD^2 of every kernel on every labelling (rows of `labels`), (N, B)."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    out = []
    for kernel in kernels:
        k = np_gram(kernel, z, z)
        np.fill_diagonal(k, 0.0)
        row = []
        for e in labels:
            e = e.astype(bool)
            kxx, kyy, kxy = k[e][:, e].sum(), k[~e][:, ~e].sum(), k[e][:, ~e].sum()
            row.append(kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m))
        out.append(row)
    return np.array(out)


def np_hsic_h(kernel, a, b):
    """h_ij = k(a_i, a_j) - k(a_i, b_j) - k(b_i, a_j) + k(b_i, b_j) for the halves a, b."""
    return (
        np_gram(kernel, a, a)
        - np_gram(kernel, a, b)
        - np_gram(kernel, b, a)
        + np_gram(kernel, b, b)
    )


# ---------------------------------------------------------------- the level correction


@pytest.mark.parametrize("kind", ["uniform", "decreasing", "increasing", "centred", "odd"])
def test_level_correction_matches_numpy(kind):
    rng = np.random.default_rng(0)
    num = 7 if kind == "odd" else 6
    w = aggregated.weights(num, "centred" if kind == "odd" else kind)
    signal = np.linspace(0.0, 2.5, num)[:, None]
    draws = rng.standard_normal((num, 1 + 200 + 300))
    draws[:, :1] += signal  # the observed statistics
    draws[:, 1:] = 0.6 * draws[:, 1:] + 0.4 * draws[:1, 1:]  # correlated across kernels
    result = _aggregate32(jnp.asarray(draws, jnp.float32), jnp.asarray(w, jnp.float32))
    u, q, rejections = np_aggregate(draws.astype(np.float32).astype(np.float64), w, ALPHA, 200, 50)
    np.testing.assert_allclose(float(result.u), u, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(result.rejections), rejections)
    # Where (B1 + 1) u w_i is an integer in exact arithmetic (weights in rational ratios put
    # several kernels' rank changes at one u), the rank is decided by rounding, in float64 as
    # in float32: those kernels may differ by one rank.
    level = 201 * u * w
    exact = np.abs(level - np.round(level)) > 1e-4
    np.testing.assert_array_equal(np.asarray(result.quantiles)[exact], q.astype(np.float32)[exact])
    assert bool(result.reject) == bool(rejections.any())
    # p_i <= u w_i is the same decision as "statistic > quantile".
    thresholds = np.asarray(result.thresholds)
    np.testing.assert_array_equal(np.asarray(result.p_values) <= thresholds, rejections)
    _check_p_value_and_decision(result.p_value, result.reject, 300)


def _check_p_value_and_decision(p_value, reject, b2):
    """The corrected p-value is in [1 / (1 + B2), 1]; p <= alpha rejects, and a rejection has
    p <= alpha + (1 - alpha) / (1 + B2) (the data counted among the B2 correction draws)."""
    p, reject = np.asarray(p_value), np.asarray(reject)
    assert np.all((p >= 1.0 / (1 + b2) - 1e-7) & (p <= 1.0))
    assert np.all(reject[p <= ALPHA])
    assert np.all(p[reject] <= ALPHA + (1 - ALPHA) / (1 + b2) + 1e-7)


@jax.jit
def _aggregate32(draws, w):
    return aggregated.aggregate(
        draws, w, ALPHA, jnp.zeros(draws.shape[0]), num_quantile=200, num_steps=50, kernels=None
    )


# ---------------------------------------------------------------- dense references


def _check_against_reference(result, draws, w):
    u, q, rejections = np_aggregate(draws, w, ALPHA, B1, B3)
    np.testing.assert_allclose(np.asarray(result.statistics), draws[:, 0], rtol=1e-9, atol=1e-12)
    p_values = np.mean(np.sort(draws[:, : B1 + 1], 1) >= draws[:, :1], 1)
    np.testing.assert_allclose(np.asarray(result.p_values), p_values)
    np.testing.assert_allclose(float(result.u), u, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(result.quantiles), q, rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(result.rejections), rejections)


def test_mmdagg_matches_dense_numpy(x64):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((14, 2))
    y = rng.standard_normal((11, 2)) * 1.4 + 0.3
    key = jax.random.key(3)
    result = kmethods.mmdagg(
        key, x, y, num_bandwidths=4, num_permutations=B1, num_correction=B2, block_size=6
    )
    kernels = result.kernels.unstack()
    assert [type(k) for k in kernels] == [L1Laplace] * 4 + [Gaussian] * 4
    observed = np.concatenate([np.ones(14), np.zeros(11)])
    labels = np.asarray(permuted_labels(key, jnp.asarray(observed), B1 + B2))
    draws = np_mmd_draws(x, y, kernels, np.concatenate([observed[None], labels]))
    _check_against_reference(result, draws, np.tile(aggregated.weights(4) / 2, 2))
    # Each statistic is the library's unbiased MMD^2 with that kernel.
    mmd = [float(kmethods.mmd2(x, y, k)) for k in kernels]
    np.testing.assert_allclose(np.asarray(result.statistics), mmd, rtol=1e-9)
    # One compile per shape and layout: new data, key and bandwidths reuse it.
    size = _mmdagg._cache_size()
    other = [L1Laplace(h) for h in (0.3, 1.0, 2.0, 4.0)] + [
        Gaussian(h) for h in (0.2, 1.0, 2.0, 3.0)
    ]
    options = dict(num_permutations=B1, num_correction=B2, block_size=6, weights="centred")
    kmethods.mmdagg(jax.random.key(9), x + 1.0, 2.0 * y, other, **options)
    assert _mmdagg._cache_size() == size


def test_ksdagg_matches_dense_numpy(x64):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20, 2)) * 1.2
    scores = -x
    key = jax.random.key(4)
    result = kmethods.ksdagg(
        key, x, scores, num_bandwidths=5, num_bootstrap=B1, num_correction=B2, block_size=7
    )
    kernels = result.kernels.unstack()
    assert all(isinstance(k, IMQ) for k in kernels)
    columns = np_signs(key, 20, B1 + B2)
    draws = []
    for kernel in kernels:
        h = np_imq_stein(kernel, x, scores)
        np.fill_diagonal(h, 0.0)
        draws.append(np.einsum("bi,ij,bj->b", columns, h, columns) / (20 * 19))
    _check_against_reference(result, np.array(draws), aggregated.weights(5))
    ksd = [float(kmethods.ksd2(x, scores, k)) for k in kernels]
    np.testing.assert_allclose(np.asarray(result.statistics), ksd, rtol=1e-9)


@pytest.mark.parametrize("num_diagonals", [None, 3])
def test_hsicagg_matches_dense_numpy(x64, num_diagonals):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((25, 2))  # odd n: the last observation is dropped
    y = x[:, :1] ** 2 + rng.standard_normal((25, 1))
    key = jax.random.key(5)
    kx = [Gaussian(0.5), Gaussian(1.0)]
    ky = [Gaussian(0.7), Gaussian(1.5), Gaussian(3.0)]
    result = kmethods.hsicagg(
        key,
        x,
        y,
        kx,
        ky,
        num_diagonals=num_diagonals,
        num_bootstrap=B1,
        num_correction=B2,
        block_size=5,
    )
    num = 12
    columns = np_signs(key, num, B1 + B2)
    i, j = np.indices((num, num))
    design = (i != j) if num_diagonals is None else (j > i) & (j - i <= num_diagonals)
    draws = []
    for a in kx:
        for b in ky:
            h = np_hsic_h(a, x[:num], x[num : 2 * num]) * np_hsic_h(b, y[:num], y[num : 2 * num])
            h = np.where(design, h, 0.0)
            draws.append(np.einsum("bi,ij,bj->b", columns, h, columns) / (4 * design.sum()))
    _check_against_reference(result, np.array(draws), np.full(6, 1 / 6))


def test_hsicagg_incomplete_with_all_diagonals_is_complete(x64):
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((24, 2)), rng.standard_normal((24, 1))
    key = jax.random.key(6)
    kx, ky = [Gaussian(0.5), Gaussian(1.0)], [Gaussian(0.7), Gaussian(1.5), Gaussian(3.0)]
    options = dict(num_bootstrap=B1, num_correction=B2, block_size=5)
    complete = kmethods.hsicagg(key, x, y, kx, ky, **options)
    incomplete = kmethods.hsicagg(key, x, y, kx, ky, num_diagonals=11, **options)
    np.testing.assert_allclose(incomplete.statistics, complete.statistics, rtol=1e-12)
    np.testing.assert_allclose(incomplete.null_samples, complete.null_samples)
    np.testing.assert_array_equal(incomplete.rejections, complete.rejections)


def test_hsic_statistic_estimates_hsic(x64):
    """The paired U-statistic is unbiased for HSIC: against the unbiased HSIC of the library
    on a large sample, within its spread."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((800, 1))
    y = x + 0.5 * rng.standard_normal((800, 1))
    kx, ky = Gaussian(1.0), Gaussian(1.0)
    result = kmethods.hsicagg(
        jax.random.key(0), x, y, [kx], [ky], num_bootstrap=19, num_correction=10
    )
    exact = float(kmethods.hsic(x, y, kx, ky, unbiased=True))
    assert abs(float(result.statistics[0]) - exact) < 0.1 * exact


# ---------------------------------------------------------------- validity and power

N_MMD = 50
_MMD_OPTIONS = dict(num_bandwidths=5, num_permutations=100, num_correction=100)


@jax.jit
def _mmdagg_batch(keys, x, y):
    return jax.vmap(lambda k, a, b: kmethods.mmdagg(k, a, b, **_MMD_OPTIONS))(keys, x, y)


@jax.jit
def _median_mmd_batch(keys, x, y):
    def one(k, a, b):
        z = jnp.concatenate([a, b])
        kernel = Gaussian(kmethods.median_bandwidth(z))
        return kmethods.mmd_test(k, a, b, kernel, num_permutations=100).reject

    return jax.vmap(one)(keys, x, y)


def _binomial_interval(reps, level=0.99):
    return stats.binom.interval(level, reps, ALPHA)


def test_mmdagg_level_under_the_null_and_nonfinite_never_rejects():
    reps = 200
    rng = np.random.default_rng(10)
    x = rng.uniform(size=(reps, N_MMD, 1)).astype(np.float32)
    y = rng.uniform(size=(reps, N_MMD, 1)).astype(np.float32)
    y[-1, 3, 0] = np.nan  # one replicate with a NaN that jit let through
    keys = jax.random.split(jax.random.key(11), reps)
    result = _mmdagg_batch(keys, x, y)
    assert not bool(result.reject[-1])
    assert np.all(np.isnan(np.asarray(result.statistics[-1])))
    assert np.isnan(float(result.p_value[-1]))
    rejections = int(np.sum(np.asarray(result.reject[:-1])))
    low, high = _binomial_interval(reps - 1)
    assert low <= rejections <= high, rejections
    finite = np.isfinite(np.asarray(result.p_value))
    _check_p_value_and_decision(result.p_value[finite], result.reject[finite], 100)


def _perturbed_uniform(rng, shape, frequency, amplitude):
    """Samples of the density 1 + amplitude sin(2 pi frequency x) on [0, 1], by rejection:
    a high-frequency perturbation, which the median bandwidth (about 0.3) smooths away."""
    out = np.empty(int(np.prod(shape)))
    filled = 0
    while filled < out.size:
        u = rng.uniform(size=2 * out.size)
        keep = u[
            rng.uniform(size=u.size) * (1 + amplitude)
            < 1 + amplitude * np.sin(2 * np.pi * frequency * u)
        ]
        take = min(keep.size, out.size - filled)
        out[filled : filled + take] = keep[:take]
        filled += take
    return out.reshape(shape).astype(np.float32)


def test_mmdagg_beats_the_median_bandwidth():
    reps = 60
    rng = np.random.default_rng(12)
    x = rng.uniform(size=(reps, N_MMD, 1)).astype(np.float32)
    y = _perturbed_uniform(rng, (reps, N_MMD, 1), frequency=2, amplitude=1.0)
    keys = jax.random.split(jax.random.key(13), reps)
    agg = float(np.mean(np.asarray(_mmdagg_batch(keys, x, y).reject)))
    median = float(np.mean(np.asarray(_median_mmd_batch(keys, x, y))))
    assert agg >= median + 0.2, (agg, median)


def test_ksdagg_level_under_the_null():
    reps = 200
    rng = np.random.default_rng(14)
    x = rng.standard_normal((reps, 40, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.key(15), reps)
    run = jax.jit(
        jax.vmap(
            lambda k, a: (
                kmethods.ksdagg(
                    k, a, -a, num_bandwidths=4, num_bootstrap=100, num_correction=100
                ).reject
            )
        )
    )
    rejections = int(np.sum(np.asarray(run(keys, x))))
    low, high = _binomial_interval(reps)
    assert low <= rejections <= high, rejections


def test_hsicagg_level_under_the_null():
    """The incomplete form on 8 diagonals, with the default grids at 2^-1, 1, 2 times the
    medians (9 pairs: with B1 = 200 draws, per-kernel levels u w_i stay above 1 / (B1 + 1))."""
    reps = 200
    rng = np.random.default_rng(16)
    x = rng.standard_normal((reps, 40, 1)).astype(np.float32)
    y = rng.standard_normal((reps, 40, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.key(17), reps)

    def one(k, a, b):
        kx, ky = aggregated.hsicagg_kernels(a, b, exponents=(-1, 0, 1))
        options = dict(num_bootstrap=200, num_correction=200, num_diagonals=8)
        return kmethods.hsicagg(k, a, b, kx, ky, **options).reject

    rejections = int(np.sum(np.asarray(jax.jit(jax.vmap(one))(keys, x, y))))
    low, high = _binomial_interval(reps)
    assert low <= rejections <= high, rejections


# ---------------------------------------------------------------- input handling


def test_float16_is_computed_in_float32():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((16, 1)).astype(np.float16)
    y = (rng.standard_normal((16, 1)) + 1.0).astype(np.float16)
    options = dict(num_bootstrap=20, num_correction=20, num_diagonals=2)
    key = jax.random.key(19)
    half = kmethods.hsicagg(key, x, y, **options)
    single = kmethods.hsicagg(key, x.astype(np.float32), y.astype(np.float32), **options)
    assert half.statistics.dtype == jnp.float32 and half.u.dtype == jnp.float32
    np.testing.assert_array_equal(half.statistics, single.statistics)


def test_nonfinite_input_raises_eagerly():
    x = np.zeros((10, 1))
    x[2] = np.inf
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="`x`"):
        kmethods.mmdagg(key, x, np.zeros((10, 1)))
    with pytest.raises(ValueError, match="`y`"):
        kmethods.hsicagg(key, np.zeros((10, 1)), x)
    with pytest.raises(ValueError, match="`score`"):
        kmethods.ksdagg(key, np.ones((10, 1)), x)


@pytest.mark.parametrize(
    ("call", "error", "name"),
    [
        (lambda k, a: kmethods.mmdagg(k, a, a[:, :1]), ValueError, "`x` and `y`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, kernels=[]), TypeError, "`kernels`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, kernels=Gaussian(1.0)), TypeError, "`kernels`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, kernels=[Gaussian(1.0), 3]), TypeError, "`kernels"),
        (lambda k, a: kmethods.mmdagg(k, a, a, kernels=[Linear()]), TypeError, "`kernels`"),
        # A collection built by hand must stack its kernels (a scalar bandwidth does not).
        (
            lambda k, a: kmethods.mmdagg(k, a, a, aggregated.KernelCollection((Gaussian(1.0),))),
            ValueError,
            "`kernels`",
        ),
        (
            lambda k, a: kmethods.hsicagg(k, a, a, [Gaussian(1.0)], [Linear(), Gaussian(1.0)]),
            TypeError,
            "`kernels_y`",
        ),
        (lambda k, a: kmethods.mmdagg(k, a, a, weights="flat"), ValueError, "`weights`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, weights=[1.0, 2.0]), ValueError, "`weights`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, alpha=1.5), ValueError, "`alpha`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, num_bandwidths=1), ValueError, "`num_bandwidths`"),
        (
            lambda k, a: kmethods.mmdagg(k, a, a, num_permutations=0),
            ValueError,
            "`num_permutations`",
        ),
        (lambda k, a: kmethods.mmdagg(k, a, a, num_correction=2.0), TypeError, "`num_correction`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, bisection_steps=0), ValueError, "`bisection_steps`"),
        (lambda k, a: kmethods.mmdagg(k, a, a, block_size=-1), ValueError, "`block_size`"),
        (lambda k, a: kmethods.ksdagg(k, a, a[:, :1]), ValueError, "`score`"),
        (lambda k, a: kmethods.ksdagg(k, a, -a, num_bootstrap=0), ValueError, "`num_bootstrap`"),
        (lambda k, a: kmethods.hsicagg(k, a, a[:5]), ValueError, "`x` and `y`"),
        (lambda k, a: kmethods.hsicagg(k, a, a, num_diagonals=5), ValueError, "`num_diagonals`"),
        (lambda k, a: kmethods.hsicagg(k, a, a, [Gaussian(1.0)]), ValueError, "`kernels_x`"),
        (lambda k, a: kmethods.hsicagg(k, a, a, weights=[1.0]), TypeError, "`weights`"),
        (lambda k, a: kmethods.hsicagg(k, a[:3], a[:3]), ValueError, "`x`"),
        # (1 + B1) alpha < 1: no kernel could ever reject.
        (lambda k, a: kmethods.hsicagg(k, a, a, num_bootstrap=18), ValueError, "`num_bootstrap`"),
        (lambda k, a: kmethods.ksdagg(k, a, -a, num_bootstrap=5), ValueError, "`num_bootstrap`"),
        (
            lambda k, a: kmethods.mmdagg(k, a, a, alpha=0.01, num_permutations=98),
            ValueError,
            "`num_permutations`",
        ),
    ],
)
def test_bad_input_names_the_argument(call, error, name):
    a = np.random.default_rng(0).standard_normal((10, 2))
    with pytest.raises(error, match=name):
        call(jax.random.key(0), a)


def test_result_is_a_test_result():
    result = _aggregate32(jnp.zeros((6, 1 + 200 + 300)), jnp.full(6, 1 / 6))
    assert isinstance(result, kmethods.TestResult)
    assert result.rejections.shape == (6,) and result.null_samples.shape == (300,)
    # Constant statistics are ties: nothing rejects.
    assert not bool(result.reject)


def test_weights_sum_to_one_and_match_the_paper():
    np.testing.assert_allclose(aggregated.weights(3, "decreasing"), np.array([6, 3, 2]) / 11)
    np.testing.assert_allclose(aggregated.weights(3, "increasing"), np.array([2, 3, 6]) / 11)
    np.testing.assert_allclose(aggregated.weights(3, "centred"), np.array([1, 2, 1]) / 4)
    np.testing.assert_allclose(aggregated.weights(4, "centred"), np.array([1, 2, 2, 1]) / 6)
    for kind in aggregated.WEIGHTINGS:
        assert np.isclose(aggregated.weights(10, kind).sum(), 1.0)


def test_default_collections_follow_the_papers():
    rng = np.random.default_rng(20)
    x = rng.standard_normal((30, 3)).astype(np.float32)
    y = rng.standard_normal((30, 3)).astype(np.float32)
    collection = aggregated.mmdagg_kernels(x, y, 10)
    laplace, gauss = collection.families
    d1 = np.abs(x[:, None] - y[None]).sum(-1).ravel()
    d2 = np.sqrt(((x[:, None] - y[None]) ** 2).sum(-1)).ravel()
    for family, d, factor in ((laplace, d1, 1.0), (gauss, d2, np.sqrt(0.5))):
        assert d.min() >= 0.1  # the reference's lambda_min is then the smallest distance
        expected = np.geomspace(d.min() / 2, 2 * d.max(), 10) * factor
        np.testing.assert_allclose(np.asarray(family.bandwidth), expected, rtol=1e-5)
    (imq,) = aggregated.ksdagg_kernels(x, 10).families
    largest = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).max()
    expected = np.geomspace(1.0, max(largest, 2.0), 10) / 3
    np.testing.assert_allclose(np.asarray(imq.bandwidth), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(imq.beta), -0.5)
    kx, _ = aggregated.hsicagg_kernels(x, y)
    iu = np.triu_indices(30, 1)
    median = np.median(np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))[iu])
    expected = median * 2.0 ** np.arange(-2, 3) / np.sqrt(2)
    np.testing.assert_allclose(np.asarray(kx.families[0].bandwidth), expected, rtol=1e-5)


def test_smallest_draw_counts_for_the_level_are_accepted():
    """B1 = 1 / alpha - 1 is the smallest count with which a kernel can reject."""
    a = np.random.default_rng(0).standard_normal((10, 2))
    key = jax.random.key(0)
    result = kmethods.hsicagg(key, a, a, num_bootstrap=19, num_correction=5, num_diagonals=2)
    assert np.isfinite(float(result.p_value))
    kmethods.mmdagg(key, a, a + 1.0, alpha=0.1, num_permutations=9, num_correction=5)


def test_corrected_p_value_is_never_zero():
    """Far-apart samples: the data's p-value is 1 / (1 + B1) for every kernel, which a
    correction draw ties only when it exceeds all B1 draws for some kernel (one of the 49
    here), and the corrected p-value is (1 + those ties) / (1 + B2), never 0."""
    rng = np.random.default_rng(21)
    x, y = rng.standard_normal((20, 1)), rng.standard_normal((20, 1)) + 6.0
    options = dict(num_bandwidths=3, num_permutations=39, num_correction=49)
    result = kmethods.mmdagg(jax.random.key(22), x, y, **options)
    assert bool(result.reject)
    np.testing.assert_allclose(np.asarray(result.p_values), 1.0 / 40, rtol=1e-6)
    ties = np.sum(np.asarray(result.null_samples) <= float(result.statistic))
    assert ties == 1
    np.testing.assert_allclose(float(result.p_value), (1.0 + ties) / 50, rtol=1e-6)


def test_corrected_p_value_counts_ties_with_the_data(x64):
    """Statistics on a few values tie the data's weighted p-value min_i p_i / w_i with many
    draws'; with weights 1/6 (not binary fractions) both must round alike, so that the
    corrected p-value counts every tie (an exact count on the ranks: equal weights). Before,
    jit rounded the two apart and gave 0.005 where the count gives 0.32 (seed 2)."""
    num, b1, b2 = 6, 19, 200
    aggregate = jax.jit(
        lambda d, w: aggregated.aggregate(
            d, w, ALPHA, jnp.zeros(num), num_quantile=b1, num_steps=30, kernels=None
        )
    )
    for seed in range(4):
        draws = np.random.default_rng(seed).integers(0, 3, size=(num, 1 + b1 + b2))
        result = aggregate(jnp.asarray(draws, jnp.float64), jnp.full(num, 1 / 6))
        at_least = (draws[:, : b1 + 1, None] >= draws[:, None, :]).sum(1)  # (N, 1 + B)
        smallest = at_least.min(0)  # equal weights: min_i p_i / w_i follows the ranks
        expected = (1 + np.sum(smallest[b1 + 1 :] <= smallest[0])) / (1 + b2)
        np.testing.assert_allclose(float(result.p_value), expected, rtol=1e-12)
        _check_p_value_and_decision(result.p_value, result.reject, b2)
