"""kmethods: kernel discrepancies, kernel tests and kernel thinning, in JAX.

Everything is a pure function of arrays that composes with `jit`, `vmap` and `grad`; pairwise
sums go through `kmethods.pairwise` in blocks, so memory grows as O(n), not O(n^2).
"""

from kmethods import pairwise as pairwise
from kmethods.betting import BettingState as BettingState
from kmethods.betting import SequentialResult as SequentialResult
from kmethods.betting import mmd_betting_test as mmd_betting_test
from kmethods.betting import skit as skit
from kmethods.calibration import TestResult as TestResult
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
from kmethods.pksd import DEFAULT_THETAS as DEFAULT_THETAS
from kmethods.pksd import Modes as Modes
from kmethods.pksd import find_modes as find_modes
from kmethods.pksd import perturb as perturb
from kmethods.pksd._pksd import pksd_test as pksd_test
from kmethods.sequences import ContiguousSubsequenceKernel as ContiguousSubsequenceKernel
from kmethods.sequences import HammingKernel as HammingKernel
from kmethods.sequences import LengthKernel as LengthKernel
from kmethods.sequences import Neighbours as Neighbours
from kmethods.sequences import ScaledSequenceKernel as ScaledSequenceKernel
from kmethods.sequences import SequenceKernel as SequenceKernel
from kmethods.sequences import StringSubsequenceKernel as StringSubsequenceKernel
from kmethods.sequences import SumSequenceKernel as SumSequenceKernel
from kmethods.sequences import ksd2_seq as ksd2_seq
from kmethods.sequences import num_neighbours as num_neighbours
from kmethods.sequences import zs_neighbours as zs_neighbours
from kmethods.sequences import zs_stein_matvec as zs_stein_matvec
from kmethods.sequences._ksd import ksd_seq_test as ksd_seq_test
from kmethods.sequences.models import MarkovChain as MarkovChain
from kmethods.sequences.models import SecondOrderMarkovChain as SecondOrderMarkovChain
from kmethods.sequences.models import random_second_order_chain as random_second_order_chain
from kmethods.sequences.models import random_walk_with_memory as random_walk_with_memory
from kmethods.thinning import iid_thin as iid_thin
from kmethods.thinning import kt_plus_kernel as kt_plus_kernel
from kmethods.thinning import mmd_to_sample as mmd_to_sample
from kmethods.thinning import power_kernel as power_kernel
from kmethods.thinning import root_kernel as root_kernel
from kmethods.thinning import standard_thin as standard_thin
from kmethods.thinning._compress import compresspp as compresspp
from kmethods.thinning._kt import kernel_thin as kernel_thin

__all__ = [
    "DEFAULT_THETAS",
    "IMQ",
    "BettingState",
    "ContiguousSubsequenceKernel",
    "Gaussian",
    "HammingKernel",
    "Kernel",
    "Laplace",
    "LengthKernel",
    "Linear",
    "MarkovChain",
    "Matern",
    "Modes",
    "Neighbours",
    "Polynomial",
    "RadialKernel",
    "ScaledKernel",
    "ScaledSequenceKernel",
    "SecondOrderMarkovChain",
    "SequenceKernel",
    "SequentialResult",
    "Sinc",
    "StringSubsequenceKernel",
    "SumKernel",
    "SumSequenceKernel",
    "TestResult",
    "compresspp",
    "find_modes",
    "hsic",
    "hsic_test",
    "iid_thin",
    "kernel_thin",
    "ksd2",
    "ksd2_seq",
    "ksd_seq_test",
    "ksd_test",
    "kt_plus_kernel",
    "median_bandwidth",
    "mmd2",
    "mmd_betting_test",
    "mmd_test",
    "mmd_to_sample",
    "num_neighbours",
    "pairwise",
    "perturb",
    "pksd_test",
    "power_kernel",
    "random_second_order_chain",
    "random_walk_with_memory",
    "root_kernel",
    "skit",
    "standard_thin",
    "zs_neighbours",
    "zs_stein_matvec",
]
