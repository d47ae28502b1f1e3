"""`pksd_test`: the spKSD / ospKSD goodness-of-fit test (exported from `kmethods`)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from kmethods import _checks
from kmethods.calibration import (
    TestResult,
    resampled_weights,
    stein_bootstrap_result,
    u_statistic_columns,
)
from kmethods.kernels import Kernel, check_kernel
from kmethods.pksd._kernel import kernel_stack, scores_of, summed_stein_matvec
from kmethods.pksd._modes import Modes, default_starts, find_modes_core
from kmethods.pksd._perturb import (
    PERTURB_MESSAGE,
    check_transition_args,
    perturb_all,
    run_chains,
)
from kmethods.pksd._transitions import Transition
from kmethods.pksd._uniforms import uniform_index, uniform_pieces
from kmethods.pksd._validate import check_log_prob_values, check_positive_scalar, check_thetas
from kmethods.stein import langevin_stein_matvec

# The authors' grid of jump scales, linspace(0.5, 1.5, 21).
DEFAULT_THETAS = tuple(float(t) for t in np.linspace(0.5, 1.5, 21))
# Default row blocks of the Stein matrices: about 2^18 entries (1 MiB in float32). Blocks of
# kmethods.pairwise's default size (2^21 entries), summed over the perturbed samples in a scan,
# ran ~6x slower on a CPU (n = 1000, 22 samples) than blocks that stay in cache.
_BLOCK_ENTRIES = 2**18

_PROBLEMS = {
    1: "`x` or `log_prob` at a point of `x` is not finite.",
    2: PERTURB_MESSAGE,
    3: "the gradient of `log_prob` (the score) is not finite at a point of the sample or of a "
    "perturbed sample.",
}


def pksd_test(
    key: jax.Array,
    x: Float[ArrayLike, "n d"],
    log_prob: Callable[[Float[Array, " d"]], Float[Array, ""]],
    kernel: Kernel | None = None,
    *,
    method: str = "spksd",
    transition: str | Transition = "mh_jump",
    pair: str = "uniform",
    thetas: Float[ArrayLike, " L"] = DEFAULT_THETAS,
    num_steps: int = 10,
    num_bootstrap: int = 800,
    alpha: float | Float[Array, ""] = 0.05,
    modes: Modes | None = None,
    start_points: Float[ArrayLike, "M d"] | None = None,
    num_starts: int = 40,
    start_spread: float = 3.0,
    mode_threshold: float = 1.0,
    max_iterations: int = 100,
    block_size: int | None = None,
) -> TestResult:
    """Perturbed KSD goodness-of-fit test of H0: x ~ p (Liu, Duncan & Gandy, 2023).

    The sample is moved by T = `num_steps` steps of a p-invariant Markov kernel (each point
    independently), which leaves it distributed as p under H0 but spreads a sample that has
    the wrong mode weights over the modes, where the KSD can see it; then a multinomial
    bootstrap KSD test runs on the moved sample (`kmethods.pksd` docstring).

    `method="spksd"` (default; no sample split, and it needs no choice of theta): the statistic
    is sum_{l=0}^{L} KSD_u^2(x^l) over the sample x^0 = x and its perturbations x^l at each of
    the L values in `thetas`; the bootstrap reweights the summed Stein kernel. `"ospksd"`: the
    first n // 2 points choose the modes and the theta that maximises
    (KSD_u^2(x) + KSD_u^2(K_theta^T x)) / sigma-hat on them (the authors' criterion, a proxy
    for power), and the statistic is KSD_u^2(x') + KSD_u^2(K_theta^T x') on the other points x'.

    With a transition that needs modes (mh_jump), the modes come, unless `modes` is given, from
    BFGS started at `start_points` or else at `num_starts` points: half drawn from the sample,
    half uniform on its bounding box scaled by `start_spread` about the centre (a mode the
    sample misses can only be found from outside it; the authors start from uniform points on
    [-10, 10]^d).

    Kernel convention: with `kernel=None` (default) each sample x^l gets the IMQ kernel
    k(x, y) = (1 + ||x - y||^2 / h_l^2)^(-1/2) with h_l the median distance between its points
    (on at most 256 of them, evenly spaced in the sample's order), as the authors' code (the
    median heuristic recomputed on each sample). A given `kernel` is used as is, for every
    sample, so `kmethods.IMQ(bandwidth=kmethods.median_bandwidth(x))` fixes one bandwidth.

    Defaults follow the authors' experiments: thetas = linspace(0.5, 1.5, 21), T = 10 (their
    code applies T - 1 = 9 transitions for T = 10; here T means transitions), 800 bootstrap
    draws, merge threshold 1.

    Args:
      key: PRNG key.
      x: (n, d) sample, n >= 2 (n >= 4 for ospKSD).
      log_prob: unnormalised log density of p on one point of shape (d,), returning a scalar;
        the scores are its gradients. A plain function is static under `jit`: the compiled
        test is cached per function object, so pass the same function (not a new lambda) to
        reuse it. A bound method of an `equinox.Module` is a pytree whose arrays are traced,
        so new parameter values reuse the compilation.
      kernel: base kernel, or None for the IMQ kernel with median bandwidth (above).
      method: "spksd" or "ospksd".
      transition: "mh_jump" (MH with the mode-jumping proposal), "mala" (thetas are then step
        sizes), or a `kmethods.pksd.Transition` such as `kmethods.pksd.mh_jump(pair=...)`.
      pair: "uniform" or "nearest": how "mh_jump" picks the pair of modes.
      thetas: (L,) positive jump scales (or MALA step sizes).
      num_steps: T, transitions per perturbation.
      num_bootstrap: multinomial bootstrap draws B.
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      modes: precomputed `Modes` (e.g. from `find_modes`, shared by many replicates); skips BFGS.
      start_points: (M, d) BFGS starts; default as above.
      num_starts: M when `start_points` is None.
      start_spread: scale of the box of uniform starts, relative to the sample's bounding box.
      mode_threshold: squared Mahalanobis radius for merging modes (`find_modes`).
      max_iterations: BFGS iterations per start.
      block_size: rows of each Stein matrix held at once (memory O(block_size * n)); default
        about 2^18 / n rows, which stay in a CPU's cache.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`: the statistic is the sum of the
      KSD U-statistics above, null_samples its B bootstrap draws; of x's dtype (float32 for
      float16 / bfloat16 input, which is computed in float32, as are log p and the scores
      whatever dtype `log_prob` returns). Everything composes with `jax.vmap` over keys and
      samples (a power study is one vmap). It rejects only when the statistic and p-value are
      finite. Eagerly, a `log_prob` that is not finite at a point of `x`, NaN or +inf at a
      point the perturbation proposes, or with a non-finite gradient raises a ValueError
      naming it; under `jit`/`vmap` (where those checks cannot run) such values, and NaN
      data, give a NaN statistic and p-value and no rejection.
    """
    _checks.choice(method, "method", ("spksd", "ospksd"))
    min_points = 4 if method == "ospksd" else 2
    x, modes, transition = check_transition_args(
        x, log_prob, modes, transition, pair, min_points=min_points, modes_optional=True
    )
    if kernel is not None:
        check_kernel(kernel)
        kernel = _traced_scalars(kernel)
    thetas = check_thetas(thetas, x.dtype)
    num_steps = _checks.positive_int(num_steps, "num_steps")
    num_bootstrap = _checks.positive_int(num_bootstrap, "num_bootstrap")
    alpha = jnp.asarray(_checks.probability(alpha, "alpha", traced_ok=True))
    num_starts = _checks.positive_int(num_starts, "num_starts")
    max_iterations = _checks.positive_int(max_iterations, "max_iterations")
    check_positive_scalar(start_spread, "start_spread")
    check_positive_scalar(mode_threshold, "mode_threshold")
    if block_size is not None:
        block_size = _checks.positive_int(block_size, "block_size")
    if start_points is not None:
        start_points = _checks.as_points(start_points, "start_points", min_points=1)
        _checks.same_dimension(x, start_points, "x", "start_points")
        start_points = start_points.astype(x.dtype)
    check_log_prob_values(log_prob, x)
    result, problem = pksd_core(
        key,
        x,
        kernel,
        thetas,
        alpha,
        modes=modes,
        start_points=start_points,
        start_spread=jnp.asarray(start_spread, x.dtype),
        mode_threshold=jnp.asarray(mode_threshold, x.dtype),
        log_prob=log_prob,
        transition=transition,
        split=method == "ospksd",
        num_steps=num_steps,
        num_bootstrap=num_bootstrap,
        num_starts=num_starts,
        max_iterations=max_iterations,
        block_size=block_size,
    )
    if _checks.is_concrete(problem) and int(problem) != 0:
        raise ValueError(_PROBLEMS[int(problem)])
    return result


def _traced_scalars(tree):
    """Python numbers in a kernel become arrays, so that `filter_jit` traces them (as `jax.jit`
    does) instead of compiling once per bandwidth."""
    scalar = lambda a: isinstance(a, (bool, int, float, complex))
    return jax.tree.map(lambda a: jnp.asarray(a) if scalar(a) else a, tree)


@eqx.filter_jit
def pksd_core(
    key,
    x,
    kernel,
    thetas,
    alpha,
    *,
    modes,
    start_points,
    start_spread,
    mode_threshold,
    log_prob,
    transition,
    split,
    num_steps,
    num_bootstrap,
    num_starts,
    max_iterations,
    block_size,
):
    """`pksd_test` on checked input; `split` is ospKSD. Returns the result and a problem code
    (0 none, 1 non-finite x or log p(x), 2 garbage from log_prob along the chains, 3 a
    non-finite score) for the eager error."""
    if block_size is None:
        block_size = max(1, min(x.shape[0], _BLOCK_ENTRIES // x.shape[0]))
    num_thetas, n = thetas.shape[0], x.shape[0]
    # All of x, the half that fits theta included: NaN data under jit, or a log p that is not
    # finite at the sample, void the test.
    x_ok = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(jax.vmap(log_prob)(x)))
    # ospKSD: theta and the modes come from the first half only, the test from the second.
    fit, x = (x[: n // 2], x[n // 2 :]) if split else (x, x)
    # Every random number of the test in one draw: each random call site under `vmap` added
    # seconds of compilation on a CPU.
    k = transition.uniforms_per_step(x.shape[1])
    shapes = (
        (num_starts, fit.shape[1]),
        (num_thetas + int(split), num_steps, x.shape[0], k),
        (num_bootstrap, x.shape[0]),
    )
    u_starts, u, u_boot = uniform_pieces(key, x.dtype, *shapes)
    if transition.needs_modes and modes is None:
        if start_points is None:
            start_points = default_starts(u_starts, fit, start_spread)
        modes = find_modes_core(start_points, mode_threshold, log_prob, max_iterations)
    params = transition.prepare(modes, x.dtype)
    if split:
        u_fit = u[:num_thetas, :, : fit.shape[0]]
        theta, fit_chains_ok, fit_scores_ok = _select_theta(
            transition, u_fit, fit, thetas, params, kernel, log_prob, block_size
        )
        perturbed = run_chains(transition, u[num_thetas], x, theta, params, log_prob)[None]
    else:
        perturbed = perturb_all(transition, u, x, thetas, params, log_prob)
        fit_chains_ok = fit_scores_ok = jnp.bool_(True)
    samples = jnp.concatenate([x[None], perturbed])
    scores = scores_of(samples, log_prob)
    kernels = kernel_stack(kernel, samples)
    chains_ok = fit_chains_ok & jnp.all(jnp.isfinite(perturbed))
    scores_ok = fit_scores_ok & jnp.all(jnp.isfinite(scores))
    valid = x_ok & chains_ok & scores_ok
    result = _summed_ksd_test(u_boot, samples, scores, kernels, alpha, valid, block_size)
    problem = jnp.where(~x_ok, 1, jnp.where(~chains_ok, 2, jnp.where(~scores_ok, 3, 0)))
    return result, problem


def _select_theta(transition, u, x, thetas, params, kernel, log_prob, block_size):
    """The theta maximising (KSD_u^2(x) + KSD_u^2(K_theta^T x)) / sigma, sigma^2 the plug-in
    variance 4/n^3 sum_i r_i^2 - 4/n^4 (sum_i r_i)^2 of the V-form with row sums r, as the
    authors' `find_optimal_param` and `h1_var` (diagonal excluded, 1e-12 added). Also returns
    whether the perturbed points and the scores were all finite."""
    n, dtype = x.shape[0], x.dtype
    nf = float(n)
    perturbed = perturb_all(transition, u, x, thetas, params, log_prob)
    samples = jnp.concatenate([x[None], perturbed])
    scores = scores_of(samples, log_prob)
    kernels = kernel_stack(kernel, samples)
    ones = jnp.ones(n, dtype)

    def row_sums(args):
        k, s, sc = args
        return langevin_stein_matvec(k, s, sc, ones, exclude_diagonal=True, block_size=block_size)

    rows = jax.lax.map(row_sums, (kernels, samples, scores))  # (L + 1, n)
    rows = rows[:1] + rows[1:]
    total = jnp.sum(rows, axis=-1)
    var = 4.0 * jnp.sum(rows**2, axis=-1) / nf**3 - 4.0 * total**2 / nf**4
    ratio = (total / nf**2) / jnp.sqrt(jnp.maximum(var, 0.0) + 1e-12)
    # Whether the chains and the scores were finite: a NaN here picks an arbitrary theta.
    finite = jnp.all(jnp.isfinite(perturbed)), jnp.all(jnp.isfinite(scores))
    return thetas[jnp.argmax(ratio)], *finite


def _summed_ksd_test(u, samples, scores, kernels, alpha, valid, block_size):
    """Multinomial bootstrap test of sum_l KSD_u^2(x^l): the statistic is sum_{i != j} of the
    summed Stein kernel over n(n-1); each draw is sum_{i != j} (w_i - 1/n)(w_j - 1/n) of it, as
    `kmethods.ksd_test` for one sample (`kmethods.calibration`'s columns and result), with the
    resampled indices from the uniforms u, one draw per row, shape (B, n).

    The statistic is column 0 of the same blocked product as the draws (one arithmetic path).
    A non-finite point or score anywhere, or `valid` False, makes the product NaN, which never
    rejects: a NaN term can hide in the sum only by luck of the weights."""
    n = samples.shape[1]
    columns = u_statistic_columns(resampled_weights(uniform_index(u, n), samples.dtype))
    u_columns = summed_stein_matvec(kernels, samples, scores, columns, block_size=block_size)
    finite = valid & jnp.all(jnp.isfinite(samples)) & jnp.all(jnp.isfinite(scores))
    u_columns = jnp.where(finite, u_columns, jnp.nan)
    return stein_bootstrap_result(columns, u_columns, wild=False, alpha=alpha)
