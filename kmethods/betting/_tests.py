"""The two sequential tests by betting: SKIT (independence) and the MMD two-sample test, as
`(init, step)` factories and as one-call tests over a whole stream.

The one-call tests build their test with the factory and run its pure `step` in `lax.scan`
(`scan_in_phases`), so there is one implementation of each step.

References:
  Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence Testing",
  ICML 2023 (SKIT; their reference code, a-podkopaev/Sequential-Kernelized-Independence-Testing,
  fixes the details followed here).
  Shekhar & Ramdas, "Nonparametric Two-Sample Testing by Betting", IEEE Transactions on
  Information Theory, 2023 (arXiv:2112.09162).
"""

from __future__ import annotations

import jax
from jax.tree_util import Partial
from jaxtyping import Array, Float, PRNGKeyArray

from kmethods import _checks
from kmethods.betting._bettors import Bettor, bettor_from, ons
from kmethods.betting._core import (
    BettingState,
    SequentialResult,
    SequentialTest,
    advance,
    all_finite,
    float_dtype,
    guard_capacity,
    initial_state,
    log_threshold,
    scan_in_phases,
    step_points,
)
from kmethods.betting._witness import (
    empty_hsic_witness,
    empty_mmd_witness,
    hsic_update,
    mmd_update,
)
from kmethods.kernels import Kernel, check_kernel

__all__ = ["mmd_betting", "mmd_betting_test", "skit", "skit_test"]


def _check_bettor(bettor) -> Bettor:
    if bettor is None:
        return ons()
    if not isinstance(bettor, Bettor):
        raise TypeError(
            f"`bettor` must be a `Bettor` (e.g. `ons()`, `agrapa()`), got {type(bettor).__name__}."
        )
    return bettor


# ------------------------------------------------------------------------------- SKIT


def skit_test(
    kernel_x: Kernel,
    kernel_y: Kernel,
    *,
    alpha: float | Float[Array, ""] = 0.05,
    bettor: Bettor | None = None,
) -> SequentialTest:
    """SKIT, the sequential kernelized independence test, as an `(init, step)` pair.

    A step reads one pair of points (x_{2t}, y_{2t}), (x_{2t+1}, y_{2t+1}) and bets on the
    HSIC-witness payoff of the pair against the history (see `skit`); O(m) kernel evaluations
    for m history points. The options are fixed here, once:

        test = skit_test(kx, ky, alpha=0.05, bettor=agrapa())
        state = test.init(num_pairs, x_dim, y_dim)
        state, _ = lax.scan(lambda s, p: (test.step(s, *p), None), state, (x_pairs, y_pairs))

    Args:
      kernel_x, kernel_y: kernels on x and y, fixed in advance (not from the data).
      alpha: level in (0, 1); the state records the first step with W_t >= 1/alpha. May be
        traced (e.g. vmapped over); a traced alpha outside (0, 1) never rejects.
      bettor: the betting strategy (default `ons()`).

    Returns:
      A `SequentialTest`: `init(num_pairs, x_dim, y_dim, *, dtype=None) -> BettingState`, whose
      history holds 2 * num_pairs points (dtype: float32, or float64 in x64 mode; float16 and
      bfloat16 give float32), and the pure `step(state, x_pair, y_pair) -> BettingState` with
      x_pair: (2, d_x), y_pair: (2, d_y).

    References:
      Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence
      Testing", ICML 2023.
    """
    check_kernel(kernel_x, "kernel_x")
    check_kernel(kernel_y, "kernel_y")
    bettor = _check_bettor(bettor)
    step = Partial(
        _bet_step,
        update=Partial(hsic_update, kernel_x=kernel_x, kernel_y=kernel_y),
        bettor=bettor,
        log_threshold=log_threshold(alpha),
    )
    return SequentialTest(Partial(_skit_init, bettor=bettor), step)


def _skit_init(num_pairs, x_dim, y_dim, *, bettor, dtype=None) -> BettingState:
    num_pairs = _checks.positive_int(num_pairs, "num_pairs")
    x_dim = _checks.positive_int(x_dim, "x_dim")
    y_dim = _checks.positive_int(y_dim, "y_dim")
    dtype = float_dtype(dtype)
    return initial_state(empty_hsic_witness(2 * num_pairs, x_dim, y_dim, dtype), bettor, dtype)


def _bet_step(state, x, y, *, update, bettor, log_threshold) -> BettingState:
    """One step of a betting test: `update(witness, x, y) -> (payoff, witness)` is the test's
    own payoff (a `Partial` holding its kernels), and the witness's `STEP` says how many new
    points of each sample the step reads (static, from the witness's type)."""
    points = state.witness.STEP.points
    x = step_points(x, state.witness.x, points)
    y = step_points(y, state.witness.y, points)
    payoff, witness = update(state.witness, x, y)
    new = advance(state, witness, payoff, all_finite(x, y), log_threshold, bettor)
    return guard_capacity(state, new, points)


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


