"""What every sequential test by betting shares: its state, result and `(init, step)` pair,
the wealth update with the void and overflow rules, the history buffers and the scan.

Names here are public within the package (they cross its modules); `kmethods.betting`
exports the user-facing ones.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from kmethods import _checks
from kmethods.betting._bettors import Bettor

__all__ = ["BettingState", "SequentialResult", "SequentialTest", "checked"]

# Stretches of a stream scanned with growing history buffers (see `scan_in_phases`); a stretch
# is at least PHASE_MIN_STEPS long, since each one adds a scan to compile.
PHASES = 4
PHASE_MIN_STEPS = 200


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

    reject: Bool[Array, ""]
    stopping_time: Int[Array, ""]
    wealth: Float[Array, " T"]


class BettingState(NamedTuple):
    """State of a sequential test by betting after t steps.

    Attributes:
      witness: the test's history (`HsicWitness` for SKIT, `MmdWitness` for the two-sample test).
      payoff: the latest payoff f_t in [-1, 1] that the witness gave (0 before the first step).
      bettor: the betting strategy's state (`OnsState`, `AgrapaState`, ...).
      log_wealth: log W_t, the wealth its bets made (0 before the first step).
      step: t, the number of steps taken (int32).
      rejected: whether W_s >= 1/alpha at some s <= t (False once the wealth is NaN).
      stopping_time: tau ∧ t (int32), see `SequentialResult`.
      overflow: whether a step came past the capacity of the history buffers. The state then
        stops updating, its log-wealth is NaN and `rejected` is False: a wealth computed from a
        truncated history would be wrong. Create the state with a larger capacity.
    """

    witness: Any
    payoff: Float[Array, ""]
    bettor: Any
    log_wealth: Float[Array, ""]
    step: Int[Array, ""]
    rejected: Bool[Array, ""]
    stopping_time: Int[Array, ""]
    overflow: Bool[Array, ""]

    @property
    def wealth(self) -> Float[Array, ""]:
        """W_t (NaN once the test is void: non-finite data or a step past the capacity)."""
        return jnp.exp(self.log_wealth)


class StepSpec(NamedTuple):
    """What one step of a test reads, as its witness type's `STEP` (static class data).

    Attributes:
      points: new points of each sample per step (2 for SKIT's pairs, 1 for the two-sample test).
      names: the step's argument names for x and y, for `checked`'s errors.
      capacity_name: the `init` argument that sets the history's capacity, likewise.
    """

    points: int
    names: tuple[str, str]
    capacity_name: str


class SequentialTest(NamedTuple):
    """A sequential test by betting as a pair of functions (blackjax's `SamplingAlgorithm` shape).

    Attributes:
      init: `init(capacity..., *, dtype=None) -> BettingState`, the state before any data
        (W_0 = 1) with history buffers of a fixed capacity; its arguments are Python ints.
      step: `step(state, x, y) -> BettingState`, bets on the next step's points, then adds them
        to the history. Pure: no host-side checks, so it composes with `jit`, `lax.scan` and
        `vmap`. Non-finite points void the state (NaN wealth, `rejected` False from then on); a
        step past the capacity voids it, freezes it and sets `overflow`. Wrap the test in
        `checked` to have those raise eagerly instead.

    Both are `jax.tree_util.Partial`s, so a test is a pytree: pass it to a jitted function as an
    argument, and tests that differ only in kernel parameters, level or bettor hyperparameters
    share compiled code.
    """

    init: Callable[..., BettingState]
    step: Callable[[BettingState, Array, Array], BettingState]


# ------------------------------------------------------------------------------- the wealth


def initial_state(witness, bettor: Bettor, dtype) -> BettingState:
    zero = jnp.zeros((), dtype)
    zero_int = jnp.zeros((), jnp.int32)
    false = jnp.bool_(False)
    return BettingState(
        witness=witness,
        payoff=zero,
        bettor=bettor.init(dtype),
        log_wealth=zero,
        step=zero_int,
        rejected=false,
        stopping_time=zero_int,
        overflow=false,
    )


def advance(state: BettingState, witness, payoff, finite, log_threshold, bettor: Bettor):
    """The state after betting on `payoff`; `finite` says whether the step's data were finite.

    A payoff from non-finite data (or a non-finite one: kernel values that overflowed) is NaN,
    never a number that the clip and the zero-norm guard would make look valid; the log-wealth
    then stays NaN (NaN + x = NaN) and a NaN wealth never rejects and clears an earlier
    rejection: the run is void, as the eager call would have raised.
    """
    payoff = jnp.where(finite & jnp.isfinite(payoff), payoff, jnp.nan)
    fraction, bettor_state = bettor.update(state.bettor, payoff)
    log_wealth = state.log_wealth + jnp.log1p(fraction * payoff)
    step = state.step + 1
    valid = ~jnp.isnan(log_wealth)
    crossed = log_wealth >= jnp.asarray(log_threshold).astype(log_wealth.dtype)
    rejected = (state.rejected | crossed) & valid
    stopping_time = jnp.where(state.rejected & valid, state.stopping_time, step)
    return BettingState(
        witness, payoff, bettor_state, log_wealth, step, rejected, stopping_time, state.overflow
    )


def guard_capacity(state: BettingState, new: BettingState, needed: int) -> BettingState:
    """`new`, or, when the step did not fit in the history buffers, `state` frozen and void.

    Without the guard a step past the buffers would drop the new points while the running sums
    still counted them (a wrong wealth: 2.14 instead of 33.9 after 80 points in 4 slots). A void
    state has log-wealth NaN, `rejected` False and `overflow` True, and stays so.
    """
    w = state.witness
    fits = (w.count + needed <= w.x.shape[0]) & ~state.overflow
    nan = jnp.full_like(state.log_wealth, jnp.nan)
    void = state._replace(
        log_wealth=nan,
        payoff=nan,
        rejected=jnp.bool_(False),
        stopping_time=state.step,
        overflow=jnp.bool_(True),
    )
    return jax.tree.map(lambda a, b: jnp.where(fits, a, b), new, void)


def log_threshold(alpha):
    """log(1 / alpha). A traced alpha (a level vmapped over) is supported: it only enters the
    comparison with the log-wealth; outside (0, 1) its threshold is NaN, which never rejects."""
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    if isinstance(alpha, float):
        return -math.log(alpha)
    inside = (alpha > 0) & (alpha < 1)
    return jnp.where(inside, -jnp.log(jnp.where(inside, alpha, 0.5)), jnp.nan)


def float_dtype(dtype):
    """The state's dtype: float32 for float16 / bfloat16, whose running sums over O(m^2) kernel
    values would overflow or round away (as `kmethods._checks.as_points` does for data)."""
    try:
        dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`dtype` must be a floating dtype, got {dtype}.")
    return _checks.compute_dtype(dtype)


# ------------------------------------------------------------------------------- history


def all_finite(*arrays):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays]))


def safe_ratio(numerator, norm2, valid):
    """numerator / sqrt(norm2) where valid, else 0 (no NaN in either branch's gradient)."""
    root = jnp.sqrt(jnp.where(valid, norm2, 1.0))
    return jnp.where(valid, numerator / root, 0.0)


def append(buffer, rows, count):
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


def masked_rows(kernel, points, history, count):
    """[k(p, h_j)] for the new points against the first `count` history rows, zero beyond."""
    mask = (jnp.arange(history.shape[0], dtype=count.dtype) < count)[None, :]
    rows = kernel.gram(points, history)
    return jnp.where(mask, rows, jnp.zeros((), rows.dtype))


def step_points(points, buffer, rows: int):
    """One step's points as a (rows, d) array of the buffer's dtype ((d,) is read as one row, or
    as `rows` rows of one coordinate)."""
    return jnp.reshape(jnp.asarray(points), (rows, buffer.shape[1])).astype(buffer.dtype)


# ------------------------------------------------------------------------------- whole streams


def _grow(witness, capacity: int):
    """The witness with every history buffer (the leaves with a leading axis) padded to
    `capacity` rows of zeros; the scalar sums are unchanged."""

    def pad(a):
        if a.ndim == 0:
            return a
        return jnp.pad(a, [(0, capacity - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    return jax.tree.map(pad, witness)


def scan_in_phases(step, state: BettingState, inputs, *, points_per_step: int):
    """Runs `step` over the leading axis of `inputs` in `lax.scan`s of growing capacity.

    A step costs O(capacity) however short the history is, so one scan at full capacity does
    twice the work that the history needs. A long stream is cut into P <= `PHASES` equal
    stretches, each scanned with buffers just large enough for its last step, which brings the
    total from 2 T^2 to about (1 + 1 / P) T^2 kernel evaluations for T steps (measured: ~1.5x
    faster at T = 1000, P = 4).
    """
    num_steps = jax.tree.leaves(inputs)[0].shape[0]
    phases = max(1, min(PHASES, num_steps // PHASE_MIN_STEPS))
    bounds = np.linspace(0, num_steps, phases + 1).round().astype(int).tolist()
    log_wealth = []

    def body(state, item):
        state = step(state, *item)
        return state, state.log_wealth

    for start, stop in itertools.pairwise(bounds):
        capacity = points_per_step * stop
        state = state._replace(witness=_grow(state.witness, capacity))
        chunk = jax.tree.map(lambda a, start=start, stop=stop: a[start:stop], inputs)
        state, lw = lax.scan(body, state, chunk)
        log_wealth.append(lw)
    log_wealth = jnp.concatenate(log_wealth)
    return SequentialResult(state.rejected, state.stopping_time, jnp.exp(log_wealth))


# ------------------------------------------------------------------------------- eager checks


def checked(test: SequentialTest) -> SequentialTest:
    """`test` with a step that validates eagerly and raises instead of voiding the state.

    The step checks that the state is a `BettingState`, that the points have the shape the
    state's buffers expect and are finite, and that the history has room for them, then runs
    the pure step compiled. For interactive online monitoring; inside `jit`, `lax.scan` or
    `vmap` use `test.step` itself.

    Args:
      test: a `SequentialTest`, e.g. from `skit_test` or `mmd_betting`.

    Returns:
      A `SequentialTest` with the same `init` and the validating `step`.
    """

    verified = set()  # the witness types that this test's step accepts

    def step(state: BettingState, x, y) -> BettingState:
        w = getattr(state, "witness", None)
        kind = type(w)
        spec = getattr(kind, "STEP", None)
        if not isinstance(state, BettingState) or not isinstance(spec, StepSpec):
            raise TypeError(_FOREIGN_STATE)
        if kind not in verified:  # trace the step once on the state's kind of points
            points = [jax.ShapeDtypeStruct((spec.points, b.shape[1]), b.dtype) for b in (w.x, w.y)]
            try:
                jax.eval_shape(test.step, state, *points)
            except (AttributeError, TypeError) as error:  # a state from another kind of test
                raise TypeError(_FOREIGN_STATE) from error
            verified.add(kind)
        x = _eager_points(x, spec.names[0], w.x, spec.points)
        y = _eager_points(y, spec.names[1], w.y, spec.points)
        capacity = w.x.shape[0]
        if _checks.is_concrete(w.count) and int(w.count) + spec.points > capacity:
            raise ValueError(
                f"the state's history is full ({capacity} points); create it with a larger "
                f"`{spec.capacity_name}`."
            )
        return _jitted_step(test.step, state, x, y)

    return SequentialTest(test.init, step)


_FOREIGN_STATE = "`state` must come from the test's `init` or `step`."


@jax.jit
def _jitted_step(step, state, x, y):
    return step(state, x, y)


def _eager_points(points, name, buffer, rows: int):
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
