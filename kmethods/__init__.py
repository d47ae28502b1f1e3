"""kmethods: kernel discrepancies, kernel tests and (later) kernel thinning, in JAX.

Everything is a pure function of arrays that composes with `jit`, `vmap` and `grad`; pairwise
sums go through `kmethods.pairwise` in blocks, so memory grows as O(n), not O(n^2).
"""

from kmethods import pairwise as pairwise
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
from kmethods.testing import TestResult as TestResult

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
    "SumKernel",
    "TestResult",
    "hsic",
    "hsic_test",
    "ksd2",
    "ksd_test",
    "median_bandwidth",
    "mmd2",
    "mmd_test",
    "pairwise",
]
