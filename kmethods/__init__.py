"""kmethods: kernel discrepancies, kernel tests and kernel thinning, in JAX.

Everything is a pure function of arrays that composes with `jit`, `vmap` and `grad`; pairwise
sums go through `kmethods.pairwise` in blocks, so memory grows as O(n), not O(n^2).

The top level holds the kernels, the statistics and the one-call tests and compressions.
Specialist names live one namespace down, each in one home:

- `kmethods.pairwise`: blocked reductions over pairs of points;
- `kmethods.calibration`: p-values, permutation and bootstrap draws, `decide`;
- `kmethods.stein`: the Langevin Stein kernel as a blocked product;
- `kmethods.thinning`: baselines, split kernels, `mmd_to_sample`, the `Thinner` protocol;
- `kmethods.sequences`: the sequence KSD's kernels, neighbourhoods and Stein operator
  (`kmethods.sequences.models`: Markov-chain test models);
- `kmethods.pksd`: mode finding, perturbations and transitions of the perturbed KSD;
- `kmethods.betting`: bettors and the `(init, step)` sequential tests behind `skit` and
  `mmd_betting_test`;
- `kmethods.aggregated`: kernel collections, weights and the level correction behind
  `mmdagg`, `hsicagg` and `ksdagg`;
- `kmethods.compressed`: near-linear-time tests: `ctt_test`'s relatives ACTT and LR-CTT,
  the random-Fourier-feature test and the block MMD test;
- `kmethods.debias`: Stein kernels as kernels, Stein thinning and debiasing weights (with the
  solver and the randomly pivoted Cholesky behind them).
"""

from kmethods import aggregated as aggregated
from kmethods import betting as betting
from kmethods import calibration as calibration
from kmethods import compressed as compressed
from kmethods import debias as debias
from kmethods import pairwise as pairwise
from kmethods import pksd as pksd
from kmethods import sequences as sequences
from kmethods import stein as stein
from kmethods import thinning as thinning
from kmethods.aggregated import hsicagg as hsicagg
from kmethods.aggregated import ksdagg as ksdagg
from kmethods.aggregated import mmdagg as mmdagg
from kmethods.betting._tests import mmd_betting_test as mmd_betting_test
from kmethods.betting._tests import skit as skit
from kmethods.calibration import TestResult as TestResult
from kmethods.compressed import ctt_test as ctt_test
from kmethods.debias import SteinKernel as SteinKernel
from kmethods.debias import debias_weights as debias_weights
from kmethods.debias import stein_cholesky as stein_cholesky
from kmethods.debias import stein_kernel_thin as stein_kernel_thin
from kmethods.debias import stein_thin as stein_thin
from kmethods.hsic import hsic as hsic
from kmethods.hsic import hsic_test as hsic_test
from kmethods.kernels import IMQ as IMQ
from kmethods.kernels import Gaussian as Gaussian
from kmethods.kernels import Kernel as Kernel
from kmethods.kernels import Laplace as Laplace
from kmethods.kernels import Linear as Linear
from kmethods.kernels import Matern as Matern
from kmethods.kernels import Polynomial as Polynomial
from kmethods.kernels import RadialKernel as RadialKernel
from kmethods.kernels import ScaledKernel as ScaledKernel
from kmethods.kernels import Sinc as Sinc
from kmethods.kernels import SumKernel as SumKernel
from kmethods.kernels import median_bandwidth as median_bandwidth
from kmethods.ksd import ksd2 as ksd2
from kmethods.ksd import ksd_test as ksd_test
from kmethods.mmd import mmd2 as mmd2
from kmethods.mmd import mmd_test as mmd_test
from kmethods.pksd._pksd import pksd_test as pksd_test
from kmethods.sequences._ksd import ksd_seq_test as ksd_seq_test
from kmethods.thinning._compress import compresspp as compresspp
from kmethods.thinning._kt import kernel_thin as kernel_thin

__all__ = [
    "IMQ",
    "Gaussian",
    "Kernel",
    "Laplace",
    "Linear",
    "Matern",
    "Polynomial",
    "RadialKernel",
    "ScaledKernel",
    "Sinc",
    "SteinKernel",
    "SumKernel",
    "TestResult",
    "aggregated",
    "betting",
    "calibration",
    "compressed",
    "compresspp",
    "ctt_test",
    "debias",
    "debias_weights",
    "hsic",
    "hsic_test",
    "hsicagg",
    "kernel_thin",
    "ksd2",
    "ksd_seq_test",
    "ksd_test",
    "ksdagg",
    "median_bandwidth",
    "mmd2",
    "mmd_betting_test",
    "mmd_test",
    "mmdagg",
    "pairwise",
    "pksd",
    "pksd_test",
    "sequences",
    "skit",
    "stein",
    "stein_cholesky",
    "stein_kernel_thin",
    "stein_thin",
    "thinning",
]
