"""Sequential kernel tests by betting: SKIT (independence) and the MMD two-sample test.

A sequential test by betting plays a repeated game against the null. At step t a bettor with
wealth W_{t-1} stakes the fraction lambda_t, chosen from the past only, on a payoff
f_t in [-1, 1] whose conditional mean is zero under H0, and ends with
W_t = W_{t-1} (1 + lambda_t f_t), W_0 = 1. Under H0 the wealth is a nonnegative
(super)martingale, so by Ville's inequality P(sup_t W_t >= 1/alpha) <= alpha: the test may reject
as soon as W_t >= 1/alpha, however long the data are monitored. The payoffs here are kernel
witness functions estimated from the history, so the wealth grows under any alternative the
kernel can detect.

A test rejects only at a finite wealth. Non-finite data (which the eager checks refuse, but
which reach the compiled steps under `jit`/`vmap`) and kernel values that are not finite give
that step the payoff NaN; the log-wealth is then NaN for good, and a NaN wealth voids the test:
`reject` is False and the stopping time is the number of steps, even if the wealth had crossed
1/alpha before (the eager call would have raised for the whole stream). An online step past the
capacity of its state voids it the same way and sets `BettingState.overflow`.

Rounding cannot bias the level, even with a nearly constant kernel (payoffs at round-off
level): each payoff is computed as an exactly odd function of the swap that H0 leaves
invariant (the new points' kernel rows enter as a difference, row by row, and their product or
sum changes sign exactly under the swap), and its normaliser and the bet depend on the past
only. There is no resampled null whose arithmetic could differ from the observed statistic's.

Both tests are `(init, step)` state machines over a `BettingState` (fixed-capacity history
buffers plus running kernel sums), so they run online one observation at a time, inside
`lax.scan` over a whole stream (`skit`, `mmd_betting_test`) and under `vmap` over many streams.
Every step costs O(capacity) kernel evaluations: the kernel rows of the new points against the
history; no Gram matrix is ever formed.

The betting strategies are shared:

- ONS (online Newton step; Cutkosky & Orabona 2018, as used by Podkopaev et al. 2023):
  lambda_1 = 0; after the payoff f_t, z_t = f_t / (1 + lambda_t f_t),
  A_t = 1 + sum_{s <= t} z_s^2, lambda_{t+1} = clip(lambda_t + 2 / (2 - log 3) z_t / A_t,
  0, max_bet), max_bet = 1/2 by default.
- aGRAPA (Waudby-Smith & Ramdas 2023): lambda_{t+1} = clip(mean(f) / mean(f^2), 0, max_bet)
  over the past payoffs, max_bet = 0.9 by default. As in the SKIT reference code both means
  include one pseudo-observation (payoff 1e-3, squared payoff 1), so
  lambda_{t+1} = clip((1e-3 + sum_s f_s) / (1 + sum_s f_s^2), 0, max_bet) and lambda_1 = 1e-3.

References:
  Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence Testing",
  ICML 2023 (SKIT: the HSIC-witness payoff, ONS and aGRAPA betting; their reference code,
  a-podkopaev/Sequential-Kernelized-Independence-Testing, fixes the details followed here).
  Shekhar & Ramdas, "Nonparametric Two-Sample Testing by Betting", IEEE Transactions on
  Information Theory, 2023 (arXiv:2112.09162; the kernel-MMD plug-in witness payoff).
  Cutkosky & Orabona, "Black-Box Reductions for Parameter-free Online Learning in Banach
  Spaces", COLT 2018 (ONS betting).
  Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
  2023 (aGRAPA).
"""

from __future__ import annotations

import itertools
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kmethods import _checks
from kmethods.kernels import check_kernel

__all__ = [
    "BETS",
    "BettingState",
    "SequentialResult",
    "mmd_betting_init",
    "mmd_betting_step",
    "mmd_betting_test",
    "skit",
    "skit_init",
    "skit_step",
]

BETS = ("ons", "agrapa")
"""The betting strategies: online Newton step and aGRAPA."""

DEFAULT_MAX_BET = {"ons": 0.5, "agrapa": 0.9}
"""Truncation of the betting fraction per strategy, as in the SKIT reference code."""

_ONS_GAIN = 2.0 / (2.0 - math.log(3.0))
# Stretches of a stream scanned with growing history buffers (see `_scan_in_phases`); a stretch
# is at least _PHASE_MIN_STEPS long, since each one adds a scan to compile.
_PHASES = 4
_PHASE_MIN_STEPS = 200
# aGRAPA's pseudo-observation (mean payoff, mean squared payoff), from the SKIT reference code:
# it makes the first bet small and positive and keeps the ratio finite before any payoff.
_AGRAPA_PRIOR_MEAN = 1e-3
_AGRAPA_PRIOR_SECOND_MOMENT = 1.0


# ----------------------------------------------------------------------------- result and state


