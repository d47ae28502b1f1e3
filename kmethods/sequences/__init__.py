"""Kernel Stein discrepancy for variable-length sequences (Baum, Kanagawa & Gretton 2023).

The model p is a distribution over finite sequences x = (x_1, ..., x_l) of tokens in
{0, ..., S - 1} whose length l varies, known only up to normalisation through
`log_prob(seq, length)`. The Stein operator is the Zanella-Stein (ZS) operator of a symmetric
neighbourhood structure N,

  (A_p f)(x) = sum_{y in N(x)} kappa(p(y) / p(x)) [f(y) - f(x)],

with Barker's balancing function t / (1 + t) or sqrt(t). The headline test is
`kmethods.ksd_seq_test`; the specialist names are here:

- neighbourhoods: `Edits` (ZS_J, and ZS_inf with `window=None`), `Substitutions` (ZS'), the
  base `Neighbourhood`, `num_neighbours`, and `zs_neighbours` with its result `Neighbours`;
- the statistic and the Stein kernel: `ksd2_seq`, `zs_stein_matvec`;
- sequence kernels: `HammingKernel`, `ContiguousSubsequenceKernel`, `StringSubsequenceKernel`,
  `LengthKernel`, their base `SequenceKernel` (whose `stein_matvec` method a new kernel may
  override, given a `SteinSupport`), and `SumSequenceKernel` / `ScaledSequenceKernel`
  (`k1 + k2`, `w * k`);
- Markov-chain models in the submodule `kmethods.sequences.models`.

Layout: `_neighbours.py` (neighbourhood structures), `_operator.py` (the ZS operator of a
model), `_support.py` (the measures mu_x and the generic kernel contractions), `_kernels.py`
and `_substrings.py` (sequence kernels), `_stein.py` (`zs_neighbours`, `zs_stein_matvec`),
`_ksd.py` (`ksd2_seq`, `ksd_seq_test`), `_inputs.py` (input checks), `models.py`.

References:
  Baum, Kanagawa & Gretton, "A Kernel Stein Test of Goodness of Fit for Sequential Models",
  ICML 2023 (arXiv:2210.10741), and the authors' code (ZanellaSteinOperator, the action sets,
  the kernels and the n-gram models followed here).
  Zanella, "Informed Proposals for Local MCMC in Discrete Spaces", JASA 2020 (balancing
  functions).
"""

from kmethods.sequences import models as models
from kmethods.sequences._kernels import HammingKernel as HammingKernel
from kmethods.sequences._kernels import LengthKernel as LengthKernel
from kmethods.sequences._kernels import ScaledSequenceKernel as ScaledSequenceKernel
from kmethods.sequences._kernels import SequenceKernel as SequenceKernel
from kmethods.sequences._kernels import SumSequenceKernel as SumSequenceKernel
from kmethods.sequences._ksd import ksd2_seq as ksd2_seq
from kmethods.sequences._neighbours import Edits as Edits
from kmethods.sequences._neighbours import Neighbourhood as Neighbourhood
from kmethods.sequences._neighbours import Neighbours as Neighbours
from kmethods.sequences._neighbours import Substitutions as Substitutions
from kmethods.sequences._neighbours import num_neighbours as num_neighbours
from kmethods.sequences._stein import zs_neighbours as zs_neighbours
from kmethods.sequences._stein import zs_stein_matvec as zs_stein_matvec
from kmethods.sequences._substrings import (
    ContiguousSubsequenceKernel as ContiguousSubsequenceKernel,
)
from kmethods.sequences._substrings import StringSubsequenceKernel as StringSubsequenceKernel
from kmethods.sequences._support import SteinSupport as SteinSupport

__all__ = [
    "ContiguousSubsequenceKernel",
    "Edits",
    "HammingKernel",
    "LengthKernel",
    "Neighbourhood",
    "Neighbours",
    "ScaledSequenceKernel",
    "SequenceKernel",
    "SteinSupport",
    "StringSubsequenceKernel",
    "Substitutions",
    "SumSequenceKernel",
    "ksd2_seq",
    "num_neighbours",
    "zs_neighbours",
    "zs_stein_matvec",
]
