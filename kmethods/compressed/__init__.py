"""Near-linear-time two-sample tests: Compress Then Test and its relatives.

Exact kernel tests cost O(n^2) kernel evaluations; these cost about O(n) (times log n or a
feature count), for samples of 10^5 to 10^6 points:

- `ctt_test` (also at the top level of `kmethods`): Compress Then Test (Domingo-Enrich,
  Dwivedi & Mackey, AISTATS 2023): each of s bins compressed by KT-Compress(g), the MMD
  between the coresets, a permutation null over the bins;
- `actt_test`: CTT over a collection of kernels with MMDAgg's level-corrected union (ACTT);
- `lrctt_test`: low-rank CTT, random Fourier features of the coresets (LR-CTT);
- `rff_test`: the MMD of random Fourier features with a permutation null, O(n r) per
  permutation (Gaussian, Laplace and Matern kernels; `random_frequencies` and
  `random_features` sample their spectral densities);
- `block_mmd_test`: the linear-time block MMD test (B-test, Zaremba, Gretton & Blaschko
  2013) with its asymptotic normal null;
- `bin_plan`: the bins CTT and LR-CTT cut the samples into (the RFF test's relabellings are
  `kmethods.calibration.random_labels`, drawn without a sort).

Every test returns a `kmethods.TestResult` (ACTT an `AggregatedTestResult`), rejects only on
a finite statistic, computes half-precision input in float32 and compiles once per shape.
goodpoints' Gaussian exp(-||x - y||^2 / lam^2) is `kmethods.Gaussian(lam / sqrt(2))`.
"""

from kmethods.compressed._bins import BinPlan as BinPlan
from kmethods.compressed._bins import bin_plan as bin_plan
from kmethods.compressed._block import block_mmd_test as block_mmd_test
from kmethods.compressed._ctt import actt_test as actt_test
from kmethods.compressed._ctt import ctt_test as ctt_test
from kmethods.compressed._features import random_features as random_features
from kmethods.compressed._features import random_frequencies as random_frequencies
from kmethods.compressed._rff import lrctt_test as lrctt_test
from kmethods.compressed._rff import rff_test as rff_test

__all__ = [
    "BinPlan",
    "actt_test",
    "bin_plan",
    "block_mmd_test",
    "ctt_test",
    "lrctt_test",
    "random_features",
    "random_frequencies",
    "rff_test",
]