class SequentialResult(NamedTuple):
    """Outcome of a sequential test by betting over a stream of T steps.

    A step is one pair of points (z_{2t}, z_{2t+1}) for SKIT and one observation (x_t, y_t) for
    the two-sample test.

    Attributes:
      reject: bool, whether the wealth reached 1/alpha at some step (H0 rejected). Never True
        when some wealth is NaN (non-finite data under `jit`/`vmap`: the test is void).
      stopping_time: int32, tau ∧ T: the first step t (counted from 1) with W_t >= 1/alpha, or T,
        the number of steps, when the wealth never got there (`reject` tells the two apart).
        The normalised stopping time is `stopping_time / T`.
      wealth: (T,) the wealth W_1, ..., W_T after each step. The process is not frozen at the
        stopping time: it shows how the evidence kept growing (or not). It is computed in log
        space; in float32 a very large wealth (above ~3e38) reads as inf, which is still >= 1/alpha.
        Float32 for float16 / bfloat16 data (which are computed in float32), else the data's
        dtype. NaN from the first step whose data or kernel values were not finite.
    """

    reject: jax.Array
    stopping_time: jax.Array
    wealth: jax.Array


class Bettor(NamedTuple):
    """The bettor's state, shared by both tests.

    Attributes:
      log_wealth: log W_t.
      ons_fraction: ONS's betting fraction for the next step (0 before the first payoff).
      ons_scale: ONS's A_t = 1 + sum of z_s^2.
      payoff_sum: sum of the past payoffs (aGRAPA).
      payoff_sq_sum: sum of their squares (aGRAPA).
    """

    log_wealth: jax.Array
    ons_fraction: jax.Array
    ons_scale: jax.Array
    payoff_sum: jax.Array
    payoff_sq_sum: jax.Array


class HsicWitness(NamedTuple):
    """SKIT's history: the points seen so far and centred running sums of the witness norm.

    With K, L the Gram matrices of the m history points, k_bar = 1'K1 / m^2 and
    r_i = (K1)_i - m k_bar (l_bar, s_i likewise for L):

    Attributes:
      x: (capacity, d_x) history of x, rows past `count` are zero.
      y: (capacity, d_y) history of y.
      k_dev: (capacity,) the centred row sums r_i (zero past `count`).
      l_dev: (capacity,) the centred row sums s_i.
      k_mean: k_bar. l_mean: l_bar.
      comoment: sum_ij (K_ij - k_bar)(L_ij - l_bar).
      count: m, the number of history points (int32).
    """

    x: jax.Array
    y: jax.Array
    k_dev: jax.Array
    l_dev: jax.Array
    k_mean: jax.Array
    l_mean: jax.Array
    comoment: jax.Array
    count: jax.Array


class MmdWitness(NamedTuple):
    """The two-sample test's history and the squared norm of its MMD witness.

    Attributes:
      x: (capacity, d) past x_s. y: (capacity, d) past y_s (rows past `count` are zero).
      h_sum: sum_ij h(i, j), h(i, j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i),
        which is m^2 ||mu_x - mu_y||^2.
      count: m, the number of past observations of each sample (int32).
    """

    x: jax.Array
    y: jax.Array
    h_sum: jax.Array
    count: jax.Array


class BettingState(NamedTuple):
    """State of a sequential test by betting after t steps.

    Attributes:
      witness: the test's history (`HsicWitness` for SKIT, `MmdWitness` for the two-sample test).
      bettor: the betting strategy's state and the log-wealth.
      payoff: the latest payoff f_t in [-1, 1] (0 before the first step).
      step: t, the number of steps taken (int32).
      rejected: whether W_s >= 1/alpha at some s <= t (False once the wealth is NaN).
      stopping_time: tau ∧ t (int32), see `SequentialResult`.
      overflow: whether a step came past the capacity of the history buffers. That can only
        happen under `jit`/`vmap` (an eager step raises); the state then stops updating, its
        log-wealth is NaN and `rejected` is False: a wealth computed from a truncated history
        would be wrong. Create the state with a larger capacity.
    """

    witness: HsicWitness | MmdWitness
    bettor: Bettor
    payoff: jax.Array
    step: jax.Array
    rejected: jax.Array
    stopping_time: jax.Array
    overflow: jax.Array

    @property
    def wealth(self):
        """W_t (NaN once the test is void: non-finite data or a step past the capacity)."""
        return jnp.exp(self.bettor.log_wealth)


# ------------------------------------------------------------------------------- betting


def _bettor_init(dtype) -> Bettor:
    zero = jnp.zeros((), dtype)
    return Bettor(zero, zero, jnp.ones((), dtype), zero, zero)


def _fraction(bettor: Bettor, bet: str, max_bet: float):
    """The betting fraction lambda_t, a function of the past payoffs only."""
    if bet == "ons":
        return bettor.ons_fraction
    ratio = (_AGRAPA_PRIOR_MEAN + bettor.payoff_sum) / (
        _AGRAPA_PRIOR_SECOND_MOMENT + bettor.payoff_sq_sum
    )
    return jnp.clip(ratio, 0.0, max_bet)


def _bet(bettor: Bettor, payoff, bet: str, max_bet: float) -> Bettor:
    """Stakes lambda_t on the payoff f_t, then updates the strategy (module docstring)."""
    lam = _fraction(bettor, bet, max_bet)
    log_wealth = bettor.log_wealth + jnp.log1p(lam * payoff)
    ons_fraction, ons_scale = bettor.ons_fraction, bettor.ons_scale
    if bet == "ons":
        z = payoff / (1.0 + lam * payoff)  # d/d(lambda) log(1 + lambda f)
        ons_scale = ons_scale + z**2
        ons_fraction = jnp.clip(lam + _ONS_GAIN * z / ons_scale, 0.0, max_bet)
    return Bettor(
        log_wealth,
        ons_fraction,
        ons_scale,
        bettor.payoff_sum + payoff,
        bettor.payoff_sq_sum + payoff**2,
    )


