"""Kernels on variable-length sequences: the base class with its Stein-matvec protocol, sums
and positive multiples, the exponentiated Hamming kernel and a Gaussian kernel on lengths.

The substring kernels (contiguous and gap-weighted) are in `_substrings.py`.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from kmethods import _checks
from kmethods._kernel_sums import KernelSum
from kmethods.pairwise import default_block_size, gram_matvec
from kmethods.sequences._misc import float_dtype
from kmethods.sequences._support import SteinSupport, generic_stein_matvec

Point = tuple[Int[Array, " w"], Int[Array, ""]]
Batch = tuple[Int[Array, "m w"], Int[Array, " m"]]


class SequenceKernel(eqx.Module):
    """Base class: a kernel on variable-length sequences, k(x, y) on single points.

    A point is a pair `(seq, length)`: an integer array (W,) and its length; positions >=
    length are ignored. `gram(x, y)` takes batches `(seqs (m, W), lengths (m,))`. A kernel with
    a finite explicit feature map also defines `feature_dim` and `features`. `stein_matvec` is
    how the Zanella-Stein kernel of this kernel multiplies a vector: by default through the
    feature map when it is small, else through Gram blocks; a kernel with a faster route for
    the Stein block overrides it.
    """

    def __call__(self, x: Point, y: Point) -> Float[Array, ""]:
        raise NotImplementedError

    def gram(self, x: Batch, y: Batch) -> Float[Array, "m1 m2"]:
        """The (m1, m2) block [k(x_i, y_j)] for batches x = (seqs, lengths), y likewise."""
        (xs, xl), (ys, yl) = x, y
        return jax.vmap(lambda a, la: jax.vmap(lambda b, lb: self((a, la), (b, lb)))(ys, yl))(
            xs, xl
        )

    def feature_dim(self, num_states: int, width: int) -> int | None:
        """The dimension of an explicit feature map for sequences of padded width `width`, or
        None when there is none."""
        return None

    def features(
        self, seqs: Int[Array, "m w"], lengths: Int[Array, " m"], num_states: int
    ) -> Float[Array, "m d"]:
        """phi(x) of shape (m, feature_dim) with k(x, y) = <phi(x), phi(y)>."""
        raise NotImplementedError

    def pair_memory(self, width: int) -> int:
        """Working memory (array elements) of one pairwise evaluation on sequences of padded
        width `width`; sizes the row blocks of the Stein matvec."""
        return 1

    def stein_matvec(
        self,
        support: SteinSupport,
        v: Float[Array, " n *p"],
        *,
        exclude_diagonal: bool = False,
        block_size: int | None = None,
    ) -> Float[Array, " n *p"]:
        """H v for the Stein kernel matrix H = [<mu_i, k mu_j>] of the measures in `support`.

        Args:
          support: the measures mu_x of the batch (`SteinSupport`).
          v: (n,) or (n, p).
          exclude_diagonal: treat H's diagonal as zero.
          block_size: rows of H held at once (None: about 2^21 elements per block).
        """
        return generic_stein_matvec(
            self, support, v, exclude_diagonal=exclude_diagonal, block_size=block_size
        )

    def __add__(self, other):
        if not isinstance(other, SequenceKernel):
            return NotImplemented
        mine = self.kernels if isinstance(self, SumSequenceKernel) else (self,)
        theirs = other.kernels if isinstance(other, SumSequenceKernel) else (other,)
        return SumSequenceKernel((*mine, *theirs))

    def __mul__(self, weight):
        if isinstance(weight, SequenceKernel):
            raise TypeError("Products of sequence kernels are not supported; use a sum.")
        return ScaledSequenceKernel(self, weight)

    __rmul__ = __mul__


def check_sequence_kernel(kernel) -> None:
    """Raises a TypeError unless `kernel` is a `SequenceKernel` instance."""
    if not isinstance(kernel, SequenceKernel):
        raise TypeError(
            "`kernel` must be a sequence kernel (e.g. kmethods.sequences.HammingKernel()), "
            f"got {type(kernel).__name__}."
        )


class SumSequenceKernel(KernelSum, SequenceKernel):
    """k(x, y) = sum_i k_i(x, y) (also written `k1 + k2`); the Stein kernel is the sum of the
    components' Stein kernels (h is linear in k), each computed by its own fastest route."""

    component: ClassVar[type] = SequenceKernel
    component_name: ClassVar[str] = "sequence kernels"

    def stein_matvec(self, support, v, *, exclude_diagonal=False, block_size=None):
        parts = [
            k.stein_matvec(support, v, exclude_diagonal=exclude_diagonal, block_size=block_size)
            for k in self.kernels
        ]
        return sum(parts[1:], parts[0])


