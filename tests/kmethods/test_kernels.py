import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kmethods as km
from kmethods import pairwise
from tests import reference as ref

KERNELS = [
    ("gaussian", lambda: km.Gaussian(1.3), {"bandwidth": 1.3}),
    (
        "imq",
        lambda: km.IMQ(c=0.8, beta=-0.6, bandwidth=1.5),
        {"c": 0.8, "beta": -0.6, "bandwidth": 1.5},
    ),
    ("laplace", lambda: km.Laplace(0.9), {"bandwidth": 0.9}),
    ("matern", lambda: km.Matern(nu=0.5, bandwidth=1.1), {"nu": 0.5, "bandwidth": 1.1}),
    ("matern", lambda: km.Matern(nu=1.5, bandwidth=1.1), {"nu": 1.5, "bandwidth": 1.1}),
    ("matern", lambda: km.Matern(nu=2.5, bandwidth=0.7), {"nu": 2.5, "bandwidth": 0.7}),
    ("sinc", lambda: km.Sinc(2.0), {"bandwidth": 2.0}),
    ("linear", lambda: km.Linear(), {}),
    (
        "polynomial",
        lambda: km.Polynomial(degree=3, c=0.5, scale=0.4),
        {"degree": 3, "c": 0.5, "scale": 0.4},
    ),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(KERNELS)]


@pytest.mark.parametrize("name,make,params", KERNELS, ids=IDS)
@pytest.mark.parametrize("d", [2, 20])
def test_gram_matches_dense_numpy(x64, getkey, name, make, params, d):
    x = jax.random.normal(getkey(), (13, d))
    y = jax.random.normal(getkey(), (7, d))
    kernel = make()
    expected = ref.gram(name, np.asarray(x), np.asarray(y), **params)
    np.testing.assert_allclose(kernel.gram(x, y), expected, rtol=1e-10, atol=1e-12)
    # the single-point call and the generic nested vmap agree with the fast block
    pointwise = km.Kernel.gram(kernel, x, y)
    np.testing.assert_allclose(pointwise, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        kernel.diag(x), np.diag(ref.gram(name, *(np.asarray(x),) * 2, **params)), rtol=1e-10
    )


@pytest.mark.parametrize("name,make,params", KERNELS, ids=IDS)
def test_gram_float32(getkey, name, make, params):
    x = jax.random.normal(getkey(), (11, 3))
    g = make().gram(x, x)
    assert g.dtype == jnp.float32
    expected = ref.gram(name, np.asarray(x, np.float64), np.asarray(x, np.float64), **params)
    np.testing.assert_allclose(g, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("make", [k[1] for k in KERNELS if k[0] != "polynomial"], ids=IDS[:-1])
def test_positive_semidefinite(x64, getkey, make):
    x = jax.random.normal(getkey(), (40, 2))
    eig = np.linalg.eigvalsh(np.asarray(make().gram(x, x)))
    assert eig.min() > -1e-8 * max(1.0, eig.max())


def test_sum_and_scaling(x64, getkey):
    x = jax.random.normal(getkey(), (9, 2))
    k1, k2 = km.Gaussian(0.5), km.IMQ()
    both = k1 + 2.5 * k2
    assert isinstance(both, km.SumKernel)
    np.testing.assert_allclose(both.gram(x, x), k1.gram(x, x) + 2.5 * k2.gram(x, x), rtol=1e-12)
    np.testing.assert_allclose(both(x[0], x[1]), k1(x[0], x[1]) + 2.5 * k2(x[0], x[1]))
    three = both + km.Linear()
    assert len(three.kernels) == 3
    with pytest.raises(ValueError, match="weight"):
        -1.0 * k1
    with pytest.raises(TypeError):
        k1 * k2


def test_kernels_are_pytrees_with_differentiable_parameters(x64, getkey):
    x = jax.random.normal(getkey(), (6, 2))
    f = jax.jit(lambda k: jnp.sum(k.gram(x, x)))
    g = jax.grad(f)(km.Gaussian(1.2))
    h = 1e-6
    fd = (f(km.Gaussian(1.2 + h)) - f(km.Gaussian(1.2 - h))) / (2 * h)
    np.testing.assert_allclose(g.bandwidth, fd, rtol=1e-6)
    # one compilation serves new parameter values
    f(km.Gaussian(0.3))
    assert f._cache_size() == 1
    batched = jax.vmap(lambda bw: jnp.sum(km.Gaussian(bw).gram(x, x)))(jnp.array([0.5, 1.0]))
    assert batched.shape == (2,)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: km.Gaussian(0.0), "bandwidth"),
        (lambda: km.Gaussian(-1.0), "bandwidth"),
        (lambda: km.Laplace(float("nan")), "bandwidth"),
        (lambda: km.Matern(nu=-1.0), "nu"),
        (lambda: km.IMQ(beta=0.5), "beta"),
        (lambda: km.IMQ(c=0.0), "c"),
        (lambda: km.Polynomial(degree=0), "degree"),
        (lambda: km.Polynomial(c=-1.0), "c"),
        (lambda: km.Sinc(-2.0), "bandwidth"),
    ],
)
def test_bad_kernel_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_sqdist_forms_agree(x64, getkey):
    for d in (2, 16, 17, 40):
        x = jax.random.normal(getkey(), (10, d))
        y = jax.random.normal(getkey(), (8, d))
        np.testing.assert_allclose(
            pairwise.sqdist(x, y),
            ref.sqdist(np.asarray(x), np.asarray(y)),
            rtol=1e-10,
            atol=1e-10,
        )


