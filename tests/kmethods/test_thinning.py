import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kmethods as km
from kmethods import thinning
from kmethods.thinning import _compress, _halving, _kt, _sizes, _split, _weighted
from tests import reference as ref


def _sample(seed, n, d=2):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize(
    ("n", "m", "block"),
    [
        (16, 2, 16),  # one pass per round
        (24, 3, 16),  # out_size 3: rows of width 6
        (40, 2, 3),  # several passes per coreset, the last one partial
        (128, 4, 2),
    ],
)
def test_split_matches_the_papers_streaming_pseudocode(x64, monkeypatch, n, m, block):
    """KT-SPLIT, done round by round on all coresets at once, makes every decision of the
    paper's streaming loop (Algorithm 1a) given the same coin flips."""
    monkeypatch.setattr(_sizes, "_BLOCK", block)
    x = _sample(n, n)
    uniforms = np.random.default_rng(1).uniform(size=(m, n // 2))
    log_mult = _split.split_log_multipliers(n, m, 0.5, jnp.float64)
    got = _split.kt_split(jnp.asarray(x), km.Gaussian(1.3), jnp.asarray(uniforms), log_mult)
    want = ref.kt_split(ref.gram("gaussian", x, x, bandwidth=1.3), m, uniforms, 0.5)
    np.testing.assert_array_equal(got, want)
    # every point lands in exactly one coreset
    np.testing.assert_array_equal(np.sort(np.asarray(got).ravel()), np.arange(n))


def test_swap_matches_reference_and_never_loses(x64):
    x = _sample(3, 64)
    kernel = km.Gaussian(1.5)
    K = ref.gram("gaussian", x, x, bandwidth=1.5)
    rng = np.random.default_rng(4)
    candidates = np.stack([rng.choice(64, 8, replace=False) for _ in range(5)])
    got = np.asarray(_split.kt_swap(jnp.asarray(x), kernel, jnp.asarray(candidates)))
    np.testing.assert_array_equal(got, ref.kt_swap(K, list(candidates)))
    best = min(ref.mmd_to_indices(K, c) for c in candidates)
    assert ref.mmd_to_indices(K, got) <= best + 1e-12


def test_kernel_thin_beats_iid_and_standard_thinning(getkey):
    """n = 1024 -> 32 points, 4 keys: KT's MMD well below the baselines' (Dwivedi & Mackey,
    2021, Fig. 3: ~n^-1/2 against ~n^-1/4)."""
    x = jnp.asarray(_sample(5, 1024), jnp.float32)
    kernel = km.Gaussian(2.0)
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x, np.float64))
        mmd = lambda idx: float(thinning.mmd_to_sample(x64, jnp.asarray(idx), kernel))
        kt, iid = [], []
        for _ in range(4):
            key = getkey()
            with jax.enable_x64(False):
                idx = km.kernel_thin(key, x, kernel)
                iid_idx = thinning.iid_thin(key, x)
            assert idx.shape == (32,) and idx.dtype == jnp.int32
            assert int(idx.min()) >= 0 and int(idx.max()) < 1024
            kt.append(mmd(idx))
            iid.append(mmd(iid_idx))
        standard = mmd(thinning.standard_thin(None, x))
    assert np.median(kt) < 0.5 * np.median(iid), (kt, iid)
    assert np.median(kt) < 0.5 * standard, (kt, standard)


def test_kernel_thin_compiles_once_per_shape(getkey):
    x = jnp.asarray(_sample(6, 96), jnp.float32)
    _kt.kernel_thin_program.clear_cache()
    for bandwidth in (1.0, 2.0):
        km.kernel_thin(getkey(), x, km.Gaussian(bandwidth), out_size=12, delta=0.3)
    km.kernel_thin(getkey(), x, km.Gaussian(1.0), out_size=12, delta=0.7)
    assert _kt.kernel_thin_program._cache_size() == 1


