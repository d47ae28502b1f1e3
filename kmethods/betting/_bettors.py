"""Betting strategies as `(init, update)` pairs with their hyperparameters fixed in the factory.

A bettor chooses the fraction lambda_t of its wealth to stake on the payoff f_t in [-1, 1] from
the past payoffs only (it is predictable), and the wealth becomes W_t = W_{t-1} (1 + lambda_t f_t).
As in optax, a `Bettor` is a pair of pure functions over a small state pytree:
`init(dtype) -> state` and `update(state, payoff) -> (fraction, state)`, where `fraction` is the
lambda_t that `state` had fixed before seeing `payoff`. The test keeps the wealth; a bettor only
learns. The functions are `jax.tree_util.Partial`s, so a bettor is a pytree that `jit` takes as an
argument, and two bettors of one kind share compiled code.

- ONS (online Newton step; Cutkosky & Orabona 2018, as used by Podkopaev et al. 2023):
  lambda_1 = 0; after the payoff f_t, z_t = f_t / (1 + lambda_t f_t),
  A_t = 1 + sum_{s <= t} z_s^2, lambda_{t+1} = clip(lambda_t + 2 / (2 - log 3) z_t / A_t,
  0, max_bet), max_bet = 1/2 by default.
- aGRAPA (Waudby-Smith & Ramdas 2023): lambda_{t+1} = clip(mean(f) / mean(f^2), 0, max_bet)
  over the past payoffs, max_bet = 0.9 by default. As in the SKIT reference code both means
  include one pseudo-observation (payoff 1e-3, squared payoff 1), so
  lambda_{t+1} = clip((1e-3 + sum_s f_s) / (1 + sum_s f_s^2), 0, max_bet) and lambda_1 = 1e-3.

References:
  Cutkosky & Orabona, "Black-Box Reductions for Parameter-free Online Learning in Banach
  Spaces", COLT 2018 (ONS betting).
  Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
  2023 (aGRAPA).
  Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence Testing",
  ICML 2023 (both strategies in a kernel test; their reference code fixes the constants).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax.numpy as jnp
from jax.tree_util import Partial
from jaxtyping import Array, Float

from kmethods import _checks

__all__ = ["BETS", "DEFAULT_MAX_BET", "AgrapaState", "Bettor", "OnsState", "agrapa", "ons"]

BETS = ("ons", "agrapa")
"""The names of the betting strategies that the one-call tests accept as `bet`."""

DEFAULT_MAX_BET = {"ons": 0.5, "agrapa": 0.9}
"""Truncation of the betting fraction per strategy, as in the SKIT reference code."""

_ONS_GAIN = 2.0 / (2.0 - math.log(3.0))
# aGRAPA's pseudo-observation (mean payoff, mean squared payoff), from the SKIT reference code:
# it makes the first bet small and positive and keeps the ratio finite before any payoff.
_AGRAPA_PRIOR_MEAN = 1e-3
_AGRAPA_PRIOR_SECOND_MOMENT = 1.0


class Bettor(NamedTuple):
    """A betting strategy: a pair of pure functions (optax's `GradientTransformation` shape).

    Attributes:
      init: `init(dtype) -> state`, the strategy's state before any payoff.
      update: `update(state, payoff) -> (fraction, state)`: the fraction lambda_t in
        [0, max_bet] that `state` staked on `payoff` (a function of the past only), and the
        state after learning from `payoff`. A NaN payoff makes the state NaN.
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Float[Array, ""]], tuple[Float[Array, ""], Any]]


class OnsState(NamedTuple):
    """ONS's state.

    Attributes:
      fraction: lambda_{t+1}, the fraction for the next payoff (0 before the first one).
      scale: A_t = 1 + sum_{s <= t} z_s^2.
    """

    fraction: Float[Array, ""]
    scale: Float[Array, ""]


class AgrapaState(NamedTuple):
    """aGRAPA's state.

    Attributes:
      payoff_sum: sum of the past payoffs.
      payoff_sq_sum: sum of their squares.
    """

    payoff_sum: Float[Array, ""]
    payoff_sq_sum: Float[Array, ""]


def _ons_init(dtype) -> OnsState:
    return OnsState(jnp.zeros((), dtype), jnp.ones((), dtype))


def _ons_update(state: OnsState, payoff, *, max_bet):
    fraction = state.fraction
    z = payoff / (1.0 + fraction * payoff)  # d/d(lambda) log(1 + lambda f)
    scale = state.scale + z**2
    return fraction, OnsState(jnp.clip(fraction + _ONS_GAIN * z / scale, 0.0, max_bet), scale)


def _agrapa_init(dtype) -> AgrapaState:
    zero = jnp.zeros((), dtype)
    return AgrapaState(zero, zero)


def _agrapa_update(state: AgrapaState, payoff, *, max_bet):
    ratio = (_AGRAPA_PRIOR_MEAN + state.payoff_sum) / (
        _AGRAPA_PRIOR_SECOND_MOMENT + state.payoff_sq_sum
    )
    fraction = jnp.clip(ratio, 0.0, max_bet)
    return fraction, AgrapaState(state.payoff_sum + payoff, state.payoff_sq_sum + payoff**2)


def ons(max_bet: float = DEFAULT_MAX_BET["ons"]) -> Bettor:
    """The online Newton step bettor (Cutkosky & Orabona 2018).

    Args:
      max_bet: the largest fraction staked, a Python float in (0, 1): each ONS step's fraction
        is clipped to [0, max_bet].

    Returns:
      A `Bettor` over an `OnsState`.

    References:
      Cutkosky & Orabona, "Black-Box Reductions for Parameter-free Online Learning in Banach
      Spaces", COLT 2018; Podkopaev et al., "Sequential Kernelized Independence Testing",
      ICML 2023.
    """
    max_bet = _checks.probability(max_bet, "max_bet")
    return Bettor(Partial(_ons_init), Partial(_ons_update, max_bet=max_bet))


def agrapa(max_bet: float = DEFAULT_MAX_BET["agrapa"]) -> Bettor:
    """The aGRAPA bettor (Waudby-Smith & Ramdas 2023), with the SKIT code's pseudo-observation.

    Args:
      max_bet: the largest fraction staked, a Python float in (0, 1): the ratio of the payoff
        means is clipped to [0, max_bet].

    Returns:
      A `Bettor` over an `AgrapaState`.

    References:
      Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting",
      JRSS-B 2023.
    """
    max_bet = _checks.probability(max_bet, "max_bet")
    return Bettor(Partial(_agrapa_init), Partial(_agrapa_update, max_bet=max_bet))


def bettor_from(bet, max_bet) -> Bettor:
    """The bettor that the one-call tests' `bet` and `max_bet` arguments name."""
    if isinstance(bet, Bettor):
        if max_bet is not None:
            raise ValueError("`max_bet` is fixed in the bettor when `bet` is a `Bettor`.")
        return bet
    _checks.choice(bet, "bet", BETS)
    factory = {"ons": ons, "agrapa": agrapa}[bet]
    return factory(DEFAULT_MAX_BET[bet] if max_bet is None else max_bet)
