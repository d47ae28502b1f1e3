"""kmethods.compressed: CTT, ACTT, LR-CTT, the RFF test and the block MMD test.

Reference checks against dense NumPy formulas on small samples, level over vmapped null
replicates (inside the 99% binomial interval at alpha = 0.05), power on an easy alternative,
and the TestResult contract (no rejection on non-finite input, float16 computed in float32,
errors naming the argument).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import kmethods as km
from kmethods import calibration, compressed
from kmethods.calibration import permuted_labels
from kmethods.compressed import _bins

ALPHA = 0.05


def _gauss_np(a, b, h):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * h**2))


def _labels(key, s_x, s, num):
    observed = (jnp.arange(s) < s_x).astype(jnp.float32)
    perms = np.asarray(permuted_labels(key, observed, num))
    return np.concatenate([np.asarray(observed)[None], perms])


def _binomial_ok(rejections, num):
    low, high = stats.binom.interval(0.99, num, ALPHA)
    count = int(np.sum(np.asarray(rejections)))
    assert low <= count <= high, (count, low, high)


def _null_pairs(key, num, m, n, d=2):
    kx, ky = jax.random.split(key)
    return jax.random.normal(kx, (num, m, d)), jax.random.normal(ky, (num, n, d))


# ----------------------------------------------------------------------------- CTT


@pytest.mark.parametrize("m,n", [(64, 40), pytest.param(48, 48, marks=pytest.mark.slow)])
def test_ctt_matches_dense_bins(m, n):
    """Without compression (4^g >= bin size) the statistic and every permuted draw equal the
    dense V-statistic between the unions of the permuted bins."""
    key = jax.random.key(3)
    x = np.asarray(jax.random.normal(jax.random.key(1), (m, 2)), np.float64)
    y = np.asarray(jax.random.normal(jax.random.key(2), (n, 2)), np.float64) + 0.3
    num_bins, h, num = 8, 0.8, 30
    size, s_x, s_y = compressed.bin_plan(m, n, num_bins)
    result = km.ctt_test(key, x, y, km.Gaussian(h), g=5, num_bins=num_bins, num_permutations=num)
    means = _dense_bin_means(x, y, (size, s_x, s_y), lambda a, b: _gauss_np(a, b, h))
    _, k_perm = jax.random.split(key)
    labels = _labels(k_perm, s_x, s_x + s_y, num)
    w = labels / s_x - (1 - labels) / s_y
    dense = np.einsum("bi,ij,bj->b", w, means, w)
    np.testing.assert_allclose(result.statistic, dense[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.null_samples, dense[1:], rtol=1e-4, atol=1e-6)
    count = np.sum(dense[1:] >= dense[0] - 1e-6)
    np.testing.assert_allclose(result.p_value, (1 + count) / (1 + num), rtol=1e-6)


def _dense_bin_means(x, y, plan, kernel_np):
    size, s_x, s_y = plan
    bins = np.concatenate([x[: s_x * size], y[: s_y * size]]).reshape(s_x + s_y, size, -1)
    return np.array([[kernel_np(a, b).mean() for b in bins] for a in bins])


def test_actt_statistics_match_dense_bins():
    """Each kernel's statistic is CTT's dense V-statistic (no compression at g = 5)."""
    x = np.asarray(jax.random.normal(jax.random.key(1), (64, 2)), np.float64)
    y = np.asarray(jax.random.normal(jax.random.key(2), (40, 2)), np.float64) + 0.3
    bandwidths = (0.5, 1.0, 2.0)
    result = compressed.actt_test(
        jax.random.key(0),
        x,
        y,
        [km.Gaussian(h) for h in bandwidths],
        g=5,
        num_bins=8,
        num_permutations=19,
        num_correction=19,
    )
    plan = compressed.bin_plan(64, 40, 8)
    w = np.r_[np.full(plan.bins_x, 1 / plan.bins_x), np.full(plan.bins_y, -1 / plan.bins_y)]
    for h, statistic in zip(bandwidths, result.statistics, strict=True):
        means = _dense_bin_means(x, y, plan, lambda a, b, h=h: _gauss_np(a, b, h))
        np.testing.assert_allclose(statistic, w @ means @ w, rtol=1e-4, atol=1e-6)


def test_lrctt_matches_dense_bin_features():
    """Without compression (bins of 4^g points), the statistic is the V-statistic of the
    permutation bins' mean features."""
    key = jax.random.key(4)
    x = jax.random.normal(jax.random.key(1), (64, 2))
    y = jax.random.normal(jax.random.key(2), (48, 2)) + 0.3
    kernel, r = km.Gaussian(0.9), 16
    result = compressed.lrctt_test(
        key, x, y, kernel, g=1, num_bins=8, num_features=r, num_permutations=9
    )
    _, _, k_features, _ = jax.random.split(key, 4)
    w = compressed.random_frequencies(k_features, kernel, 2, r // 2)
    plan = compressed.bin_plan(16, 12, 8)  # in bins of 4 points
    size = 4 * plan.bin_size
    pts = np.concatenate([x[: plan.bins_x * size], y[: plan.bins_y * size]])
    phi = np.asarray(compressed.random_features(jnp.asarray(pts), w), np.float64)
    f = phi.reshape(plan.bins_x + plan.bins_y, size, r).mean(1)
    weights = np.r_[np.full(plan.bins_x, 1 / plan.bins_x), -np.full(plan.bins_y, 1 / plan.bins_y)]
    np.testing.assert_allclose(result.statistic, np.sum((weights @ f) ** 2), rtol=1e-4, atol=1e-7)


def test_bin_statistics_resolve_a_near_constant_matrix(x64):
    """The regime of CTT at n = 2^20: the bins' kernel means sit within 1e-5 of a common 0.5,
    so forms on the raw float32 matrix round at about eps 0.5 (more than the draws' spread:
    every draw tied with the statistic and p was 1). On the doubly centred matrix the draws
    equal the float64 forms to 1e-12 of the constant, and the p-value is the float64 one."""
    s, bins_x, num = 32, 16, 199
    rng = np.random.default_rng(0)
    a = rng.standard_normal((s, 3))
    a[:bins_x] += 0.8  # a signal: x's bins differ
    exact = 0.5 + 1e-5 * (a @ a.T) / 3
    means = jnp.asarray(exact, jnp.float32)
    key = jax.random.key(5)
    draws, scale = _bins.bin_statistics(key, means, bins_x, num)
    labels = _labels(key, bins_x, s, num)
    w = labels / bins_x - (1 - labels) / (s - bins_x)
    want = np.einsum("bi,ij,bj->b", w, np.asarray(means, np.float64), w)
    np.testing.assert_allclose(np.asarray(draws, np.float64), want, rtol=0, atol=1e-12)
    assert float(scale) < 1e-4  # the size of the centred terms, not of 0.5
    result = _bins.bin_result(draws, scale, ALPHA, means, means)
    p_exact = (1 + np.sum(want[1:] >= want[0])) / (1 + num)
    assert float(result.p_value) == pytest.approx(p_exact) and p_exact < 0.05
    assert bool(result.reject)


def test_bin_plan_follows_sample_sizes():
    assert compressed.bin_plan(64, 64, 16) == (8, 8, 8)
    assert compressed.bin_plan(96, 32, 8) == (16, 6, 2)
    assert compressed.bin_plan(10, 100, 4) == (10, 1, 10)
    with pytest.raises(ValueError, match="num_bins"):
        compressed.bin_plan(4, 4, 9)
    with pytest.raises(ValueError, match="`m`"):  # was ZeroDivisionError
        compressed.bin_plan(0, 100, 3)


@pytest.mark.slow
def test_ctt_compresses_and_detects_a_shift():
    """With compression (bins of 256 points to 2^(1 + 4) = 32), a clear mean shift rejects,
    the statistic lies near the full-sample V-statistic, and the null draws vary."""
    x = jax.random.normal(jax.random.key(0), (1024, 2))
    y = jax.random.normal(jax.random.key(1), (1024, 2)) + 0.5
    kernel = km.Gaussian(1.0)
    result = km.ctt_test(jax.random.key(2), x, y, kernel, g=1, num_bins=8, num_permutations=99)
    assert bool(result.reject) and result.null_samples.shape == (99,)
    full = km.mmd2(x, y, kernel, unbiased=False)
    assert abs(float(result.statistic) - float(full)) < 0.2 * float(full)
    assert float(jnp.std(result.null_samples)) > 0


# ----------------------------------------------------------------------------- levels

NUM_NULL, NUM_ALT = 200, 20


def _replicates(test, m, n, num_null, num_alt, key=0):
    """One vmapped call: `num_null` null pairs, `num_alt` pairs with y shifted by 1 in its
    first coordinate, and 3 pairs holding NaN or inf (past the eager checks), in float16."""
    num = num_null + num_alt + 3
    x, y = _null_pairs(jax.random.key(key), num, m, n)
    y = y.at[num_null:, :, 0].add(1.0)
    x = x.at[-3, 5, 0].set(jnp.nan).at[-2, 2, 1].set(jnp.inf)
    y = y.at[-1, 0, 0].set(-jnp.inf)
    # float16 samples, which every test computes in float32
    x, y = x.astype(jnp.float16), y.astype(jnp.float16)
    result = jax.vmap(test)(jax.random.split(jax.random.key(key + 1), num), x, y)
    assert result.statistic.dtype == jnp.float32 and result.p_value.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(result.p_value[:-3])))
    assert not bool(jnp.any(result.reject[-3:]))
    assert bool(jnp.all(jnp.isnan(result.p_value[-3:])))
    return result.reject[:num_null], result.reject[num_null:-3]