def _advance(state: BettingState, witness, payoff, finite, log_threshold, bet, max_bet):
    """The state after betting on `payoff`; `finite` says whether the step's data were finite.

    A payoff from non-finite data (or a non-finite one: kernel values that overflowed) is NaN,
    never a number that the clip and the zero-norm guard would make look valid; the log-wealth
    then stays NaN (NaN + x = NaN) and a NaN wealth never rejects and clears an earlier
    rejection: the run is void, as the eager call would have raised.
    """
    payoff = jnp.where(finite & jnp.isfinite(payoff), payoff, jnp.nan)
    bettor = _bet(state.bettor, payoff, bet, max_bet)
    step = state.step + 1
    log_wealth = bettor.log_wealth
    valid = ~jnp.isnan(log_wealth)
    crossed = log_wealth >= jnp.asarray(log_threshold).astype(log_wealth.dtype)
    rejected = (state.rejected | crossed) & valid
    stopping_time = jnp.where(state.rejected & valid, state.stopping_time, step)
    return BettingState(witness, bettor, payoff, step, rejected, stopping_time, state.overflow)


def _guard_capacity(state: BettingState, new: BettingState, needed: int) -> BettingState:
    """`new`, or, when the step did not fit in the history buffers, `state` frozen and void.

    Under `jit` the eager capacity check cannot run, and writing past the buffers would drop
    the new points while the running sums still counted them (a wrong wealth: 2.14 instead of
    33.9 after 80 points in 4 slots). A void state has log-wealth NaN, `rejected` False and
    `overflow` True, and stays so.
    """
    w = state.witness
    fits = (w.count + needed <= w.x.shape[0]) & ~state.overflow
    nan = jnp.full_like(state.bettor.log_wealth, jnp.nan)
    void = state._replace(
        bettor=state.bettor._replace(log_wealth=nan),
        payoff=nan,
        rejected=jnp.bool_(False),
        stopping_time=state.step,
        overflow=jnp.bool_(True),
    )
    return jax.tree.map(lambda a, b: jnp.where(fits, a, b), new, void)


def _all_finite(*arrays):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def _initial_state(witness, dtype) -> BettingState:
    zero_int = jnp.zeros((), jnp.int32)
    false = jnp.bool_(False)
    return BettingState(
        witness, _bettor_init(dtype), jnp.zeros((), dtype), zero_int, false, zero_int, false
    )


def _safe_ratio(numerator, norm2, valid):
    """numerator / sqrt(norm2) where valid, else 0 (no NaN in either branch's gradient)."""
    root = jnp.sqrt(jnp.where(valid, norm2, 1.0))
    return jnp.where(valid, numerator / root, 0.0)


def _append(buffer, rows, count):
    """`buffer` with `rows` written at positions count, count + 1, ...

    A masked select rather than `dynamic_update_slice`: under `vmap` the count is batched and a
    batched dynamic index turns into a scatter, while the select stays elementwise; the step
    does O(capacity) work anyway.
    """
    index = jnp.arange(buffer.shape[0], dtype=count.dtype) - count
    out = buffer
    for j in range(rows.shape[0]):
        if buffer.ndim == 2:
            out = jnp.where((index == j)[:, None], rows[j][None, :], out)
        else:
            out = jnp.where(index == j, rows[j], out)
    return out


def _masked_rows(kernel, points, history, count):
    """[k(p, h_j)] for the new points against the first `count` history rows, zero beyond."""
    mask = (jnp.arange(history.shape[0], dtype=count.dtype) < count)[None, :]
    rows = kernel.gram(points, history)
    return jnp.where(mask, rows, jnp.zeros((), rows.dtype))


# ------------------------------------------------------------------------------- SKIT


def _hsic_norm2_terms(w: HsicWitness):
    """(sum_ij (K_ij - k_bar)(L_ij - l_bar), (2/m) sum_i r_i s_i), whose difference is m^2 ||g||^2.

    m^2 ||g||^2 = tr(KL) - (2/m) (K1).(L1) + (1'K1)(1'L1) / m^2 = tr(KHLH), and substituting
    (K1)_i = m k_bar + r_i (sum_i r_i = 0) gives the two centred terms. The plain form subtracts
    O(m^2) sums to get an O(m) result: in float32 at m = 2000 (independent data) its relative
    error was ~5e-3, the centred form's ~5e-6.
    """
    m = jnp.maximum(w.count, 1).astype(w.comoment.dtype)
    return w.comoment, 2.0 * jnp.dot(w.k_dev, w.l_dev) / m


def _hsic_witness_norm2(w: HsicWitness):
    """||g||^2 of the empirical HSIC witness g = C_xy - mu_x (x) mu_y of the m history points.

    ||g||^2 = tr(KHLH) / m^2, the biased HSIC of the history (0 when m = 0).
    """
    comoment, rows = _hsic_norm2_terms(w)
    m = jnp.maximum(w.count, 1).astype(w.comoment.dtype)
    return (comoment - rows) / m**2


