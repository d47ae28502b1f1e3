"""The Zanella-Stein operator of one sequence (`zs_neighbours`) and the blocked product of its
kernel matrix with vectors (`zs_stein_matvec`).

Stein kernel: with the signed measure mu_x = sum_y w_y (delta_y - delta_x), w_y = kappa(...),

  h(x, x') = <mu_x, k mu_x'> = sum_y sum_y' w_y w'_y' [k(y, y') - k(y, x') - k(x, y') + k(x, x')].

The support of every mu_x is built once per sequence (`ZSOperator.support`); the kernel then
contracts itself against it by its own `stein_matvec` method (a feature map, Gram blocks, or a
faster route of its own), so nothing here depends on the kernel's type.

Padding convention: a batch of sequences is an integer array `seqs` of shape (n, W) plus
`lengths` of shape (n,) in [0, W]; positions >= length are padding and are ignored (set to 0
internally). Insertions need one more slot, so neighbours are held at width W + 1 and
`log_prob` is called on arrays of width W + 1 (it must accept any padded width >= length).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from kmethods import _checks
from kmethods.sequences._inputs import (
    check_operator,
    check_sequence,
    explain_non_finite,
    prepare,
)
from kmethods.sequences._kernels import SequenceKernel
from kmethods.sequences._misc import float_dtype, pad_sequences
from kmethods.sequences._neighbours import DEFAULT_WINDOW, Neighbourhood, Neighbours
from kmethods.sequences._operator import ZSOperator


def zs_neighbours(
    seq: Int[Array, " w"],
    length: int | Int[Array, ""],
    log_prob: Callable[[Int[Array, " w"], Int[Array, ""]], Float[Array, ""]],
    *,
    num_states: int,
    neighbourhood: str | Neighbourhood = "zs",
    window: int | None = DEFAULT_WINDOW,
    balance: str = "barker",
) -> Neighbours:
    """The Zanella-Stein neighbourhood of one sequence and its weights kappa(p(y) / p(x)).

    (A_p f)(x) = sum_j weights[j] (f(seqs[j], lengths[j]) - f(x)) (Baum, Kanagawa & Gretton
    2023, Section 3); slots with weight 0 do not contribute.

    Args:
      seq: (W,) integer tokens in [0, num_states); positions >= length are ignored.
      length: scalar in [0, W].
      log_prob: log p(seq, length) up to a constant, on one padded sequence of any width.
      num_states: S, the number of symbols.
      neighbourhood: a `Neighbourhood` (`Edits(J)`, `Substitutions(J)`), or the strings "zs"
        (ZS_J, `Edits(window)`), "zs_inf" (`Edits(None)`) or "substitution" (ZS',
        `Substitutions(window)`).
      window: J, the number of trailing positions edited (None: all); with a string
        `neighbourhood` only.
      balance: "barker" (t / (1 + t)) or "sqrt".

    Returns:
      `Neighbours` with arrays of width W + 1 and N = `num_neighbours(W, S, ...)` slots; the
      weights are float32 (float64 in x64 mode) whatever dtype `log_prob` returns. Eagerly, a
      `log_prob` that is not finite at `seq`, or NaN or +inf at a neighbour, raises; under
      `jit`/`vmap` every weight is NaN then.
    """
    operator = check_operator(log_prob, num_states, neighbourhood, window, balance)
    seq, length = check_sequence(seq, length, operator.num_states)
    out = _zs_neighbours(operator, seq, length)
    explain_non_finite(out.weights, seq[None], length[None], operator)
    return out


@eqx.filter_jit
def _zs_neighbours(operator: ZSOperator, seq, length):
    # Jitted: eagerly, the edits and weights ran op by op (~10 s on a CPU for one sequence).
    x = pad_sequences(seq, length, seq.shape[0] + 1)
    return operator.neighbours(x, length, float_dtype())


def stein_matvec(
    operator: ZSOperator,
    kernel: SequenceKernel,
    seqs: Int[Array, "n w"],
    lengths: Int[Array, " n"],
    v: Float[Array, " n *p"],
    *,
    exclude_diagonal: bool,
    block_size: int | None,
) -> Float[Array, " n *p"]:
    """H v, without input checks (traced inside the jitted cores)."""
    support = operator.support(seqs, lengths, v.dtype)
    return kernel.stein_matvec(support, v, exclude_diagonal=exclude_diagonal, block_size=block_size)


def zs_stein_matvec(
    seqs: Int[Array, "n w"],
    lengths: Int[Array, " n"],
    log_prob: Callable[[Int[Array, " w"], Int[Array, ""]], Float[Array, ""]],
    kernel: SequenceKernel,
    v: Float[Array, " n *p"],
    *,
    num_states: int,
    neighbourhood: str | Neighbourhood = "zs",
    window: int | None = DEFAULT_WINDOW,
    balance: str = "barker",
    exclude_diagonal: bool = False,
    block_size: int | None = None,
) -> Float[Array, " n *p"]:
    """H v with H = [h(x_i, x_j)] the Zanella-Stein kernel matrix, without forming H.

    h(x, x') = sum_{y in N(x)} sum_{y' in N(x')} w_y w'_y' [k(y, y') - k(y, x') - k(x, y')
    + k(x, x')], w_y = kappa(p(y) / p(x)) (Baum, Kanagawa & Gretton 2023).

    Args:
      seqs: (n, W) integer tokens; positions >= lengths[i] are padding.
      lengths: (n,) in [0, W].
      log_prob: unnormalised log p(seq, length) on one padded sequence (any width).
      kernel: a `SequenceKernel`.
      v: (n,) or (n, p).
      num_states: S, the number of symbols.
      neighbourhood: as in `zs_neighbours`.
      window: as in `zs_neighbours`.
      balance: as in `zs_neighbours`.
      exclude_diagonal: treat h(x_i, x_i) as zero.
      block_size: rows of H held at once.

    Returns:
      (n,) or (n, p), float32 (float64 in x64 mode). Eagerly, a `log_prob` that is NaN or +inf
      at a neighbour raises; under `jit`/`vmap` the rows of such sequences are NaN.
    """
    seqs, lengths, operator, kernel = prepare(
        seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance
    )
    exclude_diagonal = _checks.flag(exclude_diagonal, "exclude_diagonal")
    block_size = _checks.block_size(block_size)
    v = jnp.asarray(v)
    if v.ndim not in (1, 2) or v.shape[0] != seqs.shape[0]:
        raise ValueError(
            f"`v` must have shape (n,) or (n, p) with n = {seqs.shape[0]}, got {v.shape}."
        )
    if not (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
        raise TypeError(f"`v` must hold real numbers, got dtype {v.dtype}.")
    out = _zs_stein_matvec(
        operator,
        kernel,
        seqs,
        lengths,
        v.astype(float_dtype()),
        exclude_diagonal=exclude_diagonal,
        block_size=block_size,
    )
    explain_non_finite(out, seqs, lengths, operator)
    return out


_zs_stein_matvec = eqx.filter_jit(stein_matvec)
