"""Hilbert-Schmidt independence criterion and the kernel independence test.

References:
  Gretton, Bousquet, Smola & Schoelkopf, "Measuring Statistical Dependence with Hilbert-Schmidt
  Norms", ALT 2005 (the biased estimator tr(KHLH) / n^2).
  Song, Smola, Gretton, Bedo & Borgwardt, "Feature Selection via Dependence Maximization",
  JMLR 13, 2012 (Theorem 2: the unbiased estimator).
  Gretton, Fukumizu, Teo, Song, Schoelkopf & Smola, "A Kernel Statistical Test of
  Independence", NeurIPS 2008 (the gamma approximation to the null).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from kmethods import _checks, _sharding
from kmethods.calibration import TestResult, decide, gamma_p_value, resample_p_value
from kmethods.kernels import Kernel, check_kernel
from kmethods.pairwise import map_row_blocks, mask_diagonal

__all__ = ["hsic", "hsic_test"]


def _paired_inputs(x, y, kernel_x, kernel_y):
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_length(x, y, "x", "y")
    check_kernel(kernel_x, "kernel_x")
    check_kernel(kernel_y, "kernel_y")
    return _checks.promote(x, y)


def hsic(
    x: Float[Array, "n dx"],
    y: Float[Array, "n dy"],
    kernel_x: Kernel,
    kernel_y: Kernel,
    *,
    unbiased: bool = False,
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Float[Scalar, ""]:
    """Hilbert-Schmidt independence criterion of the paired sample (x_i, y_i).

    Biased (Gretton et al. 2005): tr(K H L H) / n^2 with K = [k(x_i, x_j)],
    L = [l(y_i, y_j)] and H = I - 11'/n.
    Unbiased (Song et al. 2012, Theorem 2), with K~, L~ the Gram matrices with zeroed diagonals:
      [tr(K~ L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3)), for n >= 4.

    Args:
      x: (n, d_x). y: (n, d_y): paired observations.
      kernel_x, kernel_y: kernels on each variable, each with its own bandwidth.
      unbiased: use the unbiased estimator.
      block_size: rows held at once (memory O(block_size * n)).
      mesh: a `jax.sharding.Mesh`, or None (one device): the rows of K and L are split over
        all the mesh's axes, each of its p devices holding about n/p rows and a p-th of each
        block (memory O(block_size * n / p) per device); the row sums are combined across
        devices. Equal to one device up to the float rounding of the kernel sums. Works with
        several processes (`jax.distributed`) when each passes the same inputs.

    Returns:
      A scalar, float32 for half-precision (float16, bfloat16) input, which is computed in float32,
      else the input's dtype; NaN if a sample holds NaN or inf values that `jit` let through.
      Differentiable with respect to x, y and the kernels' parameters.
    """
    x, y = _paired_inputs(x, y, kernel_x, kernel_y)
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    if unbiased and x.shape[0] < 4:
        raise ValueError(f"the unbiased HSIC needs n >= 4 points, got {x.shape[0]}.")
    mesh = _sharding.check_mesh(mesh)
    x, y, kernel_x, kernel_y = _sharding.replicate((x, y, kernel_x, kernel_y), mesh)
    return _hsic(x, y, kernel_x, kernel_y, unbiased=unbiased, block_size=block_size, mesh=mesh)


@partial(jax.jit, static_argnames=("unbiased", "block_size", "mesh"))
def _hsic(x, y, kernel_x, kernel_y, *, unbiased, block_size, mesh=None):
    n = x.shape[0]

    def block(rows, xb, yb):
        kb, lb = kernel_x.gram(xb, x), kernel_y.gram(yb, y)
        if unbiased:
            kb, lb = mask_diagonal(kb, rows), mask_diagonal(lb, rows)
        return jnp.sum(kb * lb, axis=1), jnp.sum(kb, axis=1), jnp.sum(lb, axis=1)

    kl, k_rows, l_rows = map_row_blocks(
        block, x, y, block_size=block_size, num_columns=n, mesh=mesh
    )
    n = float(n)  # n(n-1)(n-2) overflows int32 for n in the thousands
    trace_kl, k_sum, l_sum = jnp.sum(kl), jnp.sum(k_rows), jnp.sum(l_rows)
    cross = jnp.dot(k_rows, l_rows)  # 1'K L 1
    if unbiased:
        value = (trace_kl + k_sum * l_sum / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (
            n * (n - 3)
        )
    else:
        # tr(KHLH) = tr(KL) - 2/n 1'KL1 + (1'K1)(1'L1)/n^2
        value = (trace_kl - 2.0 * cross / n + k_sum * l_sum / n**2) / n**2
    return _checks.nan_unless_finite(value, x, y)


def hsic_test(
    key: PRNGKeyArray,
    x: Float[Array, "n dx"],
    y: Float[Array, "n dy"],
    kernel_x: Kernel,
    kernel_y: Kernel,
    *,
    num_permutations: int = 1000,
    permutation_batch: int | None = None,
    alpha: float = 0.05,
    null: str = "permutation",
    unbiased: bool = False,
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> TestResult:
    """Kernel independence test of H0: x and y are independent, from paired observations.

    `null="permutation"`: the statistic is `hsic(x, y, ..., unbiased=unbiased)`, recomputed with
    y's rows permuted. Each permuted statistic is a sum sum_ij A_ij B_{p_i p_j} of two fixed
    n x n matrices (A = HKH, B = HLH for the biased HSIC; for the unbiased one K~, L~ with zero
    diagonals, their off-diagonal means subtracted, which the statistic does not see),
    evaluated on the upper triangle only with one flat gather per permutation, permutations
    batched; the observed statistic is the identity permutation in the same batch. This is
    the one place where n x n matrices are stored (2n^2 floats):
    recomputing the kernel for every permutation would cost B n^2 kernel evaluations instead
    of B n^2 / 2 gathers.

    `null="gamma"`: the moment-matched gamma approximation of Gretton et al. (2008) to the law
    of n * HSIC_b under H0 (needs n >= 6); the statistic is the biased HSIC and `null_samples`
    is empty. O(n^2) time, O(n * block_size) memory.

    Args:
      key: PRNG key (permutation null).
      x: (n, d_x). y: (n, d_y).
      kernel_x, kernel_y: separate kernels, so each variable keeps its own scale.
      num_permutations: B.
      permutation_batch: permutations evaluated together (default: about 2^23 gathered
        entries per batch; with `mesh`, 16).
      alpha: level.
      null: "permutation" or "gamma".
      unbiased: permutation null only: use the unbiased HSIC.
      block_size: rows held at once in the blocked reductions (gamma null; permutation null
        with `mesh`).
      mesh: a `jax.sharding.Mesh`, or None (one device). The rows are split over all its axes,
        each of its p devices holding about n/p of them and a p-th of each block. The gamma
        null is `hsic`'s blocked reductions so split (memory O(block_size * n / p) per
        device). The permutation null then stores no n x n matrix: each device computes its
        rows of A once per block and, for each permutation, the matching rows of B_{p_i p_j}
        from the kernel (the permutations are drawn as on one device, (B + 1) x n indices
        copied to every device), so memory is O(permutation_batch * block_size * n / p)
        per device and time O(B n^2 / p) kernel evaluations instead of B n^2 / 2 gathers.
        Statistics equal one device's up to float rounding.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`, float32 for half-precision (float16,
      bfloat16) input, which is computed in float32, else the input's dtype. A non-finite statistic
      gives p = NaN and reject = False.
    """
    x, y = _paired_inputs(x, y, kernel_x, kernel_y)
    _checks.choice(null, "null", ("permutation", "gamma"))
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    mesh = _sharding.check_mesh(mesh)
    key, x, y, kernel_x, kernel_y = _sharding.replicate((key, x, y, kernel_x, kernel_y), mesh)
    n = x.shape[0]
    if null == "gamma":
        if n < 6:
            raise ValueError(f"the gamma null needs n >= 6 points, got {n}.")
        return _hsic_gamma_test(x, y, kernel_x, kernel_y, alpha, block_size=block_size, mesh=mesh)
    num_permutations = _checks.positive_int(num_permutations, "num_permutations")
    if unbiased and n < 4:
        raise ValueError(f"the unbiased HSIC needs n >= 4 points, got {n}.")
    if permutation_batch is None and mesh is not None:
        permutation_batch = _MESH_PERMUTATION_BATCH
    if permutation_batch is None:
        permutation_batch = max(1, min(num_permutations, 2**23 // max(n * (n - 1) // 2, 1)))
    permutation_batch = _checks.positive_int(permutation_batch, "permutation_batch")
    batch = min(permutation_batch, num_permutations + 1)
    args = (key, x, y, kernel_x, kernel_y, alpha)
    options = {"num_permutations": num_permutations, "unbiased": unbiased, "batch": batch}
    if mesh is not None:
        return _hsic_streamed_permutation_test(*args, **options, block_size=block_size, mesh=mesh)
    return _hsic_permutation_test(*args, **options)


# Permutations whose rows of B are computed together on a mesh (`hsic_test(mesh=...)`).
_MESH_PERMUTATION_BATCH = 16


def _permutation_batches(key, num_permutations, batch):
    """The key of each permutation and whether it is the identity (row 0, the observed
    statistic), both of shape (num_batches, batch): the B + 1 permutations in batches, the
    last one padded with repeats."""
    keys = jax.random.split(key, num_permutations)
    keys = jnp.concatenate([keys[:1], keys])
    identity = jnp.arange(num_permutations + 1) == 0
    num_batches = -(-(num_permutations + 1) // batch)
    pad = num_batches * batch - (num_permutations + 1)
    keys = jnp.concatenate([keys, keys[:pad]]).reshape(num_batches, batch)
    return keys, jnp.pad(identity, (0, pad)).reshape(num_batches, batch)


def _permutation(key, is_identity, n):
    return jnp.where(is_identity, jnp.arange(n), jax.random.permutation(key, n))


def _permutation_result(stats, scale, x, y, alpha, num_permutations):
    """The `TestResult` from the statistics of the batched permutations (identity first)."""
    stats = stats.ravel()[: num_permutations + 1]
    observed, null_samples = _checks.nan_unless_finite(stats[0], x, y), stats[1:]
    p_value = resample_p_value(observed, null_samples, scale=scale)
    return decide(observed, p_value, alpha, null_samples)


def _combine(s, cross, a_sum, b_sum, n, unbiased):
    """A permuted statistic from s = sum_ij A_ij B_{p_i p_j} and, for the unbiased HSIC, the
    cross term 1'A P'BP 1 (n a float)."""
    if unbiased:
        return (s + a_sum * b_sum / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))
    return s / n**2


def _rounding_scale(abs_a, max_b, a_rows, b_rows, n, unbiased):
    """The size of the sums each statistic is made of (the scale of its rounding), from
    sum_ij |A_ij|, max |B_ij| and the row sums of A and B."""
    scale = abs_a * max_b
    if not unbiased:
        return scale / n**2
    a_sum, b_sum = jnp.sum(a_rows), jnp.sum(b_rows)
    return (
        scale
        + jnp.abs(a_sum * b_sum) / ((n - 1) * (n - 2))
        + 2.0 * jnp.sum(jnp.abs(a_rows)) * jnp.max(jnp.abs(b_rows)) / (n - 2)
    ) / (n * (n - 3))


@partial(jax.jit, static_argnames=("num_permutations", "unbiased", "batch"))
def _hsic_permutation_test(
    key, x, y, kernel_x, kernel_y, alpha, *, num_permutations, unbiased, batch
):
    n = x.shape[0]
    k = kernel_x.gram(x, x)
    l_mat = kernel_y.gram(y, y)
    # Both matrices are centred in a way the statistic cannot see, so that a nearly constant
    # kernel (K ~ 1 - 1e-8) keeps the digits the statistics differ in: the biased HSIC is
    # tr(HKH HLH), and the unbiased one is unchanged by a constant added to the off-diagonal
    # entries of K~ or L~ (it is a U-statistic of centred terms).
    if unbiased:
        eye = jnp.eye(n, dtype=bool)
        off = lambda mat: jnp.sum(jnp.where(eye, 0.0, mat)) / (n * (n - 1))
        a = jnp.where(eye, 0.0, k - off(k)).astype(k.dtype)
        b = jnp.where(eye, 0.0, l_mat - off(l_mat)).astype(k.dtype)
        a_rows, b_rows = jnp.sum(a, 1), jnp.sum(b, 1)
        a_sum, b_sum = jnp.sum(a_rows), jnp.sum(b_rows)
    else:
        centre = lambda mat: (
            mat - jnp.mean(mat, 0)[None, :] - jnp.mean(mat, 1)[:, None] + jnp.mean(mat)
        )
        a, b = centre(k), centre(l_mat)
        a_rows = b_rows = a_sum = b_sum = None
    iu, ju = np.triu_indices(n, 1)
    a_upper = a[iu, ju]
    a_diag = jnp.diag(a)
    b_flat, b_diag = b.ravel(), jnp.diag(b)

    nf = float(n)
    abs_a = 2.0 * jnp.sum(jnp.abs(a_upper)) + jnp.sum(jnp.abs(a_diag))
    scale = _rounding_scale(abs_a, jnp.max(jnp.abs(b)), a_rows, b_rows, nf, unbiased)

    def statistic(p):
        # sum_ij A_ij B_{p_i p_j}, with A and B symmetric: twice the upper triangle plus diagonal.
        s = 2.0 * jnp.dot(a_upper, b_flat[p[iu] * n + p[ju]]) + jnp.dot(a_diag, b_diag[p])
        cross = jnp.dot(a_rows, b_rows[p]) if unbiased else None
        return _combine(s, cross, a_sum, b_sum, nf, unbiased)

    # The observed statistic is the identity permutation, evaluated as row 0 of the same
    # batched program as the null draws: computed apart, it took another arithmetic path, and
    # with a nearly constant kernel (all statistics equal up to rounding) that rounding alone
    # decided the test (a rejection rate of 0.2-0.45 at level 0.05 under independence).
    stats = jax.lax.map(
        lambda args: jax.vmap(lambda k, i: statistic(_permutation(k, i, n)))(*args),
        _permutation_batches(key, num_permutations, batch),
    )
    return _permutation_result(stats, scale, x, y, alpha, num_permutations)


@partial(jax.jit, static_argnames=("num_permutations", "unbiased", "batch", "block_size", "mesh"))
def _hsic_streamed_permutation_test(
    key, x, y, kernel_x, kernel_y, alpha, *, num_permutations, unbiased, batch, block_size, mesh
):
    """`_hsic_permutation_test` without n x n matrices: the rows of A = HKH (or K~ less its
    off-diagonal mean) are computed block by block, split over the devices of `mesh`, and
    for every permutation p the matching rows of B_{p_i p_j} come from the kernel on the
    permuted y."""
    n = x.shape[0]
    nf = float(n)
    perms = jax.lax.map(
        lambda args: jax.vmap(lambda k, i: _permutation(k, i, n))(*args),
        _permutation_batches(key, num_permutations, batch),
    )  # (num_batches, batch, n)
    options = {"block_size": block_size, "num_columns": n * batch, "mesh": mesh}
    k_rows, l_rows = _row_sums(x, y, kernel_x, kernel_y, unbiased, options)
    km, lm = k_rows / nf, l_rows / nf  # row means (biased HSIC)
    if unbiased:  # A = K~ - its off-diagonal mean, zero diagonal; B likewise
        off_k, off_l = jnp.sum(k_rows) / (nf * (nf - 1)), jnp.sum(l_rows) / (nf * (nf - 1))
        a_rows, b_rows = k_rows - (nf - 1) * off_k, l_rows - (nf - 1) * off_l
        a_block = lambda rows, xb, _: mask_diagonal(kernel_x.gram(xb, x) - off_k, rows)
        b_block = lambda rows, pb, p, ys, _: mask_diagonal(
            kernel_y.gram(ys[pb], ys[p]) - off_l, rows
        )
    else:  # A = HKH, B = HLH
        km_mean, lm_mean = jnp.mean(km), jnp.mean(lm)
        a_rows = b_rows = None

        def a_block(rows, xb, kmb):
            return kernel_x.gram(xb, x) - kmb[:, None] - km[None, :] + km_mean

        def b_block(rows, pb, p, ys, lms):
            return kernel_y.gram(ys[pb], ys[p]) - lms[pb][:, None] - lms[p][None, :] + lm_mean

    def block(rows, xb, kmb, ys, lms, ps):  # ys, lms, ps: y, lm and perms, whole
        a = a_block(rows, xb, kmb)
        perm_rows = jnp.take(ps, rows, axis=2, mode="clip")  # p_i for the block's rows i

        def one(p, pb):  # sum_j A_ij B_{p_i p_j} and max_j |B_{p_i p_j}| for each row i
            b = b_block(rows, pb, p, ys, lms)
            return jnp.sum(a * b, 1), jnp.max(jnp.abs(b), 1)

        s, b_max = jax.lax.map(lambda args: jax.vmap(one)(*args), (ps, perm_rows))
        return s.reshape(-1, rows.shape[0]).T, jnp.max(b_max, (0, 1)), jnp.sum(jnp.abs(a), 1)

    s, b_max, abs_a = map_row_blocks(block, x, km, **options, shared=(y, lm, perms))
    a_sum = b_sum = cross = None
    if unbiased:
        cross = b_rows[perms.reshape(-1, n)] @ a_rows  # 1'A P'BP 1 for each permutation
        a_sum, b_sum = jnp.sum(a_rows), jnp.sum(b_rows)
    stats = _combine(jnp.sum(s, 0), cross, a_sum, b_sum, nf, unbiased)
    scale = _rounding_scale(jnp.sum(abs_a), jnp.max(b_max), a_rows, b_rows, nf, unbiased)
    return _permutation_result(stats, scale, x, y, alpha, num_permutations)


def _row_sums(x, y, kernel_x, kernel_y, exclude_diagonal, options):
    """Row sums of K and L (of K~ and L~, zero diagonals, with `exclude_diagonal`)."""

    def sums(rows, xb, yb):
        kb, lb = kernel_x.gram(xb, x), kernel_y.gram(yb, y)
        if exclude_diagonal:
            kb, lb = mask_diagonal(kb, rows), mask_diagonal(lb, rows)
        return jnp.sum(kb, 1), jnp.sum(lb, 1)

    return map_row_blocks(sums, x, y, **options)


@partial(jax.jit, static_argnames=("block_size", "mesh"))
def _hsic_gamma_test(x, y, kernel_x, kernel_y, alpha, *, block_size, mesh=None):
    n = x.shape[0]
    options = {"block_size": block_size, "num_columns": n, "mesh": mesh}
    k_rows, l_rows = _row_sums(x, y, kernel_x, kernel_y, False, options)
    k_mean_rows, l_mean_rows = k_rows / n, l_rows / n
    k_mean, l_mean = jnp.mean(k_mean_rows), jnp.mean(l_mean_rows)

    def centred(rows, xb, yb, kmr, lmr):
        kc = kernel_x.gram(xb, x) - kmr[:, None] - k_mean_rows[None, :] + k_mean
        lc = kernel_y.gram(yb, y) - lmr[:, None] - l_mean_rows[None, :] + l_mean
        prod = kc * lc
        return jnp.sum(prod, 1), jnp.sum(mask_diagonal(prod, rows) ** 2, 1)

    kl, kl2 = map_row_blocks(centred, x, y, k_mean_rows, l_mean_rows, **options)
    n = float(n)
    statistic = jnp.sum(kl) / n  # n * HSIC_b
    # Variance of HSIC_b under H0 (Gretton et al. 2008, Theorem 4 and their reference code).
    variance = (
        72.0
        * (n - 4)
        * (n - 5)
        / (n * (n - 1) * (n - 2) * (n - 3))
        * jnp.sum(kl2)
        / 36.0
        / (n * (n - 1))
    )
    # E[HSIC_b] = (E k(x,x) - E k(x,x')) (E l(y,y) - E l(y,y')) / n, the pair means over i != j.
    k_diag, l_diag = kernel_x.diag(x), kernel_y.diag(y)
    mu_x = (jnp.sum(k_rows) - jnp.sum(k_diag)) / (n * (n - 1))
    mu_y = (jnp.sum(l_rows) - jnp.sum(l_diag)) / (n * (n - 1))
    mean = (jnp.mean(k_diag) - mu_x) * (jnp.mean(l_diag) - mu_y) / n
    statistic = _checks.nan_unless_finite(statistic, x, y)
    p_value = gamma_p_value(statistic, n * mean, n**2 * variance)
    empty = jnp.zeros((0,), x.dtype)
    return decide(statistic / n, p_value, alpha, empty)
