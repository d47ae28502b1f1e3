"""Aggregated kernel tests: MMDAgg, HSICAgg and KSDAgg.

A single kernel test needs a bandwidth, and the median heuristic is often far from the best
one. An aggregated test runs the test of every kernel of a collection on the same resampled
data sets and rejects when one of them does, at levels u w_i corrected so that the union
keeps level alpha (Schrab et al., JMLR 2023, Algorithm 1):

1. B1 + B2 resampled statistics (permutations for MMD, wild bootstrap for HSIC and KSD), the
   same draws for every kernel;
2. for each kernel, the (1 - u w_i)-quantile of its statistic from the B1 draws and the
   statistic itself;
3. the family-wise error of the union, estimated from the other B2 draws, and the largest u
   with estimated error <= alpha, by B3 steps of bisection on [0, min_i 1 / w_i];
4. reject when some kernel's statistic exceeds its quantile.

All statistics of all kernels on all draws come from one blocked pass over the rows of the
kernel matrices (memory O(N block n + n B + N B), never n^2), and a collection is held as
stacked families of kernels, so each test compiles once per shape and collection layout.

- `mmdagg`, `hsicagg`, `ksdagg` (also at the top level of `kmethods`);
- `AggregatedTestResult`: a `TestResult` with per-kernel statistics, p-values, thresholds and
  rejections, and u;
- `KernelCollection`, `mmdagg_kernels`, `hsicagg_kernels`, `ksdagg_kernels`, `L1Laplace`: the
  papers' default collections;
- `weights`, `WEIGHTINGS`: the weightings of Section 5.1; `aggregate`: the level correction
  on given draws.

References:
  Schrab, Kim, Albert, Laurent, Guedj & Gretton, "MMD Aggregated Two-Sample Test", JMLR 24, 2023.
  Schrab, Guedj & Gretton, "KSD Aggregated Goodness-of-fit Test", NeurIPS 2022.
  Schrab, Kim, Guedj & Gretton, "Efficient Aggregated Kernel Tests using Incomplete
  U-statistics", NeurIPS 2022.
  Albert, Laurent, Marrel & Meynaoui, "Adaptive test of independence based on HSIC measures",
  Annals of Statistics 50, 2022.
"""

from kmethods.aggregated._aggregate import WEIGHTINGS as WEIGHTINGS
from kmethods.aggregated._aggregate import AggregatedTestResult as AggregatedTestResult
from kmethods.aggregated._aggregate import aggregate as aggregate
from kmethods.aggregated._aggregate import weights as weights
from kmethods.aggregated._collections import KernelCollection as KernelCollection
from kmethods.aggregated._collections import L1Laplace as L1Laplace
from kmethods.aggregated._collections import hsicagg_kernels as hsicagg_kernels
from kmethods.aggregated._collections import ksdagg_kernels as ksdagg_kernels
from kmethods.aggregated._collections import mmdagg_kernels as mmdagg_kernels
from kmethods.aggregated._hsicagg import hsicagg as hsicagg
from kmethods.aggregated._ksdagg import ksdagg as ksdagg
from kmethods.aggregated._mmdagg import mmdagg as mmdagg

__all__ = [
    "WEIGHTINGS",
    "AggregatedTestResult",
    "KernelCollection",
    "L1Laplace",
    "aggregate",
    "hsicagg",
    "hsicagg_kernels",
    "ksdagg",
    "ksdagg_kernels",
    "mmdagg",
    "mmdagg_kernels",
    "weights",
]
