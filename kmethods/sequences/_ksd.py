"""The squared KSD of a sample of sequences and the goodness-of-fit test built on it.

KSD^2 = E_{x, x' ~ q} h(x, x'), h the Zanella-Stein kernel: the U-statistic
1/(n(n-1)) sum_{i != j} h(x_i, x_j) or the V-statistic 1/n^2 sum_{i, j} h(x_i, x_j), calibrated
by the multinomial (Liu et al. 2016) or wild (Chwialkowski et al. 2016) bootstrap as in
`kmethods.ksd`. The Stein kernel matrix is never stored: every quadratic form comes from one
blocked product (`kmethods.sequences.zs_stein_matvec`).

References:
  Baum, Kanagawa & Gretton, "A Kernel Stein Test of Goodness of Fit for Sequential Models",
  ICML 2023 (arXiv:2210.10741).
  Liu, Lee & Jordan, ICML 2016; Chwialkowski, Strathmann & Gretton, ICML 2016 (bootstraps).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods.calibration import TestResult, stein_bootstrap_columns, stein_bootstrap_result
from kmethods.sequences._inputs import explain_non_finite, prepare
from kmethods.sequences._kernels import SequenceKernel
from kmethods.sequences._misc import float_dtype
from kmethods.sequences._neighbours import DEFAULT_WINDOW, Neighbourhood
from kmethods.sequences._stein import stein_matvec


def ksd2_seq(
    seqs: Int[Array, "n w"],
    lengths: Int[Array, " n"],
    log_prob: Callable[[Int[Array, " w"], Int[Array, ""]], Float[Array, ""]],
    kernel: SequenceKernel,
    *,
    unbiased: bool = True,
    num_states: int,
    neighbourhood: str | Neighbourhood = "zs",
    window: int | None = DEFAULT_WINDOW,
    balance: str = "barker",
    block_size: int | None = None,
) -> Float[Array, ""]:
    """Squared kernel Stein discrepancy of a sample of sequences from a sequence model.

    With the Zanella-Stein kernel h of `zs_stein_matvec` (Baum, Kanagawa & Gretton 2023):
      unbiased (U-statistic): 1/(n(n-1)) sum_{i != j} h(x_i, x_j);
      biased (V-statistic): 1/n^2 sum_{i, j} h(x_i, x_j).

    Args:
      seqs: (n, W) integer tokens in [0, num_states); positions >= lengths[i] are padding.
      lengths: (n,) integers in [0, W].
      log_prob: log p(seq, length) up to a constant, on ONE padded sequence; it is also called
        on neighbours of width W + 1 (room for an insertion), so it must accept any width.
        A function or a bound method of an equinox module (`model.log_prob`); its array leaves
        are traced, so new parameter values do not recompile.
      kernel: a `SequenceKernel` (`HammingKernel`, `ContiguousSubsequenceKernel`,
        `StringSubsequenceKernel`, ...).
      unbiased: U-statistic (default) or V-statistic (a bool).
      num_states: S, the number of symbols.
      neighbourhood: a `Neighbourhood` (`Edits(J)`, `Substitutions(J)`), or "zs" (ZS_J, the
        default), "zs_inf" or "substitution" (ZS').
      window: J, the trailing positions edited by "zs" and "substitution" (None: all); with a
        string `neighbourhood` only.
      balance: "barker" (default) or "sqrt".
      block_size: rows of the Stein kernel matrix held at once (memory O(block_size * n)).

    Returns:
      A scalar, float32 (float64 in x64 mode) whatever dtype `log_prob` returns. Eagerly, a
      `log_prob` that is not finite at a sample sequence, or NaN or +inf at a neighbour,
      raises a ValueError naming it; under `jit`/`vmap`, where the checks cannot run, such
      input (and tokens or lengths out of range) gives NaN.
    """
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    seqs, lengths, operator, kernel = prepare(
        seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance
    )
    value = _ksd2(operator, kernel, seqs, lengths, unbiased=unbiased, block_size=block_size)
    explain_non_finite(value, seqs, lengths, operator)
    return value


@eqx.filter_jit
def _ksd2(operator, kernel, seqs, lengths, *, unbiased, block_size):
    n = seqs.shape[0]
    ones = jnp.ones(n, float_dtype())
    rows = stein_matvec(
        operator, kernel, seqs, lengths, ones, exclude_diagonal=unbiased, block_size=block_size
    )
    return jnp.sum(rows) / (n * (n - 1.0) if unbiased else float(n) ** 2)


def ksd_seq_test(
    key: PRNGKeyArray,
    seqs: Int[Array, "n w"],
    lengths: Int[Array, " n"],
    log_prob: Callable[[Int[Array, " w"], Int[Array, ""]], Float[Array, ""]],
    kernel: SequenceKernel,
    *,
    num_states: int,
    neighbourhood: str | Neighbourhood = "zs",
    window: int | None = DEFAULT_WINDOW,
    balance: str = "barker",
    num_bootstrap: int = 1000,
    alpha: float | Float[Array, ""] = 0.05,
    bootstrap: str = "wild",
    flip_probability: float | Float[Array, ""] = 0.5,
    block_size: int | None = None,
) -> TestResult:
    """Kernel Stein goodness-of-fit test of H0: the sequences are drawn from p.

    The statistic and its calibration follow `kmethods.ksd_test`, with the Zanella-Stein kernel
    of Baum, Kanagawa & Gretton (2023) in place of the Langevin one:

    `bootstrap="multinomial"` (Liu, Lee & Jordan 2016): the statistic is the U-statistic
    `ksd2_seq(...)`; each draw is sum_{i != j} (w_i - 1/n)(w_j - 1/n) h(x_i, x_j) with
    n w ~ Multinomial(n; 1/n, ..., 1/n). For i.i.d. sequences.

    `bootstrap="wild"` (Chwialkowski, Strathmann & Gretton 2016): the statistic is the
    V-statistic 1/n^2 sum_ij h(x_i, x_j); each draw is 1/n^2 sum_ij W_i W_j h(x_i, x_j) with
    the sign process W of `kmethods.calibration.wild_bootstrap_signs`.

    The Stein kernel matrix is never stored: all B + 1 quadratic forms come from one blocked
    product H [v_0 v_1 ... v_B]. The test compiles once per shape and `log_prob` function.

    Args:
      key: PRNG key.
      seqs: as in `ksd2_seq`.
      lengths: as in `ksd2_seq`.
      log_prob: as in `ksd2_seq`.
      kernel: as in `ksd2_seq`.
      num_states: as in `ksd2_seq`.
      neighbourhood: as in `ksd2_seq`.
      window: as in `ksd2_seq`.
      balance: as in `ksd2_seq`.
      num_bootstrap: B.
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      bootstrap: "wild" (the default) or "multinomial". With the paper's small samples
        (n = 8-30) the multinomial bootstrap over-rejects (measured 0.087 at n = 20, alpha =
        0.05, 1000 replicates; in the 99% interval at n = 200); the wild bootstrap holds its
        level there.
      flip_probability: wild bootstrap only, in (0, 1).
      block_size: rows of the Stein kernel matrix held at once.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`, float32 (float64 in x64 mode).
      It rejects only when the statistic and p-value are finite. Eagerly, a `log_prob` that is
      not finite at a sample sequence, or NaN or +inf at a neighbour, raises a ValueError
      naming it; under `jit`/`vmap` such input (and tokens or lengths out of range) gives a
      NaN statistic and p-value and no rejection.
    """
    _checks.choice(bootstrap, "bootstrap", ("multinomial", "wild"))
    num_bootstrap = _checks.positive_int(num_bootstrap, "num_bootstrap")
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    flip_probability = _checks.probability(flip_probability, "flip_probability", traced_ok=True)
    block_size = _checks.block_size(block_size)
    seqs, lengths, operator, kernel = prepare(
        seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance
    )
    result = _bootstrap_test(
        operator,
        kernel,
        key,
        seqs,
        lengths,
        # Arrays, so that filter_jit traces them (a vmapped level shares one compilation).
        jnp.asarray(alpha),
        jnp.asarray(flip_probability),
        num_bootstrap=num_bootstrap,
        wild=bootstrap == "wild",
        block_size=block_size,
    )
    explain_non_finite(result.statistic, seqs, lengths, operator)
    return result


@eqx.filter_jit
def _bootstrap_test(
    operator,
    kernel,
    key,
    seqs,
    lengths,
    alpha,
    flip_probability,
    *,
    num_bootstrap,
    wild,
    block_size,
):
    columns = stein_bootstrap_columns(
        key,
        seqs.shape[0],
        num_bootstrap,
        wild=wild,
        flip_probability=flip_probability,
        dtype=float_dtype(),
    )
    h_columns = stein_matvec(
        operator,
        kernel,
        seqs,
        lengths,
        columns,
        exclude_diagonal=not wild,
        block_size=block_size,
    )
    return stein_bootstrap_result(columns, h_columns, wild=wild, alpha=alpha)