def _hsic_update(w: HsicWitness, x_pair, y_pair, kernel_x, kernel_y):
    """The SKIT payoff of one new pair against the history, and the history with the pair added.

    With m history points, k_a = [k(x_a, x_i)]_i, l_a = [l(y_a, y_i)]_i for the pair's points
    a = 2t, b = 2t + 1, dk = k_b - k_a and dl = l_b - l_a:
      f = 1/2 [g(x_b, y_b) + g(x_a, y_a) - g(x_a, y_b) - g(x_b, y_a)] / ||g||
        = 1/2 [dk.dl - (1'dk)(1'dl) / m] / sqrt(m^2 ||g||^2),
    with g(x, y) = (1/m) sum_i k(x, x_i) l(y, y_i) - (1/m sum_i k(x, x_i)) (1/m sum_i l(y, y_i))
    (Podkopaev et al. 2023).

    The update treats the entries of K and L as a growing set of paired values: the pair adds
    n_B = 4m + 4 entries (its rows and columns against the history, twice each, and its own
    2 x 2 block), merged into the means and the co-moment with the pairwise update of Chan,
    Golub & LeVeque (1979); the centred row sums gain the pair's rows minus the shift of
    m k_bar, and two new rows are appended. O(m) work.
    """
    m = w.count
    dtype = w.comoment.dtype
    capacity = w.x.shape[0]
    mask = (jnp.arange(capacity, dtype=m.dtype) < m)[None, :]
    kx = _masked_rows(kernel_x, x_pair, w.x, m)  # (2, capacity)
    ly = _masked_rows(kernel_y, y_pair, w.y, m)
    mf = m.astype(dtype)
    safe_m = jnp.maximum(mf, 1.0)

    # The payoff, from the history before the pair.
    dk, dl = kx[1] - kx[0], ly[1] - ly[0]
    numerator = jnp.dot(dk, dl) - jnp.sum(dk) * jnp.sum(dl) / safe_m  # m <g, dphi (x) dpsi>
    comoment, row_term = _hsic_norm2_terms(w)
    norm2 = comoment - row_term  # m^2 ||g||^2
    # Predictable: whether to bet depends on the history only. An empty history, or a witness
    # at round-off level, gives a zero payoff.
    valid = (m > 0) & (norm2 > jnp.finfo(dtype).eps * (jnp.abs(comoment) + jnp.abs(row_term)))
    payoff = jnp.clip(0.5 * _safe_ratio(numerator, norm2, valid), -1.0, 1.0)
    # A NaN history (or kernel row) must not read as "witness at round-off level, payoff 0".
    payoff = jnp.where(jnp.isfinite(numerator) & jnp.isfinite(norm2), payoff, jnp.nan)

    # Merge the n_B new kernel entries into the means and the co-moment.
    pair_k = kernel_x.gram(x_pair, x_pair)
    pair_l = kernel_y.gram(y_pair, y_pair)
    n_old = mf**2
    n_new = 4.0 * mf + 4.0
    k_mean_new_entries = (2.0 * jnp.sum(kx) + jnp.sum(pair_k)) / n_new
    l_mean_new_entries = (2.0 * jnp.sum(ly) + jnp.sum(pair_l)) / n_new
    zero = jnp.zeros((), dtype)
    cross = jnp.where(mask, (kx - k_mean_new_entries) * (ly - l_mean_new_entries), zero)
    comoment_new_entries = 2.0 * jnp.sum(cross) + jnp.sum(
        (pair_k - k_mean_new_entries) * (pair_l - l_mean_new_entries)
    )
    fraction = n_new / (n_old + n_new)
    delta_k = k_mean_new_entries - w.k_mean
    delta_l = l_mean_new_entries - w.l_mean
    k_mean = w.k_mean + fraction * delta_k
    l_mean = w.l_mean + fraction * delta_l
    comoment = w.comoment + comoment_new_entries + n_old * fraction * delta_k * delta_l

    # Centred row sums: r_i + k_ai + k_bi - ((m + 2) k_bar' - m k_bar) on the old rows.
    m_next = mf + 2.0
    k_shift = m_next * fraction * delta_k + 2.0 * w.k_mean
    l_shift = m_next * fraction * delta_l + 2.0 * w.l_mean
    k_dev = w.k_dev + jnp.where(mask[0], kx[0] + kx[1] - k_shift, zero)
    l_dev = w.l_dev + jnp.where(mask[0], ly[0] + ly[1] - l_shift, zero)
    k_dev_pair = jnp.sum(kx, axis=1) + jnp.sum(pair_k, axis=1) - m_next * k_mean
    l_dev_pair = jnp.sum(ly, axis=1) + jnp.sum(pair_l, axis=1) - m_next * l_mean
    new = HsicWitness(
        x=_append(w.x, x_pair, m),
        y=_append(w.y, y_pair, m),
        k_dev=_append(k_dev, k_dev_pair, m),
        l_dev=_append(l_dev, l_dev_pair, m),
        k_mean=k_mean,
        l_mean=l_mean,
        comoment=comoment,
        count=m + 2,
    )
    return payoff, new


def _float_dtype(dtype):
    """The state's dtype: float32 for float16 / bfloat16, whose running sums over O(m^2) kernel
    values would overflow or round away (as `kmethods._checks.as_points` does for data)."""
    try:
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
    if jnp.finfo(dtype).bits < 32:
        dtype = jnp.dtype(jnp.float32)
    return dtype


