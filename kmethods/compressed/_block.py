"""The linear-time block MMD test (the B-test).

References:
  Zaremba, Gretton & Blaschko, "B-test: A Non-parametric, Low Variance Kernel Two-sample
  Test", NeurIPS 2013.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods.calibration import TestResult, decide
from kmethods.compressed._bins import make_bins
from kmethods.kernels import Kernel, check_kernel

__all__ = ["block_mmd_test"]

# Entries of the blocks' Gram matrices evaluated at once: 2^21 floats = 8 MiB in float32.
_BLOCK_ELEMENTS = 2**21


def block_mmd_test(
    key: PRNGKeyArray | None,
    x: Float[Array, "m d"],
    y: Float[Array, "n d"],
    kernel: Kernel,
    *,
    block_size: int | None = None,
    alpha: float = 0.05,
) -> TestResult:
    """The B-test (Zaremba, Gretton & Blaschko, NeurIPS 2013): the mean of block MMD^2
    U-statistics, with an asymptotic normal null.

    x and y are cut into K blocks, x's of b_x = `block_size` points (default floor(sqrt(m)),
    the paper's choice) and y's of b_y = n // K points (b_y = b_x when m = n); points past the
    last whole block are left out. Block k's statistic eta_k is the unbiased MMD^2 between its
    b_x points of x and b_y of y; the blocks are independent, so under H0 the eta_k are
    i.i.d. with mean 0, and the statistic eta = mean_k eta_k is asymptotically normal (K to
    infinity) with variance var(eta_k) / K, estimated by the blocks' sample variance. The
    p-value is 1 - Phi(eta / sqrt(var / K)). Cost O(m b_x + n b_y) kernel evaluations (linear
    time for a fixed block size), memory O(2^21).

    Args:
      key: unused (the B-test is deterministic); taken so that every two-sample test is
        called as `test(key, x, y, kernel)`.
      x: (m, d). y: (n, d). kernel: a `kmethods` kernel.
      block_size: b_x >= 2 (default floor(sqrt(m)), or m // floor(sqrt(n)) when y is so
        much smaller that sqrt(m) blocks would leave fewer than 2 of its points in each);
        K = m // b_x >= 2 blocks, and n // K >= 2.
      alpha: level.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`: eta, the normal p-value (1 when
      the blocks' variance is 0), the decision and an empty `null_samples`. float32 for
      half-precision input; p = NaN and reject = False for a non-finite statistic.
    """
    del key
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_dimension(x, y, "x", "y")
    check_kernel(kernel)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    m, n = x.shape[0], y.shape[0]
    if block_size is None:
        size_x = math.isqrt(m)
        if n // max(m // size_x, 1) < 2:
            # y is the much smaller sample: sqrt(n) blocks, so that each holds
            # about sqrt(n) >= 2 points of y.
            size_x = m // max(math.isqrt(n), 1)
    else:
        size_x = block_size
    size_x = _checks.positive_int(size_x, "block_size", minimum=2)
    num_blocks = m // size_x
    if num_blocks < 2 or n // max(num_blocks, 1) < 2:
        raise ValueError(
            f"`block_size` = {size_x} leaves {num_blocks} blocks of x (m = {m}) and "
            f"{n // max(num_blocks, 1)} points of y (n = {n}) per block; the B-test needs at "
            "least 2 blocks and 2 points of each sample per block."
        )
    x, y = _checks.promote(x, y)
    return _block_mmd(x, y, kernel, alpha, num_blocks=num_blocks, size_x=size_x)


def _u_statistic(xb, yb, kernel, shift):
    """Unbiased MMD^2 of one block (unchanged by k -> k - shift, which keeps its digits)."""
    bx, by = float(xb.shape[0]), float(yb.shape[0])
    kxx = kernel.gram(xb, xb) - shift
    kyy = kernel.gram(yb, yb) - shift
    within_x = (jnp.sum(kxx) - jnp.trace(kxx)) / (bx * (bx - 1))
    within_y = (jnp.sum(kyy) - jnp.trace(kyy)) / (by * (by - 1))
    return within_x + within_y - 2.0 * jnp.mean(kernel.gram(xb, yb) - shift)


@partial(jax.jit, static_argnames=("num_blocks", "size_x"))
def _block_mmd(x, y, kernel, alpha, *, num_blocks, size_x):
    size_y = y.shape[0] // num_blocks
    xb = make_bins(x, num_blocks, size_x)
    yb = make_bins(y, num_blocks, size_y)
    shift = kernel(x[0], y[0])
    per_block = (size_x + size_y) ** 2
    etas = jax.lax.map(
        lambda b: _u_statistic(b[0], b[1], kernel, shift),
        (xb, yb),
        batch_size=max(1, min(num_blocks, _BLOCK_ELEMENTS // per_block)),
    )
    statistic = _checks.nan_unless_finite(jnp.mean(etas), x, y)
    variance = jnp.var(etas, ddof=1) / num_blocks
    degenerate = ~(variance > 0)
    z = statistic / jnp.sqrt(jnp.where(degenerate, 1.0, variance))
    p_value = 0.5 * jax.scipy.special.erfc(z / math.sqrt(2.0))
    p_value = jnp.where(degenerate, jnp.ones_like(p_value), p_value)
    p_value = jnp.where(jnp.isfinite(statistic), p_value, jnp.nan).astype(statistic.dtype)
    return decide(statistic, p_value, alpha, jnp.zeros((0,), x.dtype))
