"""kmethods.debias: Stein kernels, Stein thinning, debiasing weights, and weighted KSD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import kmethods as km
from kmethods.debias import (
    SolverNotConverged,
    SteinKernel,
    debias_weights,
    low_rank_simplex_qp,
    simplex_qp,
    stein_kernel_thin,
    stein_thin,
    stratified_round,
)
from tests.kmethods.targets import biased_mixture, mixture_score

BASES = {
    "gaussian": (km.Gaussian(1.3), lambda a, b: jnp.exp(-jnp.sum((a - b) ** 2) / (2 * 1.3**2))),
    "imq": (km.IMQ(), lambda a, b: (1.0 + jnp.sum((a - b) ** 2)) ** -0.5),
}


def _log_p(v):
    # A non-Gaussian target (its score is not linear), centred off the origin.
    return -0.5 * jnp.sum((v - 0.3) ** 2 / jnp.array([1.0, 2.0, 0.5])) + jnp.sin(v[0])


def _dense_stein(base_fn, log_p, x, m=None):
    """The preconditioned Langevin Stein kernel by automatic differentiation, term by term:
    s(x)^T M s(y) k + s(x)^T M grad_y k + grad_x k^T M s(y) + tr(M grad_x grad_y k), with
    k(x, y) = base(L x, L y), L^T L = M^{-1}."""
    d = x.shape[1]
    m = jnp.eye(d) if m is None else m
    lower = jnp.linalg.cholesky(jnp.linalg.inv(m)).T
    k = lambda a, b: base_fn(lower @ a, lower @ b)
    s = jax.grad(log_p)

    def u(a, b):
        gx, gy = jax.grad(k, 0)(a, b), jax.grad(k, 1)(a, b)
        cross = jax.jacfwd(jax.grad(k, 0), 1)(a, b)
        return s(a) @ m @ s(b) * k(a, b) + s(a) @ m @ gy + gx @ m @ s(b) + jnp.trace(m @ cross)

    # One compiled program rather than hundreds of eagerly dispatched small ones.
    return np.asarray(jax.jit(lambda x: jax.vmap(lambda a: jax.vmap(lambda b: u(a, b))(x))(x))(x))


@pytest.mark.parametrize("base", sorted(BASES))
@pytest.mark.parametrize("preconditioned", [False, True])
def test_stein_kernel_gram_equals_dense_autodiff(x64, getkey, base, preconditioned):
    x = jax.random.normal(getkey(), (7, 3))
    a = jax.random.normal(getkey(), (3, 3))
    m = a @ a.T + 0.5 * jnp.eye(3) if preconditioned else None
    score = jax.grad(_log_p)
    kernel, base_fn = BASES[base]
    stein = SteinKernel(kernel, score, preconditioner=m)
    z = stein.augment(x)
    assert z.shape == (7, 6)
    # Precomputed scores augment to the same points.
    precomputed = SteinKernel(kernel, jax.vmap(score)(x), preconditioner=m)
    np.testing.assert_array_equal(precomputed.augment(x), z)
    expected = _dense_stein(base_fn, _log_p, x, m)
    np.testing.assert_allclose(stein.gram(z, z), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stein.diag(z), np.diag(expected), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stein(z[1], z[4]), expected[1, 4], rtol=1e-10)
    v = jnp.linspace(-1.0, 2.0, 7)
    got = km.pairwise.kernel_matvec(stein, z, z, v, block_size=3)
    np.testing.assert_allclose(got, expected @ np.asarray(v), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("beta", [-0.5, -1.0, -0.3])
def test_stein_kernel_coordinatewise_equals_matrix_form(x64, getkey, beta):
    # SteinKernel evaluates radial bases in low dimension coordinate by coordinate, with IMQ's
    # exponent static; the base's own matrix-product stein_gram is the reference. A SteinKernel
    # built under jit (traced exponent) takes the generic radial path, and `column` (Stein
    # thinning's rows) equals a row of `gram`.
    base = km.IMQ(c=0.7, beta=beta, bandwidth=1.6)
    x = 3.0 + jax.random.normal(getkey(), (9, 3))
    score = jax.grad(_log_p)
    stein = SteinKernel(base, score)
    assert stein.imq_exponent == beta and stein.coordinatewise(3)
    z = stein.augment(x)
    a, s = z[:, :3], z[:, 3:]
    expected = np.asarray(base.stein_gram(a, s, a, s))
    np.testing.assert_allclose(stein.gram(z, z), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stein.diag(z), np.diag(expected), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        stein.column(z[4], stein.columns(z)), expected[4], rtol=1e-12, atol=1e-12
    )

    @jax.jit
    def traced(b):
        k = SteinKernel(km.IMQ(c=0.7, beta=b, bandwidth=1.6))
        assert k.imq_exponent is None
        return k.gram(z, z)

    np.testing.assert_allclose(traced(beta), expected, rtol=1e-12, atol=1e-12)
    # A base that is not radial (a sum) keeps its own stein_gram, rows included.
    summed = SteinKernel(base + km.Gaussian(0.8))
    assert not summed.coordinatewise(3)
    np.testing.assert_allclose(
        summed.column(z[2], summed.columns(z)), summed.gram(z, z)[2], rtol=1e-12, atol=1e-12
    )


def test_first_minimum_is_argmin_with_ties(getkey):
    from kmethods._numerics import first_minimum

    def first_argmin(v):
        return first_minimum(v, jnp.arange(v.shape[0], dtype=jnp.int32))

    v = jnp.round(jax.random.normal(getkey(), (1000,)), 1)  # many ties
    assert int(first_argmin(v)) == int(jnp.argmin(v))
    v = v.at[::7].set(jnp.min(v))
    assert int(first_argmin(v)) == int(jnp.argmin(v)) == 0


def test_stein_kernel_works_where_kernels_do(x64, getkey):
    x = biased_mixture(getkey(), 64)
    stein = SteinKernel(km.IMQ(), mixture_score)
    z = stein.augment(x)
    gram = np.asarray(stein.gram(z, z))
    # KT and Compress++ run on z as on any points: see the test of stein_kernel_thin.
    idx = jnp.array([3, 9, 9, 40, 63])
    c = np.asarray(idx)
    expected = gram.mean() - 2 * gram[:, c].mean() + gram[np.ix_(c, c)].mean()
    got = km.thinning.mmd_to_sample(z, idx, stein)
    np.testing.assert_allclose(got, np.sqrt(expected), rtol=1e-9)
    # The KSD of the weighted sample is the Stein kernel's quadratic form.
    w = jax.random.uniform(getkey(), (64,))
    w = w / jnp.sum(w)
    got = km.ksd2(x, mixture_score, km.IMQ(), weights=w, unbiased=False)
    np.testing.assert_allclose(got, np.asarray(w) @ gram @ np.asarray(w), rtol=1e-10)


def _naive_stein_thin(gram, out_size, extra_diag=None, entropic=None):
    n = gram.shape[0]
    extra_diag = np.zeros(n) if extra_diag is None else extra_diag
    entropic = np.zeros(n) if entropic is None else entropic
    picked = []
    for t in range(1, out_size + 1):
        objective = (np.diag(gram) + extra_diag) / 2 + gram[picked].sum(0) + t * entropic
        picked.append(int(np.argmin(objective)))
    return np.array(picked)


def test_stein_thin_equals_naive_greedy(x64, getkey):
    x = biased_mixture(getkey(), 50)
    score = mixture_score
    stein = SteinKernel(km.IMQ(), score)
    gram = np.asarray(stein.gram(stein.augment(x), stein.augment(x)))
    idx = stein_thin(x, score, km.IMQ(), out_size=70)  # more than n: points repeat
    np.testing.assert_array_equal(idx, _naive_stein_thin(gram, 70))
    assert len(np.unique(np.asarray(idx))) < 70
    # Precomputed scores, and a SteinKernel in place of the base, give the same indices.
    idx2 = stein_thin(x, jax.vmap(score)(x), stein, out_size=70)
    np.testing.assert_array_equal(idx, idx2)


def test_regularised_stein_thin_equals_naive_greedy(x64, getkey):
    # Double well: log p = sum_j x_j^2 - x_j^4 / 4, d^2 log p / dx_j^2 = 2 - 3 x_j^2.
    log_p = lambda v: jnp.sum(v**2 - v**4 / 4)
    score = jax.grad(log_p)
    x = 1.5 * jax.random.normal(getkey(), (40, 2))
    xn = np.asarray(x)
    stein = SteinKernel(km.Gaussian(1.0), score)
    z = stein.augment(x)
    gram = np.asarray(stein.gram(z, z))
    laplacian = np.maximum(2 - 3 * xn**2, 0).sum(1)
    log_values = (xn**2 - xn**4 / 4).sum(1)
    for strength in (None, 0.3):
        lam = 1 / 25 if strength is None else strength
        expected = _naive_stein_thin(gram, 25, laplacian, -0.5 * lam * log_values)
        for lp, sc in ((log_p, score), (jnp.asarray(log_values), score), (log_p, z[:, 2:])):
            idx = stein_thin(
                x, sc, km.Gaussian(1.0), out_size=25, regularised=True, log_prob=lp,
                strength=strength,
            )  # fmt: skip
            np.testing.assert_array_equal(idx, expected)
    plain = _naive_stein_thin(gram, 25)
    assert not np.array_equal(expected, plain)


def _dense_objective(x, score, kernel=None):
    stein = SteinKernel(km.IMQ() if kernel is None else kernel, score)
    z = stein.augment(x)
    return np.asarray(stein.gram(z, z))


def test_exact_debias_weights_solve_the_simplex_qp(x64, getkey):
    x = biased_mixture(getkey(), 30)
    score = mixture_score
    gram = _dense_objective(x, score)
    tol = 1e-6
    w, info = debias_weights(x, score, km.IMQ(), tol=tol, max_iter=50_000, return_info=True)
    w = np.asarray(w)
    assert bool(info.converged) and info.gap <= tol
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    f = w @ gram @ w
    np.testing.assert_allclose(info.objective, f, rtol=1e-10)
    # KKT of min w^T K w on the simplex: the gradient 2 K w is at least 2 f everywhere and
    # equals it on the support (sum_i w_i (K w)_i = f, so the weighted deviation is small).
    kw = gram @ w
    assert kw.min() >= f * (1 - 1.01 * tol)
    assert np.sum(w * np.abs(kw - f)) <= 2.01 * tol * f
    np.testing.assert_allclose(kw[w > 1e-2], f, rtol=1e-3)
    assert 1 < (w > 0).sum() < 30
    # A generic QP solver agrees.
    ref = scipy.optimize.minimize(
        lambda v: v @ gram @ v,
        np.full(30, 1 / 30),
        jac=lambda v: 2 * gram @ v,
        bounds=[(0, 1)] * 30,
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert ref.success
    assert f <= ref.fun * (1 + 1e-6)
    np.testing.assert_allclose(f, ref.fun, rtol=1e-5)
    np.testing.assert_allclose(w, ref.x, atol=1e-2)


def test_low_rank_debias_approaches_exact(x64, getkey):
    x = biased_mixture(getkey(), 30)  # the size of the test above: its exact solve is compiled
    score = mixture_score
    gram = _dense_objective(x, score)
    exact = np.asarray(debias_weights(x, score, km.IMQ(), tol=1e-6, max_iter=50_000))
    best = exact @ gram @ exact
    excess = []
    for rank in (4, 30):
        w = np.asarray(
            debias_weights(
                x, score, km.IMQ(), method="low_rank", rank=rank, tol=1e-6, max_iter=20_000
            )
        )
        assert w.min() >= 0 and abs(w.sum() - 1) < 1e-10
        excess.append(w @ gram @ w / best - 1)
    assert excess[0] > excess[1] >= -1e-6
    assert excess[1] < 1e-5  # full rank: the exact problem


def test_low_rank_newton_solves_the_low_rank_qp(x64, getkey):
    """The Newton solver of the low-rank problem min w^T (F F^T + D) w on the simplex, with
    zeros in D (as at a factor's pivots): its certificate holds, the KKT conditions hold, and it
    matches or beats accelerated projected gradient run long and a dense SLSQP solve."""
    n, r = 30, 4
    f = np.asarray(jax.random.normal(getkey(), (n, r))) + np.array([1.0, 0.0, 0.0, 0.0])
    d = np.asarray(jax.random.uniform(getkey(), (n,))) ** 2
    d[:r] = 0.0
    gram = f @ f.T + np.diag(d)
    tol = 1e-8
    solve = jax.jit(low_rank_simplex_qp)  # one compile for both calls
    w, info = solve(jnp.asarray(f), jnp.asarray(d), tol, 50)
    w = np.asarray(w)
    assert bool(info.converged) and float(info.gap) <= tol and int(info.iterations) < 50
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12 and 1 < (w > 0).sum() < n
    obj = w @ gram @ w
    np.testing.assert_allclose(info.objective, obj, rtol=1e-12)
    kw = gram @ w
    assert kw.min() >= obj * (1 - 1.01 * tol)
    np.testing.assert_allclose(kw[w > 1e-6], obj, rtol=1e-6)
    fista, fista_info = jax.jit(lambda k: simplex_qp(lambda v: k @ v, jnp.diag(k), 1e-6, 50_000))(
        jnp.asarray(gram)
    )
    assert obj <= float(fista_info.objective) * (1 + 1e-9)
    ref = scipy.optimize.minimize(
        lambda v: v @ gram @ v,
        np.full(n, 1 / n),
        jac=lambda v: 2 * gram @ v,
        bounds=[(0, 1)] * n,
        constraints=[{"type": "eq", "fun": lambda v: v.sum() - 1}],
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert ref.success and obj <= ref.fun * (1 + 1e-8)
    np.testing.assert_allclose(w, ref.x, atol=1e-4)
    np.testing.assert_allclose(w, np.asarray(fista), atol=1e-2)
    # One step is not enough, and says so.
    _, short = solve(jnp.asarray(f), jnp.asarray(d), 1e-12, 1)
    assert not bool(short.converged) and float(short.gap) > 1e-12


def test_debiasing_corrects_the_biased_mixture(x64, getkey):
    # float64: in float32 the gap of the solver stalls near 1e-2 at this n (rounding of K w).
    x = biased_mixture(getkey(), 1024)
    score = mixture_score
    right = np.asarray(x[:, 0] > 0)
    assert right.mean() < 0.3
    w, info = debias_weights(x, score, km.IMQ(), return_info=True)
    assert bool(info.converged)
    assert abs(float(np.asarray(w)[right].sum()) - 0.5) < 0.1
    ksd_debiased = km.ksd2(x, score, km.IMQ(), weights=w, unbiased=False)
    ksd_uniform = km.ksd2(x, score, km.IMQ(), unbiased=False)
    assert float(ksd_debiased) < 0.25 * float(ksd_uniform)
    # Stein thinning to 32 points moves toward 0.5 / 0.5 too (greedily, it overshoots).
    idx = stein_thin(x, score, km.IMQ(), out_size=32)
    assert abs(right[np.asarray(idx)].mean() - 0.5) < abs(right.mean() - 0.5)
    ksd_thinned = km.ksd2(x[idx], score, km.IMQ(), unbiased=False)
    ksd_standard = km.ksd2(x[::32], score, km.IMQ(), unbiased=False)  # same size, every 32nd
    assert float(ksd_thinned) < 0.5 * float(ksd_standard)


def test_non_finite_scores_raise_or_give_nan(getkey):
    x = jax.random.normal(getkey(), (20, 2))
    bad = lambda v: jnp.where(v[0] > 0, jnp.nan, 1.0) * v
    for call in (
        lambda s: debias_weights(x, s, km.IMQ()),
        lambda s: stein_thin(x, s, km.IMQ(), out_size=5),
        lambda s: SteinKernel(km.IMQ(), s).augment(x),
    ):
        with pytest.raises(ValueError, match="score"):
            call(bad)
        with pytest.raises(ValueError, match="score"):
            call(jnp.full((20, 2), jnp.inf))
    w = jax.jit(lambda x: debias_weights(x, bad, km.IMQ()))(x)
    assert np.all(np.isnan(np.asarray(w)))
    idx = jax.jit(lambda x: stein_thin(x, bad, km.IMQ(), out_size=5))(x)
    assert np.all(np.asarray(idx) == -1)


def test_solver_that_stops_early_says_so(x64, getkey):
    x = biased_mixture(getkey(), 30)
    with pytest.warns(SolverNotConverged, match="did not converge"):
        _, info = debias_weights(x, mixture_score, km.IMQ(), tol=1e-9, max_iter=3, return_info=True)
    assert not bool(info.converged) and int(info.iterations) == 3
    with pytest.warns(SolverNotConverged, match="did not converge"):
        _, info = debias_weights(
            x, mixture_score, km.IMQ(), method="low_rank", rank=4, tol=1e-14, max_iter=1,
            return_info=True,
        )  # fmt: skip
    assert not bool(info.converged)
    with pytest.warns(SolverNotConverged, match="raise `max_iter`"):
        debias_weights(x, mixture_score, km.IMQ(), tol=1e-9, max_iter=3)


def test_solver_at_the_float32_floor_says_so_and_its_objective_holds():
    """In float32 a low-dimensional problem's gap stops near eps max K_ii / w'Kw, far above a
    tight `tol`: the solver stops once it is stuck there (at a stall check, well before
    `max_iter`), the warning says that float64, not more iterations, would certify it, and the
    weights are still near-optimal (their objective, evaluated in float64, within 5% of
    float64's own optimum)."""
    x = np.random.default_rng(0).normal(size=(128, 2)) + 0.3
    score = lambda v: -v
    with pytest.warns(SolverNotConverged, match="rounding.*float64"):
        w32, info = debias_weights(
            x.astype(np.float32), score, km.IMQ(), tol=1e-4, max_iter=20_000, return_info=True
        )
    assert w32.dtype == jnp.float32 and not bool(info.converged)
    assert int(info.iterations) < 20_000 and int(info.iterations) % 250 == 0
    with jax.enable_x64(True):
        w64 = debias_weights(x, score, km.IMQ(), tol=1e-3, max_iter=20_000)
        value = lambda w: float(km.ksd2(x, score, km.IMQ(), weights=w, unbiased=False))
        ratio = value(jnp.asarray(w32, jnp.float64)) / value(w64)
    assert 1.0 - 1e-6 <= ratio < 1.05, ratio


def test_bad_inputs_name_the_argument(getkey):
    x = jax.random.normal(getkey(), (20, 2))
    score = lambda v: -v
    k = km.IMQ()
    cases = [
        (lambda: debias_weights(x, score, k, method="dense"), ValueError, "method"),
        (lambda: debias_weights(x, score, k, method="low_rank"), ValueError, "rank"),
        (lambda: debias_weights(x, score, k, method="low_rank", rank=21), ValueError, "rank"),
        (lambda: debias_weights(x, score, k, rank=3), ValueError, "rank"),
        # was JAX's "invalid PRNG key data", naming no argument
        (lambda: debias_weights(x, score, k, method="low_rank", rank=3, key=0), TypeError, "key"),
        (lambda: debias_weights(x, score, k, tol=0.0), ValueError, "tol"),
        (lambda: debias_weights(x, score, k, max_iter=0), ValueError, "max_iter"),
        (lambda: debias_weights(x, score, "imq"), TypeError, "kernel"),
        (lambda: debias_weights(x, -x[:5], k), ValueError, "score"),
        (lambda: stein_thin(x, score, k, out_size=0), ValueError, "out_size"),
        (lambda: stein_thin(x, score, k, out_size=3, regularised=True), ValueError, "log_prob"),
        (lambda: stein_thin(x, score, k, out_size=3, strength=0.1), ValueError, "strength"),
        (lambda: stein_thin(x, score, k, out_size=3, preconditioner=jnp.eye(3)), ValueError,
         "preconditioner"),
        (lambda: SteinKernel(k, score, preconditioner=-jnp.eye(2)), ValueError, "preconditioner"),
        (lambda: SteinKernel(k, score, preconditioner=jnp.ones((2, 3))), ValueError,
         "preconditioner"),
        (lambda: SteinKernel(SteinKernel(k), score), TypeError, "base"),
        (lambda: SteinKernel(k).augment(x), ValueError, "score"),
        (lambda: SteinKernel(k, score).gram(x, x[:, :1]), ValueError, "augmented"),
        (lambda: km.ksd2(x, score, k, weights=jnp.ones(3)), ValueError, "weights"),
        (lambda: km.ksd2(x, score, k, weights=-jnp.ones(20)), ValueError, "weights"),
        (lambda: km.ksd2(x, score, k, weights=jnp.eye(20)[0]), ValueError, "unbiased"),
    ]  # fmt: skip
    for call, error, name in cases:
        with pytest.raises(error, match=name):
            call()


def test_ksd2_weights(x64, getkey):
    x = 0.3 + jax.random.normal(getkey(), (25, 2))
    score = lambda v: -v
    gram = _dense_objective(x, score, km.Gaussian(1.0))
    w = np.asarray(jax.random.uniform(getkey(), (25,)))
    p = w / w.sum()
    got = km.ksd2(x, score, km.Gaussian(1.0), weights=w, unbiased=False)
    np.testing.assert_allclose(got, p @ gram @ p, rtol=1e-10)
    off = p @ gram @ p - np.sum(p**2 * np.diag(gram))
    got = km.ksd2(x, -x, km.Gaussian(1.0), weights=w)
    np.testing.assert_allclose(got, off / (1 - np.sum(p**2)), rtol=1e-10)
    for unbiased in (True, False):
        np.testing.assert_allclose(
            km.ksd2(x, score, km.Gaussian(1.0), weights=jnp.full(25, 2.0), unbiased=unbiased),
            km.ksd2(x, score, km.Gaussian(1.0), unbiased=unbiased),
            rtol=1e-12,
        )


@pytest.mark.parametrize(
    "rank", [None, pytest.param(16, marks=pytest.mark.slow)], ids=["skt", "lskt"]
)
def test_stein_kernel_thin_keeps_the_best_candidate(x64, getkey, rank):
    x = biased_mixture(getkey(), 128)
    score = mixture_score
    ksd = lambda idx: float(km.ksd2(x[idx], score, km.IMQ(), unbiased=False))
    baseline = ksd(stein_thin(x, score, km.IMQ(), out_size=8))  # one of its candidates
    standard = ksd(jnp.arange(0, 128, 16))
    idx = stein_kernel_thin(getkey(), x, score, km.IMQ(), out_size=8, rank=rank)
    assert idx.shape == (8,) and int(idx.min()) >= 0 and int(idx.max()) < 128
    assert ksd(idx) <= baseline * (1 + 1e-12)
    assert ksd(idx) < 0.5 * standard
    with pytest.raises(ValueError, match="out_size"):
        stein_kernel_thin(getkey(), x, score, km.IMQ(), out_size=65)


def test_stratified_round_keeps_the_weights(getkey):
    w = jax.random.uniform(getkey(), (50,)) ** 3
    w = w / jnp.sum(w)
    seq = np.asarray(stratified_round(getkey(), w, 256))
    assert seq.shape == (256,) and np.all(np.diff(seq) >= 0)
    counts = np.bincount(seq, minlength=50)
    assert np.all(np.abs(counts - 256 * np.asarray(w)) < 2)


def test_score_arrays_of_another_precision_are_promoted(x64, getkey):
    """Scores given as a float32 or integer array with float64 points are computed in float64
    (as jnp.promote_types would), also under strict dtype promotion (the test setting)."""
    x = jax.random.normal(getkey(), (40, 2))
    exact = km.ksd2(x, -x, km.IMQ())
    for scores in ((-x).astype(jnp.float32), jnp.round(-3 * x).astype(jnp.int32)):
        value = km.ksd2(x, scores, km.IMQ())
        assert value.dtype == jnp.float64
        reference = km.ksd2(x, scores.astype(jnp.float64), km.IMQ())
        np.testing.assert_allclose(value, reference, rtol=1e-12)
        idx = stein_thin(x, scores, km.IMQ(), out_size=4)
        assert np.array_equal(idx, stein_thin(x, scores.astype(jnp.float64), km.IMQ(), out_size=4))
    np.testing.assert_allclose(km.ksd2(x, (-x).astype(jnp.float32), km.IMQ()), exact, rtol=1e-6)