def test_kernel_thin_vmaps_over_keys(getkey):
    """Replicates run as one batched computation and equal the one-key calls."""
    x = jnp.asarray(_sample(12, 64), jnp.float32)
    kernel = km.Gaussian(1.5)
    keys = jax.random.split(getkey(), 3)
    batched = jax.vmap(lambda key: km.kernel_thin(key, x, kernel))(keys)
    assert batched.shape == (3, 8)
    np.testing.assert_array_equal(batched[1], km.kernel_thin(keys[1], x, kernel))
    # inside a user's jit the call goes through the plain jit (compiler options are for
    # top-level calls only, `kmethods._jit`) and gives the same coreset
    jitted = jax.jit(lambda key, x: km.kernel_thin(key, x, kernel))
    np.testing.assert_array_equal(jitted(keys[1], x), batched[1])


def test_kernel_thin_options(getkey):
    """A remainder (n = 100, s = 12: 96 points split); KT+ with swap=False (a split coreset)."""
    x = jnp.asarray(_sample(7, 100), jnp.float32)
    kernel = km.Gaussian(1.5)
    idx = km.kernel_thin(getkey(), x, kernel, out_size=12)
    assert idx.shape == (12,) and int(idx.max()) < 100
    plus = km.kernel_thin(
        getkey(), x, kernel, out_size=12, split_kernel=thinning.kt_plus_kernel(kernel), swap=False
    )
    assert len(set(np.asarray(plus).tolist())) == 12  # a KT-SPLIT coreset: no repeats


def test_root_kernel_is_a_convolution_root(x64):
    """k_rt * k_rt is proportional to k (Dwivedi & Mackey, 2021, Def. 2), checked in 1-d."""
    kernel = km.Gaussian(0.7)
    root = thinning.root_kernel(kernel)
    z = np.linspace(-12, 12, 4001)[:, None]
    conv = lambda a, b: np.trapezoid(
        np.asarray(root.gram(jnp.asarray([[a]]), jnp.asarray(z)))[0]
        * np.asarray(root.gram(jnp.asarray(z), jnp.asarray([[b]])))[:, 0],
        z[:, 0],
    )
    pairs = [(0.0, 0.0), (0.0, 0.5), (0.3, -1.1), (1.0, 2.4)]
    ratios = [conv(a, b) / float(kernel(jnp.asarray([a]), jnp.asarray([b]))) for a, b in pairs]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-8)
    plus = thinning.kt_plus_kernel(kernel)
    x = jnp.asarray(_sample(8, 5))
    np.testing.assert_allclose(plus.gram(x, x), kernel.gram(x, x) + root.gram(x, x))
    with pytest.raises(TypeError, match="Gaussian"):
        thinning.power_kernel(km.IMQ(), 0.5)
    with pytest.raises(ValueError, match="`dim`"):
        thinning.root_kernel(km.Matern(nu=2.5))
    with pytest.raises(ValueError, match=r"alpha > 0\.6667"):
        thinning.power_kernel(km.Laplace(), 0.5, dim=2)
    with pytest.raises(ValueError, match="`alpha`"):
        thinning.power_kernel(kernel, 1.5)


@pytest.mark.parametrize(
    ("kernel", "alpha", "dim"),
    [(km.Matern(nu=1.5, bandwidth=0.6), 0.5, 1), (km.Matern(nu=2.5, bandwidth=0.5), 0.3, 1)],
)
def test_matern_power_kernels_convolve_back(x64, kernel, alpha, dim):
    """k_alpha * k_(1 - alpha) is proportional to k (their Fourier transforms multiply), 1-d."""
    first, second = (
        thinning.power_kernel(kernel, alpha, dim),
        thinning.power_kernel(kernel, 1 - alpha, dim),
    )
    z = jnp.asarray(np.linspace(-15, 15, 30_001)[:, None])
    a = jnp.asarray([[0.0], [0.0], [0.3], [1.0]])
    b = jnp.asarray([[0.0], [0.4], [-0.9], [2.1]])
    dz = 30.0 / 30_000
    conv = jax.jit(lambda a, b: jnp.trapezoid(first.gram(a, z) * second.gram(b, z), dx=dz, axis=1))
    ratios = np.asarray(conv(a, b)) / np.asarray(jax.vmap(kernel)(a, b))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
    laplace = thinning.power_kernel(km.Laplace(0.7), 0.9, dim=3)
    matern = thinning.power_kernel(km.Matern(nu=0.5, bandwidth=0.7), 0.9, dim=3)
    assert laplace.nu == matern.nu == pytest.approx(0.9 * 2.0 - 1.5)
    np.testing.assert_allclose(laplace.bandwidth, matern.bandwidth)


