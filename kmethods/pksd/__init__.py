"""Perturbed kernel Stein discrepancy (pKSD): KSD tests on a sample moved by p-invariant kernels.

The test itself is `kmethods.pksd_test`; this namespace holds its parts: `find_modes` and
`Modes`, `perturb`, the transitions (`Transition`, `mh_jump`, `mala`) and `DEFAULT_THETAS`.

The KSD test has little power when the target p and the sample's law q share well-separated
modes but weigh them differently: the score sees each mode only locally. pKSD moves the sample
with a Markov kernel K that leaves p invariant (so K p = p and the null is unchanged) but that
jumps between the modes, so that K q differs from p where the score can see it, and then runs
the KSD test on the moved sample.

The kernel here (`mh_jump()`, or `transition="mh_jump"`) is Metropolis–Hastings with a
deterministic mode-jumping proposal. The modes mu_1..mu_m of p are found by BFGS on -log p from
several starting points, merged when close in Mahalanobis distance, and each gets the Hessian
H_k = -grad^2 log p(mu_k) (positive definite). For an ordered pair (i, j) of distinct modes and
a jump scale theta, the proposal is

  x' = theta mu_j + H_j^{-1/2} H_i^{1/2} (x - theta mu_i)

(the authors' row-vector form (x - theta mu_i) H_i^{1/2} H_j^{-1/2} + theta mu_j, with
symmetric square roots). The map for (j, i) is the inverse of the map for (i, j), and its
Jacobian determinant is (det H_i / det H_j)^{1/2}, so accepting with probability
min(1, p(x') |det| / p(x)) keeps p invariant whenever (i, j) and (j, i) are proposed with equal
probability (Green, 1995; Tierney, 1998). `mh_jump(pair="uniform")` (default, as the authors'
code) draws the ordered pair uniformly; `pair="nearest"` takes i as the mode nearest to x
(Mahalanobis distance under H_i) and j uniformly among the others, and accepts only if the
reverse move would be proposed, i.e. if mu_j is the mode nearest to x'. `mala()` offers
Metropolis-adjusted Langevin steps instead, with theta the step size. A transition is an
object (`Transition`) that the internals call, so a new one needs no change to them.

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

from kmethods.pksd._modes import Modes as Modes
from kmethods.pksd._modes import find_modes as find_modes
from kmethods.pksd._perturb import perturb as perturb
from kmethods.pksd._pksd import DEFAULT_THETAS as DEFAULT_THETAS
from kmethods.pksd._transitions import Transition as Transition
from kmethods.pksd._transitions import mala as mala
from kmethods.pksd._transitions import mh_jump as mh_jump

__all__ = ["DEFAULT_THETAS", "Modes", "Transition", "find_modes", "mala", "mh_jump", "perturb"]
