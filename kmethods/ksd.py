"""Kernel Stein discrepancy and the KSD goodness-of-fit test.

References:
  Liu, Lee & Jordan, "A Kernelized Stein Discrepancy for Goodness-of-fit Tests", ICML 2016
  (the U-statistic, eq. 14, and the multinomial bootstrap, Section 4).
  Chwialkowski, Strathmann & Gretton, "A Kernel Test of Goodness of Fit", ICML 2016
  (the V-statistic and the wild bootstrap for dependent samples, Section 2.2).
  Gorham & Mackey, "Measuring Sample Quality with Kernels", ICML 2017 (the IMQ kernel).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from kmethods import _checks, _sharding
from kmethods._scores import check_score_function, scores_at
from kmethods.calibration import TestResult, stein_bootstrap_columns, stein_bootstrap_result
from kmethods.kernels import Kernel, check_kernel
from kmethods.stein import langevin_stein_matvec

__all__ = ["ksd2", "ksd_test"]


def ksd2(
    x: Float[Array, "n d"],
    score: Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"],
    kernel: Kernel,
    *,
    unbiased: bool = True,
    weights: Float[Array, " n"] | None = None,
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Float[Scalar, ""]:
    """Squared kernel Stein discrepancy of the sample `x` from the density with score `score`.

    With the Langevin Stein kernel u_p (see `kmethods.stein`):
      unbiased (U-statistic, Liu et al. 2016): 1/(n(n-1)) sum_{i != j} u_p(x_i, x_j);
      biased (V-statistic, Chwialkowski et al. 2016): 1/n^2 sum_{i, j} u_p(x_i, x_j).

    Args:
      x: (n, d) sample.
      score: grad log p, either a function on one point (e.g. `jax.grad(log_prob)`) or an
        (n, d) array of its values at x. p need not be normalised.
      kernel: base kernel, differentiable (Gaussian, IMQ, Matern 1.5/2.5, ...).
      unbiased: U-statistic (default) or V-statistic.
      weights: optional (n,) nonnegative weights w of the points, normalised to sum to one
        (e.g. `kmethods.debias.debias_weights`, or multiplicities). The V-statistic is then
        w^T U w, the KSD^2 of the weighted sample sum_i w_i delta_{x_i} exactly (Li, Dwivedi &
        Mackey, 2024): use `unbiased=False` for the KSD of a weighting. The unbiased form is
        sum_{i != j} w_i w_j u_p(x_i, x_j) / (1 - sum_i w_i^2), the U-statistic for uniform
        weights, and unbiased for KSD^2(q) when x is i.i.d. from q and w is fixed in advance
        (not for weights fitted to x); it needs two points of positive weight.
      block_size: rows held at once (memory O(block_size * n)).
      mesh: a `jax.sharding.Mesh`, or None (one device): the rows of the Stein kernel
        matrix are split over all the mesh's axes, each of its p devices holding about n/p
        rows and a p-th of each block (memory O(block_size * n / p) per device), and the
        partial sums are added across devices. Equal to one device up to float rounding.
        Works with several processes (`jax.distributed`) when each passes the same inputs.

    Returns:
      A scalar, float32 for half-precision (float16, bfloat16) input, which is computed in float32,
      else the input's dtype; NaN if x or the scores hold NaN or inf values that `jit` let through
      (eagerly, a score function returning them raises). Differentiable with respect to x (through
      the scores too, when `score` is a function) and the kernel's parameters.
    """
    x = _checks.as_points(x, "x")
    check_kernel(kernel)
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    mesh = _sharding.check_mesh(mesh)
    weights = _ksd_weights(weights, x, unbiased)
    if callable(score):
        check_score_function(x, score)
        x, weights, kernel = _sharding.replicate((x, weights, _checks.as_traced(kernel)), mesh)
        value = _ksd2_with_function(x, kernel, score, unbiased, block_size, mesh, weights)
        if _checks.is_concrete(value) and not bool(jnp.isfinite(value)):
            # Diagnosed only on this (rare) path, so the common one evaluates the score once
            # and stays differentiable through it; raises as the array path does.
            scores_at(x, score)
        return value
    x, scores = scores_at(x, score)
    x, scores, weights, kernel = _sharding.replicate((x, scores, weights, kernel), mesh)
    return _ksd2(
        x, scores, kernel, unbiased=unbiased, block_size=block_size, mesh=mesh, weights=weights
    )


def _ksd_weights(weights, x, unbiased):
    """`weights` of ksd2 checked and normalised to sum to one (None stays None)."""
    if weights is None:
        return None
    w = _checks.point_weights(weights, x.shape[0], x.dtype, simplex=False)
    if _checks.is_concrete(w) and unbiased and int(jnp.sum(w > 0)) < 2:
        raise ValueError(
            "The unbiased KSD with `weights` needs at least two points of positive weight; "
            "use `unbiased=False`."
        )
    return w / jnp.sum(w)


@partial(jax.jit, static_argnames=("unbiased", "block_size", "mesh"))
def _ksd2(x, scores, kernel, *, unbiased, block_size, mesh=None, weights=None):
    if weights is not None:
        u_w = langevin_stein_matvec(
            kernel, x, scores, weights, exclude_diagonal=unbiased, block_size=block_size, mesh=mesh
        )
        value = jnp.dot(weights, u_w)
        value = value / (1.0 - jnp.sum(weights**2)) if unbiased else value
        return _checks.nan_unless_finite(value, x, scores, weights)
    ones = jnp.ones(x.shape[0], x.dtype)
    n = float(x.shape[0])
    u_rows = langevin_stein_matvec(
        kernel, x, scores, ones, exclude_diagonal=unbiased, block_size=block_size, mesh=mesh
    )
    value = jnp.sum(u_rows) / (n * (n - 1) if unbiased else n**2)
    return _checks.nan_unless_finite(value, x, scores)


@eqx.filter_jit
def _ksd2_with_function(x, kernel, score, unbiased, block_size, mesh, weights=None):
    scores = jax.vmap(score)(x)
    return _ksd2(
        x, scores, kernel, unbiased=unbiased, block_size=block_size, mesh=mesh, weights=weights
    )


def ksd_test(
    key: PRNGKeyArray,
    x: Float[Array, "n d"],
    score: Callable[[Float[Array, " d"]], Float[Array, " d"]] | Float[Array, "n d"],
    kernel: Kernel,
    *,
    num_bootstrap: int = 1000,
    alpha: float = 0.05,
    bootstrap: str = "multinomial",
    flip_probability: float = 0.5,
    block_size: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> TestResult:
    """Kernel Stein discrepancy goodness-of-fit test of H0: x ~ p, knowing only grad log p.

    `bootstrap="multinomial"` (Liu, Lee & Jordan 2016): the statistic is the U-statistic
    `ksd2(x, ...)`; each draw is S* = sum_{i != j} (w_i - 1/n)(w_j - 1/n) u_p(x_i, x_j) with
    n w ~ Multinomial(n; 1/n, ..., 1/n). For i.i.d. samples.

    `bootstrap="wild"` (Chwialkowski, Strathmann & Gretton 2016): the statistic is the
    V-statistic 1/n^2 sum_ij u_p(x_i, x_j); each draw is 1/n^2 sum_ij W_i W_j u_p(x_i, x_j)
    with W the sign process that flips with probability `flip_probability` (1/2: i.i.d.
    Rademacher signs, for i.i.d. samples; smaller for dependent samples such as MCMC output).

    All draws are one blocked product U [v_1 ... v_B]; no n x n matrix is stored.

    Args:
      key: PRNG key.
      x: (n, d). score: function or (n, d) array, as in `ksd2`. kernel: base kernel.
      num_bootstrap: B.
      alpha: level.
      bootstrap: "multinomial" or "wild".
      flip_probability: wild bootstrap only, in (0, 1).
      block_size: rows held at once.
      mesh: a `jax.sharding.Mesh`, or None (one device): the rows of the blocked product are
        split over all its axes, as in `ksd2` (the B bootstrap columns are copied to every
        device). The draws are made as on one device, so the same key gives the same
        bootstrap; statistics equal one device's up to float rounding.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`, float32 for half-precision (float16,
      bfloat16) input, which is computed in float32, else the input's dtype. A non-finite statistic
      gives p = NaN and reject = False.
    """
    _checks.choice(bootstrap, "bootstrap", ("multinomial", "wild"))
    x = _checks.as_points(x, "x")
    check_kernel(kernel)
    x, scores = scores_at(x, score)
    num_bootstrap = _checks.positive_int(num_bootstrap, "num_bootstrap")
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    flip_probability = _checks.probability(flip_probability, "flip_probability", traced_ok=True)
    block_size = _checks.block_size(block_size)
    mesh = _sharding.check_mesh(mesh)
    key, x, scores, kernel = _sharding.replicate((key, x, scores, kernel), mesh)
    return _ksd_bootstrap_test(
        key,
        x,
        scores,
        kernel,
        alpha,
        flip_probability,
        num_bootstrap=num_bootstrap,
        wild=bootstrap == "wild",
        block_size=block_size,
        mesh=mesh,
    )


@partial(jax.jit, static_argnames=("num_bootstrap", "wild", "block_size", "mesh"))
def _ksd_bootstrap_test(
    key, x, scores, kernel, alpha, flip_probability, *, num_bootstrap, wild, block_size, mesh=None
):
    columns = stein_bootstrap_columns(
        key, x.shape[0], num_bootstrap, wild=wild, flip_probability=flip_probability, dtype=x.dtype
    )
    u_columns = langevin_stein_matvec(
        kernel, x, scores, columns, exclude_diagonal=not wild, block_size=block_size, mesh=mesh
    )
    return stein_bootstrap_result(columns, u_columns, wild=wild, alpha=alpha)