class ScaledSequenceKernel(SequenceKernel):
    """k(x, y) = weight * base(x, y), weight > 0 (also written `weight * base`)."""

    base: SequenceKernel
    weight: Float[Array, ""] | float = 1.0

    def __check_init__(self):
        if not isinstance(self.base, SequenceKernel):
            raise TypeError(f"`base` must be a sequence kernel, got {type(self.base).__name__}.")
        if isinstance(self.weight, (str, bytes)) or self.weight is None:
            raise TypeError(f"`weight` must be a positive number, got {self.weight!r}.")
        _checks.check_positive(self.weight, "weight")

    def __call__(self, x: Point, y: Point) -> Float[Array, ""]:
        return self.weight * self.base(x, y)

    def gram(self, x, y):
        return self.weight * self.base.gram(x, y)

    def stein_matvec(self, support, v, *, exclude_diagonal=False, block_size=None):
        inner = self.base.stein_matvec(
            support, v, exclude_diagonal=exclude_diagonal, block_size=block_size
        )
        return jnp.asarray(self.weight).astype(inner.dtype) * inner


class HammingKernel(SequenceKernel):
    """Exponentiated Hamming kernel on sequences of equal length (Baum et al. 2023).

    k(x, y) = exp(-d_H(x, y) / lengthscale) if |x| = |y|, and 0 across different lengths, with
    d_H the number of positions where x and y differ. `lengthscale=None` (the default) divides by
    the common length max(|x|, 1), as the authors' code does, so that k = exp(-fraction of
    mismatches).
    """

    lengthscale: Float[Array, ""] | float | None = None

    def __check_init__(self):
        if self.lengthscale is not None:
            if isinstance(self.lengthscale, (str, bytes)):
                raise TypeError(
                    f"`lengthscale` must be a positive number, got {self.lengthscale!r}."
                )
            _checks.check_positive(self.lengthscale, "lengthscale")

    def _value(self, mismatches, length, same):
        dtype = float_dtype()
        if self.lengthscale is None:
            scale = jnp.maximum(length, 1).astype(dtype)
        else:
            scale = jnp.asarray(self.lengthscale).astype(dtype)
        return jnp.where(same, jnp.exp(-mismatches.astype(dtype) / scale), 0.0)

    def __call__(self, x: Point, y: Point) -> Float[Array, ""]:
        (a, la), (b, lb) = x, y
        w = min(a.shape[0], b.shape[0])
        t = jnp.arange(w, dtype=jnp.int32)
        mism = jnp.sum((a[:w] != b[:w]) & (t < la), dtype=jnp.int32)
        return self._value(mism, la, la == lb)

    def gram(self, x, y):
        (xs, xl), (ys, yl) = x, y
        w = min(xs.shape[1], ys.shape[1])
        # One fused pass over positions (no (m1, m2, W) temporary), as pairwise.sqdist does.
        mism = jnp.zeros((xs.shape[0], ys.shape[0]), jnp.int32)
        for t in range(w):
            differ = (xs[:, t, None] != ys[None, :, t]) & (t < xl)[:, None]
            mism = mism + differ.astype(jnp.int32)
        same = xl[:, None] == yl[None, :]
        return self._value(mism, jnp.broadcast_to(xl[:, None], same.shape), same)

    def stein_matvec(self, support, v, *, exclude_diagonal=False, block_size=None):
        """With a neighbourhood that edits only the last J positions (`support.edited_tail`),
        only J + 1 trailing positions are compared per pair of support points; otherwise the
        generic route."""
        tail = support.edited_tail
        n, m, w1 = support.points.shape
        if tail is None or tail + 1 >= w1:
            return super().stein_matvec(
                support, v, exclude_diagonal=exclude_diagonal, block_size=block_size
            )
        return gram_matvec(
            lambda zb, lb, cb: self._stein_block(zb, lb, cb, support, tail + 1),
            support.arrays,
            v,
            exclude_diagonal=exclude_diagonal,
            block_size=block_size or default_block_size(n, n * m * m),
        )

    def _stein_block(self, zb, lb, cb, support, tail):
        """Rows of H when every neighbour keeps x[:l - tail + 1] unedited.

        Two support points of equal length L, one of x_i and one of x_j, agree with x_i and x_j
        before split = max(min(l_i, l_j) - tail + 1, 0) and differ only in [split, L), at most
        `tail` positions. So d_H = (mismatches of x_i and x_j before split) + (mismatches of
        the short tails), which costs O(tail) per pair of support points instead of O(W).
        """
        z, lz, c = support.arrays
        b, m, w1 = zb.shape
        n = z.shape[0]
        differ = (zb[:, 0][:, None, :] != z[:, 0][None, :, :]).astype(jnp.int32)  # (b, n, W1)
        prefix_counts = jnp.concatenate(
            [jnp.zeros((b, n, 1), jnp.int32), jnp.cumsum(differ, axis=-1, dtype=jnp.int32)],
            axis=-1,
        )
        split = jnp.maximum(jnp.minimum(lb[:, 0][:, None], lz[:, 0][None, :]) - tail + 1, 0)
        prefix = jnp.take_along_axis(prefix_counts, split[:, :, None], axis=-1)[:, :, 0]
        pos = split[:, :, None] + jnp.arange(tail, dtype=jnp.int32)[None, None, :]  # (b, n, T)
        inside = (pos < w1)[:, :, None, None, :]
        pos = jnp.minimum(pos, w1 - 1)[:, :, None, :]
        rows = zb[jnp.arange(b)[:, None, None, None], jnp.arange(m)[None, None, :, None], pos]
        cols = z[jnp.arange(n)[None, :, None, None], jnp.arange(m)[None, None, :, None], pos]
        # Padding is zero in every support point, so positions past L never count.
        tails = (rows[:, :, :, None, :] != cols[:, :, None, :, :]) & inside
        mismatches = prefix[:, :, None, None] + jnp.sum(tails, axis=-1, dtype=jnp.int32)
        same = lb[:, None, :, None] == lz[None, :, None, :]  # (b, n, m, m)
        length = jnp.broadcast_to(lb[:, None, :, None], same.shape)
        k = self._value(mismatches, length, same).astype(c.dtype)
        return jnp.einsum("ia,ijab,jb->ij", cb, k, c)