def skit(
    key: PRNGKeyArray | None,
    x: Float[Array, "n d_x"],
    y: Float[Array, "n d_y"],
    kernel_x: Kernel,
    kernel_y: Kernel,
    *,
    alpha: float | Float[Array, ""] = 0.05,
    bet: str | Bettor = "ons",
    max_bet: float | None = None,
) -> SequentialResult:
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

    Runs `skit_test`'s step over the stream in `lax.scan` (a long stream in a few scans with
    growing buffers): O(n) per step, O(n^2) per stream, O(n) memory. `vmap` it over streams.

    Args:
      key: PRNG key. The HSIC payoff is deterministic, so the key is not consumed; it keeps
        the signature of the library's other tests.
      x: (n, d_x). y: (n, d_y): the stream, in arrival order; n >= 4 (two pairs).
      kernel_x, kernel_y: kernels on x and y, fixed in advance (not from the data).
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      bet: betting strategy, "ons" (online Newton step), "agrapa", or a `Bettor`.
      max_bet: truncation of the betting fraction in (0, 1) (default 0.5 for ONS, 0.9 for
        aGRAPA, as in the reference code); only with a named `bet`.

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
    bettor = bettor_from(bet, max_bet)
    return _run_skit(skit_test(kernel_x, kernel_y, alpha=alpha, bettor=bettor), x, y)


@jax.jit
def _run_skit(test: SequentialTest, x, y) -> SequentialResult:
    num_pairs = x.shape[0] // 2
    x_pairs = x[: 2 * num_pairs].reshape(num_pairs, 2, x.shape[1])
    y_pairs = y[: 2 * num_pairs].reshape(num_pairs, 2, y.shape[1])
    state = test.init(1, x.shape[1], y.shape[1], dtype=x.dtype)
    return scan_in_phases(test.step, state, (x_pairs, y_pairs), points_per_step=2)


# ------------------------------------------------------------------------- two-sample test


def mmd_betting(
    kernel: Kernel,
    *,
    alpha: float | Float[Array, ""] = 0.05,
    bettor: Bettor | None = None,
) -> SequentialTest:
    """The sequential two-sample test by betting with the kernel-MMD witness, as `(init, step)`.

    A step reads one observation of each sample, x_t ~ P and y_t ~ Q, and bets on the payoff of
    the plug-in MMD witness of the past (see `mmd_betting_test`).

    Args:
      kernel: the kernel of the MMD, fixed in advance.
      alpha: level in (0, 1); may be traced.
      bettor: the betting strategy (default `ons()`).

    Returns:
      A `SequentialTest`: `init(num_steps, dim, *, dtype=None) -> BettingState` with room for
      `num_steps` observations of each sample, and the pure
      `step(state, x_new, y_new) -> BettingState` with x_new, y_new: (d,) or (1, d).

    References:
      Shekhar & Ramdas, "Nonparametric Two-Sample Testing by Betting", IEEE Transactions on
      Information Theory, 2023.
    """
    check_kernel(kernel)
    bettor = _check_bettor(bettor)
    update = Partial(mmd_update, kernel=kernel)
    step = Partial(_bet_step, update=update, bettor=bettor, log_threshold=log_threshold(alpha))
    return SequentialTest(Partial(_mmd_init, bettor=bettor), step)


def _mmd_init(num_steps, dim, *, bettor, dtype=None) -> BettingState:
    num_steps = _checks.positive_int(num_steps, "num_steps")
    dim = _checks.positive_int(dim, "dim")
    dtype = float_dtype(dtype)
    return initial_state(empty_mmd_witness(num_steps, dim, dtype), bettor, dtype)


def mmd_betting_test(
    key: PRNGKeyArray | None,
    x: Float[Array, "T d"],
    y: Float[Array, "T d"],
    kernel: Kernel,
    *,
    alpha: float | Float[Array, ""] = 0.05,
    bet: str | Bettor = "ons",
    max_bet: float | None = None,
) -> SequentialResult:
    """Sequential two-sample test by betting of H0: P = Q, with the kernel-MMD witness payoff.

    At step t = 0..T-1 one observation of each sample arrives, x_t ~ P and y_t ~ Q. The payoff is
      f_t = (g_t(x_t) - g_t(y_t)) / 2,  g_t = (mu_x - mu_y) / ||mu_x - mu_y||,
    with mu_x = (1/t) sum_{s<t} k(., x_s), mu_y likewise: the plug-in estimate of the MMD's
    witness function from the past, normalised to unit RKHS norm (Shekhar & Ramdas 2023, their
    kernel-MMD test). For k(x, x) <= 1, |g_t| <= 1 and so |f_t| <= 1; other kernels are clipped to
    [-1, 1]. Under H0, x_t and y_t are exchangeable given the past and swapping them negates
    f_t, so the wealth W_t = W_{t-1} (1 + lambda_t f_t) is a test martingale and rejecting at
    W_t >= 1/alpha is valid at any stopping time (Ville's inequality). The first step only starts
    the history (f_0 = 0). Betting fractions come from the same bettors as `skit`; they are kept
    >= 0 since the witness is oriented so that E[f_t] > 0 under the alternative.

    Runs `mmd_betting`'s step over the stream in `lax.scan`.

    Args:
      key: PRNG key; the payoff is deterministic, so it is not consumed (uniform signature).
      x: (T, d) the observations from P, in arrival order. y: (T, d) those from Q; T >= 2.
      kernel: a kernel fixed in advance (e.g. `Gaussian(bandwidth)`).
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      bet: "ons", "agrapa" or a `Bettor`.
      max_bet: truncation of the betting fraction in (0, 1) (default 0.5 / 0.9); only with a
        named `bet`.

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
    bettor = bettor_from(bet, max_bet)
    return _run_mmd(mmd_betting(kernel, alpha=alpha, bettor=bettor), x, y)


@jax.jit
def _run_mmd(test: SequentialTest, x, y) -> SequentialResult:
    state = test.init(1, x.shape[1], dtype=x.dtype)
    return scan_in_phases(test.step, state, (x, y), points_per_step=1)
