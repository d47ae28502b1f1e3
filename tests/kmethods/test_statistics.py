import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import kmethods as km
from tests import reference as ref
from tests.kmethods.test_kernels import IDS, KERNELS


def _np(a):
    return np.asarray(a, np.float64)


@pytest.mark.parametrize("name,make,params", KERNELS, ids=IDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd2_matches_dense_numpy(x64, getkey, name, make, params, unbiased):
    x = jax.random.normal(getkey(), (23, 3))
    y = 0.5 + jax.random.normal(getkey(), (17, 3))
    kernel = make()
    expected = ref.mmd2(
        ref.gram(name, _np(x), _np(x), **params),
        ref.gram(name, _np(y), _np(y), **params),
        ref.gram(name, _np(x), _np(y), **params),
        unbiased,
    )
    for block_size in (None, 5):
        got = km.mmd2(x, y, kernel, unbiased=unbiased, block_size=block_size)
        np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("name,make,params", KERNELS, ids=IDS)
@pytest.mark.parametrize("unbiased", [True, False])
def test_hsic_matches_dense_numpy(x64, getkey, name, make, params, unbiased):
    x = jax.random.normal(getkey(), (21, 2))
    y = x[:, :1] ** 2 + 0.3 * jax.random.normal(getkey(), (21, 1))
    kx, ky = make(), km.Gaussian(0.7)
    expected = ref.hsic(
        ref.gram(name, _np(x), _np(x), **params),
        ref.gram("gaussian", _np(y), _np(y), bandwidth=0.7),
        unbiased,
    )
    for block_size in (None, 4):
        got = km.hsic(x, y, kx, ky, unbiased=unbiased, block_size=block_size)
        np.testing.assert_allclose(got, expected, rtol=1e-10)


STEIN_KERNELS = [k for k in KERNELS if k[0] in ("gaussian", "imq", "linear", "polynomial")]


@pytest.mark.parametrize("name,make,params", STEIN_KERNELS, ids=[k[0] for k in STEIN_KERNELS])
@pytest.mark.parametrize("unbiased", [True, False])
def test_ksd2_matches_dense_numpy(x64, getkey, name, make, params, unbiased):
    x = 0.3 + jax.random.normal(getkey(), (19, 3))
    score = lambda z: -z / 1.5  # N(0, 1.5 I)
    u = ref.stein_gram(name, _np(x), -_np(x) / 1.5, **params)
    n = x.shape[0]
    expected = (u.sum() - np.trace(u)) / (n * (n - 1)) if unbiased else u.mean()
    kernel = make()
    for block_size in (None, 6):
        got = km.ksd2(x, score, kernel, unbiased=unbiased, block_size=block_size)
        np.testing.assert_allclose(got, expected, rtol=1e-10)
    np.testing.assert_allclose(
        km.ksd2(x, -x / 1.5, kernel, unbiased=unbiased), expected, rtol=1e-10
    )


@pytest.mark.parametrize(
    "kernel",
    [
        km.Gaussian(0.8),
        km.IMQ(c=1.2, beta=-0.3, bandwidth=0.9),
        km.Matern(nu=1.5),
        km.Matern(nu=2.5, bandwidth=1.7),
    ],
    ids=["gaussian", "imq", "matern15", "matern25"],
)
def test_closed_form_stein_kernel_equals_autodiff(x64, getkey, kernel):
    x = jax.random.normal(getkey(), (8, 3))
    s = jax.random.normal(getkey(), (8, 3))
    y = jax.random.normal(getkey(), (6, 3))
    sy = jax.random.normal(getkey(), (6, 3))
    # jitted: eager autodiff dispatches (and compiles) every primitive one by one
    closed_form = jax.jit(lambda k, *a: k.stein_gram(*a))
    autodiff = jax.jit(lambda k, *a: km.Kernel.stein_gram(k, *a))
    np.testing.assert_allclose(
        closed_form(kernel, x, s, y, sy), autodiff(kernel, x, s, y, sy), rtol=1e-9, atol=1e-12
    )
    # On the diagonal (x = y) autodiff through |x - y| is not defined for Matern; the closed
    # form must be the continuous limit.
    eps = 1e-5 * jnp.ones(3) / jnp.sqrt(3.0)
    on = closed_form(kernel, x[:1], s[:1], x[:1], s[:1])
    near = autodiff(kernel, x[:1], s[:1], x[:1] + eps[None], s[:1])
    np.testing.assert_allclose(on, near, rtol=1e-4)


def test_ksd2_sum_and_scaled_kernels_are_linear(x64, getkey):
    x = jax.random.normal(getkey(), (15, 2))
    score = lambda z: -z
    a, b = km.Gaussian(0.6), km.IMQ()
    lhs = km.ksd2(x, score, a + 3.0 * b)
    rhs = km.ksd2(x, score, a) + 3.0 * km.ksd2(x, score, b)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-10)
    # the autodiff path (Sinc has no closed form) agrees with a dense evaluation of itself
    sinc = km.Sinc(1.5)
    u = np.asarray(km.Kernel.stein_gram(sinc, x, -x, x, -x))
    np.testing.assert_allclose(
        km.ksd2(x, -x, sinc, unbiased=False, block_size=4), u.mean(), rtol=1e-10
    )


def test_laplace_has_no_stein_kernel(getkey):
    x = jax.random.normal(getkey(), (5, 2))
    with pytest.raises(ValueError, match="not differentiable"):
        km.ksd2(x, -x, km.Laplace(1.0))