class LengthKernel(SequenceKernel):
    """Gaussian kernel on the lengths alone, k(x, y) = exp(-(|x| - |y|)^2 / (2 bandwidth^2)).

    Not one of the paper's kernels: the ZS operator sees a change of the length distribution
    only through the insertion and deletion weights, and a kernel that compares contents
    (Hamming, substrings) dilutes that signal; added to one of them (`k1 + k2`) it gives a
    test that sees both.
    """

    bandwidth: Float[Array, ""] | float = 2.0

    def __check_init__(self):
        if isinstance(self.bandwidth, (str, bytes)) or self.bandwidth is None:
            raise TypeError(f"`bandwidth` must be a positive number, got {self.bandwidth!r}.")
        _checks.check_positive(self.bandwidth, "bandwidth")

    def _profile(self, d):
        dtype = float_dtype()
        d = d.astype(dtype)
        return jnp.exp(-(d * d) / (2.0 * jnp.asarray(self.bandwidth).astype(dtype) ** 2))

    def __call__(self, x: Point, y: Point) -> Float[Array, ""]:
        return self._profile(x[1] - y[1])

    def gram(self, x, y):
        return self._profile(x[1][:, None] - y[1][None, :])

    def feature_dim(self, num_states, width):
        return width + 1

    def features(self, seqs, lengths, num_states):
        # Lengths take width + 1 values: phi(l) = row l of a square root of the (width + 1)^2
        # Gram matrix of the lengths (symmetric eigendecomposition, negative rounding clipped).
        values = jnp.arange(seqs.shape[1] + 1, dtype=jnp.int32)
        gram = self._profile(values[:, None] - values[None, :])
        eigval, eigvec = jnp.linalg.eigh(gram)
        root = eigvec * jnp.sqrt(jnp.maximum(eigval, 0.0))[None, :]
        return root[lengths]
