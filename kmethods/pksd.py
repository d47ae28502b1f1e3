"""Perturbed kernel Stein discrepancy (pKSD): KSD tests on a sample moved by p-invariant kernels.

The KSD test has little power when the target p and the sample's law q share well-separated
modes but weigh them differently: the score sees each mode only locally. pKSD moves the sample
with a Markov kernel K that leaves p invariant (so K p = p and the null is unchanged) but that
jumps between the modes, so that K q differs from p where the score can see it, and then runs
the KSD test on the moved sample.

The kernel here (`transition="mh_jump"`) is Metropolis–Hastings with a deterministic
mode-jumping proposal. The modes mu_1..mu_m of p are found by BFGS on -log p from several
starting points, merged when close in Mahalanobis distance, and each gets the Hessian
H_k = -grad^2 log p(mu_k) (positive definite). For an ordered pair (i, j) of distinct modes and
a jump scale theta, the proposal is

  x' = theta mu_j + H_j^{-1/2} H_i^{1/2} (x - theta mu_i)

(the authors' row-vector form (x - theta mu_i) H_i^{1/2} H_j^{-1/2} + theta mu_j, with
symmetric square roots). The map for (j, i) is the inverse of the map for (i, j), and its
Jacobian determinant is (det H_i / det H_j)^{1/2}, so accepting with probability
min(1, p(x') |det| / p(x)) keeps p invariant whenever (i, j) and (j, i) are proposed with equal
probability (Green, 1995; Tierney, 1998). `pair="uniform"` (default, as the authors' code)
draws the ordered pair uniformly; `pair="nearest"` takes i as the mode nearest to x (Mahalanobis
distance under H_i) and j uniformly among the others, and accepts only if the reverse move would
be proposed, i.e. if mu_j is the mode nearest to x'. `transition="mala"` offers Metropolis-
adjusted Langevin steps instead, with theta the step size.

spKSD (`method="spksd"`) sums the KSD U-statistics of the unperturbed sample and of the sample
perturbed by T steps at each theta in a grid: sum_l KSD_u^2(K_l^T x, p). It is one
U-statistic with the kernel sum_l u_p(x_i^l, x_j^l) on the tuples (x_i^0, ..., x_i^L), which
are i.i.d. across i and, under the null, have every coordinate distributed as p; its
multinomial bootstrap applies the same weights to that summed kernel. ospKSD
(`method="ospksd"`) splits the sample in two halves: on the first it picks the theta that
maximises KSD_u^2(x) + KSD_u^2(K^T x) over an estimate of its standard deviation under the
alternative (as the authors' code), and on the second it tests with that statistic.

References:
  Liu, Duncan & Gandy, "Using Perturbation to Improve Goodness-of-Fit Tests based on Kernelized
  Stein Discrepancy", ICML 2023 (and their code, github.com/XingLLiu/pksd).
  Liu, Lee & Jordan, "A Kernelized Stein Discrepancy for Goodness-of-fit Tests", ICML 2016
  (the U-statistic and the multinomial bootstrap).
  Gorham & Mackey, "Measuring Sample Quality with Kernels", ICML 2017 (the IMQ kernel).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from kmethods import _checks
from kmethods._numerics import safe_sqrt
from kmethods.calibration import decide, resample_p_value
from kmethods.kernels import IMQ, check_kernel
from kmethods.pairwise import gram_matvec, sqdist
from kmethods.stein import langevin_stein_matvec

__all__ = ["DEFAULT_THETAS", "Modes", "find_modes", "perturb", "pksd_test"]

# The authors' grid of jump scales, linspace(0.5, 1.5, 21).
DEFAULT_THETAS = tuple(float(t) for t in np.linspace(0.5, 1.5, 21))
# A BFGS end point counts as a mode when a Newton step from it is shorter than this fraction of
# the merge radius (in the Mahalanobis norm of its Hessian).
_NEWTON_FRACTION = 0.5
# Default row blocks of the Stein matrices: about 2^18 entries (1 MiB in float32). Blocks of
# kmethods.pairwise's default size (2^21 entries), summed over the perturbed samples in a scan,
# ran ~6x slower on a CPU (n = 1000, 22 samples) than blocks that stay in cache.
_BLOCK_ENTRIES = 2**18
# The median heuristic looks at most at this many points of each sample (evenly spaced).
_MEDIAN_MAX_POINTS = 256


class Modes(NamedTuple):
    """Local maxima of a log density found from M starting points, with a fixed size M.

    Attributes:
      locations: (M, d). The distinct modes come first, by decreasing log density.
      hessians: (M, d, d), H = -grad^2 log p at each location (positive definite at a mode).
      log_prob: (M,), log p at each location.
      mask: (M,) bool, True for the distinct modes (duplicates and failed starts are False).
    """

    locations: jax.Array
    hessians: jax.Array
    log_prob: jax.Array
    mask: jax.Array


# ------------------------------------------------------------------------------ random numbers


def _uniform(key, shape, dtype):
    """Uniforms on [0, 1) from raw bits, as `jax.random.uniform` makes them (mantissa bits under
    an exponent of 1, minus 1). Under `vmap` on a CPU, `jax.random.uniform` itself compiled in
    ~5 s where this takes under 1 s (jax 0.10), and the test is compiled for every shape."""
    info = jnp.finfo(dtype)
    if info.bits not in (32, 64):
        return jax.random.uniform(key, shape, dtype)
    uint = jnp.uint32 if info.bits == 32 else jnp.uint64
    bits = jax.random.bits(key, shape, uint)
    one = jax.lax.bitcast_convert_type(jnp.ones((), dtype), uint)
    mantissa = jax.lax.shift_right_logical(bits, jnp.asarray(info.bits - info.nmant, uint))
    return jax.lax.bitcast_convert_type(mantissa | one, dtype) - 1.0


def _draws(*shapes):
    return sum(int(np.prod(s)) for s in shapes)


def _split_uniforms(u, *shapes):
    """Consecutive pieces of a flat array of uniforms, reshaped to `shapes`."""
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(u[start : start + size].reshape(shape))
        start += size
    return out


# ------------------------------------------------------------------------------ mode finding


def find_modes(start_points, log_prob, *, threshold=1.0, max_iterations=100):
    """Modes of p by BFGS on -log p from each starting point, merged, with their Hessians.

    Every start runs BFGS (vmapped; `_bfgs`, a compact BFGS that compiles faster than
    `jax.scipy.optimize.minimize`, which it matches to float precision). An end point is kept as a
    candidate when log p is finite there, H = -grad^2 log p is positive definite and the Newton
    step g' H^{-1} g is below `threshold / 4` (it sits at a local maximum). Candidates are
    visited by decreasing log p and each is kept unless a kept mode lies within squared
    Mahalanobis distance `threshold` of it, (a - b)' (H_a + H_b) / 2 (a - b) < threshold. The
    authors' code merges the same way (greedily, threshold 1), with BFGS's inverse-Hessian
    estimate in place of the Hessian.

    Args:
      start_points: (M, d) starting points.
      log_prob: unnormalised log density on one point of shape (d,), returning a scalar.
      threshold: squared Mahalanobis radius under which two end points are one mode.
      max_iterations: BFGS iterations per start.

    Returns:
      `Modes` with M slots (fixed shapes, so this jits and vmaps); `mask` marks the modes.
    """
    starts = _checks.as_points(start_points, "start_points", min_points=1)
    _check_log_prob(log_prob, starts)
    _check_positive_scalar(threshold, "threshold")
    max_iterations = _checks.positive_int(max_iterations, "max_iterations")
    threshold = jnp.asarray(threshold, starts.dtype)
    return _find_modes(starts, threshold, log_prob=log_prob, max_iterations=max_iterations)


# Step lengths tried at once by the backtracking line search: 1, 1/2, ..., 2^-19.
_LINE_SEARCH_STEPS = 20
_ARMIJO = 1e-4


def _bfgs(fun, z0, max_iterations):
    """Minimises `fun` from z0 by BFGS (Nocedal & Wright, 2006, Algorithm 6.1) with a
    backtracking Armijo line search whose step lengths 1, 1/2, 1/4, ... are evaluated all at
    once, so the loop body has no inner loop: this compiles in a fraction of the time of
    `jax.scipy.optimize.minimize(method="BFGS")` (whose zoom line search nests while loops)
    and vmaps over starts and replicates. Stops after `max_iterations` or when the gradient
    is zero to working precision."""
    dtype, d = z0.dtype, z0.shape[0]
    eye = jnp.eye(d, dtype=dtype)
    steps = 0.5 ** jnp.arange(_LINE_SEARCH_STEPS, dtype=dtype)
    tol = jnp.finfo(dtype).eps ** 0.75

    def cond(state):
        it, _, f, g, _ = state
        return (it < max_iterations) & jnp.isfinite(f) & (jnp.max(jnp.abs(g)) > tol)

    def body(state):
        it, z, f, g, inv_h = state
        direction = -inv_h @ g
        slope = g @ direction
        ascent = ~(slope < 0)  # a stale inverse Hessian: fall back to steepest descent
        direction = jnp.where(ascent, -g, direction)
        slope = jnp.where(ascent, -(g @ g), slope)
        trials = z[None, :] + steps[:, None] * direction[None, :]
        values = jax.vmap(fun)(trials)
        good = jnp.isfinite(values) & (values <= f + _ARMIJO * steps * slope)
        moved = jnp.any(good)
        z_new = jnp.where(moved, trials[jnp.argmax(good)], z)
        f_new, g_new = jax.value_and_grad(fun)(z_new)
        s, y = z_new - z, g_new - g
        sy = s @ y
        # Scale the first inverse Hessian to the curvature just seen (N & W, eq. 6.20).
        inv_h = jnp.where((it == 0) & (sy > 0), sy / (y @ y) * eye, inv_h)
        rho = 1.0 / jnp.where(sy > 0, sy, 1.0)
        left = eye - rho * jnp.outer(s, y)
        updated = left @ inv_h @ left.T + rho * jnp.outer(s, s)
        inv_h = jnp.where(sy > 1e-10 * jnp.sqrt((s @ s) * (y @ y)), updated, inv_h)
        # No acceptable step: stop (the gradient test alone would loop to max_iterations).
        it = jnp.where(moved, it + 1, max_iterations)
        return it, z_new, f_new, g_new, inv_h

    f0, g0 = jax.value_and_grad(fun)(z0)
    state = (jnp.zeros((), jnp.int32), z0, f0, g0, eye)
    return jax.lax.while_loop(cond, body, state)[1]


@partial(jax.jit, static_argnames=("log_prob", "max_iterations"))
def _find_modes(starts, threshold, *, log_prob, max_iterations):
    dtype = starts.dtype
    num, d = starts.shape

    def neg_log_prob(z):
        return -log_prob(z).astype(dtype)

    bfgs = lambda z0: _bfgs(neg_log_prob, z0, max_iterations)
    ends = jax.vmap(bfgs)(starts)
    lp = jax.vmap(log_prob)(ends).astype(dtype)
    grads = jax.vmap(jax.grad(log_prob))(ends).astype(dtype)
    hess = -jax.vmap(jax.hessian(log_prob))(ends).astype(dtype)
    hess = 0.5 * (hess + jnp.swapaxes(hess, -1, -2))
    lam, vec = jnp.linalg.eigh(hess)
    coords = jnp.einsum("mij,mi->mj", vec, grads)
    newton = jnp.sum(coords**2 / jnp.where(lam > 0, lam, 1.0), axis=-1)
    valid = (
        jnp.isfinite(lp)
        & jnp.all(jnp.isfinite(ends), axis=-1)
        & jnp.all(jnp.isfinite(hess), axis=(-1, -2))
        & (jnp.min(lam, axis=-1) > 0)
        & (newton < _NEWTON_FRACTION**2 * threshold)
    )
    # Invalid slots get harmless values so that nothing downstream meets a NaN.
    eye = jnp.eye(d, dtype=dtype)
    ends = jnp.where(valid[:, None], ends, jnp.zeros_like(ends))
    hess = jnp.where(valid[:, None, None], hess, eye[None])
    lp = jnp.where(valid, lp, -jnp.inf)

    order = jnp.argsort(-lp)
    ends, hess, lp, valid = ends[order], hess[order], lp[order], valid[order]
    diff = ends[:, None, :] - ends[None, :, :]
    mean_hess = 0.5 * (hess[:, None] + hess[None, :])
    dist2 = jnp.einsum("abi,abij,abj->ab", diff, mean_hess, diff)

    def visit(keep, k):
        duplicate = jnp.any(keep & (dist2[k] < threshold))
        return keep.at[k].set(valid[k] & ~duplicate), None

    keep, _ = jax.lax.scan(visit, jnp.zeros(num, bool), jnp.arange(num))
    # Kept modes first (still by decreasing log p), so locations[:mask.sum()] are the modes.
    order = jnp.argsort(~keep, stable=True)
    return Modes(ends[order], hess[order], lp[order], keep[order])


def _default_starts(u, x, spread):
    """Half of the starts are sample points, half uniform on the sample's bounding box scaled by
    `spread` about its centre (starts from the sample alone never reach a mode it missed); one
    start per row of the uniforms u, shape (M, d)."""
    n = x.shape[0]
    num_rows = u.shape[0] // 2
    rows = x[jnp.minimum(jnp.floor(u[:num_rows, 0] * n).astype(jnp.int32), n - 1)]
    lo, hi = jnp.min(x, axis=0), jnp.max(x, axis=0)
    half = 0.5 * (hi - lo)
    half = jnp.where(half > 0, half, jnp.ones_like(half))
    box = (0.5 * (lo + hi))[None] + (spread * half)[None] * (2.0 * u[num_rows:] - 1.0)
    return jnp.concatenate([rows, box])


# ------------------------------------------------------------------------------ transitions


class _Jumps(NamedTuple):
    """What the mode-jumping proposal needs at each mode: mu, H, H^{1/2}, H^{-1/2},
    log det H^{1/2} and the mode mask."""

    mu: jax.Array
    hess: jax.Array
    root: jax.Array
    inv_root: jax.Array
    half_logdet: jax.Array
    mask: jax.Array


def _prepare_jumps(modes, dtype):
    # Modes first (`_choose_pair` draws among the first sum(mask) slots).
    modes = jax.tree.map(lambda a: a[jnp.argsort(~modes.mask, stable=True)], modes)
    mask = modes.mask
    d = modes.locations.shape[-1]
    eye = jnp.eye(d, dtype=dtype)
    hess = jnp.where(mask[:, None, None], modes.hessians.astype(dtype), eye[None])
    hess = 0.5 * (hess + jnp.swapaxes(hess, -1, -2))
    lam, vec = jnp.linalg.eigh(hess)
    lam = jnp.where(lam > 0, lam, jnp.ones_like(lam))
    vt = jnp.swapaxes(vec, -1, -2)
    sqrt_lam = jnp.sqrt(lam)[..., None, :]
    root = (vec * sqrt_lam) @ vt
    inv_root = (vec / sqrt_lam) @ vt
    half_logdet = 0.5 * jnp.sum(jnp.log(lam), axis=-1)
    mu = jnp.where(mask[:, None], modes.locations.astype(dtype), jnp.zeros((), dtype))
    return _Jumps(mu, hess, root, inv_root, half_logdet, mask)


def _nearest_mode(x, jumps):
    diff = x[None, :] - jumps.mu
    dist2 = jnp.einsum("mi,mij,mj->m", diff, jumps.hess, diff)
    return jnp.argmin(jnp.where(jumps.mask, dist2, jnp.inf))


def _choose_pair(u_i, u_j, x, jumps, pair):
    """An ordered pair (i, j) of distinct modes from two uniforms (the modes come first in
    `jumps`); i == j, i.e. no move, when there are fewer than two modes."""
    m = jnp.sum(jumps.mask)
    m_float = m.astype(u_i.dtype)
    if pair == "uniform":
        i = jnp.minimum(jnp.floor(u_i * m_float).astype(m.dtype), m - 1)
    else:
        i = _nearest_mode(x, jumps).astype(m.dtype)
    shift = jnp.minimum(jnp.floor(u_j * (m_float - 1.0)).astype(m.dtype), m - 2)
    j = (i + 1 + shift) % jnp.maximum(m, 1)
    i = jnp.maximum(i, 0)
    return i, jnp.where(m > 1, j, i)


def _jump(x, i, j, theta, jumps):
    """x' = theta mu_j + H_j^{-1/2} H_i^{1/2} (x - theta mu_i) and log |det dx'/dx|."""
    centred = x - theta * jumps.mu[i]
    moved = theta * jumps.mu[j] + jumps.inv_root[j] @ (jumps.root[i] @ centred)
    return moved, jumps.half_logdet[i] - jumps.half_logdet[j]


def _jump_log_ratio(x, lp_x, i, j, theta, jumps, log_prob, pair):
    """The proposal from x for the pair (i, j), its log p, and the log MH ratio."""
    moved, log_det = _jump(x, i, j, theta, jumps)
    lp_moved = log_prob(moved).astype(x.dtype)
    log_ratio = lp_moved - lp_x + log_det
    if pair == "nearest":
        # The reverse move (j, i) is proposed from x' only if mu_j is the mode nearest to x'.
        log_ratio = jnp.where(_nearest_mode(moved, jumps) == j, log_ratio, -jnp.inf)
    return moved, lp_moved, jnp.where(i == j, -jnp.inf, log_ratio)


def _garbage(lp):
    """log p is NaN or +inf: a value no density has (-inf is a point outside the support)."""
    return jnp.isnan(lp) | (lp == jnp.inf)


def _mh_jump_step(state, u, theta, jumps, log_prob, pair):
    """One MH step for one point; u holds three uniforms (pair, pair, acceptance). `bad`
    records a NaN or +inf log p at a proposal, which the comparison with u would otherwise
    turn into a silent rejection (NaN) or acceptance (+inf) of the move."""
    x, lp, bad = state
    i, j = _choose_pair(u[0], u[1], x, jumps, pair)
    moved, lp_moved, log_ratio = _jump_log_ratio(x, lp, i, j, theta, jumps, log_prob, pair)
    accept = jnp.log(u[2]) < log_ratio
    return jnp.where(accept, moved, x), jnp.where(accept, lp_moved, lp), bad | _garbage(lp_moved)


def _mala_step(state, noise, u, step_size, log_prob):
    """One MALA step for one point, from a standard normal `noise` and a uniform `u`."""
    x, lp, score, bad = state
    moved = x + step_size * score + jnp.sqrt(2.0 * step_size) * noise
    lp_moved, score_moved = jax.value_and_grad(log_prob)(moved)
    lp_moved, score_moved = lp_moved.astype(x.dtype), score_moved.astype(x.dtype)
    forward = jnp.sum((moved - x - step_size * score) ** 2)
    backward = jnp.sum((x - moved - step_size * score_moved) ** 2)
    log_ratio = lp_moved - lp + (forward - backward) / (4.0 * step_size)
    accept = jnp.log(u) < log_ratio
    keep = lambda new, old: jnp.where(accept, new, old)
    bad = bad | _garbage(lp_moved) | (jnp.isfinite(lp_moved) & ~jnp.all(jnp.isfinite(score_moved)))
    return keep(moved, x), keep(lp_moved, lp), keep(score_moved, score), bad


def _uniforms_per_step(x, transition):
    """Uniforms one point needs per step: a pair and an acceptance (mh_jump), or d for the
    Gaussian noise and an acceptance (mala)."""
    return 3 if transition == "mh_jump" else x.shape[1] + 1


def _perturb(u, x, theta, jumps, *, log_prob, transition, pair):
    """Transitions applied to every point independently, one per leading slice of the uniforms
    u, shape (T, n, k) (all drawn at once: each random call site costs compile time); theta is
    a scalar or one value per point, shape (n,).

    A point whose chain met garbage from `log_prob` (not finite at the start, NaN or +inf at a
    proposal; for MALA also a non-finite score where log p is finite) comes back as NaN: the
    chain is no longer p-invariant, and a NaN point makes the statistic NaN (no rejection)
    instead of a silently different sample.
    """
    dtype, n = x.dtype, x.shape[0]
    theta = jnp.broadcast_to(theta, (n,))
    if transition == "mala":
        lp, score = jax.vmap(jax.value_and_grad(log_prob))(x)
        lp, score = lp.astype(dtype), score.astype(dtype)
        bad = ~jnp.isfinite(lp) | ~jnp.all(jnp.isfinite(score), axis=-1)
        state = (x, lp, score, bad)
        # Standard normals by inversion; the half-spacing shift keeps u in (0, 1).
        to_normal = lambda v: jax.scipy.special.ndtri(v + 0.5 * jnp.finfo(dtype).eps)
        step = lambda s, v, t: _mala_step(s, to_normal(v[:-1]), v[-1], t, log_prob)
    else:
        lp = jax.vmap(log_prob)(x).astype(dtype)
        state = (x, lp, ~jnp.isfinite(lp))
        step = lambda s, v, t: _mh_jump_step(s, v, t, jumps, log_prob, pair)

    def advance(state, u_step):
        return jax.vmap(step)(state, u_step, theta), None

    state, _ = jax.lax.scan(advance, state, u)
    return jnp.where(state[-1][:, None], jnp.nan, state[0])


def perturb(key, x, log_prob, modes, theta, *, num_steps=10, transition="mh_jump", pair="uniform"):
    """Moves every point of `x` by `num_steps` steps of a Markov kernel that leaves p invariant.

    Args:
      key: PRNG key.
      x: (n, d) sample.
      log_prob: unnormalised log density on one point, returning a scalar.
      modes: `Modes` (from `find_modes`) for `transition="mh_jump"`; unused (may be None) for
        "mala".
      theta: jump scale (mh_jump) or step size (mala), a positive scalar.
      num_steps: T, the number of transitions.
      transition: "mh_jump" (MH with the mode-jumping proposal) or "mala".
      pair: "uniform" or "nearest", how mh_jump picks the pair of modes (module docstring).

    Returns:
      (n, d), the perturbed sample, of x's dtype (float32 for float16 / bfloat16 input); each
      point moves independently of the others. Eagerly, a `log_prob` that is not finite at a
      point of `x`, or NaN or +inf at a proposed point, raises a ValueError naming it; under
      `jit`/`vmap` the points whose chains met such a value are NaN.
    """
    x, modes = _check_transition_args(x, log_prob, modes, transition, pair, min_points=1)
    num_steps = _checks.positive_int(num_steps, "num_steps")
    _check_positive_scalar(theta, "theta")
    _check_log_prob_values(log_prob, x)
    moved = _perturb_jit(
        key,
        x,
        jnp.asarray(theta, x.dtype),
        modes,
        log_prob=log_prob,
        num_steps=num_steps,
        transition=transition,
        pair=pair,
    )
    if _checks.is_concrete(moved) and not bool(jnp.all(jnp.isfinite(moved))):
        raise ValueError(_PERTURB_MESSAGE)
    return moved


_PERTURB_MESSAGE = (
    "`log_prob` returned NaN or +inf at a point proposed by the perturbation (or, for MALA, "
    "its gradient was not finite where log p is): it must be finite, or -inf outside the "
    "support, everywhere the chains go."
)


@partial(jax.jit, static_argnames=("log_prob", "num_steps", "transition", "pair"))
def _perturb_jit(key, x, theta, modes, *, log_prob, num_steps, transition, pair):
    jumps = None if modes is None else _prepare_jumps(modes, x.dtype)
    shape = (num_steps, x.shape[0], _uniforms_per_step(x, transition))
    u = _uniform(key, shape, x.dtype)
    return _perturb(u, x, theta, jumps, log_prob=log_prob, transition=transition, pair=pair)


# ------------------------------------------------------------------------------ statistics


def _median_of_nonnegative(values):
    """The median (the mean of the two middle values for an even count) of nonnegative floats.

    The lower middle value comes from bisection on the bit patterns, which order nonnegative
    IEEE floats as integers: exact, in one counting pass per bit, where the XLA:CPU sort behind
    `jnp.median` cost more than all the rest of the test. The upper one is the next value up.
    """
    num = values.shape[0]
    k = (num - 1) // 2
    itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[values.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(values, itype)

    def halve(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits <= mid) > k
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    bounds = (jnp.zeros((), itype), jnp.max(bits))
    _, hi = jax.lax.fori_loop(0, 8 * values.dtype.itemsize, halve, bounds)
    lower = jax.lax.bitcast_convert_type(hi, values.dtype)
    if num % 2:
        return lower
    # The (k + 1)-th value is `lower` again if it repeats, else the least value above it.
    repeats = jnp.sum(values <= lower) > k + 1
    above = jnp.min(jnp.where(values > lower, values, jnp.inf))
    return 0.5 * (lower + jnp.where(repeats, lower, above))


def _median_distance(x):
    """The median distance between distinct points of x, 1 if it is 0: the value of
    `kmethods.median_bandwidth` (without its subsampling)."""
    n = x.shape[0]
    med = _median_of_nonnegative(safe_sqrt(sqdist(x, x)[np.triu_indices(n, 1)]))
    return jnp.where(med > 0, med, jnp.ones_like(med))


class _MedianIMQ(IMQ):
    """The default kernel, IMQ with c = 1 and beta = -1/2: k = t^(-1/2), t = 1 + r^2 / h^2,
    with its radial derivatives in closed form from one rsqrt. `IMQ` differentiates its
    profile (three powers per entry), which made the Stein matrices ~10x slower than here and
    dominated the test's time."""

    def radial_derivatives(self, r2):
        inv_h2 = 1.0 / self.bandwidth**2
        t = 1.0 + r2 * inv_h2
        k = jax.lax.rsqrt(t)
        inv_t = 1.0 / t
        # g'/r = 2 phi'(r^2) = -h^-2 t^(-3/2); g'' = g'/r + 4 r^2 phi'' = g'/r + 3 r^2 h^-4 t^(-5/2)
        g1_over_r = -inv_h2 * k * inv_t
        return k, g1_over_r, g1_over_r + 3.0 * r2 * inv_h2**2 * k * inv_t**2


