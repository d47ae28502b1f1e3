"""Sequential kernel tests by betting: SKIT (independence) and the MMD two-sample test.

A sequential test by betting plays a repeated game against the null. At step t a bettor with
wealth W_{t-1} stakes the fraction lambda_t, chosen from the past only, on a payoff
f_t in [-1, 1] whose conditional mean is zero under H0, and ends with
W_t = W_{t-1} (1 + lambda_t f_t), W_0 = 1. Under H0 the wealth is a nonnegative
(super)martingale, so by Ville's inequality P(sup_t W_t >= 1/alpha) <= alpha: the test may reject
as soon as W_t >= 1/alpha, however long the data are monitored. The payoffs here are kernel
witness functions estimated from the history, so the wealth grows under any alternative the
kernel can detect.

The pieces compose like optax and blackjax:

- a bettor is a `Bettor(init, update)` pair with its hyperparameters fixed by its factory
  (`ons(max_bet)`, `agrapa(max_bet)`);
- a test is a `SequentialTest(init, step)` pair from a factory that fixes the kernels, the
  level and the bettor (`skit_test`, `mmd_betting`); `step(state, x, y)` is pure, so it runs
  inside `lax.scan` over a stream and under `vmap` over streams; `checked(test)` validates and
  raises eagerly instead, for interactive monitoring;
- the one-call tests `skit(key, x, y, kx, ky)` and `mmd_betting_test(key, x, y, k)` run the
  factories' step over a whole stream.

A test rejects only at a finite wealth. Non-finite data (which the eager checks refuse, but
which reach the pure step) and kernel values that are not finite give that step the payoff
NaN; the log-wealth is then NaN for good, and a NaN wealth voids the test: `reject` is False
and the stopping time is the number of steps, even if the wealth had crossed 1/alpha before.
A step past the capacity of its state voids it the same way, freezes it and sets
`BettingState.overflow`.

Rounding cannot bias the level, even with a nearly constant kernel: each payoff is an exactly
odd function of the swap that H0 leaves invariant, and its normaliser and the bet depend on
the past only. There is no resampled null whose arithmetic could differ from the statistic's.

References:
  Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence Testing",
  ICML 2023.
  Shekhar & Ramdas, "Nonparametric Two-Sample Testing by Betting", IEEE Transactions on
  Information Theory, 2023 (arXiv:2112.09162).
  Cutkosky & Orabona, "Black-Box Reductions for Parameter-free Online Learning in Banach
  Spaces", COLT 2018 (ONS betting).
  Waudby-Smith & Ramdas, "Estimating means of bounded random variables by betting", JRSS-B
  2023 (aGRAPA).
"""

from kmethods.betting._bettors import BETS as BETS
from kmethods.betting._bettors import DEFAULT_MAX_BET as DEFAULT_MAX_BET
from kmethods.betting._bettors import AgrapaState as AgrapaState
from kmethods.betting._bettors import Bettor as Bettor
from kmethods.betting._bettors import OnsState as OnsState
from kmethods.betting._bettors import agrapa as agrapa
from kmethods.betting._bettors import ons as ons
from kmethods.betting._core import BettingState as BettingState
from kmethods.betting._core import SequentialResult as SequentialResult
from kmethods.betting._core import SequentialTest as SequentialTest
from kmethods.betting._core import checked as checked
from kmethods.betting._tests import mmd_betting as mmd_betting
from kmethods.betting._tests import skit_test as skit_test
from kmethods.betting._witness import HsicWitness as HsicWitness
from kmethods.betting._witness import MmdWitness as MmdWitness

__all__ = [
    "BETS",
    "DEFAULT_MAX_BET",
    "AgrapaState",
    "BettingState",
    "Bettor",
    "HsicWitness",
    "MmdWitness",
    "OnsState",
    "SequentialResult",
    "SequentialTest",
    "agrapa",
    "checked",
    "mmd_betting",
    "ons",
    "skit_test",
]
