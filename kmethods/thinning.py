"""Kernel thinning (KT), target / root / power KT, KT+, and Compress++.

Kernel thinning compresses n points to about sqrt(n) whose empirical distribution is much closer
(in MMD) to the input's than a same-size i.i.d. subsample: O(n^{-1/2} log n) instead of
O(n^{-1/4}).

References:
  Dwivedi & Mackey (2021), "Kernel Thinning", arXiv:2105.05842: Algorithm 1 (KT), 1a (KT-SPLIT,
    the self-balancing Hilbert walk with adaptive thresholds), 1b (KT-SWAP).
  Dwivedi & Mackey (2022), "Generalized Kernel Thinning", ICLR, arXiv:2110.01593: target KT
    (split with the target kernel itself), power KT (split with a fractional power k_alpha of
    the kernel; alpha = 1/2 is root KT) and KT+ (split with k / ||k||_inf + k_alpha /
    ||k_alpha||_inf).
  Shetty, Dwivedi & Mackey (2022), "Distribution Compression in Near-linear Time", ICLR,
    arXiv:2111.07941: Compress and Compress++.

How the computation is laid out
-------------------------------
KT-SPLIT halves its input m times. Round j (0-based) holds 2^j coresets of n / 2^j points, each
in arrival order; every coreset is halved by walking its consecutive pairs (x, x') in order and
sending one point to each child. Doing the rounds one after another is the same algorithm as the
paper's interleaved (streaming) loop: a pair's fate depends only on earlier pairs of its own
parent coreset. All 2^j coresets of a round advance together, on arrays whose shapes do not
depend on the round (`_halve`), so the m rounds are one `fori_loop` body: one compilation per
input shape, whatever the seed, bandwidth, delta or round.

For one coreset the walk keeps psi, the difference of the kernel sums of the two children so far,
as its values g_q = psi(x_q) at every point of the coreset. A pair needs
alpha = <k(x, .) - k(x', .), psi> = g(x) - g(x'), and after the decision g moves by
+-(k(x, .) - k(x', .)). Each pass takes the next `block` pairs of every coreset: their small
Gram block gives the inner products for the sequential decisions, then one blocked evaluation
of those 2 block points against the coreset's points (positions viewed as rows that never
straddle two coresets) moves g. Memory is O(block * n), never n x n; the kernel is evaluated
about 2 n^2 times in all (the 2 n^2 floor of KT).

KT-SWAP scores the 2^m candidates and the standard-thinning coreset by MMD to the whole input
(kernel row means from `kmethods.pairwise`, blocked), then swaps each point of the best one in
turn for the input point that lowers the MMD most (Algorithm 1b), holding one length-n vector.

Sizes: with out_size s, KT runs m = floor(log2(n / s)) halving rounds on n' = s 2^m points. When
n' < n, the n - n' points left out of KT-SPLIT are chosen uniformly at random (a documented
drop); KT-SWAP still measures MMD against all n points and may swap any of them in.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from kmethods import _checks
from kmethods._jit import cpu_jit
from kmethods.kernels import Gaussian, Laplace, Matern, SumKernel, check_kernel
from kmethods.mmd import mmd2
from kmethods.pairwise import kernel_row_sums, kernel_sum

__all__ = [
    "compresspp",
    "iid_thin",
    "kernel_thin",
    "kt_plus_kernel",
    "mmd_to_sample",
    "power_kernel",
    "root_kernel",
    "standard_thin",
]

# Pairs decided per kernel slab; memory of a halving round is about 3 * block * n floats.
_BLOCK = 16
# Upper bound on the entries of all kernel slabs of one round held at once.
_SLAB_ELEMENTS = 2**22


# ----------------------------------------------------------------------------- sizes and input


def _default_out_size(n: int) -> int:
    return max(1, math.isqrt(n))


def _thinning_inputs(x, kernel, out_size, delta, name_kernel="kernel"):
    x = _checks.as_points(x, "x")
    check_kernel(kernel, name_kernel)
    n = x.shape[0]
    if out_size is None:
        out_size = _default_out_size(n)
    out_size = _checks.positive_int(out_size, "out_size")
    if 2 * out_size > n:
        raise ValueError(
            f"`out_size` must be at most n / 2 = {n // 2} for thinning n = {n} points "
            f"(at least one halving round); got {out_size}."
        )
    delta = _checks.probability(delta, "delta")
    return x, out_size, delta


def _check_key(key):
    if not (isinstance(key, jax.Array) and (key.shape == (2,) or key.shape == ())):
        raise TypeError(
            f"`key` must be a JAX PRNG key (jax.random.key(0) or PRNGKey(0)), got {key!r}."
        )


def _halving_rounds(n: int, out_size: int) -> int:
    return math.floor(math.log2(n / out_size))


def _block(num_points: int) -> int:
    """Pairs per coreset and slab pass: the (num_points, 2 block) slab stays under 2^22 entries."""
    cap = max(1, _SLAB_ELEMENTS // (2 * num_points))
    return min(_BLOCK, 2 ** math.floor(math.log2(cap)))


# ----------------------------------------------------------------------------- KT-SPLIT


def _row_width(min_length: int) -> int:
    """Positions per row of the (N / width, width) view: the largest divisor of the shortest
    coreset length that is at most 128, so that no row straddles two coresets."""
    return max(w for w in range(1, min(128, min_length) + 1) if min_length % w == 0)


def _halve(kernel, x, idx, length, uniforms, log_multiplier, *, num_slots, block, width):
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


def _kt_split(x, kernel, uniforms, log_multipliers):
    """KT-SPLIT: 2^m coresets of n / 2^m indices into x, as an array (2^m, n / 2^m).

    Args:
      x: (n, d) with n divisible by 2^m.
      uniforms: (m, n / 2): round j's draw for pair w of coreset c is uniforms[j, c P + w],
        P = n / 2^{j+1} pairs per coreset.
      log_multipliers: (m,) the thresholds' 2 log(2 / delta_j).
    """
    n = x.shape[0]
    m = uniforms.shape[0]
    halve = partial(
        _halve,
        kernel,
        num_slots=2 ** max(m - 1, 0),
        block=_block(n),
        width=_row_width(2 * n // 2**m),
    )

    def round_(j, idx):
        return halve(x, idx, n >> j, uniforms[j], log_multipliers[j])

    idx = jax.lax.fori_loop(0, m, round_, jnp.arange(n))
    return idx.reshape(2**m, n // 2**m)


def _split_log_multipliers(n: int, m: int, delta, dtype):
    """2 log(2 / delta'_j) with delta'_j = (delta / n) 2^j / m (Algorithm 1a, j 0-based)."""
    j = jnp.arange(m, dtype=dtype)
    return 2.0 * jnp.log(2.0 * n * m / (delta * 2.0**j))


# ----------------------------------------------------------------------------- KT-SWAP


def _kt_swap(x, kernel, candidates, mean_k=None):
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


def _swap_halves(x, kernel, halves):
    """KT-SWAP for one halving that keeps a partition (goodpoints' `unique` swap).

    For each node, the half closer in MMD to the node's points becomes the coreset; then each
    coreset point in turn is exchanged with the non-coreset point (or kept) that lowers MMD the
    most. The coreset and its complement stay a partition of the node, so a symmetrized halving
    can return either.

    Args:
      halves: (nodes, 2, s) indices into x, each node's two halves.

    Returns:
      (nodes, 2, s): the refined coreset and its complement.
    """
    s = halves.shape[2]
    scale = 2.0 / s

    def one(node):
        pts = x[node.reshape(2 * s)]
        total = kernel_row_sums(kernel, pts, pts)
        mean_k = total / (2 * s)
        first = kernel_row_sums(kernel, pts, pts[:s])  # sum over half 0 of k(c, .)
        second = total - first
        # MMD^2 up to a constant: mean of the half's kernel block - 2 mean of its mean_k.
        score0 = jnp.sum(first[:s]) / s**2 - 2.0 * jnp.mean(mean_k[:s])
        score1 = jnp.sum(second[s:]) / s**2 - 2.0 * jnp.mean(mean_k[s:])
        swap_first = score1 < score0
        core = jnp.where(swap_first, jnp.arange(s, 2 * s), jnp.arange(s))
        in_core = jnp.arange(2 * s) < s
        in_core = jnp.where(swap_first, ~in_core, in_core)
        row = lambda i: kernel.gram(pts[i][None], pts)[0]
        stat = kernel.diag(pts) / s - 2.0 * mean_k + scale * jnp.where(swap_first, second, first)

        def step(carry, i):
            core, in_core, stat = carry
            old = core[i]
            stat = stat - scale * row(old)
            blocked = in_core & (jnp.arange(2 * s) != old)
            new = jnp.argmin(jnp.where(blocked, jnp.inf, stat))
            stat = stat + scale * row(new)
            in_core = in_core.at[old].set(False).at[new].set(True)
            return (core.at[i].set(new), in_core, stat), None

        (core, in_core, _), _ = jax.lax.scan(step, (core, in_core, stat), jnp.arange(s))
        rest = jnp.nonzero(~in_core, size=s)[0]
        flat = node.reshape(2 * s)
        return jnp.stack([flat[core], flat[rest]])

    # Nodes in batches whose kernel slabs (about 2 s x 2 s each) stay under _SLAB_ELEMENTS.
    batch = max(1, min(halves.shape[0], _SLAB_ELEMENTS // (4 * s * s)))
    return jax.lax.map(one, halves, batch_size=batch)


def _kept_points(key, n: int, n_used: int):
    """The n_used of n points that enter the split, in their original order: all of them when
    n_used = n, else a uniformly random subset (the documented drop of a remainder)."""
    if n_used == n:
        return jnp.arange(n)
    return jnp.sort(jax.random.choice(key, n, (n_used,), replace=False))


def _standard_indices(n: int, s: int):
    """Every (n // s)-th index, counted back from the last point (goodpoints' baseline)."""
    stride = n // s
    return n - 1 - stride * jnp.arange(s - 1, -1, -1)


# ----------------------------------------------------------------------------- KT


@cpu_jit(static_argnames=("out_size", "m", "swap"))
def _kernel_thin(key, x, kernel, split_kernel, delta, *, out_size, m, swap):
    n = x.shape[0]
    n_used = out_size * 2**m
    k_drop, k_split, k_pick = jax.random.split(key, 3)
    used = _kept_points(k_drop, n, n_used)
    uniforms = jax.random.uniform(k_split, (m, n_used // 2), x.dtype)
    log_mult = _split_log_multipliers(n_used, m, jnp.asarray(delta, x.dtype), x.dtype)
    coresets = used[_kt_split(x[used], split_kernel, uniforms, log_mult)]
    if not swap:
        return coresets[jax.random.randint(k_pick, (), 0, coresets.shape[0])]
    candidates = jnp.concatenate([coresets, _standard_indices(n, out_size)[None]])
    return _kt_swap(x, kernel, candidates)


def kernel_thin(key, x, kernel, *, out_size=None, split_kernel=None, delta=0.5, swap=True):
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

    Returns:
      int indices into x of shape (s,). With `swap`, an index may repeat (as in the paper).
    """
    _check_key(key)
    x, out_size, delta = _thinning_inputs(x, kernel, out_size, delta)
    if split_kernel is not None:
        check_kernel(split_kernel, "split_kernel")
    m = _halving_rounds(x.shape[0], out_size)
    return _kernel_thin(
        key,
        x,
        kernel,
        kernel if split_kernel is None else split_kernel,
        delta,
        out_size=out_size,
        m=m,
        swap=_checks.flag(swap, "swap"),
    )


# ----------------------------------------------------------------------------- baselines


def _baseline_inputs(x, out_size):
    x = _checks.as_points(x, "x")
    n = x.shape[0]
    out_size = _checks.positive_int(
        _default_out_size(n) if out_size is None else out_size, "out_size"
    )
    if out_size > n:
        raise ValueError(f"`out_size` must be at most n = {n}, got {out_size}.")
    return n, out_size


def standard_thin(key, x, kernel=None, *, out_size=None, split_kernel=None, delta=0.5, swap=True):
    """Standard thinning: every (n // s)-th point, counted back from the last one.

    Takes (and ignores) `key`, `kernel` and KT's options, so that every thinning routine can
    be called like `kernel_thin`.
    """
    del key, kernel, split_kernel, delta, swap
    n, out_size = _baseline_inputs(x, out_size)
    return _standard_indices(n, out_size)


def iid_thin(key, x, kernel=None, *, out_size=None, split_kernel=None, delta=0.5, swap=True):
    """An i.i.d. baseline: `out_size` indices drawn uniformly without replacement.

    Takes (and ignores) `kernel` and KT's options, like `standard_thin`.
    """
    del kernel, split_kernel, delta, swap
    _check_key(key)
    n, out_size = _baseline_inputs(x, out_size)
    return jax.random.choice(key, n, (out_size,), replace=False)


def mmd_to_sample(x, indices, kernel, *, mean_kxx=None, block_size=None):
    """MMD between the empirical distributions of x and of x[indices] (repeats count twice).

    The V-statistic sqrt(mean K(x, x) - 2 mean K(x, c) + mean K(c, c)), blocked.

    In float32 the three terms cancel to within about 1e-7, so MMDs below about 1e-3 are
    coarse; evaluate in float64 (`jax.enable_x64`) to compare good coresets.

    Args:
      x: (n, d) the input sample. indices: (s,) integer indices into x (the coreset).
      kernel: the kernel of the MMD.
      mean_kxx: optional precomputed mean of k(x_i, x_j) over all n^2 pairs (the one O(n^2)
        term), so that several coresets of one sample cost O(n s) each.
      block_size: rows per block of the pairwise sums.
    """
    x = _checks.as_points(x, "x", min_points=1)
    check_kernel(kernel)
    indices = jnp.asarray(indices)
    if indices.ndim != 1 or not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(
            f"`indices` must be a 1-d integer array, got {indices.dtype}{indices.shape}."
        )
    if (
        _checks.is_concrete(indices)
        and indices.size
        and (int(indices.min()) < 0 or int(indices.max()) >= x.shape[0])
    ):
        raise ValueError(f"`indices` must lie in [0, {x.shape[0]}).")
    c = x[indices]
    if mean_kxx is None:
        value = mmd2(x, c, kernel, unbiased=False, block_size=block_size)
    else:
        s, n = c.shape[0], x.shape[0]
        cross = kernel_sum(kernel, c, x, block_size=block_size) / (s * n)
        core = kernel_sum(kernel, c, c, block_size=block_size) / s**2
        value = jnp.asarray(mean_kxx, x.dtype) - 2.0 * cross + core
    return jnp.sqrt(jnp.maximum(value, 0.0))


# ----------------------------------------------------------------------------- split kernels


def power_kernel(kernel, alpha, dim=None):
    """The alpha-power kernel k_alpha, whose Fourier transform is that of k to the power alpha.

    Generalized KT (Dwivedi & Mackey, 2022, Section 3 and Table 2) splits with k_alpha,
    alpha in (0, 1] (alpha = 1/2 is root KT). Results are normalised to k_alpha(x, x) = 1;
    KT-SPLIT's decisions do not depend on the kernel's scale.

      Gaussian(h)       -> Gaussian(sqrt(alpha) h)
      Matern(nu, h)     -> Matern(nu', h sqrt(nu' / nu)), nu' = alpha (nu + d / 2) - d / 2
      Laplace(h)        -> Matern(nu=1/2, h) as above

    (The Matern spectral density is proportional to (2 nu / h^2 + |w|^2)^-(nu + d/2);
    Rasmussen & Williams, 2006, eq. 4.15.) The Matern power exists only when nu' > 0, i.e.
    alpha > d / (2 nu + d).

    Args:
      kernel: a Gaussian, Matern or Laplace kernel.
      alpha: the power, in (0, 1].
      dim: the dimension d of the points; needed for Matern and Laplace.
    """
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1], got {alpha}.")
    if isinstance(kernel, Gaussian):
        return Gaussian(jnp.sqrt(alpha) * jnp.asarray(kernel.bandwidth))
    if isinstance(kernel, (Matern, Laplace)):
        nu = kernel.nu if isinstance(kernel, Matern) else 0.5
        if dim is None:
            raise ValueError(
                f"`dim` (the dimension of the points) is needed for the power of "
                f"{type(kernel).__name__}."
            )
        d = _checks.positive_int(dim, "dim")
        new_nu = alpha * (nu + d / 2.0) - d / 2.0
        if new_nu <= 0:
            raise ValueError(
                f"The alpha-power of Matern(nu={nu}) in d = {d} needs alpha > "
                f"{d / (2 * nu + d):.4g}; got `alpha` = {alpha}."
            )
        bandwidth = jnp.asarray(kernel.bandwidth) * math.sqrt(new_nu / nu)
        return Matern(nu=new_nu, bandwidth=bandwidth)
    raise TypeError(
        f"power_kernel supports Gaussian, Matern and Laplace kernels, got {type(kernel).__name__}."
    )


def root_kernel(kernel, dim=None):
    """The square-root kernel of root KT (Dwivedi & Mackey, 2021): `power_kernel(k, 1/2)`."""
    return power_kernel(kernel, 0.5, dim)


def kt_plus_kernel(kernel, alpha=0.5, dim=None):
    """The KT+ split kernel k / ||k||_inf + k_alpha / ||k_alpha||_inf (Dwivedi & Mackey, 2022).

    Both terms are normalised to 1 on the diagonal, so this is k + k_alpha.
    """
    return SumKernel((kernel, power_kernel(kernel, alpha, dim)))


# ----------------------------------------------------------------------------- Compress++


def _compress_plan(n: int, out_size: int, g: int):
    """(g, levels, leaf) for Compress++ (Shetty et al., 2022) returning out_size points.

    Compress with `levels` levels on leaves of `leaf` points takes 4^levels * leaf points and
    returns 2^levels * leaf = 2^g * out_size, which KT then thins by 2^g. The paper's case
    n = 4^k, out_size = sqrt(n) gives leaf = 4^g. When n is too small for g, g drops to
    floor(log2(n / out_size)) (Compress++ is then KT).
    """
    g = min(g, _halving_rounds(n, out_size))
    levels = max(0, _halving_rounds(n, out_size) - g)
    while levels > g and out_size % 2 ** (levels - g):
        levels -= 1
    leaf = out_size * 2**g // 2**levels
    return g, levels, leaf


@cpu_jit(static_argnames=("out_size", "g", "levels", "leaf", "skip"))
def _compresspp(key, x, kernel, delta, *, out_size, g, levels, leaf, skip):
    n = x.shape[0]
    n_used = 4**levels * leaf
    k_drop, k_halve, k_pick, k_thin = jax.random.split(key, 4)
    used = _kept_points(k_drop, n, n_used)
    # The top `skip` levels are not halved: their four-way concatenations go to KT, which thins
    # by 2^(g + skip). The failure probability is shared between the halvings and that KT.
    run_levels, m = levels - skip, g + skip
    thin_frac = m / (m + 2**m * run_levels) if run_levels else 1.0
    delta_compress = delta * (1.0 - thin_frac)
    idx = used.reshape(4**levels, leaf)
    halve_keys = jax.random.split(k_halve, max(levels, 1))
    pick_keys = jax.random.split(k_pick, max(levels, 1))
    for t in range(run_levels):
        nodes = idx.shape[0] // 4
        idx = idx.reshape(nodes, -1)  # the outputs of four children side by side
        length = idx.shape[1]
        # Halve on l points gets delta l^2 / (4 leaf n levels), i.e. delta_i = that / l.
        # (Python floats: 4 leaf n levels passes 2^31 at n = 2^20.)
        delta_halve = delta_compress * (float(length) ** 2 / (4.0 * leaf * n_used * run_levels))
        log_mult = 2.0 * jnp.log(2.0 * length / jnp.asarray(delta_halve, x.dtype))
        uniforms = jax.random.uniform(halve_keys[t], (nodes * length // 2,), x.dtype)
        halved = _halve(
            kernel,
            x,
            idx.reshape(-1),
            length,
            uniforms,
            log_mult,
            num_slots=nodes,
            block=_block(idx.size),
            width=_row_width(length),
        ).reshape(nodes, 2, length // 2)
        halved = _swap_halves(x, kernel, halved)
        side = jax.random.bernoulli(pick_keys[t], 0.5, (nodes,)).astype(jnp.int32)
        idx = jnp.take_along_axis(halved, side[:, None, None], axis=1)[:, 0]  # symmetrized
    compressed = idx.reshape(-1)
    if m == 0:
        return compressed
    chosen = _kernel_thin(
        k_thin, x[compressed], kernel, kernel, delta * thin_frac, out_size=out_size, m=m, swap=True
    )
    return compressed[chosen]


def compresspp(key, x, kernel, *, g=4, out_size=None, delta=0.5, num_bins=4):
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

    Returns:
      int indices into x of shape (s,).
    """
    _check_key(key)
    x, out_size, delta = _thinning_inputs(x, kernel, out_size, delta)
    g = _checks.positive_int(g, "g", minimum=0)
    num_bins = _checks.positive_int(num_bins, "num_bins")
    skip = round(math.log(num_bins, 4))
    if 4**skip != num_bins:
        raise ValueError(f"`num_bins` must be a power of 4 (1, 4, 16, ...), got {num_bins}.")
    g, levels, leaf = _compress_plan(x.shape[0], out_size, g)
    return _compresspp(
        key,
        x,
        kernel,
        delta,
        out_size=out_size,
        g=g,
        levels=levels,
        leaf=leaf,
        skip=min(skip, levels),
    )
