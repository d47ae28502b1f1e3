"""Compress++ (Shetty, Dwivedi & Mackey, 2022): near-linear-time compression."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.kernels import Kernel
from kmethods.thinning._halving import (
    NODE_ELEMENTS,
    matrix_free_halving,
    symmetrized_halving,
)
from kmethods.thinning._kt import kernel_thin_program
from kmethods.thinning._sizes import (
    check_key,
    halving_rounds,
    kept_points,
    thinning_inputs,
)
from kmethods.thinning._weighted import check_simplex_weights, stratified_round


def compress_plan(n: int, out_size: int, g: int):
    """(g, levels, leaf) for Compress++ (Shetty et al., 2022) returning out_size points.

    Compress with `levels` levels on leaves of `leaf` points takes 4^levels * leaf points and
    returns 2^levels * leaf = 2^g * out_size, which KT then thins by 2^g. The paper's case
    n = 4^k, out_size = sqrt(n) gives leaf = 4^g. When n is too small for g, g drops to
    floor(log2(n / out_size)) (Compress++ is then KT).
    """
    g = min(g, halving_rounds(n, out_size))
    levels = max(0, halving_rounds(n, out_size) - g)
    while levels > g and out_size % 2 ** (levels - g):
        levels -= 1
    leaf = out_size * 2**g // 2**levels
    return g, levels, leaf


def halving_levels(k_halve, k_pick, x, kernel, idx, delta, *, levels, n_used):
    """Compress's halvings, level by level, of several inputs at once.

    Args:
      k_halve, k_pick: (inputs,) keys of each input's split draws and of its halves' picks.
      x: (n, d) the points of all inputs.
      idx: (inputs, 4^L, leaf) indices into x: each input's leaves, L >= `levels`.
      delta: the failure probability shared by one input's halvings.
      levels: the levels to run (the top L - levels are left to KT).
      n_used: 4^L leaf, the points of one input.

    Returns:
      (inputs, 4^(L - levels) 2^levels leaf) indices into x: each input's compressed points.
    """
    inputs, _, leaf = idx.shape
    halve_keys = jax.vmap(lambda k: jax.random.split(k, max(levels, 1)))(k_halve)
    pick_keys = jax.vmap(lambda k: jax.random.split(k, max(levels, 1)))(k_pick)
    for t in range(levels):
        nodes = idx.shape[1] // 4
        idx = idx.reshape(inputs, nodes, -1)  # the outputs of four children side by side
        length = idx.shape[2]
        # Halve on l points gets delta l^2 / (4 leaf n levels), i.e. delta_i = that / l.
        # (Python floats: 4 leaf n levels passes 2^31 at n = 2^20.)
        delta_halve = delta * (float(length) ** 2 / (4.0 * leaf * n_used * levels))
        log_mult = 2.0 * jnp.log(2.0 * length / jnp.asarray(delta_halve, x.dtype))
        uniforms = jax.vmap(
            lambda k, length=length, nodes=nodes: jax.random.uniform(
                k, (nodes * length // 2,), x.dtype
            )
        )(halve_keys[:, t])
        sides = jax.vmap(lambda k, nodes=nodes: jax.random.bernoulli(k, 0.5, (nodes,)))(
            pick_keys[:, t]
        )
        # Symmetrized: the swapped coreset or its complement, at random.
        halving = symmetrized_halving if length**2 <= NODE_ELEMENTS else matrix_free_halving
        idx = halving(
            kernel,
            x,
            idx.reshape(inputs * nodes, length),
            uniforms.reshape(inputs * nodes, length // 2),
            sides.reshape(inputs * nodes).astype(jnp.int32),
            log_mult,
        ).reshape(inputs, nodes, length // 2)
    return idx.reshape(inputs, -1)


@cpu_jit(static_argnames=("out_size", "g", "levels", "leaf", "skip"))
def _compresspp(key, x, kernel, delta, weights=None, *, out_size, g, levels, leaf, skip):
    n = x.shape[0]
    n_used = 4**levels * leaf
    k_drop, k_halve, k_pick, k_thin = jax.random.split(key, 4)
    if weights is None:
        used = kept_points(k_drop, n, n_used)
    else:  # the weighted input as a multiset: equal weights with n_used = n give arange(n)
        used = stratified_round(k_drop, weights, n_used)
    # The top `skip` levels are not halved: their four-way concatenations go to KT, which thins
    # by 2^(g + skip). The failure probability is shared between the halvings and that KT.
    run_levels, m = levels - skip, g + skip
    thin_frac = m / (m + 2**m * run_levels) if run_levels else 1.0
    compressed = halving_levels(
        k_halve[None],
        k_pick[None],
        x,
        kernel,
        used.reshape(1, 4**levels, leaf),
        delta * (1.0 - thin_frac),
        levels=run_levels,
        n_used=n_used,
    )[0]
    if m == 0:
        return compressed
    chosen = kernel_thin_program(
        k_thin, x[compressed], kernel, kernel, delta * thin_frac, out_size=out_size, m=m, swap=True
    )
    return compressed[chosen]


def compress_bins(keys, bins, kernel, *, out_size: int, delta):
    """KT-Compress of each bin: `compresspp(key, bin, kernel, g=0, out_size=out_size,
    num_bins=1, delta=delta)` for every (key, bin), the halvings of all bins done together.

    Args:
      keys: (num_bins,) PRNG keys.
      bins: (num_bins, n, d) points, n >= 2 out_size.

    Returns:
      (num_bins, out_size) indices into each bin.
    """
    num_bins, n, d = bins.shape
    _, levels, leaf = compress_plan(n, out_size, 0)
    n_used = 4**levels * leaf
    parts = jax.vmap(lambda k: jax.random.split(k, 4))(keys)  # as compresspp's
    used = jax.vmap(lambda k: kept_points(k, n, n_used))(parts[:, 0])
    used = used + n * jnp.arange(num_bins)[:, None]  # into the bins stacked as one array
    compressed = halving_levels(
        parts[:, 1],
        parts[:, 2],
        bins.reshape(num_bins * n, d),
        kernel,
        used.reshape(num_bins, 4**levels, leaf),
        delta,
        levels=levels,
        n_used=n_used,
    )
    return compressed - n * jnp.arange(num_bins)[:, None]


def compresspp(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    kernel: Kernel,
    *,
    g: int = 4,
    out_size: int | None = None,
    delta: float = 0.5,
    num_bins: int = 4,
    weights: Float[Array, " n"] | None = None,
) -> Int[Array, " s"]:
    """Compress++ (Shetty, Dwivedi & Mackey, 2022) with kernel halving and KT, near-linear time.

    Compress recursively splits its input in four, compresses each quarter, concatenates the
    results and halves them with symmetrized KT halving (one KT-SPLIT round, a swap pass that
    keeps the two halves a partition, then one of the two at random); it returns 2^g sqrt(n)
    points in O(n 4^g log n) kernel evaluations. KT (`kernel_thin`, target kernel) then thins
    those by 2^g to sqrt(n). With `num_bins` = 4^b (goodpoints' `compresspp_kt` uses 4), the
    input is first cut into that many bins, Compress runs on each, and KT thins the bins'
    concatenation by 2^(g + b): the top b halvings are left to KT, which is better and, on
    that many points, still cheap. `num_bins=1` is the paper's Algorithm 2 as written.
    Failure probabilities follow the paper: the final KT (m = g + b rounds) gets
    delta m / (m + 2^m beta) and each halving of l points the rest times
    l^2 / (4^{g+1} n beta), beta the number of halving levels.

    Args:
      key: JAX PRNG key.
      x: (n, d) points.
      kernel: the target kernel.
      g: oversampling parameter (larger g: closer to KT's quality, slower).
      out_size: output size s, default floor(sqrt(n)). Compress runs on the largest
        2^(levels + g) s <= n points with s 2^g / 2^levels a whole number; any other points
        are left out at random. If n < s 2^g, g is lowered (Compress++ is then KT).
      delta: overall failure probability.
      num_bins: a power of 4: the top log4(num_bins) levels of Compress are left to KT.
      weights: optional (n,) simplex weights w: compress the weighted input
        sum_i w_i delta_{x_i} (Li, Dwivedi & Mackey, 2024, who round debiased weights and
        compress with KT-Compress++). The weights are rounded by stratified resampling to the
        points Compress runs on (multiplicities within one of that count times w_i), so the
        halvings and the final KT, whose swap targets Compress's output as in the unweighted
        case, see the weighted input. Equal weights give unweighted Compress++ exactly when
        Compress runs on all n points.

    Returns:
      int indices into x of shape (s,).
    """
    check_key(key)
    x, out_size, delta = thinning_inputs(x, kernel, out_size, delta)
    g = _checks.positive_int(g, "g", minimum=0)
    num_bins = _checks.positive_int(num_bins, "num_bins")
    skip = round(math.log(num_bins, 4))
    if 4**skip != num_bins:
        raise ValueError(f"`num_bins` must be a power of 4 (1, 4, 16, ...), got {num_bins}.")
    weights = check_simplex_weights(weights, x.shape[0], x.dtype)
    g, levels, leaf = compress_plan(x.shape[0], out_size, g)
    return _compresspp(
        key,
        x,
        kernel,
        delta,
        weights,
        out_size=out_size,
        g=g,
        levels=levels,
        leaf=leaf,
        skip=min(skip, levels),
    )
