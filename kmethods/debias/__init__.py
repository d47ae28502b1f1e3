"""Debiased compression: Stein kernels, Stein thinning and debiasing weights.

A biased sample (MCMC with burn-in, an approximate or tempered sampler) is reweighted or
thinned toward a target p known only through its score s = grad log p, by lowering the
kernel Stein discrepancy KSD(Q, p) = MMD_{k_p}(Q, p) of the Langevin Stein kernel k_p, whose
mean under p is zero.

- `SteinKernel(base, score)`: k_p as a kernel on augmented points (x, s(x)), usable with
  every routine that takes a kernel (Gram products, `mmd_to_sample`, `kernel_thin`,
  `compresspp`);
- `stein_thin`: greedy Stein thinning (Riabiz et al., 2022) and its regularised variant
  (Benard et al., 2023);
- `debias_weights`: the simplex weights minimising the KSD of the weighted sample, exactly
  or after a randomly pivoted Cholesky approximation (Li, Dwivedi & Mackey, 2024);
- `stein_kernel_thin`: Stein kernel thinning, SKT (Stein thinning, then KT-SPLIT) or LSKT
  (low-rank debiasing weights, rounded by `stratified_round`, then Compress++), each finished
  by KT-SWAP toward the target (Li, Dwivedi & Mackey, 2024);
- `stein_cholesky`: Stein Cholesky, SC (Stein thinning) or LSC (low-rank debiasing), then
  randomly pivoted Cholesky selects a coreset, its weights are re-optimised, improved by
  swaps, and re-optimised: a weighted coreset with simplex weights, or the paper's
  constant-preserving weights (`constant_preserving=True`; Li, Dwivedi & Mackey, 2024);
- `constant_preserving_weights`: the paper's weights on a support, summing to one, of any
  sign;
- `simplex_qp`, `low_rank_simplex_qp`, `rp_cholesky`, `project_to_simplex`: the solvers and
  the low-rank factor behind `debias_weights`.

`kmethods.ksd2(x, score, kernel, weights=w, unbiased=False)` measures the KSD of a weighting.
"""

from kmethods.debias._cholesky import constant_preserving_weights as constant_preserving_weights
from kmethods.debias._cholesky import stein_cholesky as stein_cholesky
from kmethods.debias._kernel import SteinKernel as SteinKernel
from kmethods.debias._skt import stein_kernel_thin as stein_kernel_thin
from kmethods.debias._thin import stein_thin as stein_thin
from kmethods.debias._weights import DebiasInfo as DebiasInfo
from kmethods.debias._weights import SolverNotConverged as SolverNotConverged
from kmethods.debias._weights import debias_weights as debias_weights
from kmethods.debias._weights import low_rank_simplex_qp as low_rank_simplex_qp
from kmethods.debias._weights import project_to_simplex as project_to_simplex
from kmethods.debias._weights import rp_cholesky as rp_cholesky
from kmethods.debias._weights import simplex_qp as simplex_qp
from kmethods.thinning._weighted import stratified_round as stratified_round

__all__ = [
    "DebiasInfo",
    "SolverNotConverged",
    "SteinKernel",
    "constant_preserving_weights",
    "debias_weights",
    "low_rank_simplex_qp",
    "project_to_simplex",
    "rp_cholesky",
    "simplex_qp",
    "stein_cholesky",
    "stein_kernel_thin",
    "stein_thin",
    "stratified_round",
]
