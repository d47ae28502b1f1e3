"""The random-Fourier-feature two-sample test, and its low-rank CTT form (LR-CTT).

References:
  Rahimi & Recht, "Random Features for Large-Scale Kernel Machines", NeurIPS 2007.
  Zhao & Meng, "FastMMD: Ensemble of Circular Discrepancy for Efficient Two-Sample Test",
  Neural Computation 27, 2015 (the RFF MMD test with a permutation null, as in goodpoints).
  Domingo-Enrich, Dwivedi & Mackey, "Compress Then Test", AISTATS 2023 (LR-CTT, Section 4).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.calibration import TestResult, decide, random_labels, resample_p_value
from kmethods.compressed._bins import bin_plan, bin_result, bin_statistics, coresets, make_bins
from kmethods.compressed._features import (
    check_fourier_kernel,
    feature_count,
    random_features,
    random_frequencies,
)
from kmethods.kernels import Kernel
from kmethods.thinning._sizes import check_key

__all__ = ["lrctt_test", "rff_test"]

# Permutations whose label vectors are drawn and multiplied at once.
_PERMUTATION_BATCH = 16


def _two_samples(key, x, y, kernel, num_features):
    check_key(key)
    x = _checks.as_points(x, "x")
    y = _checks.as_points(y, "y")
    _checks.same_dimension(x, y, "x", "y")
    check_fourier_kernel(kernel)
    return (*_checks.promote(x, y), feature_count(num_features))


def rff_test(
    key: PRNGKeyArray,
    x: Float[Array, "m d"],
    y: Float[Array, "n d"],
    kernel: Kernel,
    *,
    num_features: int = 256,
    num_permutations: int = 1000,
    alpha: float = 0.05,
) -> TestResult:
    """Two-sample test with the MMD of random Fourier features (Rahimi & Recht 2007; the
    permutation test of Zhao & Meng 2015 and goodpoints' `ctt.rff`).

    The kernel k (Gaussian, Laplace or Matern) is replaced by the linear kernel of r =
    `num_features` random Fourier features phi (`random_features`, r / 2 frequencies drawn
    from k's spectral density), and the statistic is the unbiased MMD^2 of that kernel:

      (||S_x||^2 - Q_x) / (m (m - 1)) + (||S_y||^2 - Q_y) / (n (n - 1)) - 2 S_x'S_y / (m n),

    S_x = sum_i phi(x_i), Q_x = sum_i ||phi(x_i)||^2 (and so for y), the features first
    centred on their pooled mean (which leaves the statistic unchanged). Each of the B
    permutations of the pooled sample's labels costs one product of the (m + n) x r feature
    matrix with the label vector, O((m + n) r), in batches of 16 permutations; the label
    vectors are drawn in O(m + n) by `kmethods.calibration.random_labels`.

    `key` is split in two, (features, permutations); permutation b's labels are
    `random_labels(k_b, m + n, m)` with k_b = `jax.random.split(permutations key, B)[b]`
    (uniformly random relabellings drawn without a sort).

    Args:
      key: PRNG key. x: (m, d). y: (n, d).
      kernel: `Gaussian`, `Laplace` (l2 norm) or `Matern`.
      num_features: r, even (a cosine and a sine per frequency).
      num_permutations: B.
      alpha: level.

    Returns:
      `TestResult`, float32 for half-precision input, computed in float32; p = NaN and
      reject = False for a non-finite statistic. Memory O((m + n) r). One compile per shape
      and option set.
    """
    x, y, num_features = _two_samples(key, x, y, kernel, num_features)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_permutations = _checks.positive_int(num_permutations, "num_permutations")
    return _rff(
        key, x, y, kernel, alpha, num_features=num_features, num_permutations=num_permutations
    )


@cpu_jit(static_argnames=("num_features", "num_permutations"))
def _rff(key, x, y, kernel, alpha, *, num_features, num_permutations):
    m, n = x.shape[0], y.shape[0]
    dtype = x.dtype
    k_features, k_perm = jax.random.split(key)
    frequencies = random_frequencies(k_features, kernel, x.shape[1], num_features // 2, dtype)
    phi = random_features(jnp.concatenate([x, y]), frequencies)
    # The unbiased MMD^2 of a linear kernel is unchanged when the features are shifted by a
    # constant vector: centred, S_y = -S_x and the sums keep their digits.
    phi = phi - jnp.mean(phi, axis=0, keepdims=True)
    norms = jnp.sum(phi * phi, axis=1)
    total = jnp.sum(norms)
    observed = jnp.concatenate([jnp.ones(m, dtype), jnp.zeros(n, dtype)])
    mf, nf = float(m), float(n)

    def statistic(e):
        s_x = e @ phi
        q_x = e @ norms
        sq = jnp.sum(s_x * s_x)
        stat = (sq - q_x) / (mf * (mf - 1)) + (sq - (total - q_x)) / (nf * (nf - 1))
        stat = stat + 2.0 * sq / (mf * nf)
        scale = (sq + q_x) / (mf * (mf - 1)) + (sq + total - q_x) / (nf * (nf - 1))
        return stat, scale + 2.0 * sq / (mf * nf)

    # Whole batches only (a remainder would compile the batched body twice); the keys are a
    # prefix-stable split, so the first B draws use the keys of `jax.random.split(k_perm, B)`.
    batch = min(_PERMUTATION_BATCH, num_permutations)
    keys = jax.random.split(k_perm, -(-num_permutations // batch) * batch)
    draws, scales = jax.lax.map(
        lambda k: statistic(random_labels(k, m + n, m, dtype)), keys, batch_size=batch
    )
    draws, scales = draws[:num_permutations], scales[:num_permutations]
    stat, scale = statistic(observed)
    stat = _checks.nan_unless_finite(stat, x, y)
    p_value = resample_p_value(stat, draws, scale=jnp.maximum(scale, jnp.max(scales)))
    return decide(stat, p_value, alpha, draws)


def lrctt_test(
    key: PRNGKeyArray,
    x: Float[Array, "m d"],
    y: Float[Array, "n d"],
    kernel: Kernel,
    *,
    g: int,
    num_bins: int,
    num_features: int = 256,
    compress_bin_size: int | None = None,
    num_permutations: int = 1000,
    alpha: float = 0.05,
    delta: float = 0.5,
) -> TestResult:
    """Low-rank Compress Then Test (LR-CTT; Domingo-Enrich, Dwivedi & Mackey, AISTATS 2023,
    Section 4, with random Fourier features as in their experiments and goodpoints'
    `ctt.lrctt`).

    1. Each sample is cut into compression bins of b = `compress_bin_size` points (a power of
       4), each compressed by KT-Compress(g) to 2^g sqrt(b) points (as in `ctt_test`; none
       when b <= 4^g).
    2. The coresets, in order, are grouped into s = `num_bins` permutation bins of one size
       (as `ctt_test` groups points: s_m of x and s_n of y, s_m : s_n following m : n).
    3. Each permutation bin is summarised by the mean of the r = `num_features` random
       Fourier features (`random_features`) of its coreset points, and the statistic is the
       MMD^2 V-statistic of the linear kernel of those features between the x bins and the y
       bins, ||sum_i w_i f_i||^2 with w_i = 1/s_m or -1/s_n, permuted over the bins as in
       CTT. Cost: the compression, O(n' r d) for the features of the n' coreset points, and
       O(s^2 r + B s^2) for the permutations.

    The default b is goodpoints' (its a = 0): 4^g (no compression: the features of all
    points) when r <= 4^(g+1), else 4^(g+1) (each bin halved).

    Args:
      key: PRNG key. x: (m, d). y: (n, d).
      kernel: `Gaussian`, `Laplace` or `Matern` (compression and features).
      g: compression level. num_bins: s, the permutation bins of both samples together.
      num_features: r, even. compress_bin_size: b, a power of 4 (default above).
      num_permutations: B. alpha: level. delta: the compressions' failure probability.

    Returns:
      `TestResult` as `ctt_test`'s.
    """
    x, y, num_features = _two_samples(key, x, y, kernel, num_features)
    g = _checks.positive_int(g, "g", minimum=0)
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_permutations = _checks.positive_int(num_permutations, "num_permutations")
    delta = _checks.probability(delta, "delta")
    if compress_bin_size is None:
        compress_bin_size = 4**g if num_features <= 4 ** (g + 1) else 4 ** (g + 1)
    size = _checks.positive_int(compress_bin_size, "compress_bin_size")
    if 4 ** round(math.log(size, 4)) != size:
        raise ValueError(f"`compress_bin_size` must be a power of 4, got {size}.")
    cx, cy = x.shape[0] // size, y.shape[0] // size
    if min(cx, cy) < 1:
        raise ValueError(
            f"`compress_bin_size` ({size}) must be at most the size of each sample "
            f"({x.shape[0]}, {y.shape[0]})."
        )
    plan = bin_plan(cx, cy, num_bins)  # in compression bins
    return _lrctt(
        key,
        x,
        y,
        kernel,
        alpha,
        size=size,
        plan=plan,
        g=g,
        num_features=num_features,
        num_permutations=num_permutations,
        delta=delta / (cx + cy),
    )


@cpu_jit(static_argnames=("size", "plan", "g", "num_features", "num_permutations", "delta"))
def _lrctt(key, x, y, kernel, alpha, *, size, plan, g, num_features, num_permutations, delta):
    per_bin, bins_x, bins_y = plan
    k_x, k_y, k_features, k_perm = jax.random.split(key, 4)
    frequencies = random_frequencies(k_features, kernel, x.shape[1], num_features // 2, x.dtype)

    def bin_features(k, sample, bins):
        # Compression bins, their coresets, grouped `per_bin` at a time: (bins, points, d).
        sets = coresets(k, make_bins(sample, bins * per_bin, size), kernel, g=g, delta=delta)
        grouped = sets.reshape(bins, -1, sample.shape[1])
        return jax.lax.map(lambda pts: jnp.mean(random_features(pts, frequencies), 0), grouped)

    f = jnp.concatenate([bin_features(k_x, x, bins_x), bin_features(k_y, y, bins_y)])
    f = f - jnp.mean(f, axis=0, keepdims=True)  # w sums to 0: the statistic ignores a common shift
    draws, scale = bin_statistics(k_perm, f @ f.T, bins_x, num_permutations)
    return bin_result(draws, scale, alpha, x, y)
