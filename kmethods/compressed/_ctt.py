"""Compress Then Test (CTT) and its aggregated form over several kernels (ACTT).

References:
  Domingo-Enrich, Dwivedi & Mackey, "Compress Then Test: Powerful Kernel Testing in
  Near-linear Time", AISTATS 2023, arXiv:2301.05974 (Algorithm 1, CTT; Section 5 and
  Appendix, ACTT).
  Shetty, Dwivedi & Mackey, "Distribution Compression in Near-linear Time", ICLR 2022
  (KT-Compress).
  Schrab et al., "MMD Aggregated Two-Sample Test", JMLR 24, 2023 (the level correction).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.aggregated import AggregatedTestResult, KernelCollection, aggregate
from kmethods.aggregated._aggregate import check_quantile_draws, collection_weights
from kmethods.aggregated._blocks import family_map
from kmethods.aggregated._collections import as_collection
from kmethods.calibration import TestResult
from kmethods.compressed._bins import (
    bin_coresets,
    bin_plan,
    bin_result,
    bin_statistics,
    coreset_means,
    make_bins,
)
from kmethods.kernels import Kernel, SumKernel, check_kernel
from kmethods.thinning._halving import kernel_matrix
from kmethods.thinning._sizes import check_key

__all__ = ["actt_test", "ctt_test"]


def _inputs(key, x, y, g, num_bins, delta):
    check_key(key)
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_dimension(x, y, "x", "y")
    g = _checks.positive_int(g, "g", minimum=0)
    plan = bin_plan(x.shape[0], y.shape[0], num_bins)
    delta = _checks.probability(delta, "delta")
    x, y = _checks.promote(x, y)
    # Each of the s bins is compressed with failure probability delta / s (union bound).
    return x, y, g, plan, delta / (plan.bins_x + plan.bins_y)


def _compressed_sets(key, x, y, kernel, plan, g, delta):
    """The s coresets of the bins of x, then of y, shape (s, c, d): all bins compressed
    together (x's bins with the keys of k_x, y's with those of k_y)."""
    k_x, k_y = jax.random.split(key)
    size, bins_x, bins_y = plan
    keys = jnp.concatenate([jax.random.split(k_x, bins_x), jax.random.split(k_y, bins_y)])
    bins = jnp.concatenate([make_bins(x, bins_x, size), make_bins(y, bins_y, size)])
    return bin_coresets(keys, bins, kernel, g=g, delta=delta)


def ctt_test(
    key: PRNGKeyArray,
    x: Float[Array, "m d"],
    y: Float[Array, "n d"],
    kernel: Kernel,
    *,
    g: int,
    num_bins: int,
    num_permutations: int = 1000,
    alpha: float = 0.05,
    delta: float = 0.5,
) -> TestResult:
    """Compress Then Test (Domingo-Enrich, Dwivedi & Mackey, AISTATS 2023, Algorithm 1): a
    kernel two-sample test of H0: P = Q in near-linear time.

    1. The pooled sample is cut into s = `num_bins` bins of one size, (m + n) // s points
       (at most min(m, n)): s_m = m // size consecutive bins of x and s_n = n // size of y,
       so s_m : s_n follows m : n (points past the last whole bin are left out).
    2. Each bin is compressed by KT-Compress(g) (Shetty, Dwivedi & Mackey, 2022) with the
       kernel itself: `kmethods.compresspp` with g = 0 and output size 2^g sqrt(4^k), 4^k the
       largest power of 4 in the bin (a larger bin gives 4^k of its points, at random, to
       Compress). Coresets have 2^g sqrt(4^k) points; when 4^k <= 4^g the coreset is the bin.
    3. K_ij = the mean of k over the points of coresets i and j, an s x s matrix: (s c)^2 / 2
       kernel evaluations for coresets of c points.
    4. The statistic is the MMD^2 V-statistic between the union of the x coresets and that of
       the y coresets, w' K w with w_i = 1/s_m on x's bins and -1/s_n on y's; the null draws
       are the same with the bins' labels permuted (B random permutations of the s coresets,
       the paper's permutation over coreset bins).

    Cost O(4^g n log n) kernel evaluations for the compression (n = m + n points) and
    O(4^g n) for K; memory O(n d + 2^21) (the coreset Gram blocks are taken in batches). The
    coarse permutation null keeps the test exact (level <= alpha) at any sample size, as
    the bins are exchangeable under H0.

    Args:
      key: PRNG key (compression and permutations).
      x: (m, d). y: (n, d). kernel: a `kmethods` kernel (compression and statistic).
      g: compression level g >= 0 (coresets 2^g sqrt(bin size); larger g, more power,
        4^g more time).
      num_bins: s >= 2, the bins of both samples together (goodpoints' `ctt(s=...)` makes
        2 s bins: its `s` is the number per sample for m = n).
      num_permutations: B.
      alpha: level.
      delta: the compressions' failure probability (delta / s per bin).

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`: the V-statistic, the p-value
      (1 + #{b : draw_b >= statistic}) / (1 + B), the decision and the B draws; float32 for
      half-precision input, computed in float32. A non-finite statistic (non-finite input
      under `jit`) gives p = NaN and reject = False. One compile per shape and option set.
    """
    x, y, g, plan, delta = _inputs(key, x, y, g, num_bins, delta)
    check_kernel(kernel)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_permutations = _checks.positive_int(num_permutations, "num_permutations")
    return _ctt(
        key, x, y, kernel, alpha, plan=plan, g=g, num_permutations=num_permutations, delta=delta
    )


@cpu_jit(static_argnames=("plan", "g", "num_permutations", "delta"))
def _ctt(key, x, y, kernel, alpha, *, plan, g, num_permutations, delta):
    k_compress, k_perm = jax.random.split(key)
    sets = _compressed_sets(k_compress, x, y, kernel, plan, g, delta)
    # w' K w is unchanged by K -> K - c (w sums to 0): one kernel value is taken off every
    # entry, so a nearly constant kernel keeps the digits the statistics differ in.
    shift = kernel(x[0], y[0])
    means = coreset_means(lambda a, b: jnp.mean(kernel_matrix(kernel, a, b) - shift), sets)
    draws, scale = bin_statistics(k_perm, means, plan.bins_x, num_permutations)
    return bin_result(draws, scale, alpha, x, y)


def actt_test(
    key: PRNGKeyArray,
    x: Float[Array, "m d"],
    y: Float[Array, "n d"],
    kernels: KernelCollection | list[Kernel],
    *,
    g: int,
    num_bins: int,
    weights: str | Float[Array, " N"] = "uniform",
    num_permutations: int = 2000,
    num_correction: int = 2000,
    bisection_steps: int = 50,
    alpha: float = 0.05,
    delta: float = 0.5,
) -> AggregatedTestResult:
    """Aggregated Compress Then Test (ACTT; Domingo-Enrich, Dwivedi & Mackey, AISTATS 2023):
    CTT over a collection of kernels, with MMDAgg's level-corrected union.

    The bins are compressed once, with the sum of the kernels (the paper's and goodpoints'
    `actt(same_compression=True)`); each kernel i gets its own s x s matrix K_i of coreset
    means, and every kernel's statistic (as `ctt_test`'s) on the data and on the same
    `num_permutations + num_correction` bin permutations goes to
    `kmethods.aggregated.aggregate`: the first B1 estimate each kernel's quantiles, the other
    B2 the family-wise error of their union, and `bisection_steps` steps of bisection find
    the level correction u (Schrab et al., JMLR 2023, Algorithm 1, which ACTT follows).

    Args:
      key: PRNG key. x: (m, d). y: (n, d).
      kernels: a `kmethods.aggregated.KernelCollection` or a sequence of kernels (e.g.
        Gaussians over a bandwidth grid).
      g, num_bins, delta: as for `ctt_test`.
      weights: "uniform", "decreasing", "increasing", "centred" or one positive weight per
        kernel (as `mmdagg`).
      num_permutations: B1, with (1 + B1) alpha >= 1 (else a `ValueError`: no kernel could
        reject). num_correction: B2. bisection_steps: B3.
      alpha: level.

    Returns:
      `kmethods.aggregated.AggregatedTestResult` (per-kernel statistics, p-values, thresholds
      and rejections, u); NaN statistics and reject = False for non-finite input.
    """
    x, y, g, plan, delta = _inputs(key, x, y, g, num_bins, delta)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_permutations = check_quantile_draws(num_permutations, "num_permutations", alpha)
    num_correction = _checks.positive_int(num_correction, "num_correction")
    bisection_steps = _checks.positive_int(bisection_steps, "bisection_steps")
    collection = as_collection(kernels, x.dtype)
    w = collection_weights(collection.sizes, weights)
    compress_kernel = SumKernel(tuple(collection.unstack()))
    return _actt(
        key,
        x,
        y,
        collection,
        compress_kernel,
        alpha,
        jnp.asarray(w, x.dtype),
        plan=plan,
        g=g,
        num_permutations=num_permutations,
        num_correction=num_correction,
        bisection_steps=bisection_steps,
        delta=delta,
    )


@cpu_jit(
    static_argnames=(
        "plan",
        "g",
        "num_permutations",
        "num_correction",
        "bisection_steps",
        "delta",
    )
)
def _actt(
    key,
    x,
    y,
    collection,
    compress_kernel,
    alpha,
    weights,
    *,
    plan,
    g,
    num_permutations,
    num_correction,
    bisection_steps,
    delta,
):
    k_compress, k_perm = jax.random.split(key)
    sets = _compressed_sets(k_compress, x, y, compress_kernel, plan, g, delta)

    def pair_means(a, b):  # (N,): every kernel's mean over the pair, each shifted (as in CTT)
        return family_map(lambda k: jnp.mean(k.gram(a, b) - k(x[0], y[0])), collection)

    means = jnp.moveaxis(coreset_means(pair_means, sets), -1, 0)  # (N, s, s)
    draws, scale = bin_statistics(k_perm, means, plan.bins_x, num_permutations + num_correction)
    return aggregate(
        draws,
        weights,
        alpha,
        scale,
        inputs=(x, y),
        num_quantile=num_permutations,
        num_steps=bisection_steps,
        kernels=collection,
    )