def test_compresspp_quality_and_partition(getkey):
    x = jnp.asarray(_sample(9, 256), jnp.float32)
    kernel = km.Gaussian(2.0)
    idx = km.compresspp(getkey(), x, kernel, g=2)  # two Compress levels, then KT by 4
    assert idx.shape == (16,) and int(idx.min()) >= 0 and int(idx.max()) < 256
    with jax.enable_x64(True):
        x64 = jnp.asarray(np.asarray(x, np.float64))
        cpp = float(thinning.mmd_to_sample(x64, jnp.asarray(idx), kernel))
        iid = [
            float(thinning.mmd_to_sample(x64, thinning.iid_thin(getkey(), x), kernel))
            for _ in range(4)
        ]
    assert cpp < 0.5 * np.median(iid), (cpp, iid)
    # the swapped halving keeps a partition of each node, and its coreset is no worse than
    # either KT-SPLIT half
    nodes = jnp.arange(64).reshape(2, 32)
    gram = jax.vmap(lambda p: kernel.gram(p, p))(x[nodes])
    u = jax.random.uniform(getkey(), (2, 16))
    signs = jax.jit(_halving.split_signs)(gram, u, jnp.float32(9.0))
    swapped = np.asarray(jax.jit(_halving.swap_partition)(gram, signs))
    for node, sign, out in zip(np.asarray(nodes), np.asarray(signs), swapped, strict=True):
        np.testing.assert_array_equal(np.sort(out.ravel()), np.arange(32))
        pts = np.asarray(x, np.float64)[node]
        K = ref.gram("gaussian", pts, pts, bandwidth=2.0)
        child0 = 2 * np.arange(16) + (sign > 0)
        mmds = [
            ref.mmd_to_indices(K, ids) for ids in (out[0], child0, np.delete(np.arange(32), child0))
        ]
        assert mmds[0] <= min(mmds[1:]) + 1e-6


def _partition_swap(K, child0, child1):
    """The swap of a symmetrized halving (goodpoints' `unique` swap) on a dense K: the half
    closer in MMD to the node (child 0: the two are always tied), then each of its points in
    turn exchanged for the point outside it, or itself, that lowers MMD most; ties to the first
    point in [child 0, child 1] order. Returns the coreset and its complement (in that order)."""
    order = np.concatenate([child0, child1])
    K = K[np.ix_(order, order)]
    s = len(child0)
    mean_k = K.mean(axis=1)
    core, in_core = list(range(s)), np.arange(2 * s) < s
    stat = np.diag(K) / s - 2 * mean_k + 2 / s * K[:, :s].sum(axis=1)
    for i in range(s):
        old = core[i]
        stat -= 2 / s * K[old]
        new = int(np.argmin(np.where(in_core & (np.arange(2 * s) != old), np.inf, stat)))
        stat += 2 / s * K[new]
        in_core[old], in_core[new], core[i] = False, True, new
    return order[core], order[~in_core]