LEVEL_TESTS = {
    "ctt": lambda k, x, y: km.ctt_test(
        k, x, y, km.Gaussian(1.0), g=1, num_bins=16, num_permutations=39
    ),
    "lrctt": lambda k, x, y: compressed.lrctt_test(
        k, x, y, km.Gaussian(1.0), g=1, num_bins=16, num_features=16, num_permutations=39
    ),
    "rff": lambda k, x, y: compressed.rff_test(
        k, x, y, km.Laplace(1.0), num_features=16, num_permutations=39
    ),
    "block": lambda k, x, y: compressed.block_mmd_test(k, x, y, km.Gaussian(1.0)),
}
SIZES = {"ctt": (256, 256), "lrctt": (256, 192)}


@pytest.mark.parametrize("name", sorted(LEVEL_TESTS))
def test_level_power_and_nonfinite(name):
    """Level within the 99% binomial interval over 200 null replicates (unequal sizes but for
    CTT), power on a unit mean shift, and no rejection on non-finite input."""
    m, n = SIZES.get(name, (128, 96))
    null, alt = _replicates(LEVEL_TESTS[name], m, n, NUM_NULL, NUM_ALT)
    _binomial_ok(null, NUM_NULL)
    assert float(jnp.mean(alt)) >= 0.8


