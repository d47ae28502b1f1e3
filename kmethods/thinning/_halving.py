"""Compress's symmetrized kernel halving on each node's stored kernel matrix (internal).

Shetty, Dwivedi & Mackey (2022) halve each node of Compress (the concatenation of its four
children's outputs, l points) with one round of KT-SPLIT (Dwivedi & Mackey, 2021, Algorithm 1a),
a KT-SWAP pass that keeps the two halves a partition of the node (goodpoints' `unique` swap),
and one of the two halves at random. Every kernel value these steps need is an entry of the
node's l x l kernel matrix, so the matrix is evaluated once per node (l^2 evaluations) and the
walk and the swap only read it: the walk's psi moves by products of blocks of its rows, the
swap's statistic by single rows. Evaluating the kernel along the way instead costs about
10 l^2 evaluations per node (measured at 2.5x the time of this layout in CTT's compression).

Nodes are processed in batches whose matrices hold at most `NODE_ELEMENTS` entries, all nodes
of a batch (of every input compressed together) advancing in the same sequential steps. A node
whose matrix alone exceeds that (Compress++'s top levels at large n) is halved without it
(`matrix_free_halving`: the same decisions, kernel rows evaluated as needed, O(l) memory).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kmethods._numerics import first_minimum
from kmethods.kernels import RadialKernel
from kmethods.pairwise import kernel_row_sums, sqdist_product
from kmethods.thinning._sizes import SLAB_ELEMENTS, slab_block
from kmethods.thinning._split import halve, row_width

# Entries of the node kernel matrices held at once: 2^24 floats = 64 MiB in float32.
NODE_ELEMENTS = 2**24
# Pairs of the walk decided per block (one product with 2 block rows of the matrix per block).
PAIR_BLOCK = 16


def kernel_matrix(kernel, x, y):
    """kernel.gram(x, y), (n, m); for a radial kernel (one that keeps `RadialKernel.gram`),
    its profile of `kmethods.pairwise.sqdist_product`, the squared distances by one matrix
    product (`sqdist` uses it only from d = 17).

    On a CPU this evaluates the Gaussian about 2.5x faster than the coordinatewise distances of
    `kmethods.pairwise.sqdist` for d <= 16 (measured: 5.4e8 evaluations of CTT's coreset means
    at n = 2^16, d = 10, 0.80 against 2.04 CPU s); the shift keeps the expansion from
    cancelling on data far from the origin.
    """
    if not (isinstance(kernel, RadialKernel) and type(kernel).gram is RadialKernel.gram):
        return kernel.gram(x, y)
    return kernel.profile(sqdist_product(x, y))


def pair_block(half: int) -> int:
    """Pairs per block: the largest divisor of the number of pairs that is at most PAIR_BLOCK."""
    return max(b for b in range(1, min(PAIR_BLOCK, half) + 1) if half % b == 0)


def split_signs(gram, uniforms, log_multiplier):
    """One round of KT-SPLIT (Algorithm 1a) of each node, from its kernel matrix.

    Args:
      gram: (nodes, l, l) each node's kernel matrix, points in arrival order.
      uniforms: (nodes, l / 2) the draw of each pair (x_w, x'_w) = (2w, 2w + 1).
      log_multiplier: 2 log(2 / delta') of the threshold.

    Returns:
      (nodes, l / 2) signs: +1 when child 0 takes x' (u <= (1 - alpha / a) / 2), else -1.
    """
    nodes, length, _ = gram.shape
    dtype = gram.dtype
    half = length // 2
    b = pair_block(half)
    zero = jnp.zeros((), dtype)
    uniforms = uniforms.astype(dtype)

    def pair_step(carry, xs):
        """Pair w of a block; alpha already holds the block's earlier pairs."""
        alpha, sig2 = carry
        w, inner_w, u = xs  # (), (nodes, b), (nodes,)
        b2 = jax.lax.dynamic_index_in_dim(inner_w, w, axis=1, keepdims=False)
        alpha_w = jax.lax.dynamic_index_in_dim(alpha, w, axis=1, keepdims=False)
        thresh = jnp.maximum(jnp.sqrt(jnp.maximum(sig2 * b2 * log_multiplier, zero)), b2)
        positive = thresh > 0
        a = jnp.where(positive, thresh, jnp.ones((), dtype))
        grow = b2 * jnp.maximum(zero, 1.0 + (b2 / a - 2.0) * sig2 / a)
        sig2 = jnp.where(positive, sig2 + grow, sig2)
        flip = u <= 0.5 * (1.0 - alpha_w / a)
        sign = jnp.where(flip, 1.0, -1.0).astype(dtype)
        return (alpha + sign[:, None] * inner_w, sig2), sign

    def block_step(carry, t):
        g, sig2 = carry  # g = psi at every point of the node
        start = 2 * b * t
        rows = jax.lax.dynamic_slice_in_dim(gram, start, 2 * b, axis=1)  # (nodes, 2b, l)
        kb = jax.lax.dynamic_slice_in_dim(rows, start, 2 * b, axis=2)
        f = kb[:, 0::2] - kb[:, 1::2]  # f_w = k(x_w, .) - k(x'_w, .) on the block
        inner = f[:, :, 0::2] - f[:, :, 1::2]  # (nodes, b, b)
        g_block = jax.lax.dynamic_slice_in_dim(g, start, 2 * b, axis=1)
        alpha = g_block[:, 0::2] - g_block[:, 1::2]
        u = jax.lax.dynamic_slice_in_dim(uniforms, t * b, b, axis=1)
        # The block's pairs in order. A scan, not an unrolled loop: the same run time and about
        # 5x less compile time (measured: 0.35 against 1.9 CPU s per node shape, 16 nodes of
        # 512; Compress++ compiles one per level).
        xs = (jnp.arange(b), jnp.moveaxis(inner, 1, 0), u.T)
        (_, sig2), signs = jax.lax.scan(pair_step, (alpha, sig2), xs)
        signs = signs.T  # (nodes, b)
        coef = jnp.stack([signs, -signs], axis=2).reshape(nodes, 2 * b)
        g = g + jnp.einsum("nk,nkl->nl", coef, rows)
        return (g, sig2), signs

    init = (jnp.zeros((nodes, length), dtype), jnp.zeros((nodes,), dtype))
    _, signs = jax.lax.scan(block_step, init, jnp.arange(half // b))
    return jnp.moveaxis(signs, 0, 1).reshape(nodes, half)


def swap_partition(gram, signs):
    """KT-SWAP of each node's split that keeps a partition (goodpoints' `unique` swap).

    The halves are child 0 and child 1 of `split_signs`, each in pair order, and [child 0,
    child 1] is the order in which ties go to the first point. The half closer in MMD to the
    node's points becomes the coreset: always a tie (see below), so child 0; then each coreset
    point in turn is exchanged with the point outside the coreset (or kept) that lowers MMD
    the most.

    Args:
      gram: (nodes, l, l) each node's kernel matrix, points in arrival order.
      signs: (nodes, l / 2) from `split_signs`.

    Returns:
      (nodes, 2, l / 2) positions in the node: the refined coreset in swap order, then its
      complement in [child 0, child 1] order.
    """
    nodes, length, _ = gram.shape
    s = length // 2
    dtype = gram.dtype
    scale = 2.0 / s
    pairs = 2 * jnp.arange(s)[None, :]
    plus = (signs > 0).astype(pairs.dtype)
    child0 = pairs + plus  # child 0 takes x' = 2w + 1 on a plus
    child1 = pairs + 1 - plus
    by_rank = jnp.concatenate([child0, child1], axis=1)  # position of each rank
    w = jnp.arange(s)[None, :]
    # rank of position 2w: w in child 0, s + w in child 1; position 2w + 1 the other
    rank = jnp.stack([w + s * plus, w + s * (1 - plus)], axis=2).reshape(nodes, length)
    in0 = rank < s
    # The half closer in MMD to the node becomes the coreset. For two halves A, B of a node,
    # MMD^2(A, node) - MMD^2(B, node) = (sum K_AA - sum K_BB) / s^2 - (sum K_AA + sum K_AB -
    # sum K_BB - sum K_AB) / s^2 = 0: always a tie, which goes to child 0. (Computed in floating
    # point, the two scores differ by rounding alone.)
    total = jnp.sum(gram, axis=2)
    first = jnp.einsum("nlm,nm->nl", gram, in0.astype(dtype))  # sum over child 0 of k(c, .)
    mean_k = total / length
    diag = jnp.diagonal(gram, axis1=1, axis2=2)
    stat = diag / s - 2.0 * mean_k + scale * first
    in_core = in0
    positions = jnp.arange(length)[None, :]

    def row(i):  # (nodes,) positions -> their rows of the matrices
        return jnp.take_along_axis(gram, i[:, None, None], axis=1)[:, 0]

    def step(carry, old):
        in_core, stat = carry
        stat = stat - scale * row(old)
        others = positions != old[:, None]
        blocked = in_core & others
        new_rank = first_minimum(jnp.where(blocked, jnp.inf, stat), rank)
        new = jnp.take_along_axis(by_rank, new_rank[:, None], axis=1)[:, 0]
        stat = stat + scale * row(new)
        in_core = blocked | (positions == new[:, None])
        return (in_core, stat), new

    (in_core, _), core = jax.lax.scan(step, (in_core, stat), child0.T)
    out_by_rank = ~jnp.take_along_axis(in_core, by_rank, axis=1)
    rest_rank = jax.vmap(lambda m: jnp.nonzero(m, size=s)[0])(out_by_rank)
    rest = jnp.take_along_axis(by_rank, rest_rank, axis=1)
    return jnp.stack([core.T, rest], axis=1)


def symmetrized_halving(kernel, x, nodes, uniforms, sides, log_multiplier):
    """Compress's halving of each node: KT-SPLIT, the partition-keeping swap, a random half.

    Args:
      kernel: the kernel.
      x: (n, d) points.
      nodes: (num_nodes, l) indices into x, each node's points in arrival order.
      uniforms: (num_nodes, l / 2) the split's draws.
      sides: (num_nodes,) int, 0 for the swapped coreset, 1 for its complement.
      log_multiplier: 2 log(2 / delta') of the split's threshold.

    Returns:
      (num_nodes, l / 2) indices into x.
    """
    num_nodes, length = nodes.shape

    def batch(args):
        idx, u, side = args
        pts = x[idx]
        # One node at a time: a batched matrix product (vmap) compiles about 2.3x slower with
        # the loop emitters of `kmethods._jit.cpu_jit` (measured, 16 nodes of 1024 in d = 10).
        gram = jax.lax.map(lambda p: kernel_matrix(kernel, p, p), pts)
        halves = swap_partition(gram, split_signs(gram, u, log_multiplier))
        chosen = jnp.take_along_axis(halves, side[:, None, None], axis=1)[:, 0]
        return jnp.take_along_axis(idx, chosen, axis=1)

    # Batches of the largest divisor of num_nodes whose matrices fit in NODE_ELEMENTS.
    cap = max(1, NODE_ELEMENTS // (length * length))
    size = max(b for b in range(1, min(num_nodes, cap) + 1) if num_nodes % b == 0)
    batched = jax.tree.map(
        lambda a: a.reshape(num_nodes // size, size, *a.shape[1:]), (nodes, uniforms, sides)
    )
    return jax.lax.map(batch, batched).reshape(num_nodes, length // 2)


def swap_halves(x, kernel, halves):
    """`swap_partition` without the node matrices: kernel rows evaluated as needed.

    For nodes whose l x l matrix would not fit in NODE_ELEMENTS (Compress++'s top levels at
    large n): the same swap (child 0 the coreset, ties to the first point in [child 0, child 1]
    order), in O(l) memory per node.

    Args:
      halves: (nodes, 2, s) indices into x, each node's child 0 and child 1.

    Returns:
      (nodes, 2, s): the refined coreset and its complement, as indices into x.
    """
    s = halves.shape[2]
    scale = 2.0 / s

    def one(node):
        flat = node.reshape(2 * s)
        pts = x[flat]
        rank = jnp.arange(2 * s)
        mean_k = kernel_row_sums(kernel, pts, pts) / (2 * s)
        first = kernel_row_sums(kernel, pts, pts[:s])  # sum over child 0 of k(c, .)
        row = lambda i: kernel.gram(pts[i][None], pts)[0]
        stat = kernel.diag(pts) / s - 2.0 * mean_k + scale * first

        def step(carry, old):
            in_core, stat = carry
            stat = stat - scale * row(old)
            blocked = in_core & (rank != old)
            new = first_minimum(jnp.where(blocked, jnp.inf, stat), rank)
            stat = stat + scale * row(new)
            return (blocked | (rank == new), stat), new

        (in_core, _), core = jax.lax.scan(step, (rank < s, stat), jnp.arange(s))
        rest = jnp.nonzero(~in_core, size=s)[0]
        return jnp.stack([flat[core], flat[rest]])

    # Nodes in batches whose kernel slabs (about 2 s x 2 s each) stay under SLAB_ELEMENTS.
    batch = max(1, min(halves.shape[0], SLAB_ELEMENTS // (4 * s * s)))
    return jax.lax.map(one, halves, batch_size=batch)


def matrix_free_halving(kernel, x, nodes, uniforms, sides, log_multiplier):
    """`symmetrized_halving` in O(l) memory per node: KT-SPLIT's slab walk (`halve`), then
    `swap_halves`; the same arguments and result."""
    num_nodes, length = nodes.shape
    halves = halve(
        kernel,
        x,
        nodes.reshape(-1),
        length,
        uniforms.reshape(-1),
        log_multiplier,
        num_slots=num_nodes,
        block=slab_block(nodes.size),
        width=row_width(length),
    ).reshape(num_nodes, 2, length // 2)
    halves = swap_halves(x, kernel, halves)
    return jnp.take_along_axis(halves, sides[:, None, None], axis=1)[:, 0]
