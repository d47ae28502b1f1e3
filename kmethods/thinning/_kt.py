"""Kernel thinning: `kernel_thin` (KT-SPLIT, then KT-SWAP)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.kernels import Kernel, check_kernel
from kmethods.thinning._sizes import (
    check_key,
    halving_rounds,
    kept_points,
    standard_indices,
    thinning_inputs,
)
from kmethods.thinning._split import kt_split, kt_swap, split_log_multipliers
from kmethods.thinning._weighted import (
    check_simplex_weights,
    stratified_round,
    weighted_row_means,
)


def split_candidates(key, x, sequence, split_kernel, delta, m):
    """KT-SPLIT of the points x[sequence] (a multiset, in arrival order) into 2^m coresets,
    as an array (2^m, len(sequence) / 2^m) of indices into x."""
    size = sequence.shape[0]
    uniforms = jax.random.uniform(key, (m, size // 2), x.dtype)
    log_mult = split_log_multipliers(size, m, jnp.asarray(delta, x.dtype), x.dtype)
    return sequence[kt_split(x[sequence], split_kernel, uniforms, log_mult)]


@cpu_jit(static_argnames=("out_size", "m", "swap"))
def kernel_thin_program(key, x, kernel, split_kernel, delta, weights=None, *, out_size, m, swap):
    n = x.shape[0]
    n_used = out_size * 2**m
    k_drop, k_split, k_pick = jax.random.split(key, 3)
    if weights is None:
        used, mean_k = kept_points(k_drop, n, n_used), None
    else:
        # Weighted KT (Li et al., 2024): the weights rounded to n_used points enter the split;
        # the swap lowers the MMD to the weighted input. Equal weights with n_used = n give
        # every point once and the unweighted row means, hence unweighted KT exactly.
        used = stratified_round(k_drop, weights, n_used)
        mean_k = weighted_row_means(kernel, x, weights)
    coresets = split_candidates(k_split, x, used, split_kernel, delta, m)
    if not swap:
        return coresets[jax.random.randint(k_pick, (), 0, coresets.shape[0])]
    candidates = jnp.concatenate([coresets, standard_indices(n, out_size)[None]])
    return kt_swap(x, kernel, candidates, mean_k)


def kernel_thin(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    kernel: Kernel,
    *,
    out_size: int | None = None,
    split_kernel: Kernel | None = None,
    delta: float = 0.5,
    swap: bool = True,
    weights: Float[Array, " n"] | None = None,
) -> Int[Array, " s"]:
    """Kernel thinning: `out_size` indices of x whose points match x's distribution in MMD.

    KT-SPLIT (Dwivedi & Mackey, 2021, Algorithm 1a) splits the input into 2^m candidate
    coresets by a self-balancing Hilbert walk with the paper's adaptive thresholds; KT-SWAP
    (Algorithm 1b) picks the candidate, or the standard-thinning coreset, closest in MMD
    (measured with `kernel`) to x and greedily swaps points to lower it further.

    Args:
      key: JAX PRNG key (the walk's coin flips; the drop of a remainder, if any).
      x: (n, d) points (a 1-d array is n points in one dimension).
      kernel: the target kernel k: the MMD that KT-SWAP lowers, and the split kernel of
        target KT when `split_kernel` is None.
      out_size: coreset size s, at most n / 2; default floor(sqrt(n)). KT runs
        m = floor(log2(n / s)) halving rounds on s 2^m points; if that is fewer than n, the
        others are left out of KT-SPLIT at random (KT-SWAP still targets, and may pick, all n).
      split_kernel: the kernel of KT-SPLIT: None for target KT (the target kernel),
        `root_kernel(k)` for root KT, `power_kernel(k, alpha)` for power KT,
        `kt_plus_kernel(k)` for KT+ (Dwivedi & Mackey, 2022).
      delta: failure probability of the split's thresholds (delta_i = delta / n).
      swap: run KT-SWAP; without it, one of the 2^m KT-SPLIT coresets chosen uniformly at
        random is returned.
      weights: optional (n,) simplex weights w (nonnegative, summing to 1): thin the weighted
        input sum_i w_i delta_{x_i} instead of the empirical distribution, as the weighted KT
        of Li, Dwivedi & Mackey (2024, "Debiased Distribution Compression") after debiasing.
        The weights are rounded to s 2^m points by stratified resampling (multiplicities
        within one of s 2^m w_i), which KT-SPLIT halves; KT-SWAP lowers the MMD to the
        weighted input, sum_i w_i k(x_i, .). Equal weights give unweighted KT exactly when
        n = s 2^m (otherwise the points left out are a stratified rather than a uniform
        random subset).

    Returns:
      int indices into x of shape (s,). With `swap`, an index may repeat (as in the paper).
    """
    check_key(key)
    x, out_size, delta = thinning_inputs(x, kernel, out_size, delta)
    if split_kernel is not None:
        check_kernel(split_kernel, "split_kernel")
    weights = check_simplex_weights(weights, x.shape[0], x.dtype)
    m = halving_rounds(x.shape[0], out_size)
    return kernel_thin_program(
        key,
        x,
        kernel,
        kernel if split_kernel is None else split_kernel,
        delta,
        weights,
        out_size=out_size,
        m=m,
        swap=_checks.flag(swap, "swap"),
    )