# LR-CTT with compression: bins of 16 points halved (r = 32 > 4^(g + 1)). ACTT with
# B1 = B2 = 499: with 99 + 99 its level came out conservative (0.024 and 0.014 over 500
# replicates), as the estimated family-wise error is a multiple of 1 / 99.
SLOW_TESTS = LEVEL_TESTS | {
    "lrctt_compressed": lambda k, x, y: compressed.lrctt_test(
        k, x, y, km.Gaussian(1.0), g=1, num_bins=16, num_features=32, num_permutations=39
    ),
    "actt": lambda k, x, y: compressed.actt_test(
        k,
        x,
        y,
        [km.Gaussian(0.5), km.Gaussian(1.0), km.Gaussian(2.0)],
        g=1,
        num_bins=28,
        num_permutations=499,
        num_correction=499,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_TESTS))
@pytest.mark.parametrize("m,n", [(256, 256), (384, 128)])
def test_level_500(name, m, n):
    null, _ = _replicates(SLOW_TESTS[name], m, n, 500, 0, key=7)
    _binomial_ok(null, 500)


# ----------------------------------------------------------------------------- ACTT


@pytest.mark.parametrize("g", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_actt_level_power_and_nonfinite(g):
    """g = 2 leaves the bins of 16 points whole (the aggregation alone); g = 1 compresses
    them to 8 with the sum of the kernels."""
    kernels = [km.Gaussian(0.5), km.Gaussian(1.0), km.Gaussian(2.0)]

    def test(k, x, y):
        return compressed.actt_test(
            k, x, y, kernels, g=g, num_bins=28, num_permutations=99, num_correction=99
        )

    null, alt = _replicates(test, 256, 192, 100, 10, key=11)
    _binomial_ok(null, 100)
    assert float(jnp.mean(alt)) >= 0.8


# ----------------------------------------------------------------------------- RFF


@pytest.mark.parametrize(
    "kernel",
    [
        km.Gaussian(0.7),
        km.Laplace(0.7),
        km.Matern(1.5, 0.7),
        pytest.param(km.Matern(0.8, 0.7), marks=pytest.mark.slow),
    ],
)
def test_random_features_estimate_the_kernel(kernel):
    """phi(x)'phi(y) over 2^13 frequencies matches k(x, y) (Monte Carlo error < 0.008)."""
    x = jax.random.normal(jax.random.key(0), (12, 3)) * 0.5
    w = compressed.random_frequencies(jax.random.key(1), kernel, 3, 2**13)
    phi = compressed.random_features(x, w)
    np.testing.assert_allclose(phi @ phi.T, kernel.gram(x, x), atol=0.04)


@pytest.mark.parametrize("m,n", [(50, 30), pytest.param(40, 40, marks=pytest.mark.slow)])
def test_rff_matches_dense_features(m, n):
    key = jax.random.key(5)
    x = jax.random.normal(jax.random.key(1), (m, 3))
    y = jax.random.normal(jax.random.key(2), (n, 3)) + 0.2
    kernel, r, num = km.Gaussian(1.2), 32, 20
    result = compressed.rff_test(key, x, y, kernel, num_features=r, num_permutations=num)
    k_features, k_perm = jax.random.split(key)
    w = compressed.random_frequencies(k_features, kernel, 3, r // 2)
    phi = np.asarray(compressed.random_features(jnp.concatenate([x, y]), w), np.float64)
    gram = phi @ phi.T
    np.fill_diagonal(gram, 0.0)
    observed = np.r_[np.ones(m), np.zeros(n)]
    keys = jax.random.split(k_perm, num)
    drawn = jax.vmap(lambda k: calibration.random_labels(k, m + n, m))(keys)
    labels = np.concatenate([observed[None], np.asarray(drawn)])
    dense = []
    for e in labels:
        f = 1 - e
        dense.append(
            e @ gram @ e / (m * (m - 1)) + f @ gram @ f / (n * (n - 1)) - 2 * e @ gram @ f / (m * n)
        )
    np.testing.assert_allclose(result.statistic, dense[0], atol=2e-6)
    np.testing.assert_allclose(result.null_samples, dense[1:], atol=2e-6)


def test_random_labels_are_uniform_subsets():
    """Exactly m ones, each point labelled 1 with probability m / num (over 4000 draws)."""
    keys = jax.random.split(jax.random.key(0), 4000)
    labels = jax.vmap(lambda k: calibration.random_labels(k, 10, 3))(keys)
    assert bool(jnp.all(jnp.sum(labels, axis=1) == 3))
    np.testing.assert_allclose(jnp.mean(labels, axis=0), 0.3, atol=0.03)
    pairs = np.asarray(labels[:, 0] * labels[:, 1])  # P(both) = 3 * 2 / (10 * 9)
    np.testing.assert_allclose(pairs.mean(), 1 / 15, atol=0.015)


# ----------------------------------------------------------------------------- block MMD


def test_block_mmd_matches_dense_blocks():
    x = np.asarray(jax.random.normal(jax.random.key(1), (50, 2)), np.float64)
    y = np.asarray(jax.random.normal(jax.random.key(2), (37, 2)), np.float64) + 0.3
    h, size = 1.1, 7
    result = compressed.block_mmd_test(None, x, y, km.Gaussian(h), block_size=size)
    num = 50 // size
    size_y = 37 // num
    etas = []
    for i in range(num):
        a, b = x[i * size : (i + 1) * size], y[i * size_y : (i + 1) * size_y]
        kxx, kyy = _gauss_np(a, a, h), _gauss_np(b, b, h)
        etas.append(
            (kxx.sum() - np.trace(kxx)) / (size * (size - 1))
            + (kyy.sum() - np.trace(kyy)) / (size_y * (size_y - 1))
            - 2 * _gauss_np(a, b, h).mean()
        )
    etas = np.array(etas)
    z = etas.mean() / np.sqrt(etas.var(ddof=1) / num)
    np.testing.assert_allclose(result.statistic, etas.mean(), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(result.p_value, stats.norm.sf(z), rtol=1e-3, atol=1e-6)
    assert result.null_samples.shape == (0,)


def test_block_mmd_default_blocks_fit_a_much_smaller_y():
    """m = 10 n: sqrt(m) blocks would leave one point of y in each; the default then takes
    sqrt(n) blocks (here 3 blocks of 33 points of x and 3 of y), as an explicit block_size."""
    x = jax.random.normal(jax.random.key(1), (100, 2))
    y = jax.random.normal(jax.random.key(2), (10, 2))
    default = compressed.block_mmd_test(None, x, y, km.Gaussian(1.0))
    explicit = compressed.block_mmd_test(None, x, y, km.Gaussian(1.0), block_size=33)
    assert np.isfinite(default.statistic)
    np.testing.assert_array_equal(default.statistic, explicit.statistic)
    with pytest.raises(ValueError, match="block_size"):
        compressed.block_mmd_test(None, x, y, km.Gaussian(1.0), block_size=10)


# ----------------------------------------------------------------------------- contract


def test_errors_name_the_argument():
    key = jax.random.key(0)
    x = jnp.zeros((64, 2))
    with pytest.raises(ValueError, match="`x` contains NaN"):
        km.ctt_test(key, x.at[0, 0].set(jnp.nan), x, km.Gaussian(1.0), g=1, num_bins=4)
    with pytest.raises(TypeError, match="`g`"):
        km.ctt_test(key, x, x, km.Gaussian(1.0), g=1.5, num_bins=4)
    with pytest.raises(ValueError, match="`num_bins`"):
        km.ctt_test(key, x, x, km.Gaussian(1.0), g=1, num_bins=1)
    with pytest.raises(TypeError, match="`kernel`"):
        compressed.rff_test(key, x, x, km.IMQ())
    with pytest.raises(ValueError, match="`num_features`"):
        compressed.rff_test(key, x, x, km.Gaussian(1.0), num_features=15)
    with pytest.raises(ValueError, match="`compress_bin_size`"):
        compressed.lrctt_test(key, x, x, km.Gaussian(1.0), g=1, num_bins=4, compress_bin_size=8)
    with pytest.raises(ValueError, match="`block_size`"):
        compressed.block_mmd_test(key, x, x, km.Gaussian(1.0), block_size=40)
    with pytest.raises(ValueError, match="dimension"):
        km.ctt_test(key, x, jnp.zeros((64, 3)), km.Gaussian(1.0), g=1, num_bins=4)
    with pytest.raises(ValueError, match="`dim`"):
        compressed.random_frequencies(key, km.Gaussian(1.0), 0, 8)
    with pytest.raises(ValueError, match="`num_frequencies`"):
        compressed.random_frequencies(key, km.Gaussian(1.0), 2, 0)
    with pytest.raises(TypeError, match="`dtype`"):
        compressed.random_frequencies(key, km.Gaussian(1.0), 2, 8, dtype=jnp.int32)
    with pytest.raises(ValueError, match="share d"):
        compressed.random_features(x, jnp.zeros((3, 8)))
    with pytest.raises(TypeError, match="`key`"):
        km.ctt_test(0, x, x, km.Gaussian(1.0), g=1, num_bins=4)
    with pytest.raises(ValueError, match="`num_permutations` = 18 is too small"):
        kernels = [km.Gaussian(1.0), km.Gaussian(2.0)]
        compressed.actt_test(key, x, x, kernels, g=1, num_bins=4, num_permutations=18)
