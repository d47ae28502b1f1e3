"""`SteinKernel`: the Langevin Stein kernel of a base kernel, as a kernel of its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from kmethods import _checks
from kmethods._scores import scores_at
from kmethods.kernels import IMQ, Kernel, RadialKernel, check_kernel, imq_radial_derivatives

# Up to this dimension blocks of a radial base's Stein kernel are evaluated coordinate by
# coordinate (as `kmethods.pairwise.sqdist` does for squared distances).
_COORDINATEWISE_MAX_DIM = 16

ScoreFunction = Callable[[Float[Array, " d"]], Float[Array, " d"]]


def _concrete_exponent(base):
    """The exponent beta of an IMQ base as a Python float when it is concrete (the kernel is
    built outside a trace), else None. A static exponent lets the Stein kernel evaluate
    u^(-1/2) as one square root rather than a power (a logarithm and an exponential)."""
    if type(base) is not IMQ:
        return None
    try:
        return float(np.asarray(base.beta))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def _pairwise_terms(xa, sa, xb, sb):
    """(r^2, s_a . s_b, (s_b - s_a) . (x_a - x_b)) from coordinate lists (d arrays each, all
    broadcastable): one elementwise expression, which XLA fuses into one loop, with no
    matrix product, no (n, m, d) temporary and no cancellation (the differences are direct)."""
    r2 = ss = cross = None
    for xa_k, sa_k, xb_k, sb_k in zip(xa, sa, xb, sb, strict=True):
        diff = xa_k - xb_k
        terms = (diff * diff, sa_k * sb_k, (sb_k - sa_k) * diff)
        if r2 is None:
            r2, ss, cross = terms
        else:
            r2, ss, cross = r2 + terms[0], ss + terms[1], cross + terms[2]
    return r2, ss, cross


def _check_preconditioner(m):
    m = _checks.as_array(m, "preconditioner", "(d, d)")
    if not jnp.issubdtype(m.dtype, jnp.floating):
        m = m.astype(jnp.result_type(float))
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"`preconditioner` must be a square (d, d) matrix, got shape {m.shape}.")
    if _checks.is_concrete(m):
        a = np.asarray(m, np.float64)
        if not np.all(np.isfinite(a)):
            raise ValueError("`preconditioner` contains NaN or inf values.")
        if not np.allclose(a, a.T, rtol=1e-6, atol=1e-12 * np.abs(a).max()):
            raise ValueError("`preconditioner` must be symmetric.")
        if not np.linalg.eigvalsh(a).min() > 0:
            raise ValueError("`preconditioner` must be positive definite.")
    return m


class SteinKernel(Kernel):
    """The Langevin Stein kernel k_p of a base kernel k and a target p, as a kmethods kernel.

    k_p(x, y) = s(x).s(y) k(x, y) + s(x).grad_y k + s(y).grad_x k + tr(grad_x grad_y k),
    s = grad log p, has mean zero under p, so that the MMD of k_p between a (weighted) sample
    and p is the kernel Stein discrepancy: KSD^2(sum_i w_i delta_{x_i}) = w^T K_p w (Liu, Lee &
    Jordan, 2016; Gorham & Mackey, 2017).

    **Points are augmented.** k_p depends on x only through the pair (x, s(x)), so a
    `SteinKernel` acts on augmented points z = (x, s(x)) of R^{2d}, shape (n, 2d), made once
    by `kernel.augment(x)` (the only place the score is evaluated; with precomputed scores it
    concatenates them). On those points it is an ordinary positive-definite kernel, so it works
    wherever a kernel does, unchanged: `kmethods.pairwise.kernel_matvec(k, z, z, v)` (Gram
    products), `kmethods.thinning.mmd_to_sample(z, idx, k)`, `kmethods.kernel_thin(key, z, k)`
    and `kmethods.compresspp(key, z, k)`; indices into z are indices into x. Its `gram` splits
    each point into (x, s). For radial bases (`RadialKernel.radial_derivatives`: Gaussian,
    IMQ, Matern 1.5 / 2.5) in dimension d <= 16 a block is one elementwise expression built
    coordinate by coordinate, which XLA fuses into a single loop (IMQ's exponent, when
    concrete at construction, is static: u^(-1/2) is a square root, not a power); otherwise
    it calls `base.stein_gram` (matrix products for radial bases, automatic differentiation
    for others). One Gram block costs O(b m d) time and memory, with no (b, m, d) temporary
    for radial bases.

    **Preconditioner.** With a symmetric positive-definite M (d, d), the kernel is that of the
    preconditioned Langevin operator (T g)(x) = div(p M g)(x) / p(x) on the base kernel
    k_M(x, y) = k(L x, L y), L^T L = M^{-1} (Li, Dwivedi & Mackey, 2024, Section 2, as in
    goodpoints' PrecondSteinKernel):
      k_p(x, y) = s(x)^T M s(y) k_M + s(x)^T M grad_y k_M + grad_x k_M^T M s(y)
                  + tr(M grad_x grad_y k_M).
    It equals the plain Stein kernel of k at the whitened points L x with the whitened scores
    L^{-T} s(x) (the score of the pushed-forward target), which is how it is computed. For
    M = h^2 I it is h^2 times the Stein kernel of k(x / h, y / h) (Riabiz et al., 2022, eq. 8
    with Gamma = h^2 I): the same thinning and weights; a general M differs from Riabiz et
    al.'s unpreconditioned operator on k(Gamma^{-1/2} x, Gamma^{-1/2} y).

    Args:
      base: the base kernel (differentiable: Gaussian, IMQ, Matern 1.5 / 2.5, sums and
        scalings of them, or any kernel through autodiff).
      score: grad log p, a function of one point (e.g. `jax.grad(log_prob)`), or an (n, d)
        array of its values at the points to be augmented; None when the kernel only ever
        sees augmented points. Used by `augment` only.
      preconditioner: optional symmetric positive-definite (d, d) matrix M.

    References:
      Liu, Lee & Jordan, "A Kernelized Stein Discrepancy for Goodness-of-fit Tests", ICML 2016.
      Riabiz, Chen, Cockayne, Swietach, Niederer, Mackey & Oates, "Optimal thinning of MCMC
        output", JRSS-B 2022.
      Li, Dwivedi & Mackey, "Debiased Distribution Compression", ICML 2024.
    """

    base: Kernel
    preconditioner: Array | None
    score_arrays: Any
    score_static: Any = eqx.field(static=True)
    imq_exponent: float | None = eqx.field(static=True)

    def __init__(
        self,
        base: Kernel,
        score: ScoreFunction | Float[Array, "n d"] | None = None,
        *,
        preconditioner: Float[Array, "d d"] | None = None,
    ):
        check_kernel(base, "base")
        if isinstance(base, SteinKernel):
            raise TypeError("`base` is already a SteinKernel; pass its base kernel instead.")
        if score is not None and not callable(score):
            score = _checks.as_array(score, "score", "(n, d)")
            if score.ndim != 2:
                raise ValueError(
                    f"`score` must be a function or an (n, d) array of scores, got shape "
                    f"{score.shape}."
                )
        # A user function is static (hashed by identity, one compile per function), arrays
        # (precomputed scores, or those of an equinox module's bound method) are leaves: the
        # kernel passes through `jax.jit` like any other.
        self.score_arrays, self.score_static = eqx.partition(score, eqx.is_array)
        self.base = base
        self.preconditioner = (
            None if preconditioner is None else _check_preconditioner(preconditioner)
        )
        self.imq_exponent = _concrete_exponent(base)

    @property
    def score(self):
        """The score as given: a function, an (n, d) array, or None."""
        return eqx.combine(self.score_arrays, self.score_static)

    def augment(self, x: Float[Array, "n d"]) -> Float[Array, "n 2d"]:
        """The augmented points (x, s(x)), shape (n, 2d), on which this kernel acts.

        Raises a ValueError when the scores hold NaN or inf values (eagerly), or when their
        shape or the preconditioner's does not match x.
        """
        score = self.score
        if score is None:
            raise ValueError(
                "This SteinKernel has no `score`: build it as SteinKernel(base, score) to "
                "augment points."
            )
        x = _checks.as_points(x, "x", min_points=1)
        self.check_dimension(x.shape[1])
        x, s = scores_at(x, score)
        return jnp.concatenate([x, s], axis=1)

    def check_dimension(self, d: int) -> None:
        """Raises a ValueError unless the preconditioner (if any) is d x d."""
        m = self.preconditioner
        if m is not None and m.shape[0] != d:
            raise ValueError(
                f"`preconditioner` must be ({d}, {d}) for points of dimension {d}, got shape "
                f"{m.shape}."
            )

    def split(self, z):
        """(x, s) of augmented points z (..., 2d), whitened when there is a preconditioner."""
        if z.shape[-1] % 2:
            raise ValueError(
                f"A SteinKernel acts on augmented points (x, s(x)) of even dimension 2d, got "
                f"dimension {z.shape[-1]}; make them with `kernel.augment(x)`."
            )
        d = z.shape[-1] // 2
        self.check_dimension(d)
        x, s = z[..., :d], z[..., d:]
        if self.preconditioner is None:
            return x, s
        # M = C C^T: L = C^{-1} gives L^T L = M^{-1}; the points become C^{-1} x and the scores
        # C^T s (rows: x C^{-T} and s C).
        c = jnp.linalg.cholesky(self.preconditioner.astype(z.dtype))
        x = jax.scipy.linalg.solve_triangular(c, x.T, lower=True).T
        return x, s @ c

    def coordinatewise(self, d: int) -> bool:
        """Whether blocks are evaluated coordinate by coordinate (`_pairwise_terms`): radial
        bases (that keep `RadialKernel.stein_gram`) in dimension d <= 16. Otherwise
        `base.stein_gram` (matrix products, or autodiff for non-radial bases)."""
        return (
            isinstance(self.base, RadialKernel)
            and type(self.base).stein_gram is RadialKernel.stein_gram
            and d <= _COORDINATEWISE_MAX_DIM
        )

    def _radial_stein(self, r2, ss, cross, d):
        """k_p from the pairwise terms: g ss + (g'/r) cross - [(d - 1) g'/r + g''], elementwise."""
        if self.imq_exponent is None:
            g, g1_over_r, g2 = self.base.radial_derivatives(r2)
        else:
            base = self.base
            g, g1_over_r, g2 = imq_radial_derivatives(r2, base.c, self.imq_exponent, base.bandwidth)
        return g * ss + g1_over_r * cross - ((d - 1) * g1_over_r + g2)

    def columns(self, z):
        """The whitened points and scores of z (n, 2d) as two lists of d (n,) coordinate
        arrays: the layout of `column`, made once outside a loop."""
        a, sa = self.split(z)
        return [a[:, k] for k in range(a.shape[1])], [sa[:, k] for k in range(a.shape[1])]

    def column(self, point, columns):
        """[k_p(point, z_j)]_j, shape (n,), for one augmented point (2d,) and `columns(z)`:
        a Stein-thinning step's column, with the points' coordinates laid out once."""
        xb, sb = columns
        d = len(xb)
        a, sa = self.split(point[None])
        if not self.coordinatewise(d):
            return self.base.stein_gram(a, sa, jnp.stack(xb, 1), jnp.stack(sb, 1))[0]
        r2, ss, cross = _pairwise_terms(list(a[0]), list(sa[0]), xb, sb)
        return self._radial_stein(r2, ss, cross, d)

    def gram(self, x, y):
        a, sa = self.split(x)
        b, sb = self.split(y)
        d = a.shape[-1]
        if not self.coordinatewise(d):
            return self.base.stein_gram(a, sa, b, sb)
        r2, ss, cross = _pairwise_terms(
            [a[:, k, None] for k in range(d)],
            [sa[:, k, None] for k in range(d)],
            [b[None, :, k] for k in range(d)],
            [sb[None, :, k] for k in range(d)],
        )
        return self._radial_stein(r2, ss, cross, d)

    def __call__(self, x: Float[Array, " D"], y: Float[Array, " D"]) -> Float[Array, ""]:
        return self.gram(x[None], y[None])[0, 0]

    def diag(self, x):
        a, sa = self.split(x)
        d = a.shape[-1]
        if self.coordinatewise(d):
            zero = jnp.zeros(a.shape[:-1], a.dtype)
            ss = jnp.sum(sa * sa, axis=-1)
            return self._radial_stein(zero, ss, zero, d)
        return jax.vmap(lambda p, q: self.base.stein_gram(p[None], q[None], p[None], q[None]))(
            a, sa
        )[:, 0, 0]

    def stein_gram(self, x, sx, y, sy):
        raise TypeError(
            "A SteinKernel is already a Stein kernel: give its `base` to a KSD routine, or use "
            "this kernel itself on augmented points."
        )


def stein_problem(x, score, kernel, preconditioner=None):
    """Validates the (x, score, kernel) of a debiasing routine: returns the augmented points z
    (n, 2d) and a score-free `SteinKernel` on them. `kernel` is a base kernel, or a
    `SteinKernel` whose base and preconditioner are used (its score is ignored: `score` gives
    the scores)."""
    x = _checks.as_points(x, "x")
    check_kernel(kernel)
    if isinstance(kernel, SteinKernel):
        if preconditioner is not None:
            raise ValueError(
                "`preconditioner` is given twice: by the SteinKernel `kernel` and as an argument."
            )
        stein = SteinKernel(kernel.base, preconditioner=kernel.preconditioner)
    else:
        stein = SteinKernel(kernel, preconditioner=preconditioner)
    stein.check_dimension(x.shape[1])
    if score is None:
        raise TypeError("`score` must be a function or an (n, d) array of scores, got None.")
    x, s = scores_at(x, score)
    return jnp.concatenate([x, s], axis=1), stein
