"""Maximum mean discrepancy and the kernel two-sample test.

References:
  Gretton, Borgwardt, Rasch, Schoelkopf & Smola, "A Kernel Two-Sample Test", JMLR 13, 2012
  (Lemma 6 for the U- and V-statistics; Section 5 for the gamma approximation).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from kmethods import _checks, _sharding
from kmethods.calibration import (
    TestResult,
    decide,
    gamma_p_value,
    permuted_labels,
    resample_p_value,
)
from kmethods.kernels import Kernel, check_kernel
from kmethods.pairwise import gram_matvec, kernel_sum, map_row_blocks, mask_diagonal

__all__ = ["mmd2", "mmd_test"]


def mmd2(
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    kernel: Kernel,
    *,
    unbiased: bool = True,
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Float[Scalar, ""]:
    """Squared maximum mean discrepancy between the samples `x` and `y`.

    Unbiased (U-statistic, Gretton et al. 2012, eq. 3):
      1/(n(n-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
      - 2/(nm) sum_{i, j} k(x_i, y_j);
    biased (V-statistic, eq. 5): the same sums over all pairs, divided by n^2, m^2 and nm.
    The U-statistic can be negative.

    Args:
      x: (n, d) sample. y: (m, d) sample. kernel: a `kmethods` kernel.
      unbiased: U-statistic (default) or V-statistic.
      block_size: rows held at once in the blocked reductions (memory O(block_size * n)).
      mesh: a `jax.sharding.Mesh`, or None (one device): the rows of every kernel sum are
        split over all the mesh's axes, each of its p devices holding about n/p rows and a
        p-th of each block (memory O(block_size * n / p) per device), and the partial sums
        are added across devices. Equal to one device up to the float rounding of the
        kernel sums (added in another order). Works with several processes
        (`jax.distributed`) when each passes the same inputs.

    Returns:
      A scalar, float32 for half-precision (float16, bfloat16) input, which is computed in float32,
      else the input's dtype; NaN if a sample holds NaN or inf values that `jit` let through.
      Differentiable with respect to `x`, `y` and the kernel's parameters.
    """
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_dimension(x, y, "x", "y")
    check_kernel(kernel)
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    mesh = _sharding.check_mesh(mesh)
    x, y = _checks.promote(x, y)
    x, y, kernel = _sharding.replicate((x, y, kernel), mesh)
    return _mmd2(x, y, kernel, unbiased=unbiased, block_size=block_size, mesh=mesh)


@partial(jax.jit, static_argnames=("unbiased", "block_size", "mesh"))
def _mmd2(x, y, kernel, *, unbiased, block_size, mesh=None):
    n, m = float(x.shape[0]), float(y.shape[0])  # floats: n(n-1) overflows int32 at n ~ 46k
    options = {"block_size": block_size, "mesh": mesh}
    kxx = kernel_sum(kernel, x, x, exclude_diagonal=unbiased, **options)
    kyy = kernel_sum(kernel, y, y, exclude_diagonal=unbiased, **options)
    kxy = kernel_sum(kernel, x, y, **options)
    # The U-statistic's within-sample sums leave out the diagonal: n(n - 1) pairs, not n^2.
    pairs_x, pairs_y = (n * (n - 1), m * (m - 1)) if unbiased else (n**2, m**2)
    return _checks.nan_unless_finite(kxx / pairs_x + kyy / pairs_y - 2.0 * kxy / (n * m), x, y)


def mmd_test(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    y: Float[Array, "m d"],
    kernel: Kernel,
    *,
    num_permutations: int = 1000,
    alpha: float = 0.05,
    null: str = "permutation",
    unbiased: bool = True,
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> TestResult:
    """Kernel two-sample test of H0: P = Q from samples x ~ P and y ~ Q.

    `null="permutation"`: the statistic is `mmd2(x, y, kernel, unbiased=unbiased)`, recomputed
    for `num_permutations` random relabellings of the pooled sample. All relabellings are
    evaluated together as one blocked product K [e_1 ... e_B] of the pooled kernel matrix with
    the label indicators, so memory is O((n + m) (block_size + B)) and no kernel matrix is
    stored.

    `null="gamma"` (requires n = m): the moment-matched gamma approximation of Gretton et al.
    (2012, Section 5) to the law of m * MMD_b^2 under H0; the statistic is the biased MMD_b^2
    and `null_samples` is empty. Cost O(m^2) time, O(m * block_size) memory, no resampling.

    Args:
      key: PRNG key (used by the permutation null).
      x: (n, d). y: (m, d). kernel: a `kmethods` kernel (choose its bandwidth from the data,
        e.g. `Gaussian(median_bandwidth(jnp.concatenate([x, y])))`).
      num_permutations: B.
      alpha: level of the test.
      null: "permutation" or "gamma".
      unbiased: permutation null only: U-statistic (default) or V-statistic.
      block_size: rows held at once in the blocked reductions.
      mesh: a `jax.sharding.Mesh`, or None (one device): the rows of the blocked products
        are split over all its axes, as in `mmd2` (memory O((n + m) block_size / p) per
        device for the kernel blocks; the B label columns are copied to every device). The
        relabellings are drawn as on one device, so the same key gives the same
        permutations; statistics equal one device's up to float rounding.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`, float32 for half-precision (float16,
      bfloat16) input, which is computed in float32, else the input's dtype. A non-finite statistic
      gives p = NaN and reject = False. A jitted core is compiled once per shape and option set; new
      keys, data and kernel parameters reuse it.
    """
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_dimension(x, y, "x", "y")
    check_kernel(kernel)
    _checks.choice(null, "null", ("permutation", "gamma"))
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    mesh = _sharding.check_mesh(mesh)
    x, y = _checks.promote(x, y)
    key, x, y, kernel = _sharding.replicate((key, x, y, kernel), mesh)
    if null == "gamma":
        _checks.same_length(x, y, "x", "y")
        return _mmd_gamma_test(x, y, kernel, alpha, block_size=block_size, mesh=mesh)
    num_permutations = _checks.positive_int(num_permutations, "num_permutations")
    return _mmd_permutation_test(
        key,
        x,
        y,
        kernel,
        alpha,
        num_permutations=num_permutations,
        unbiased=unbiased,
        block_size=block_size,
        mesh=mesh,
    )


@partial(jax.jit, static_argnames=("num_permutations", "unbiased", "block_size", "mesh"))
def _mmd_permutation_test(
    key, x, y, kernel, alpha, *, num_permutations, unbiased, block_size, mesh=None
):
    n, m = x.shape[0], y.shape[0]
    z = jnp.concatenate([x, y])
    dtype = z.dtype
    observed = jnp.concatenate([jnp.ones(n, dtype), jnp.zeros(m, dtype)])
    labels = jnp.concatenate([observed[None], permuted_labels(key, observed, num_permutations)])
    # Columns: the label indicator e of each labelling, then the all-ones vector.
    columns = jnp.concatenate([labels.T, jnp.ones((n + m, 1), dtype)], axis=1)
    # MMD^2 (U and V) is unchanged by K -> K - c, and every statistic is a difference of sums
    # of K: shifted by one of its entries, a nearly constant kernel keeps the digits that the
    # statistics differ in (with K ~ 1 - 1e-8 they were rounded away in the sums).
    shift = kernel(z[0], z[-1])
    k_columns = gram_matvec(
        lambda zb: kernel.gram(zb, z) - shift,
        (z,),
        columns,
        exclude_diagonal=unbiased,
        block_size=block_size,
        mesh=mesh,
    )
    k_e, k_one = k_columns[:, :-1], k_columns[:, -1]
    total = jnp.sum(k_one)
    within_x = jnp.einsum("ib,bi->b", k_e, labels)  # e' K e
    x_to_all = labels @ k_one  # e' K 1
    within_y = total - 2.0 * x_to_all + within_x  # f' K f with f = 1 - e
    between = x_to_all - within_x  # e' K f
    n, m = float(n), float(m)
    cx, cy = (n * (n - 1), m * (m - 1)) if unbiased else (n**2, m**2)
    stats = within_x / cx + within_y / cy - 2.0 * between / (n * m)
    # The size of the sums each statistic is a difference of: the scale of its rounding.
    scale = jnp.max(
        jnp.abs(within_x) / cx + jnp.abs(within_y) / cy + 2.0 * jnp.abs(between) / (n * m)
    )
    statistic, null_samples = _checks.nan_unless_finite(stats[0], x, y), stats[1:]
    p_value = resample_p_value(statistic, null_samples, scale=scale)
    return decide(statistic, p_value, alpha, null_samples)


@partial(jax.jit, static_argnames=("block_size", "mesh"))
def _mmd_gamma_test(x, y, kernel, alpha, *, block_size, mesh=None):
    m = x.shape[0]

    def block(rows, xb, yb):
        # H_ij = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(y_i, x_j), for rows i of the block.
        h = kernel.gram(xb, x) + kernel.gram(yb, y) - kernel.gram(xb, y) - kernel.gram(yb, x)
        h_off = mask_diagonal(h, rows)
        return jnp.sum(h, axis=1), jnp.sum(h_off**2, axis=1)

    h_rows, h2_rows = map_row_blocks(block, x, y, block_size=block_size, num_columns=m, mesh=mesh)
    m = float(m)
    statistic = jnp.sum(h_rows) / m  # m * MMD_b^2
    diag_xy = jax.vmap(kernel)(x, y)
    # E[m MMD_b^2] under H0 (Gretton et al. 2012, Sec. 5), written for kernels with any k(z, z).
    mean = jnp.mean(kernel.diag(x)) + jnp.mean(kernel.diag(y)) - 2.0 * jnp.mean(diag_xy)
    variance = 2.0 / (m * (m - 1)) * jnp.sum(h2_rows) / (m * (m - 1))  # of MMD_b^2
    statistic = _checks.nan_unless_finite(statistic, x, y)
    p_value = gamma_p_value(statistic, mean, variance * m**2)
    empty = jnp.zeros((0,), x.dtype)
    return decide(statistic / m, p_value, alpha, empty)
