"""Kernel collections of the aggregated tests: stacked families and the papers' bandwidth grids.

A collection of N kernels is held as a few *families*: runs of kernels of one type (one pytree
structure) whose numeric parameters are stacked along a leading axis. A jitted test then
vmaps over each family, so it compiles once per shape and family layout, whatever the
bandwidths, and the squared distances of a row block are computed once for all the bandwidths
of a family (vmap leaves the bandwidth-free part unbatched).

The default grids follow the reference implementations of the papers (each computed from at
most the first 500 points, as there):

- MMDAgg (Schrab et al., JMLR 2023, Section 5.2 and their `mmdagg` package): Laplace kernels
  in the l1 norm and Gaussian kernels in the l2 norm, each over `num_bandwidths` bandwidths in
  geometric progression from lambda_min / 2 to 2 lambda_max, where lambda_max is the largest
  distance between x[:500] and y[:500] (at least 0.3) and lambda_min the smallest (or, when
  it is below 0.1, the 5% quantile of the distances, at least 0.1).
- KSDAgg (Schrab, Guedj & Gretton, NeurIPS 2022, and their `ksdagg` package): IMQ kernels
  (1 + ||x - y||^2 / lambda^2)^(-1/2) over `num_bandwidths` bandwidths in geometric progression
  from 1 to max(2, largest distance within x[:500]), each divided by the dimension d. (The
  paper's experiments use 2^i times the median distance, i = 0, ..., 10: pass
  `[IMQ(bandwidth=2.0**i * h) for i in range(11)]`. Both grids start near or above the median
  distance, so neither sees a perturbation on a much smaller scale.)
- HSICAgg (Schrab, Kim, Guedj & Gretton, NeurIPS 2022, and their `agginc` package):
  Gaussian kernels at 2^i times the median distance within x[:500] (resp. y[:500]) for
  i = -2, ..., 2, every pair of an x-bandwidth and a y-bandwidth (25 pairs).

The references' Gaussian is exp(-||x - y||^2 / lambda^2); here it is
`Gaussian(lambda / sqrt(2))`, the same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kmethods._checks import check_bandwidth
from kmethods.kernels import IMQ, Gaussian, Kernel
from kmethods.pairwise import sqdist

__all__ = [
    "KernelCollection",
    "L1Laplace",
    "as_collection",
    "hsicagg_kernels",
    "ksdagg_kernels",
    "mmdagg_kernels",
]

# The references compute their bandwidth grids on at most this many points of each sample.
_MAX_SAMPLES = 500
# Up to this many coordinates, l1 distances are accumulated one coordinate at a time.
_COORDINATEWISE_MAX_DIM = 16


def l1dist(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, "n m"]:
    """l1 distances, shape (n, m), for x of shape (n, d) and y of shape (m, d)."""
    d = x.shape[-1]
    if d > _COORDINATEWISE_MAX_DIM:
        return jnp.sum(jnp.abs(x[:, None, :] - y[None, :, :]), axis=-1)
    out = jnp.abs(x[:, 0, None] - y[None, :, 0])
    for j in range(1, d):
        out = out + jnp.abs(x[:, j, None] - y[None, :, j])
    return out


class L1Laplace(Kernel):
    """Laplace kernel in the l1 norm, k(x, y) = exp(-||x - y||_1 / bandwidth), the Laplace
    kernel of MMDAgg (Schrab et al., 2023). `kmethods.Laplace` uses the l2 norm."""

    bandwidth: jax.Array | float = 1.0

    def __check_init__(self):
        check_bandwidth(self.bandwidth)

    def __call__(self, x: Float[Array, " d"], y: Float[Array, " d"]) -> Float[Array, ""]:
        return jnp.exp(-jnp.sum(jnp.abs(x - y)) / self.bandwidth)

    def gram(self, x, y):
        return jnp.exp(-l1dist(x, y) / self.bandwidth)


class KernelCollection(eqx.Module):
    """N kernels as families of stacked kernels (see the module docstring).

    Attributes:
      families: tuple of kernels whose array leaves have a leading axis, one entry per kernel
        of the family; kernel i of the collection is found by walking the families in order.
    """

    families: tuple

    @property
    def sizes(self) -> tuple[int, ...]:
        """The number of kernels in each family."""
        return tuple(int(jax.tree.leaves(f)[0].shape[0]) for f in self.families)

    def __len__(self) -> int:
        return sum(self.sizes)

    def unstack(self) -> list[Kernel]:
        """The N kernels, one by one (for inspection; the tests use the stacked form)."""
        out = []
        for family, size in zip(self.families, self.sizes, strict=True):
            out.extend(jax.tree.map(lambda leaf, i=i: leaf[i], family) for i in range(size))
        return out


def _stack(kernels, dtype):
    def leaf(*values):
        values = [jnp.asarray(v) for v in values]
        if all(jnp.issubdtype(v.dtype, jnp.number) for v in values):
            values = [v.astype(dtype) for v in values]
        return jnp.stack(values)

    return jax.tree.map(leaf, *kernels)


def as_collection(kernels, dtype, name: str = "kernels") -> KernelCollection:
    """A `KernelCollection` from a collection (its floating leaves cast to `dtype`) or a
    non-empty sequence of kernels (consecutive kernels of one type become one family)."""
    if isinstance(kernels, KernelCollection):
        cast = lambda v: v.astype(dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
        return _checked(jax.tree.map(lambda v: cast(jnp.asarray(v)), kernels), name)
    if isinstance(kernels, Kernel) or not isinstance(kernels, Sequence) or len(kernels) == 0:
        raise TypeError(
            f"`{name}` must be a non-empty sequence of kmethods kernels or a "
            f"KernelCollection, got {type(kernels).__name__}."
        )
    for i, kernel in enumerate(kernels):
        if not isinstance(kernel, Kernel):
            raise TypeError(
                f"`{name}[{i}]` must be a kmethods kernel (e.g. kmethods.Gaussian(1.0)), "
                f"got {type(kernel).__name__}."
            )
    groups = [[kernels[0]]]
    for kernel in kernels[1:]:
        if jax.tree.structure(kernel) == jax.tree.structure(groups[-1][0]):
            groups[-1].append(kernel)
        else:
            groups.append([kernel])
    return _checked(KernelCollection(tuple(_stack(group, dtype) for group in groups)), name)


def _checked(collection, name):
    """`collection`, after checking that every family stacks its kernels along one leading
    axis: a family needs an array parameter (its length is the family's size) and all its
    parameters of one length."""
    for i, family in enumerate(collection.families):
        kind = type(family).__name__
        shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(family)]
        if not shapes:
            raise TypeError(
                f"`{name}`: a {kind} kernel has no numeric parameter, and a collection stacks "
                "its kernels along their parameters; give it one, e.g. "
                "kmethods.kernels.ScaledKernel(kernel, 1.0)."
            )
        if any(len(shape) == 0 for shape in shapes) or len({s[0] for s in shapes}) != 1:
            raise ValueError(
                f"`{name}`: family {i} ({kind}) must stack its kernels along a leading axis "
                f"shared by all its parameters, got parameter shapes {shapes} (pass a list "
                "of kernels to have them stacked)."
            )
    return collection


def _geometric(low, high, num):
    ratio = (high / low) ** (1.0 / (num - 1))
    return low * ratio ** jnp.arange(num, dtype=low.dtype)


def _mmdagg_grid(distances, num):
    # Schrab et al. (2023), `compute_bandwidths` of their package: lambda_min / 2 to
    # 2 lambda_max in geometric progression.
    small = jnp.min(distances) < 0.1
    quantile = jnp.sort(distances)[math.floor(distances.shape[0] * 0.05)]
    low = jnp.where(small, jnp.maximum(quantile, 0.1), jnp.min(distances)) / 2.0
    high = jnp.maximum(jnp.max(distances), 0.3) * 2.0
    return _geometric(low, high, num)


@eqx.filter_jit
def _mmdagg_bandwidths(x, y, num):
    xs, ys = x[:_MAX_SAMPLES], y[:_MAX_SAMPLES]
    l1 = l1dist(xs, ys).ravel()
    l2 = jnp.sqrt(sqdist(xs, ys)).ravel()
    return _mmdagg_grid(l1, num), _mmdagg_grid(l2, num)


def mmdagg_kernels(
    x: Float[Array, "n d"], y: Float[Array, "m d"], num_bandwidths: int = 10
) -> KernelCollection:
    """MMDAgg's default collection (Schrab et al., JMLR 2023): `num_bandwidths` l1-Laplace
    kernels, then as many Gaussian kernels, over the grids of the module docstring."""
    l1, l2 = _mmdagg_bandwidths(x, y, num_bandwidths)
    return KernelCollection((L1Laplace(l1), Gaussian(l2 / math.sqrt(2.0))))


@eqx.filter_jit
def _ksdagg_bandwidths(x, num):
    xs = x[:_MAX_SAMPLES]
    largest = jnp.sqrt(jnp.max(sqdist(xs, xs)))
    one = jnp.ones((), x.dtype)
    return _geometric(one, jnp.maximum(largest, 2.0), num) / x.shape[1]


def ksdagg_kernels(x: Float[Array, "n d"], num_bandwidths: int = 10) -> KernelCollection:
    """KSDAgg's default collection (Schrab, Guedj & Gretton, NeurIPS 2022): IMQ kernels
    with beta = -1/2 over the grid of the module docstring."""
    bandwidths = _ksdagg_bandwidths(x, num_bandwidths)
    ones = jnp.ones_like(bandwidths)
    # Stacked through the pytree (IMQ's own checks read scalar parameters).
    stacked = eqx.tree_at(
        lambda k: (k.c, k.beta, k.bandwidth), IMQ(), (ones, -0.5 * ones, bandwidths)
    )
    return KernelCollection((stacked,))


def _median_positive_distance(x):
    xs = x[:_MAX_SAMPLES]
    r = jnp.sqrt(sqdist(xs, xs))
    upper = jnp.triu(jnp.ones(r.shape, bool), 1) & (r > 0)
    median = jnp.nanmedian(jnp.where(upper, r, jnp.nan))
    return jnp.where(jnp.isfinite(median) & (median > 0), median, jnp.ones_like(median))


@eqx.filter_jit
def _hsicagg_bandwidths(x, y, powers):
    return _median_positive_distance(x) * powers, _median_positive_distance(y) * powers


def hsicagg_kernels(
    x: Float[Array, "n dx"], y: Float[Array, "n dy"], exponents: Sequence[int] = (-2, -1, 0, 1, 2)
) -> tuple[KernelCollection, KernelCollection]:
    """HSICAgg's default collections (Schrab et al., NeurIPS 2022, `agginc`): Gaussian kernels
    at 2^i times the median distance of x, and of y, for i in `exponents` (the median over
    the distinct pairs of the first 500 points, 1 if they all coincide)."""
    powers = 2.0 ** jnp.asarray(exponents, x.dtype)
    bx, by = _hsicagg_bandwidths(x, y, powers)
    return (
        KernelCollection((Gaussian(bx / math.sqrt(2.0)),)),
        KernelCollection((Gaussian(by / math.sqrt(2.0)),)),
    )