@pytest.mark.parametrize(
    ("length", "halving"),
    [
        (12, _halving.symmetrized_halving),
        # the path of nodes whose matrices are too large to store
        pytest.param(20, _halving.matrix_free_halving, marks=pytest.mark.slow),
        pytest.param(64, _halving.symmetrized_halving, marks=pytest.mark.slow),
    ],
)
def test_symmetrized_halving_matches_dense_reference(x64, length, halving):
    """Compress's halving, on stored node matrices or without them: the split makes the
    paper's decisions (Algorithm 1a, one round), the swap those of the dense swap, points
    repeated included, and the side picks the coreset (0) or its complement (1)."""
    rng = np.random.default_rng(length)
    num_nodes, delta = 3, 0.01
    x = jnp.asarray(rng.normal(size=(num_nodes * length, 2)))
    nodes = rng.permutation(num_nodes * length).reshape(num_nodes, length)
    nodes[:, 5] = nodes[:, 9] = nodes[:, 2]  # a weighted input's multiset
    uniforms = rng.uniform(size=(num_nodes, length // 2))
    log_mult = jnp.asarray(2 * np.log(2 * length / delta))  # delta' = delta / l
    kernel = km.Gaussian(1.1)
    args = (jnp.asarray(nodes), jnp.asarray(uniforms))
    sides = jnp.asarray([0, 1, 0])
    out = [
        np.asarray(jax.jit(halving)(kernel, x, *args, side, log_mult))
        for side in (sides, 1 - sides)
    ]
    for c, node in enumerate(nodes):
        pts = np.asarray(x)[node]
        K = ref.gram("gaussian", pts, pts, bandwidth=1.1)
        child0, child1 = ref.kt_split(K, 1, uniforms[c][None], delta)
        core, rest = _partition_swap(K, child0, child1)
        picked = (core, rest) if int(sides[c]) == 0 else (rest, core)
        np.testing.assert_array_equal(out[0][c], node[picked[0]])
        np.testing.assert_array_equal(out[1][c], node[picked[1]])


def test_kernel_matrix_matches_gram(x64):
    x, y = jnp.asarray(_sample(5, 30, d=3) + 50.0), jnp.asarray(_sample(6, 20, d=3) + 50.0)
    for kernel in (km.Gaussian(0.9), km.IMQ(), km.Linear()):  # radial, and a fallback
        np.testing.assert_allclose(
            _halving.kernel_matrix(kernel, x, y), kernel.gram(x, y), rtol=1e-9, atol=1e-12
        )


def test_compress_plan():
    assert _compress.compress_plan(4**8, 2**8, 4) == (4, 4, 4**4)  # the paper's case
    g, levels, leaf = _compress.compress_plan(10_000, 100, 4)
    assert leaf * 2**levels == 100 * 2**g and 4**levels * leaf <= 10_000
    assert _compress.compress_plan(100, 10, 4) == (3, 0, 80)  # too small for g = 4


def test_compresspp_traces_at_a_million_points():
    """Constants such as 4 leaf n levels exceed int32 at n = 2^20: tracing must not overflow."""
    x = jax.ShapeDtypeStruct((2**20, 2), jnp.float32)
    k = km.Gaussian(1.0)
    g, levels, leaf = _compress.compress_plan(2**20, 2**10, 4)
    _compress._compresspp.trace(
        jax.random.key(0), x, k, 0.5, out_size=2**10, g=g, levels=levels, leaf=leaf, skip=1
    )


def test_mmd_to_sample_matches_dense(x64):
    x = _sample(10, 40)
    idx = np.array([3, 3, 17, 25, 39])
    K = ref.gram("gaussian", x, x, bandwidth=0.8)
    got = thinning.mmd_to_sample(jnp.asarray(x), jnp.asarray(idx), km.Gaussian(0.8))
    np.testing.assert_allclose(got, ref.mmd_to_indices(K, idx), rtol=1e-10)
    given = thinning.mmd_to_sample(
        jnp.asarray(x), jnp.asarray(idx), km.Gaussian(0.8), mean_kxx=K.mean()
    )
    np.testing.assert_allclose(given, ref.mmd_to_indices(K, idx), rtol=1e-10)


def test_memory_stays_linear():
    """The compiled plan of KT at n = 8192 holds no n x n buffer (that would be 256 MiB)."""
    n = 8192
    x = jnp.zeros((n, 2), jnp.float32)
    k = km.Gaussian(1.0)
    lowered = _kt.kernel_thin_program.lower(
        jax.random.key(0), x, k, k, 0.5, out_size=90, m=6, swap=True
    )
    assert lowered.compile().memory_analysis().temp_size_in_bytes < 64 * 2**20


def test_bad_input(getkey):
    x = jnp.asarray(_sample(11, 20), jnp.float32)
    k = km.Gaussian(1.0)
    with pytest.raises(ValueError, match="`out_size`"):
        km.kernel_thin(getkey(), x, k, out_size=11)
    with pytest.raises(ValueError, match=r"`x`.*NaN"):
        km.kernel_thin(getkey(), x.at[3, 0].set(jnp.nan), k)
    with pytest.raises(ValueError, match="`x`"):
        km.kernel_thin(getkey(), jnp.zeros((4, 5, 2)), k)
    with pytest.raises(TypeError, match="`key`"):
        km.kernel_thin(0, x, k)
    with pytest.raises(ValueError, match="`delta`"):
        km.compresspp(getkey(), x, k, delta=1.5)
    with pytest.raises(TypeError, match="`split_kernel`"):
        km.kernel_thin(getkey(), x, k, split_kernel="gaussian")
    with pytest.raises(TypeError, match="`kernel`"):
        km.compresspp(getkey(), x, None)
    with pytest.raises(ValueError, match="`out_size`"):
        thinning.standard_thin(None, x, out_size=21)
    with pytest.raises(TypeError):  # a misspelt option is not swallowed
        thinning.iid_thin(getkey(), x, outsize=4)
    with pytest.raises(ValueError, match="`indices`"):
        thinning.mmd_to_sample(x, jnp.array([0, 20]), k)


def test_equal_weights_give_unweighted_kt_and_compresspp(getkey):
    """n = s 2^m (KT) and n = 4^levels leaf (Compress++): the same indices for the same key."""
    x = jnp.asarray(_sample(12, 256), jnp.float32)
    k = km.Gaussian(2.0)
    uniform = jnp.full((256,), 1.0 / 256, jnp.float32)
    for key in (getkey(), getkey()):
        np.testing.assert_array_equal(
            km.kernel_thin(key, x[:64], k), km.kernel_thin(key, x[:64], k, weights=uniform[:64] * 4)
        )
        np.testing.assert_array_equal(
            km.compresspp(key, x, k, g=1), km.compresspp(key, x, k, g=1, weights=uniform)
        )


def test_weighted_kt_swaps_toward_the_weighted_input(x64, getkey):
    """Skewed weights on n = 128 -> 8: KT-SWAP makes the dense reference's choices for the
    weighted target, its coreset is no worse in weighted MMD than every KT-SPLIT candidate
    of the rounded input and the standard baseline, and better than unweighted KT."""
    n, s, m = 128, 8, 4
    x = _sample(13, n)
    w = np.exp(2.0 * x[:, 0])
    w /= w.sum()
    k = km.Gaussian(1.0)
    K = ref.gram("gaussian", x, x, bandwidth=1.0)
    key = getkey()
    got = np.asarray(km.kernel_thin(key, jnp.asarray(x), k, out_size=s, weights=jnp.asarray(w)))
    k_drop, k_split, _ = jax.random.split(key, 3)
    used = _weighted.stratified_round(k_drop, jnp.asarray(w), n)
    split = np.asarray(_kt.split_candidates(k_split, jnp.asarray(x), used, k, 0.5, m))
    candidates = [*split, np.asarray(_sizes.standard_indices(n, s))]
    np.testing.assert_array_equal(got, ref.kt_swap(K, candidates, w))
    best = min(ref.mmd_to_indices(K, c, w) for c in candidates)
    assert ref.mmd_to_indices(K, got, w) <= best + 1e-12
    plain = np.asarray(km.kernel_thin(key, jnp.asarray(x), k, out_size=s))
    assert ref.mmd_to_indices(K, got, w) < 0.5 * ref.mmd_to_indices(K, plain, w)


@pytest.mark.slow
def test_weighted_compresspp_targets_the_weighted_input(x64, getkey):
    x = _sample(13, 256)
    w = np.exp(2.0 * x[:, 0])
    w /= w.sum()
    k = km.Gaussian(1.0)
    K = ref.gram("gaussian", x, x, bandwidth=1.0)
    for _ in range(2):
        key = getkey()
        plain = np.asarray(km.compresspp(key, jnp.asarray(x), k, g=1))
        cpp = np.asarray(km.compresspp(key, jnp.asarray(x), k, g=1, weights=w))
        assert ref.mmd_to_indices(K, cpp, w) < 0.5 * ref.mmd_to_indices(K, plain, w)


def test_bad_weights(getkey):
    x = jnp.asarray(_sample(14, 32), jnp.float32)
    k = km.Gaussian(1.0)
    good = np.full(32, 1 / 32)
    negative = good.copy()
    negative[:2] = [-0.1, 0.1 + 1 / 32]
    bad = {
        "nonnegative": negative,
        "shape": good[:31],
        "sum to 1": 2 * good,
        "NaN": np.where(np.arange(32) == 3, np.nan, good),
    }
    for message, w in bad.items():
        for thin in (km.kernel_thin, km.compresspp):
            with pytest.raises(ValueError, match=f"`weights`.*{message}"):
                thin(getkey(), x, k, out_size=4, weights=w)