def skit_init(num_pairs, x_dim, y_dim, *, dtype=None) -> BettingState:
    """The state of SKIT before any data: W_0 = 1, an empty history of capacity 2 * num_pairs.

    Args:
      num_pairs: the most pairs the state will see (the history buffers hold 2 * num_pairs
        points; a step beyond that raises).
      x_dim, y_dim: dimensions of x and y.
      dtype: floating dtype of the buffers and sums (default: float32, or float64 in x64 mode;
        float16 and bfloat16 give float32).

    Returns:
      A `BettingState` with an `HsicWitness` history, for `skit_step`.
    """
    num_pairs = _checks.positive_int(num_pairs, "num_pairs")
    x_dim = _checks.positive_int(x_dim, "x_dim")
    y_dim = _checks.positive_int(y_dim, "y_dim")
    dtype = _float_dtype(dtype)
    capacity = 2 * num_pairs
    zero = jnp.zeros((), dtype)
    witness = HsicWitness(
        x=jnp.zeros((capacity, x_dim), dtype),
        y=jnp.zeros((capacity, y_dim), dtype),
        k_dev=jnp.zeros((capacity,), dtype),
        l_dev=jnp.zeros((capacity,), dtype),
        k_mean=zero,
        l_mean=zero,
        comoment=zero,
        count=jnp.zeros((), jnp.int32),
    )
    return _initial_state(witness, dtype)


def _check_bet(bet, max_bet) -> float:
    _checks.choice(bet, "bet", BETS)
    if max_bet is None:
        return DEFAULT_MAX_BET[bet]
    return _checks.probability(max_bet, "max_bet")


def _log_threshold(alpha):
    """log(1 / alpha). A traced alpha (a level vmapped over) is supported: it only enters the
    comparison with the log-wealth; outside (0, 1) its threshold is NaN, which never rejects."""
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    if isinstance(alpha, float):
        return -math.log(alpha)
    inside = (alpha > 0) & (alpha < 1)
    return jnp.where(inside, -jnp.log(jnp.where(inside, alpha, 0.5)), jnp.nan)


def _check_step(state, witness_type, name, kernels, alpha, bet, max_bet):
    """Validates an online step's state and options; returns (max_bet, log(1 / alpha))."""
    if not isinstance(state, BettingState) or not isinstance(state.witness, witness_type):
        raise TypeError(f"`state` must come from `{name}_init` or `{name}_step`.")
    for kernel_name, kernel in kernels.items():
        check_kernel(kernel, kernel_name)
    return _check_bet(bet, max_bet), _log_threshold(alpha)


def _step_points(points, name, buffer, rows: int):
    """Validates one step's points against the state's buffer (shape, dtype; finite values)."""
    points = jnp.asarray(points)
    if points.ndim == 1 and buffer.shape[1] == 1 and rows > 1:
        points = points.reshape(rows, 1)
    if points.ndim == 1 and rows == 1:
        points = points.reshape(1, -1)
    if points.shape != (rows, buffer.shape[1]):
        raise ValueError(
            f"`{name}` must have shape ({rows}, {buffer.shape[1]}) to match the state, "
            f"got {points.shape}."
        )
    _checks.check_finite(points, name)
    return points.astype(buffer.dtype)


def _check_capacity(count, needed, capacity, what):
    """Eager only; under `jit`/`vmap` the step voids the state instead (`_guard_capacity`)."""
    if _checks.is_concrete(count) and int(count) + needed > capacity:
        raise ValueError(
            f"the state's history is full ({capacity} points); create it with a larger `{what}`."
        )


def skit_step(
    state: BettingState,
    x_pair,
    y_pair,
    kernel_x,
    kernel_y,
    *,
    alpha=0.05,
    bet="ons",
    max_bet=None,
) -> BettingState:
    """One SKIT step: bets on the next pair of points, then adds the pair to the history.

    The payoff of the pair (x_{2t}, y_{2t}), (x_{2t+1}, y_{2t+1}) compares the two observed
    pairs with the two cross pairs under the HSIC witness of the history (see `skit`); O(m)
    kernel evaluations for m history points. Composable with `jit` (pass the options as static
    or closed-over values) and `vmap`.

    Eagerly, a step past the state's capacity or with non-finite points raises. Under
    `jit`/`vmap`, where those checks cannot run, such a step voids the state instead: NaN
    wealth, `rejected` False; past the capacity the state also stops updating and sets
    `overflow` (see `BettingState`).

    Args:
      state: from `skit_init` or a previous step.
      x_pair: (2, d_x) the next two x's. y_pair: (2, d_y) the next two y's.
      kernel_x, kernel_y: kernels on x and y (the same at every step).
      alpha: level in (0, 1); the state records the first step with W_t >= 1/alpha. May be
        traced (e.g. vmapped over).
      bet: "ons" or "agrapa".
      max_bet: truncation of the betting fraction, in (0, 1) (default 0.5 for ONS, 0.9 for
        aGRAPA).

    Returns:
      The next `BettingState`.
    """
    kernels = {"kernel_x": kernel_x, "kernel_y": kernel_y}
    max_bet, log_threshold = _check_step(state, HsicWitness, "skit", kernels, alpha, bet, max_bet)
    w = state.witness
    x_pair = _step_points(x_pair, "x_pair", w.x, 2)
    y_pair = _step_points(y_pair, "y_pair", w.y, 2)
    _check_capacity(w.count, 2, w.x.shape[0], "num_pairs")
    return _online_skit_step(
        state, x_pair, y_pair, kernel_x, kernel_y, log_threshold, bet=bet, max_bet=max_bet
    )


