"""Stein kernel thinning (SKT) and its low-rank form (LSKT): debias, then kernel-thin."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.debias._kernel import stein_problem
from kmethods.debias._thin import stein_thin_program
from kmethods.debias._weights import debias_program
from kmethods.kernels import Kernel
from kmethods.thinning._compress import compresspp
from kmethods.thinning._kt import split_candidates
from kmethods.thinning._sizes import check_key
from kmethods.thinning._split import kt_swap
from kmethods.thinning._weighted import stratified_round

Score = Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"]


@cpu_jit(static_argnames=("out_size", "m"))
def _split_candidates(key, z, sequence, kernel, delta, *, out_size, m):
    """KT-SPLIT of the points z[sequence] into 2^m coresets of out_size, as indices into z."""
    return split_candidates(key, z, sequence, kernel, delta, m)


@cpu_jit(static_argnames=())
def _best_with_swaps(z, kernel, candidates):
    """KT-SWAP toward the target itself: the Stein kernel has mean zero under p, so the MMD of a
    coreset to p is its KSD, and the row means of the target are 0 (Li et al., 2024)."""
    return kt_swap(z, kernel, candidates, jnp.zeros(z.shape[0], z.dtype))


def stein_kernel_thin(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    score: Score,
    kernel: Kernel,
    *,
    out_size: int | None = None,
    rank: int | None = None,
    delta: float = 0.5,
    preconditioner: Float[Array, "d d"] | None = None,
    tol: float = 1e-2,
    max_iter: int = 5000,
) -> Int[Array, " s"]:
    """Stein kernel thinning: `out_size` indices of x (equal weights) with a small KSD to p.

    Debias, then compress (Li, Dwivedi & Mackey, 2024, Algorithms "SKT" and "LSKT"), with the
    Stein kernel k_p (`SteinKernel`) as the kernel throughout. With n' = s 2^m >= n
    (m = ceil(log2(n / s))):

    - SKT (`rank=None`): Stein thinning (`stein_thin`) for n' steps gives the debiased input as
      n' points with repeats; KT-SPLIT halves them m times into 2^m candidate coresets.
      O(n n' d) for the thinning plus KT's O(n'^2 d).
    - LSKT (`rank` given): low-rank debiasing weights (`debias_weights(method="low_rank")`),
      rounded to n' points by stratified resampling, then Compress++ (`compresspp`) gives one
      candidate. Near-linear in n: O(n rank^2 d) plus Compress++.

    Either way the candidates and the Stein-thinning coreset of size s (the baseline of the
    paper) go to KT-SWAP with the target p itself as the reference: the coreset of least
    KSD is kept and its points are swapped greedily, each for the input point that lowers
    the KSD most (KT-SWAP with zero target means, as k_p has mean zero under p).

    Args:
      key: JAX PRNG key.
      x: (n, d) biased sample. score: grad log p, a function of one point or an (n, d) array.
      kernel: the base kernel (or a `SteinKernel`, whose base and preconditioner are used).
      out_size: s, default floor(sqrt(n)); at most n / 2.
      rank: None for SKT, the rank of the low-rank debiasing for LSKT.
      delta: failure probability of the KT-SPLIT thresholds.
      preconditioner: optional (d, d) matrix M of the Stein kernel.
      tol, max_iter: of the low-rank solve (LSKT; see `debias_weights`).

    Returns:
      (s,) int indices into x; a point may repeat.

    References:
      Li, Dwivedi & Mackey, "Debiased Distribution Compression", ICML 2024.
      Dwivedi & Mackey, "Kernel Thinning", 2021; Shetty, Dwivedi & Mackey, "Distribution
        Compression in Near-linear Time", ICLR 2022.
    """
    check_key(key)
    z, stein = stein_problem(x, score, kernel, preconditioner)
    n = z.shape[0]
    out_size = _checks.positive_int(math.isqrt(n) if out_size is None else out_size, "out_size")
    if 2 * out_size > n:
        raise ValueError(f"`out_size` must be at most n / 2 = {n // 2}, got {out_size}.")
    delta = _checks.probability(delta, "delta")
    if rank is not None:
        rank = _checks.positive_int(rank, "rank")
        if rank > n:
            raise ValueError(f"`rank` must be at most n = {n}, got {rank}.")
    _checks.check_positive(tol, "tol")
    max_iter = _checks.positive_int(max_iter, "max_iter")
    m = math.ceil(math.log2(n / out_size))
    size = out_size * 2**m
    k_debias, k_round, k_split = jax.random.split(key, 3)
    if rank is None:
        # greedy Stein thinning is prefix-consistent: its first out_size picks are the baseline
        full = stein_thin_program(z, stein, out_size=size)
        sequence, baseline = jnp.sort(full), full[:out_size]
        candidates = _split_candidates(k_split, z, sequence, stein, delta, out_size=out_size, m=m)
    else:
        w, _ = debias_program(k_debias, z, stein, tol, max_iter, rank=rank, block_size=None)
        sequence = stratified_round(k_round, w, size)
        baseline = stein_thin_program(z, stein, out_size=out_size)
        candidates = sequence[compresspp(k_split, z[sequence], stein, out_size=out_size)][None]
    # KT-SWAP writes argmin indices (the default int type) into the candidate.
    index = jax.dtypes.canonicalize_dtype(jnp.int64)
    candidates = jnp.concatenate([candidates.astype(index), baseline[None].astype(index)])
    return _best_with_swaps(z, stein, candidates)