def test_median_bandwidth(x64, getkey):
    x = jax.random.normal(getkey(), (50, 3))
    d = np.sqrt(ref.sqdist(np.asarray(x), np.asarray(x)))
    expected = np.median(d[np.triu_indices(50, 1)])
    np.testing.assert_allclose(km.median_bandwidth(x), expected, rtol=1e-12)
    # subsampled for large n: deterministic given a key, and close to the full median
    big = jax.random.normal(getkey(), (3000, 3))
    a = km.median_bandwidth(big, key=jax.random.key(1), max_points=500)
    b = km.median_bandwidth(big, key=jax.random.key(1), max_points=500)
    assert a == b
    full = np.median(np.sqrt(ref.sqdist(np.asarray(big[:1500]), np.asarray(big[1500:]))))
    assert abs(float(a) - full) / full < 0.05
    assert km.median_bandwidth(jnp.ones((5, 2))) == 1.0


def test_median_bandwidth_bad_input():
    with pytest.raises(ValueError, match="x"):
        km.median_bandwidth(jnp.ones((1, 2)))
    with pytest.raises(ValueError, match="NaN"):
        km.median_bandwidth(jnp.array([[0.0], [jnp.nan]]))


@pytest.mark.parametrize("nu", [0.3, 0.75, 1.0, 1.25, 3.7])
def test_matern_any_nu_matches_scipy_bessel(x64, nu):
    special = pytest.importorskip("scipy.special")
    x = np.concatenate([[0.0, 1e-8, 1e-6], np.logspace(-5, 0, 20), np.linspace(1.1, 40.0, 60)])
    safe = np.where(x > 0, x, 1.0)
    want = np.where(
        x > 0, safe**nu * special.kv(nu, safe) / (2 ** (nu - 1) * special.gamma(nu)), 1.0
    )
    got = km.kernels.matern_normalised(jnp.asarray(x), nu)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)
    # the kernel uses it with a = sqrt(2 nu) r / h, and the half-integer closed forms agree
    r = jnp.linspace(0.0, 5.0, 11)[:, None]
    for half in (1.5, 2.5):
        closed = km.Matern(nu=half, bandwidth=0.8).gram(r, jnp.zeros((1, 1)))
        numeric = km.kernels.matern_normalised(np.sqrt(2 * half) * r / 0.8, half)
        np.testing.assert_allclose(closed, numeric, rtol=1e-8, atol=1e-12)