# The online steps are jitted as a whole: eagerly they ran op by op, and the guards added ops.
@partial(jax.jit, static_argnames=("bet", "max_bet"))
def _online_skit_step(state, x_pair, y_pair, kernel_x, kernel_y, log_threshold, *, bet, max_bet):
    new = _skit_step(state, x_pair, y_pair, kernel_x, kernel_y, log_threshold, bet, max_bet)
    return _guard_capacity(state, new, 2)


def _skit_step(state, x_pair, y_pair, kernel_x, kernel_y, log_threshold, bet, max_bet):
    payoff, witness = _hsic_update(state.witness, x_pair, y_pair, kernel_x, kernel_y)
    finite = _all_finite(x_pair, y_pair)
    return _advance(state, witness, payoff, finite, log_threshold, bet, max_bet)


def _stream(x, y, *, min_length: int, what: str):
    """Validates a stream of paired arrivals: (n, d) arrays of the same length n >= min_length."""
    x = _checks.as_points(x, "x", min_points=1)
    y = _checks.as_points(y, "y", min_points=1)
    _checks.same_length(x, y, "x", "y")
    if x.shape[0] < min_length:
        raise ValueError(
            f"`x` and `y` must hold at least {min_length} {what} (one step to start the "
            f"history, one to bet on), got {x.shape[0]}."
        )
    return _checks.promote(x, y)


def skit(key, x, y, kernel_x, kernel_y, *, alpha=0.05, bet="ons", max_bet=None):
    """Sequential kernelized independence test (SKIT) of H0: x and y are independent.

    The stream (x_i, y_i), i = 0..n-1, is read in pairs of points; pair t = 0..T-1,
    T = n // 2, is (z_{2t}, z_{2t+1}) (an odd last point is left out). The payoff of pair t is
      f_t = 1/2 [g(x_{2t+1}, y_{2t+1}) + g(x_{2t}, y_{2t}) - g(x_{2t}, y_{2t+1})
                 - g(x_{2t+1}, y_{2t})] / ||g||,
    with g(x, y) = (1/m) sum_i k(x, x_i) l(y, y_i) - (1/m sum_i k(x, x_i)) (1/m sum_i l(y, y_i))
    the HSIC witness of the m = 2t points before the pair and ||g|| its RKHS norm
    (sqrt of the biased HSIC of the history). Under H0, swapping y_{2t} and y_{2t+1} leaves the
    law of the pair unchanged and negates f_t, so E[f_t | past] = 0 and the wealth
    W_t = W_{t-1} (1 + lambda_t f_t) is a test martingale; the test rejects at the first t with
    W_t >= 1/alpha (Ville's inequality), valid under continuous monitoring. The first pair only
    starts the history (f_0 = 0, W_1 = 1), as in the reference code.

    For kernels with 0 <= k <= 1 (Gaussian, Laplace, Matern, ...) |f_t| <= 1 by Cauchy-Schwarz.
    Other kernels are clipped to [-1, 1]; clipping is odd, so the payoff stays symmetric under
    H0 and the test stays valid.

    Each step evaluates the kernels between the pair and the history (O(n) per step, O(n^2)
    per stream, O(n) memory) and updates running sums; nothing is recomputed. The stream runs
    in `lax.scan` (a long one in a few scans with growing buffers, see `_scan_in_phases`);
    `vmap` it over streams.

    Args:
      key: PRNG key. The HSIC payoff is deterministic, so the key is not consumed; it keeps
        the signature of the library's other tests.
      x: (n, d_x). y: (n, d_y): the stream, in arrival order; n >= 4 (two pairs).
      kernel_x, kernel_y: kernels on x and y, fixed in advance (not from the data).
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      bet: betting strategy, "ons" (online Newton step) or "agrapa".
      max_bet: truncation of the betting fraction in (0, 1) (default 0.5 for ONS, 0.9 for
        aGRAPA, as in the reference code).

    Returns:
      `SequentialResult(reject, stopping_time, wealth)`, with T = n // 2 steps (pairs); the
      wealth is float32 for float16 / bfloat16 data, else of the data's dtype. Non-finite data
      (only possible under `jit`/`vmap`; eagerly they raise) void the test: NaN wealth from the
      first such pair on, `reject` False.

    References:
      Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence
      Testing", ICML 2023.
    """
    del key
    x, y = _stream(x, y, min_length=4, what="points (two pairs)")
    check_kernel(kernel_x, "kernel_x")
    check_kernel(kernel_y, "kernel_y")
    max_bet = _check_bet(bet, max_bet)
    log_threshold = _log_threshold(alpha)
    return _skit_scan(x, y, kernel_x, kernel_y, log_threshold, bet=bet, max_bet=max_bet)