def test_float32_and_float64(getkey):
    x = jax.random.normal(getkey(), (30, 2))
    y = jax.random.normal(getkey(), (30, 2)) + 1.0
    k = km.Gaussian(1.0)
    v32 = km.mmd2(x, y, k)
    assert v32.dtype == jnp.float32
    with jax.enable_x64(True):
        v64 = km.mmd2(_np(x), _np(y), k)
        assert v64.dtype == jnp.float64
        h64 = km.hsic(_np(x), _np(y), k, k)
        s64 = km.ksd2(_np(x), lambda z: -z, km.IMQ())
    np.testing.assert_allclose(v32, v64, rtol=1e-5)
    # HSIC (0.014 here) is a difference of O(1) kernel means: float32 is good to about
    # 1e-7 of those terms, so the check is absolute at that scale
    np.testing.assert_allclose(km.hsic(x, y, k, k), h64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(km.ksd2(x, lambda z: -z, km.IMQ()), s64, rtol=1e-4, atol=1e-7)


def test_gradients_pass_finite_differences(x64, getkey):
    x = jax.random.normal(getkey(), (12, 2))
    y = jax.random.normal(getkey(), (9, 2)) + 0.5
    paired_y = jnp.tanh(x) + 0.3 * jax.random.normal(getkey(), (12, 2))
    check_grads(
        lambda x: km.mmd2(x, y, km.Gaussian(1.1), block_size=5), (x,), order=1, modes=["rev"]
    )
    check_grads(lambda bw: km.mmd2(x, y, km.Gaussian(bw)), (1.1,), order=1, modes=["rev"])
    check_grads(
        lambda x: km.hsic(
            x,
            paired_y,
            km.Gaussian(1.0),
            km.Gaussian(0.5),
            block_size=5,
        ),
        (x,),
        order=1,
        modes=["rev"],
    )
    log_p = lambda z: -0.5 * jnp.sum(z**2) - 0.1 * jnp.sum(z**4)
    score = jax.grad(log_p)
    check_grads(lambda x: km.ksd2(x, score, km.IMQ(), block_size=5), (x,), order=1, modes=["rev"])
    check_grads(
        lambda bw: km.ksd2(x, score, km.Gaussian(bw), unbiased=False),
        (0.9,),
        order=1,
        modes=["rev"],
    )
    check_grads(lambda x: km.ksd2(x, score, km.Matern(nu=2.5)), (x,), order=1, modes=["rev"])


def test_jit_vmap_grad_compose(getkey):
    xs = jax.random.normal(getkey(), (4, 20, 2))
    ys = jax.random.normal(getkey(), (4, 20, 2))
    k = km.Gaussian(1.0)
    batched = jax.jit(jax.vmap(lambda x, y: km.mmd2(x, y, k)))(xs, ys)
    single = jnp.stack([km.mmd2(a, b, k) for a, b in zip(xs, ys, strict=True)])
    np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6)
    grads = jax.vmap(jax.grad(lambda x, y: km.ksd2(x, lambda z: -z, k)))(xs, ys)
    assert grads.shape == xs.shape and bool(jnp.all(jnp.isfinite(grads)))


def test_mmd2_memory_is_blocked():
    """mmd2 on n = m = 50,000 points in d = 10 (float32) plans well under 3 GB."""
    x = jax.ShapeDtypeStruct((50_000, 10), jnp.float32)
    from kmethods.mmd import _mmd2

    compiled = _mmd2.lower(x, x, km.Gaussian(1.0), unbiased=True, block_size=None).compile()
    mem = compiled.memory_analysis()
    total = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    assert total < 3 * 2**30, total
    # and the same under grad: blocks are recomputed, not stored
    grad = jax.jit(
        jax.grad(lambda x, y: _mmd2(x, y, km.Gaussian(1.0), unbiased=True, block_size=None))
    )
    mem = grad.lower(x, x).compile().memory_analysis()
    assert mem.temp_size_in_bytes < 3 * 2**30, mem.temp_size_in_bytes


@pytest.mark.slow
def test_mmd2_large_run_peak_memory(tmp_path):
    """Runs mmd2 at n = m = 50,000, d = 10 in a fresh process and reads its peak RSS."""
    import subprocess
    import sys

    code = (
        "import resource, jax, kmethods as km\n"
        "x = jax.random.normal(jax.random.key(0), (50000, 10))\n"
        "y = jax.random.normal(jax.random.key(1), (50000, 10))\n"
        "print(float(km.mmd2(x, y, km.Gaussian(3.0))))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    peak_kib = int(out[-1])
    assert peak_kib < 3 * 2**20, peak_kib


def test_ksd2_with_a_score_function_compiles_once_for_new_bandwidths(getkey):
    x = jax.random.normal(getkey(), (30, 2))
    traces = []

    def score(z):
        traces.append(1)  # runs once per trace of the function
        return -z

    km.ksd2(x, score, km.IMQ(bandwidth=1.0))
    first = len(traces)
    km.ksd2(x, score, km.IMQ(bandwidth=2.0))
    km.ksd2(x, score, km.IMQ(bandwidth=3.0))
    # New Python-float bandwidths are traced leaves, not static values: nothing is traced again.
    assert len(traces) == first


def test_statistics_agree_with_and_without_jit():
    # chex.fake_jit runs the library's jitted cores op by op: the compiled programs must
    # compute what their Python says.
    x = jax.random.normal(jax.random.key(0), (20, 3))
    y = 0.5 + jax.random.normal(jax.random.key(1), (25, 3))
    k = km.Gaussian(1.3)
    key = jax.random.key(2)

    def statistics():
        return (
            km.mmd2(x, y, k),
            km.hsic(x, y[:20], k, k),
            km.ksd2(x, lambda z: -z, km.IMQ()),
            km.mmd_test(key, x, y, k, num_permutations=20).null_samples,
        )

    compiled = statistics()
    with chex.fake_jit():
        eager = statistics()
    chex.assert_trees_all_close(eager, compiled, rtol=1e-5, atol=1e-7)
