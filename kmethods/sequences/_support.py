"""The signed measures mu_x of the Zanella-Stein kernel, and the generic ways to contract a
sequence kernel against them.

With mu_x = sum_y w_y (delta_y - delta_x) over the neighbours y of x, the Stein kernel is

  h(x, x') = <mu_x, k mu_x'> = c_x^T K(Z_x, Z_x') c_x',

over the support Z_x = [x, y_1, ..., y_N] with coefficients c_x = [-sum_y w_y, w_1, ..., w_N]
(`SteinSupport`, one row per sequence). Every `SequenceKernel` computes H v, H = [h(x_i, x_j)],
through its `stein_matvec` method; the generic route it takes by default is here,
`generic_stein_matvec`, in one of two ways: Gram blocks of all support points of a row block
against all columns, or, for kernels with a small finite feature map, h(x, x') =
<psi_x, psi_x'> with psi_x = sum_a c_a phi(z_a) one vector per sequence. Pairwise sums go through
`kmethods.pairwise` in row blocks: memory O(block * n * (N + 1)^2), never n x n kernel blocks of
all neighbours at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from kmethods.pairwise import default_block_size, gram_matvec, map_row_blocks

if TYPE_CHECKING:
    from kmethods.sequences._kernels import SequenceKernel

# Kernels whose explicit feature map has at most this many coordinates use it.
MAX_FEATURE_DIM = 8192


class SteinSupport(NamedTuple):
    """The measures mu_x of a batch of n sequences, each on m = N + 1 support points.

    Attributes:
      points: (n, m, W + 1) the support Z_x = [x, y_1, ..., y_N], zero-padded.
      lengths: (n, m) their lengths.
      coef: (n, m) the coefficients c_x = [-sum_y w_y, w_1, ..., w_N].
      num_states: S, the number of symbols (static).
      edited_tail: every neighbour of x keeps x[:l - edited_tail] unedited (None: no bound),
        from the neighbourhood (static).
    """

    points: Int[Array, "n m w1"]
    lengths: Int[Array, "n m"]
    coef: Float[Array, "n m"]
    num_states: int
    edited_tail: int | None

    @property
    def arrays(self):
        """(points, lengths, coef): the row-blocked arrays."""
        return self.points, self.lengths, self.coef


def generic_stein_matvec(
    kernel: SequenceKernel,
    support: SteinSupport,
    v: Float[Array, " n *p"],
    *,
    exclude_diagonal: bool = False,
    block_size: int | None = None,
) -> Float[Array, " n *p"]:
    """H v by a route that works for any kernel: through its explicit feature map when it has
    one of at most `MAX_FEATURE_DIM` coordinates, else through Gram blocks. Either route is one
    `gram_matvec` over row blocks; they differ in the block and its default number of rows."""
    dim = kernel.feature_dim(support.num_states, support.points.shape[-1])
    if dim is not None and dim <= MAX_FEATURE_DIM:
        block, columns, rows = _feature_blocks(kernel, support, dim)
    else:
        block, columns, rows = _gram_blocks(kernel, support)
    return gram_matvec(
        block, columns, v, exclude_diagonal=exclude_diagonal, block_size=block_size or rows
    )


def _gram_blocks(kernel, support):
    """Rows of H from Gram blocks `kernel.gram` of every support point of a row block against
    every support point of the batch."""
    n, m, w1 = support.points.shape
    columns = (support.points.reshape(n * m, w1), support.lengths.reshape(n * m))
    coef = support.coef

    def block(zb, lb, cb):
        b = zb.shape[0]
        k = kernel.gram((zb.reshape(b * m, w1), lb.reshape(b * m)), columns)
        k = k.astype(coef.dtype).reshape(b, m, n, m)
        return jnp.einsum("ia,iajb,jb->ij", cb, k, coef)

    return block, support.arrays, default_block_size(n, n * m * m * kernel.pair_memory(w1))


def _feature_blocks(kernel, support, dim):
    """Rows of H through the explicit feature map `kernel.features` (of `dim` coordinates):
    h(x, x') = <psi_x, psi_x'>, psi_x = sum_a c_a phi(z_a), one vector per sequence."""
    n, m, w1 = support.points.shape
    num_states = support.num_states

    def psi_rows(rows, zb, lb, cb):
        b = zb.shape[0]
        phi = kernel.features(zb.reshape(b * m, w1), lb.reshape(b * m), num_states)
        return jnp.einsum("ia,iad->id", cb, phi.reshape(b, m, dim).astype(cb.dtype))

    psi = map_row_blocks(psi_rows, *support.arrays, block_size=default_block_size(n, m * dim))
    return (lambda pb: pb @ psi.T), (psi,), default_block_size(n, n)