@partial(jax.jit, static_argnames=("bet", "max_bet"))
def _skit_scan(x, y, kernel_x, kernel_y, log_threshold, *, bet, max_bet):
    num_pairs = x.shape[0] // 2
    x_pairs = x[: 2 * num_pairs].reshape(num_pairs, 2, x.shape[1])
    y_pairs = y[: 2 * num_pairs].reshape(num_pairs, 2, y.shape[1])
    state = skit_init(1, x.shape[1], y.shape[1], dtype=x.dtype)

    def step(state, pair):
        return _skit_step(state, *pair, kernel_x, kernel_y, log_threshold, bet, max_bet)

    return _scan_in_phases(step, state, (x_pairs, y_pairs), points_per_step=2)


def _grow(witness, capacity: int):
    """The witness with every history buffer (the leaves with a leading axis) padded to
    `capacity` rows of zeros; the scalar sums are unchanged."""

    def pad(a):
        if a.ndim == 0:
            return a
        return jnp.pad(a, [(0, capacity - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    return jax.tree.map(pad, witness)


def _scan_in_phases(step, state: BettingState, inputs, *, points_per_step: int):
    """Runs `step` over the leading axis of `inputs` in `lax.scan`s of growing capacity.

    A step costs O(capacity) however short the history is, so one scan at full capacity does
    twice the work that the history needs. A long stream is cut into P <= `_PHASES` equal
    stretches, each scanned with buffers just large enough for its last step, which brings the
    total from 2 T^2 to about (1 + 1 / P) T^2 kernel evaluations for T steps (measured: ~1.5x
    faster at T = 1000, P = 4).
    """
    num_steps = jax.tree.leaves(inputs)[0].shape[0]
    phases = max(1, min(_PHASES, num_steps // _PHASE_MIN_STEPS))
    bounds = np.linspace(0, num_steps, phases + 1).round().astype(int).tolist()
    log_wealth = []

    def body(state, item):
        state = step(state, item)
        return state, state.bettor.log_wealth

    for start, stop in itertools.pairwise(bounds):
        capacity = points_per_step * stop
        state = state._replace(witness=_grow(state.witness, capacity))
        chunk = jax.tree.map(lambda a, start=start, stop=stop: a[start:stop], inputs)
        state, lw = lax.scan(body, state, chunk)
        log_wealth.append(lw)
    log_wealth = jnp.concatenate(log_wealth)
    return SequentialResult(state.rejected, state.stopping_time, jnp.exp(log_wealth))


# ------------------------------------------------------------------------- two-sample test


def _mmd_update(w: MmdWitness, x_new, y_new, kernel):
    """The two-sample payoff of (x_t, y_t) against the history, and the updated history.

    With the plug-in witness g = (mu_x - mu_y) / ||mu_x - mu_y|| of the m past observations,
    mu_x = (1/m) sum_i k(., x_i), and h(t, i) = k(x_t, x_i) + k(y_t, y_i) - k(x_t, y_i)
    - k(x_i, y_t):
      f = (g(x_t) - g(y_t)) / 2 = sum_i h(t, i) / (2 sqrt(m^2 ||mu_x - mu_y||^2)),
    and m^2 ||mu_x - mu_y||^2 = sum_ij h(i, j) gains 2 sum_i h(t, i) + h(t, t). Summing h
    entrywise keeps the O(m^2) kernel sums from cancelling in floating point.
    """
    m = w.count
    z = jnp.concatenate([x_new, y_new])  # (2, d): x_t, y_t
    kzx = _masked_rows(kernel, z, w.x, m)  # [k(x_t, x_i); k(y_t, x_i)]
    kzy = _masked_rows(kernel, z, w.y, m)  # [k(x_t, y_i); k(y_t, y_i)]
    h_row = jnp.sum((kzx[0] - kzy[0]) - (kzx[1] - kzy[1]))  # sum_i h(t, i)
    norm2 = w.h_sum
    # An empty history or a witness of norm 0 (all points equal so far) gives a zero payoff.
    # Any positive normaliser keeps the payoff odd under swapping x_t and y_t, so validity
    # never depends on its accuracy.
    valid = (m > 0) & (norm2 > 0)
    payoff = jnp.clip(0.5 * _safe_ratio(h_row, norm2, valid), -1.0, 1.0)
    # A NaN history (or kernel row) must not read as "witness of norm 0, payoff 0".
    payoff = jnp.where(jnp.isfinite(h_row) & jnp.isfinite(norm2), payoff, jnp.nan)
    pair = kernel.gram(z, z)
    h_self = (pair[0, 0] - pair[0, 1]) + (pair[1, 1] - pair[1, 0])
    new = MmdWitness(
        x=_append(w.x, x_new, m),
        y=_append(w.y, y_new, m),
        h_sum=w.h_sum + 2.0 * h_row + h_self,
        count=m + 1,
    )
    return payoff, new


def mmd_betting_init(num_steps, dim, *, dtype=None) -> BettingState:
    """The state of the two-sample test by betting before any data (W_0 = 1).

    Args:
      num_steps: the most observations (x_t, y_t) the state will see (buffer capacity).
      dim: dimension d of x and y.
      dtype: floating dtype (default: float32, or float64 in x64 mode; float16 and bfloat16
        give float32).

    Returns:
      A `BettingState` with an `MmdWitness` history, for `mmd_betting_step`.
    """
    num_steps = _checks.positive_int(num_steps, "num_steps")
    dim = _checks.positive_int(dim, "dim")
    dtype = _float_dtype(dtype)
    witness = MmdWitness(
        x=jnp.zeros((num_steps, dim), dtype),
        y=jnp.zeros((num_steps, dim), dtype),
        h_sum=jnp.zeros((), dtype),
        count=jnp.zeros((), jnp.int32),
    )
    return _initial_state(witness, dtype)


def mmd_betting_step(
    state: BettingState, x_new, y_new, kernel, *, alpha=0.05, bet="ons", max_bet=None
) -> BettingState:
    """One step of the two-sample test by betting: bets on (x_t, y_t), then adds them.

    Args:
      state: from `mmd_betting_init` or a previous step.
      x_new: (d,) or (1, d), the next x ~ P. y_new: the next y ~ Q, same shape.
      kernel: the kernel of the MMD.
      alpha, bet, max_bet: as in `mmd_betting_test`.

    Eagerly, a step past the state's capacity or with non-finite points raises; under
    `jit`/`vmap` it voids the state instead, as in `skit_step`.

    Returns:
      The next `BettingState`.
    """
    max_bet, log_threshold = _check_step(
        state, MmdWitness, "mmd_betting", {"kernel": kernel}, alpha, bet, max_bet
    )
    w = state.witness
    x_new = _step_points(x_new, "x_new", w.x, 1)
    y_new = _step_points(y_new, "y_new", w.y, 1)
    _check_capacity(w.count, 1, w.x.shape[0], "num_steps")
    return _online_mmd_step(state, x_new, y_new, kernel, log_threshold, bet=bet, max_bet=max_bet)


@partial(jax.jit, static_argnames=("bet", "max_bet"))
def _online_mmd_step(state, x_new, y_new, kernel, log_threshold, *, bet, max_bet):
    new = _mmd_betting_step(state, x_new, y_new, kernel, log_threshold, bet, max_bet)
    return _guard_capacity(state, new, 1)


def _mmd_betting_step(state, x_new, y_new, kernel, log_threshold, bet, max_bet):
    payoff, witness = _mmd_update(state.witness, x_new, y_new, kernel)
    finite = _all_finite(x_new, y_new)
    return _advance(state, witness, payoff, finite, log_threshold, bet, max_bet)


def mmd_betting_test(key, x, y, kernel, *, alpha=0.05, bet="ons", max_bet=None):
    """Sequential two-sample test by betting of H0: P = Q, with the kernel-MMD witness payoff.

    At step t = 0..T-1 one observation of each sample arrives, x_t ~ P and y_t ~ Q. The payoff is
      f_t = (g_t(x_t) - g_t(y_t)) / 2,  g_t = (mu_x - mu_y) / ||mu_x - mu_y||,
    with mu_x = (1/t) sum_{s<t} k(., x_s), mu_y likewise: the plug-in estimate of the MMD's
    witness function from the past, normalised to unit RKHS norm (Shekhar & Ramdas 2023, their
    kernel-MMD test). For k(x, x) <= 1, |g_t| <= 1 and so |f_t| <= 1; other kernels are clipped to
    [-1, 1]. Under H0, x_t and y_t are exchangeable given the past and swapping them negates
    f_t, so the wealth W_t = W_{t-1} (1 + lambda_t f_t) is a test martingale and rejecting at
    W_t >= 1/alpha is valid at any stopping time (Ville's inequality). The first step only starts
    the history (f_0 = 0). Betting fractions come from the same ONS / aGRAPA code as `skit`;
    they are kept >= 0 since the witness is oriented so that E[f_t] > 0 under the alternative.

    Args:
      key: PRNG key; the payoff is deterministic, so it is not consumed (uniform signature).
      x: (T, d) the observations from P, in arrival order. y: (T, d) those from Q; T >= 2.
      kernel: a kernel fixed in advance (e.g. `Gaussian(bandwidth)`).
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      bet: "ons" or "agrapa".
      max_bet: truncation of the betting fraction in (0, 1) (default 0.5 / 0.9).

    Returns:
      `SequentialResult(reject, stopping_time, wealth)` over T steps; the wealth is float32 for
      float16 / bfloat16 data, else of the data's dtype. Non-finite data (only possible under
      `jit`/`vmap`) void the test as in `skit`.

    References:
      Shekhar & Ramdas, "Nonparametric Two-Sample Testing by Betting", IEEE Transactions on
      Information Theory, 2023.
    """
    del key
    x, y = _stream(x, y, min_length=2, what="observations each")
    _checks.same_dimension(x, y, "x", "y")
    check_kernel(kernel)
    max_bet = _check_bet(bet, max_bet)
    log_threshold = _log_threshold(alpha)
    return _mmd_scan(x, y, kernel, log_threshold, bet=bet, max_bet=max_bet)


@partial(jax.jit, static_argnames=("bet", "max_bet"))
def _mmd_scan(x, y, kernel, log_threshold, *, bet, max_bet):
    d = x.shape[1]
    state = mmd_betting_init(1, d, dtype=x.dtype)

    def step(state, obs):
        xt, yt = obs
        return _mmd_betting_step(
            state, xt.reshape(1, d), yt.reshape(1, d), kernel, log_threshold, bet, max_bet
        )

    return _scan_in_phases(step, state, (x, y), points_per_step=1)