def _kernel_stack(kernel, samples):
    """One kernel per sample as a pytree with a leading axis: `kernel` repeated, or (None) the
    IMQ kernel (1 + r^2 / h^2)^(-1/2) with h the median distance within each sample, taken on
    at most _MEDIAN_MAX_POINTS points evenly spaced in the sample's order (the same points of
    every perturbed sample)."""
    num, n = samples.shape[:2]
    base = _MedianIMQ() if kernel is None else kernel
    stack = jax.tree.map(lambda a: jnp.broadcast_to(jnp.asarray(a), (num, *jnp.shape(a))), base)
    if kernel is not None:
        return stack
    subset = samples[:, :: -(-n // _MEDIAN_MAX_POINTS)]
    bandwidth = jax.vmap(_median_distance)(subset)
    return eqx.tree_at(lambda k: k.bandwidth, stack, bandwidth)


def _summed_stein_matvec(kernels, samples, scores, v, *, block_size):
    """(sum_l U_l) v with U_l = [u_p(x_i^l, x_j^l)]_{i != j} under the l-th kernel, by row blocks
    (memory O(block_size * n), one Stein block at a time)."""
    n = samples.shape[1]
    by_point = (jnp.swapaxes(samples, 0, 1), jnp.swapaxes(scores, 0, 1))  # (n, L, d)

    def gram_block(xb, sb):
        def add(total, args):
            kernel, xl, sl, x_all, s_all = args
            return total + kernel.stein_gram(xl, sl, x_all, s_all), None

        total = jnp.zeros((xb.shape[0], n), samples.dtype)
        blocks = (jnp.swapaxes(xb, 0, 1), jnp.swapaxes(sb, 0, 1))
        total, _ = jax.lax.scan(add, total, (kernels, *blocks, samples, scores))
        return total

    return gram_matvec(gram_block, by_point, v, exclude_diagonal=True, block_size=block_size)


def _multinomial_weights(u):
    """Bootstrap weights counts / n, counts ~ Multinomial(n; 1/n, ..., 1/n), from uniforms u of
    shape (B, n): `kmethods.calibration.multinomial_weights` with the draws made by `_uniform`."""
    n = u.shape[1]
    idx = jnp.minimum(jnp.floor(u * n).astype(jnp.int32), n - 1)
    counts = jax.vmap(lambda i: jnp.zeros(n, u.dtype).at[i].add(1.0))(idx)
    return counts / n


def _summed_ksd_test(u, samples, scores, kernels, alpha, valid, *, block_size):
    """Multinomial bootstrap test of sum_l KSD_u^2(x^l): the statistic is sum_{i != j} of the
    summed Stein kernel over n(n-1); each draw is sum_{i != j} (w_i - 1/n)(w_j - 1/n) of it, as
    `kmethods.ksd_test` for one sample. One draw per row of the uniforms u, shape (B, n).

    The statistic is column 0 of the same blocked product as the draws (one arithmetic path).
    A non-finite point or score anywhere, or `valid` False, makes the statistic NaN, which never
    rejects: a NaN term can hide in the sum only by luck of the weights."""
    n, dtype = samples.shape[1], samples.dtype
    weights = _multinomial_weights(u) - 1.0 / n
    columns = jnp.concatenate([jnp.ones((1, n), dtype), weights]).T  # (n, B + 1)
    u_columns = _summed_stein_matvec(kernels, samples, scores, columns, block_size=block_size)
    forms = jnp.einsum("ib,ib->b", columns, u_columns)
    finite = valid & jnp.all(jnp.isfinite(samples)) & jnp.all(jnp.isfinite(scores))
    forms = jnp.where(finite, forms, jnp.nan)
    statistic = forms[0] / (float(n) * (n - 1))
    null_samples = forms[1:]
    return decide(statistic, resample_p_value(statistic, null_samples), alpha, null_samples)


def _scores_of(samples, log_prob):
    grads = jax.vmap(jax.vmap(jax.grad(log_prob)))(samples)
    return grads.astype(samples.dtype)


def _perturb_all(u, x, thetas, jumps, **kw):
    """x perturbed at each theta from uniforms u of shape (L, T, n, k); (L, n, d). The L copies
    of x run as one batch of L n points (one vmap, not two: it compiles ~2x faster)."""
    num, (n, d) = thetas.shape[0], x.shape
    points = jnp.broadcast_to(x[None], (num, n, d)).reshape(num * n, d)
    u = jnp.swapaxes(u, 0, 1).reshape(u.shape[1], num * n, u.shape[-1])
    moved = _perturb(u, points, jnp.repeat(thetas, n), jumps, **kw)
    return moved.reshape(num, n, d)


def _select_theta(u, x, thetas, jumps, kernel, *, log_prob, block_size, **kw):
    """The theta maximising (KSD_u^2(x) + KSD_u^2(K_theta^T x)) / sigma, sigma^2 the plug-in
    variance 4/n^3 sum_i r_i^2 - 4/n^4 (sum_i r_i)^2 of the V-form with row sums r, as the
    authors' `find_optimal_param` and `h1_var` (diagonal excluded, 1e-12 added). Also returns
    whether the perturbed points and the scores were all finite."""
    n, dtype = x.shape[0], x.dtype
    nf = float(n)
    perturbed = _perturb_all(u, x, thetas, jumps, log_prob=log_prob, **kw)
    samples = jnp.concatenate([x[None], perturbed])
    scores = _scores_of(samples, log_prob)
    kernels = _kernel_stack(kernel, samples)
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


@partial(
    jax.jit,
    static_argnames=(
        "log_prob",
        "method",
        "transition",
        "pair",
        "num_steps",
        "num_bootstrap",
        "num_starts",
        "max_iterations",
        "block_size",
    ),
)
def _pksd_core(
    key,
    x,
    kernel,
    thetas,
    alpha,
    modes,
    start_points,
    start_spread,
    mode_threshold,
    *,
    log_prob,
    method,
    transition,
    pair,
    num_steps,
    num_bootstrap,
    num_starts,
    max_iterations,
    block_size,
):
    if block_size is None:
        block_size = max(1, min(x.shape[0], _BLOCK_ENTRIES // x.shape[0]))
    kw = dict(log_prob=log_prob, transition=transition, pair=pair)
    num_thetas, n = thetas.shape[0], x.shape[0]
    # All of x, the half that fits theta included: NaN data under jit, or a log p that is not
    # finite at the sample, void the test.
    x_ok = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(jax.vmap(log_prob)(x)))
    if method == "ospksd":
        fit, x = x[: n // 2], x[n // 2 :]  # theta and the modes come from the first half only
    else:
        fit = x
    # Every random number of the test in one draw: each random call site under `vmap` added
    # seconds of compilation on a CPU.
    extra = 1 if method == "ospksd" else 0
    shape = (num_thetas + extra, num_steps, x.shape[0], _uniforms_per_step(x, transition))
    shapes = ((num_starts, fit.shape[1]), shape, (num_bootstrap, x.shape[0]))
    u_starts, u, u_boot = _split_uniforms(_uniform(key, (_draws(*shapes),), x.dtype), *shapes)
    jumps = None
    if transition == "mh_jump":
        if modes is None:
            if start_points is None:
                start_points = _default_starts(u_starts, fit, start_spread)
            modes = _find_modes(
                start_points, mode_threshold, log_prob=log_prob, max_iterations=max_iterations
            )
        jumps = _prepare_jumps(modes, x.dtype)
    if method == "ospksd":
        u_fit = u[:num_thetas, :, : fit.shape[0]]
        theta, fit_chains_ok, fit_scores_ok = _select_theta(
            u_fit, fit, thetas, jumps, kernel, block_size=block_size, **kw
        )
        perturbed = _perturb(u[num_thetas], x, theta, jumps, **kw)[None]
    else:
        perturbed = _perturb_all(u, x, thetas, jumps, **kw)
        fit_chains_ok = fit_scores_ok = jnp.bool_(True)
    samples = jnp.concatenate([x[None], perturbed])
    scores = _scores_of(samples, log_prob)
    kernels = _kernel_stack(kernel, samples)
    chains_ok = fit_chains_ok & jnp.all(jnp.isfinite(perturbed))
    scores_ok = fit_scores_ok & jnp.all(jnp.isfinite(scores))
    valid = x_ok & chains_ok & scores_ok
    result = _summed_ksd_test(u_boot, samples, scores, kernels, alpha, valid, block_size=block_size)
    # Why the statistic is NaN, for the eager error: 1 non-finite x or log p(x) (only possible
    # under jit), 2 garbage from log_prob along the chains, 3 a non-finite score.
    problem = jnp.where(~x_ok, 1, jnp.where(~chains_ok, 2, jnp.where(~scores_ok, 3, 0)))
    return result, problem


def pksd_test(
    key,
    x,
    log_prob,
    kernel=None,
    *,
    method="spksd",
    transition="mh_jump",
    pair="uniform",
    thetas=DEFAULT_THETAS,
    num_steps=10,
    num_bootstrap=800,
    alpha=0.05,
    modes=None,
    start_points=None,
    num_starts=40,
    start_spread=3.0,
    mode_threshold=1.0,
    max_iterations=100,
    block_size=None,
):
    """Perturbed KSD goodness-of-fit test of H0: x ~ p (Liu, Duncan & Gandy, 2023).

    The sample is moved by T = `num_steps` steps of a p-invariant Markov kernel (each point
    independently), which leaves it distributed as p under H0 but spreads a sample that has
    the wrong mode weights over the modes, where the KSD can see it; then a multinomial
    bootstrap KSD test runs on the moved sample (module docstring).

    `method="spksd"` (default; no sample split, and it needs no choice of theta): the statistic
    is sum_{l=0}^{L} KSD_u^2(x^l) over the sample x^0 = x and its perturbations x^l at each of
    the L values in `thetas`; the bootstrap reweights the summed Stein kernel. `"ospksd"`: the
    first n // 2 points choose the modes and the theta that maximises
    (KSD_u^2(x) + KSD_u^2(K_theta^T x)) / sigma-hat on them (the authors' criterion, a proxy
    for power), and the statistic is KSD_u^2(x') + KSD_u^2(K_theta^T x') on the other points x'.

    With `transition="mh_jump"` the modes come, unless `modes` is given, from BFGS started at
    `start_points` or else at `num_starts` points: half drawn from the sample, half uniform on
    its bounding box scaled by `start_spread` about the centre (a mode the sample misses can
    only be found from outside it; the authors start from uniform points on [-10, 10]^d).

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
        the scores are its gradients. The compiled test is cached per function object, so pass
        the same function (not a new lambda) to reuse it.
      kernel: base kernel, or None for the IMQ kernel with median bandwidth (above).
      method: "spksd" or "ospksd".
      transition: "mh_jump" (MH with the mode-jumping proposal) or "mala" (thetas are then
        step sizes).
      pair: "uniform" or "nearest": how mh_jump picks the pair of modes.
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
    x, modes = _check_transition_args(
        x, log_prob, modes, transition, pair, min_points=min_points, modes_optional=True
    )
    if kernel is not None:
        check_kernel(kernel)
    thetas = _check_thetas(thetas, x.dtype)
    num_steps = _checks.positive_int(num_steps, "num_steps")
    num_bootstrap = _checks.positive_int(num_bootstrap, "num_bootstrap")
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    num_starts = _checks.positive_int(num_starts, "num_starts")
    max_iterations = _checks.positive_int(max_iterations, "max_iterations")
    _check_positive_scalar(start_spread, "start_spread")
    _check_positive_scalar(mode_threshold, "mode_threshold")
    if block_size is not None:
        block_size = _checks.positive_int(block_size, "block_size")
    if start_points is not None:
        start_points = _checks.as_points(start_points, "start_points", min_points=1)
        _checks.same_dimension(x, start_points, "x", "start_points")
        start_points = start_points.astype(x.dtype)
    _check_log_prob_values(log_prob, x)
    result, problem = _pksd_core(
        key,
        x,
        kernel,
        thetas,
        alpha,
        modes,
        start_points,
        jnp.asarray(start_spread, x.dtype),
        jnp.asarray(mode_threshold, x.dtype),
        log_prob=log_prob,
        method=method,
        transition=transition,
        pair=pair,
        num_steps=num_steps,
        num_bootstrap=num_bootstrap,
        num_starts=num_starts,
        max_iterations=max_iterations,
        block_size=block_size,
    )
    if _checks.is_concrete(problem) and int(problem) != 0:
        raise ValueError(_PROBLEMS[int(problem)])
    return result


_PROBLEMS = {
    1: "`x` or `log_prob` at a point of `x` is not finite.",
    2: _PERTURB_MESSAGE,
    3: "the gradient of `log_prob` (the score) is not finite at a point of the sample or of a "
    "perturbed sample.",
}


# ------------------------------------------------------------------------------ input checks


@partial(jax.jit, static_argnames="log_prob")
def _log_prob_values(x, *, log_prob):
    return jax.vmap(log_prob)(x)


def _check_log_prob_values(log_prob, x):
    """Eagerly, log p must be finite at every point of the sample (before any long work)."""
    if not _checks.is_concrete(x):
        return
    values = np.asarray(_log_prob_values(x, log_prob=log_prob))
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(
            f"`log_prob` is {values[i]} at x[{i}]: it must be finite at every point of the "
            "sample (which must lie in the support of p)."
        )


def _check_log_prob(log_prob, x):
    if not callable(log_prob):
        raise TypeError(
            f"`log_prob` must be a function of one point, got {type(log_prob).__name__}."
        )
    out = jax.eval_shape(log_prob, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    shape = getattr(out, "shape", None)
    if shape != () or not jnp.issubdtype(getattr(out, "dtype", np.int32), jnp.floating):
        raise ValueError(
            f"`log_prob` must map a point of shape {x.shape[1:]} to a real scalar; it returned "
            f"{getattr(out, 'shape', type(out).__name__)} "
            f"of dtype {getattr(out, 'dtype', None)}."
        )


def _check_positive_scalar(value, name):
    if isinstance(value, (bool, str, bytes)) or value is None or np.ndim(value) != 0:
        raise TypeError(f"`{name}` must be a positive scalar, got {value!r}.")
    _checks.check_positive(value, name)


def _check_thetas(thetas, dtype):
    if thetas is None or isinstance(thetas, (str, bytes)):
        raise TypeError(f"`thetas` must be a 1-d array of positive values, got {thetas!r}.")
    arr = jnp.asarray(thetas)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"`thetas` must be a non-empty 1-d array, got shape {arr.shape}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"`thetas` must hold real values, got dtype {arr.dtype}.")
    _checks.check_positive(arr, "thetas")
    return arr.astype(dtype)


def _check_modes(modes, d, dtype):
    if not isinstance(modes, Modes):
        raise TypeError(f"`modes` must be a kmethods.pksd.Modes, got {type(modes).__name__}.")
    num = np.shape(modes.locations)[0] if np.ndim(modes.locations) == 2 else None
    expected = {
        "locations": (num, d),
        "hessians": (num, d, d),
        "log_prob": (num,),
        "mask": (num,),
    }
    for field, shape in expected.items():
        if num is None or np.shape(getattr(modes, field)) != shape:
            raise ValueError(
                f"`modes.{field}` must have shape {shape} for d = {d} (M modes), got "
                f"{np.shape(getattr(modes, field))}."
            )
    return Modes(
        jnp.asarray(modes.locations, dtype),
        jnp.asarray(modes.hessians, dtype),
        jnp.asarray(modes.log_prob, dtype),
        jnp.asarray(modes.mask, bool),
    )


def _check_transition_args(
    x, log_prob, modes, transition, pair, *, min_points, modes_optional=False
):
    """Shared checks of `perturb` and `pksd_test`; returns x and the modes (or None)."""
    _checks.choice(transition, "transition", ("mh_jump", "mala"))
    _checks.choice(pair, "pair", ("uniform", "nearest"))
    x = _checks.as_points(x, "x", min_points=min_points)
    _check_log_prob(log_prob, x)
    if modes is None:
        if transition == "mh_jump" and not modes_optional:
            raise ValueError("`modes` is required for transition='mh_jump' (see find_modes).")
        return x, None
    return x, _check_modes(modes, x.shape[1], x.dtype)
