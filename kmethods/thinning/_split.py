"""KT-SPLIT (the self-balancing Hilbert walk) and KT-SWAP, round by round (internal).

Dwivedi & Mackey (2021), "Kernel Thinning", Algorithms 1a and 1b; the layout of the computation
is described in `kmethods.thinning`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from kmethods.pairwise import kernel_row_sums, kernel_sum
from kmethods.thinning._sizes import slab_block


def row_width(min_length: int) -> int:
    """Positions per row of the (N / width, width) view: the largest divisor of the shortest
    coreset length that is at most 128, so that no row straddles two coresets."""
    return max(w for w in range(1, min(128, min_length) + 1) if min_length % w == 0)


def halve(kernel, x, idx, length, uniforms, log_multiplier, *, num_slots, block, width):
    """One round of KT-SPLIT: halves every run of `length` consecutive entries of idx.

    The self-balancing walk of Algorithm 1a over each coreset's consecutive pairs (x, x'),
    all coresets at once, with array shapes that do not depend on `length`: every round of
    KT is the same compiled computation.

    The positions are viewed as rows of `width` (no row straddles two coresets). A pass takes
    the next `block` pairs of every coreset, evaluates the kernel between each row and its own
    coreset's 2 block points (about 2 block * N evaluations, no N x N matrix), decides the
    pairs in order, and adds their contribution to psi, kept at every position.

    Args:
      kernel: the split kernel.
      x: (n, d) points.
      idx: (N,) indices into x: N / length coresets, each in arrival order.
      length: coreset length, a multiple of `width` (may be a traced integer).
      uniforms: (N / 2,) uniform draws; pair w of coreset c uses uniforms[c length / 2 + w].
      log_multiplier: 2 log(2 / delta'), delta' the failure probability of this halving.
      num_slots: static upper bound on the number of coresets N / length.
      block: pairs of each coreset decided per pass.
      width: row width of the view, dividing every coreset length.

    Returns:
      (N,) the children: coreset c's run becomes [child 0, child 1] (lengths length / 2),
      child 0 taking x' (the pair's second point) when u <= (1 - alpha / a) / 2.
    """
    dtype = x.dtype
    size = idx.shape[0]
    b = block
    xs = x[idx]
    xs_rows = xs.reshape(size // width, width, -1)
    half = length // 2
    num_coresets = size // length
    row_owner = jnp.arange(size // width) * width // length  # the coreset of each row
    slots = jnp.arange(num_slots)
    live = slots < num_coresets
    local_rows = jnp.arange(2 * b)
    pairs = jnp.arange(b)
    zero = jnp.zeros((), dtype)
    uniforms = uniforms.astype(dtype)
    gram_rows = jax.vmap(kernel.gram)

    def block_step(t, carry):
        g, sig2, signs_all = carry
        local = 2 * t * b + local_rows  # the block's positions inside its coreset
        own = jnp.minimum(slots[:, None] * length + local[None, :], size - 1)
        block_points = xs[own]  # (slots, 2b, d)
        kb = gram_rows(block_points, block_points)  # each slot's block against itself
        f = kb[:, 0::2] - kb[:, 1::2]  # f_w = k(x_w, .) - k(x'_w, .) on the block
        inner = f[:, :, 0::2] - f[:, :, 1::2]  # <f_w, f_v>, (slots, b, b)
        g_block = g[own]
        alpha0 = g_block[:, 0::2] - g_block[:, 1::2]
        pair_local = t * b + pairs
        valid = live[:, None] & (pair_local[None, :] < half)
        pair_index = slots[:, None] * half + pair_local[None, :]
        u = uniforms[jnp.minimum(pair_index, uniforms.shape[0] - 1)]

        def pair_step(state, w):
            alpha, sig2 = state  # alpha already holds the earlier pairs of this pass
            b2 = inner[:, w, w]
            thresh = jnp.maximum(jnp.sqrt(jnp.maximum(sig2 * b2 * log_multiplier, zero)), b2)
            positive = thresh > 0
            a = jnp.where(positive, thresh, jnp.ones((), dtype))
            grow = b2 * jnp.maximum(zero, 1.0 + (b2 / a - 2.0) * sig2 / a)
            ok = valid[:, w]
            sig2 = jnp.where(positive & ok, sig2 + grow, sig2)
            flip = u[:, w] <= 0.5 * (1.0 - alpha[:, w] / a)
            sign = jnp.where(ok, jnp.where(flip, 1.0, -1.0), 0.0).astype(dtype)
            return (alpha + sign[:, None] * inner[:, w], sig2), sign

        (_, sig2), signs = jax.lax.scan(pair_step, (alpha0, sig2), pairs)
        signs = signs.T  # (slots, b)
        # psi moves by sum_w sign_w (k(x_w, .) - k(x'_w, .)) within each coreset.
        coef = jnp.stack([signs, -signs], axis=2).reshape(num_slots, 2 * b)
        slab = gram_rows(block_points[row_owner], xs_rows)  # (rows, 2b, width)
        g = g + jnp.einsum("rk,rkw->rw", coef[row_owner], slab).reshape(size)
        target = jnp.where(valid, pair_index, signs_all.shape[0])  # invalid: dropped
        signs_all = signs_all.at[target].set(signs, mode="drop")
        return g, sig2, signs_all

    init = (
        jnp.zeros((size,), dtype),
        jnp.zeros((num_slots,), dtype),
        jnp.zeros((size // 2,), dtype),
    )
    num_blocks = (half + b - 1) // b
    _, _, signs = jax.lax.fori_loop(0, num_blocks, block_step, init)
    pair = jnp.arange(size // 2)
    c, w = pair // half, pair % half
    first, second = idx[c * length + 2 * w], idx[c * length + 2 * w + 1]
    plus = signs > 0
    out = jnp.zeros_like(idx)
    out = out.at[c * length + w].set(jnp.where(plus, second, first))
    return out.at[c * length + half + w].set(jnp.where(plus, first, second))


def kt_split(x, kernel, uniforms, log_multipliers):
    """KT-SPLIT: 2^m coresets of n / 2^m indices into x, as an array (2^m, n / 2^m).

    Args:
      x: (n, d) with n divisible by 2^m.
      uniforms: (m, n / 2): round j's draw for pair w of coreset c is uniforms[j, c P + w],
        P = n / 2^{j+1} pairs per coreset.
      log_multipliers: (m,) the thresholds' 2 log(2 / delta_j).
    """
    n = x.shape[0]
    m = uniforms.shape[0]
    halve_round = partial(
        halve,
        kernel,
        num_slots=2 ** max(m - 1, 0),
        block=slab_block(n),
        width=row_width(2 * n // 2**m),
    )

    def round_(j, idx):
        return halve_round(x, idx, n >> j, uniforms[j], log_multipliers[j])

    idx = jax.lax.fori_loop(0, m, round_, jnp.arange(n))
    return idx.reshape(2**m, n // 2**m)


def split_log_multipliers(n: int, m: int, delta, dtype):
    """2 log(2 / delta'_j) with delta'_j = (delta / n) 2^j / m (Algorithm 1a, j 0-based)."""
    j = jnp.arange(m, dtype=dtype)
    return 2.0 * jnp.log(2.0 * n * m / (delta * 2.0**j))


def kt_swap(x, kernel, candidates, mean_k=None):
    """KT-SWAP (Algorithm 1b): the candidate closest in MMD to x, then greedy point swaps.

    Args:
      x: (n, d), the points whose empirical distribution is the target.
      candidates: (num_candidates, s) indices into x.
      mean_k: optional precomputed row means (1/n) sum_j k(x_i, x_j).
    """
    n = x.shape[0]
    s = candidates.shape[1]
    if mean_k is None:
        mean_k = kernel_row_sums(kernel, x, x) / n

    # MMD^2(candidate, x) - mean(K) = mean(K[c, c]) - 2 mean(mean_k[c])
    def relative_mmd2(c):
        xc = x[c]
        return kernel_sum(kernel, xc, xc) / s**2 - 2.0 * jnp.mean(mean_k[c])

    scores = jax.lax.map(relative_mmd2, candidates)
    best = candidates[jnp.argmin(scores)]
    return _refine(x, kernel, best, mean_k)


def _refine(x, kernel, coreset, mean_k):
    """Swaps each coreset point in turn for the point of x that lowers MMD^2 the most.

    stat_q = k(x_q, x_q) / s - 2 mean_k[q] + (2 / s) sum_{c in coreset without the current point}
    k(c, x_q) is, up to a constant, MMD^2 after putting x_q in the current point's place.
    """
    s = coreset.shape[0]
    scale = 2.0 / s
    row = lambda i: kernel.gram(x[i][None], x)[0]
    stat = kernel.diag(x) / s - 2.0 * mean_k + scale * kernel_row_sums(kernel, x, x[coreset])

    def step(carry, i):
        coreset, stat = carry
        stat = stat - scale * row(coreset[i])
        new = jnp.argmin(stat)
        stat = stat + scale * row(new)
        return (coreset.at[i].set(new), stat), None

    (coreset, _), _ = jax.lax.scan(step, (coreset, stat), jnp.arange(s))
    return coreset
