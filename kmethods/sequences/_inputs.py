"""Input checks of the public sequence-KSD functions, run eagerly in front of the jitted cores,
and the explanation of a non-finite result caused by `log_prob`.

Value checks (tokens, lengths, log p finite) run on concrete arrays only: under `jit`/`vmap` a
sequence that fails them gets NaN weights (see `ZSOperator.neighbours`), so the statistic is
NaN and never rejects.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from kmethods import _checks
from kmethods.sequences._kernels import check_sequence_kernel
from kmethods.sequences._misc import float_dtype, pad_sequences
from kmethods.sequences._neighbours import as_neighbourhood
from kmethods.sequences._operator import ZSOperator

_BALANCES = ("barker", "sqrt")


def check_operator(log_prob, num_states, neighbourhood, window, balance) -> ZSOperator:
    """The `ZSOperator` of the public arguments (`log_prob` only checked to be callable)."""
    num_states = _checks.positive_int(num_states, "num_states")
    neighbourhood = as_neighbourhood(neighbourhood, window)
    _checks.choice(balance, "balance", _BALANCES)
    if not callable(log_prob):
        raise TypeError(
            f"`log_prob` must be a function (seq, length) -> scalar, got {type(log_prob).__name__}."
        )
    # The balancing function is a traced flag: changing it does not recompile.
    return ZSOperator(log_prob, neighbourhood, num_states, jnp.asarray(balance == "sqrt"))


def as_integer_array(x, name, ndim, shape_text):
    """`x` as an int32 array of `ndim` dimensions; a TypeError or ValueError naming it else."""
    x = _checks.as_array(x, name, shape_text, integer=True)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integers, got dtype {x.dtype}.")
    if x.ndim != ndim:
        raise ValueError(f"`{name}` must have shape {shape_text}, got shape {x.shape}.")
    return x.astype(jnp.int32)


def check_sequences(seqs, lengths, num_states):
    """Validates a padded batch (n >= 2): (seqs (n, W), lengths (n,)) as int32."""
    seqs = as_integer_array(seqs, "seqs", 2, "(n, W)")
    lengths = as_integer_array(lengths, "lengths", 1, "(n,)")
    n, width = seqs.shape
    if lengths.shape[0] != n:
        raise ValueError(
            f"`lengths` must have shape (n,) = ({n},) to match `seqs` {seqs.shape}, "
            f"got {lengths.shape}."
        )
    if n < 2:
        raise ValueError(f"`seqs` needs at least 2 sequences, got {n}.")
    if width < 1:
        raise ValueError(f"`seqs` must have a padded width W >= 1, got shape {seqs.shape}.")
    if _checks.is_concrete(lengths):
        ln = np.asarray(lengths)
        if ln.min() < 0 or ln.max() > width:
            raise ValueError(
                f"`lengths` must lie in [0, W] = [0, {width}], got values in "
                f"[{ln.min()}, {ln.max()}]."
            )
        if _checks.is_concrete(seqs):
            s = np.asarray(seqs)
            used = np.arange(width)[None, :] < ln[:, None]
            bad = used & ((s < 0) | (s >= num_states))
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise ValueError(
                    f"`seqs` must hold tokens in [0, num_states) = [0, {num_states}) before each "
                    f"sequence's length; seqs[{i}, {j}] = {s[i, j]}."
                )
    return seqs, lengths


def check_sequence(seq, length, num_states):
    """Validates one sequence: (seq (W,), length ()) as int32."""
    seq = as_integer_array(seq, "seq", 1, "(W,)")
    length = jnp.asarray(length)
    if length.ndim != 0 or not jnp.issubdtype(length.dtype, jnp.integer):
        raise ValueError(f"`length` must be an integer scalar, got {length.dtype} {length.shape}.")
    length = length.astype(jnp.int32)
    if _checks.is_concrete(length) and not 0 <= int(length) <= seq.shape[0]:
        raise ValueError(f"`length` must lie in [0, W] = [0, {seq.shape[0]}], got {int(length)}.")
    if _checks.is_concrete(seq) and _checks.is_concrete(length):
        used = np.asarray(seq)[: int(length)]
        if ((used < 0) | (used >= num_states)).any():
            raise ValueError(
                f"`seq` must hold tokens in [0, num_states) = [0, {num_states}) before its "
                f"length, got {used.tolist()}."
            )
    return seq, length


def _is_concrete_tree(tree) -> bool:
    return all(_checks.is_concrete(a) for a in jax.tree.leaves(eqx.filter(tree, eqx.is_array)))


@eqx.filter_jit
def _log_probs(log_prob, seqs, lengths):
    return jax.vmap(log_prob)(seqs, lengths).astype(float_dtype())


def check_log_prob(log_prob, seqs, lengths) -> None:
    """`log_prob` maps one sequence to a scalar, is hashable apart from its array leaves (so
    that `eqx.filter_jit` compiles once per function), and is finite at every sequence of the
    sample (checked on concrete input)."""
    static = eqx.filter(log_prob, eqx.is_array, inverse=True)
    try:
        leaves, treedef = jax.tree.flatten(static)
        hash((treedef, tuple(leaves)))
    except TypeError:
        raise TypeError(
            "`log_prob` must be hashable apart from its array leaves (a function, or a bound "
            "method of an equinox module)."
        ) from None
    out = jax.eval_shape(log_prob, seqs[0], lengths[0])
    if getattr(out, "shape", None) != ():
        raise ValueError(
            "`log_prob` must map one padded sequence and its length to a scalar; it returned "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    if _is_concrete_tree((seqs, lengths, log_prob)):
        values = np.asarray(_log_probs(log_prob, seqs, lengths))
        if not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(
                f"`log_prob` is {values[i]} at seqs[{i}] (length {int(lengths[i])}): it must be "
                "finite at every sequence of the sample (which must lie in the support of the "
                "model)."
            )


def prepare(seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance):
    """The checked (seqs, lengths, operator, kernel) of a call on a batch. The kernel's numbers
    become arrays, so that `eqx.filter_jit` traces them as `jax.jit` did."""
    operator = check_operator(log_prob, num_states, neighbourhood, window, balance)
    check_sequence_kernel(kernel)
    seqs, lengths = check_sequences(seqs, lengths, operator.num_states)
    check_log_prob(log_prob, seqs, lengths)
    return seqs, lengths, operator, jax.tree.map(jnp.asarray, kernel)


@eqx.filter_jit
def _bad_neighbours(operator, seqs, lengths):
    """Per sequence, the first neighbour slot where log p is NaN or +inf: (any, slot, its
    sequence, its length, the value). Runs only to explain a non-finite result."""
    x = pad_sequences(seqs, lengths, seqs.shape[1] + 1)

    def one(x, length):
        cand, cand_lengths, valid = operator.neighbourhood.candidates(
            x, length, operator.num_states
        )
        lp = jax.vmap(operator.log_prob)(cand, cand_lengths).astype(float_dtype())
        bad = valid & (jnp.isnan(lp) | (lp == jnp.inf))
        j = jnp.argmax(bad)
        return jnp.any(bad), j, cand[j], cand_lengths[j], lp[j]

    return jax.vmap(one)(x, lengths)


def explain_non_finite(value, seqs, lengths, operator) -> None:
    """Raises a ValueError naming `log_prob` when an eager result `value` is not finite because
    `log_prob` is NaN or +inf at a neighbour of the sample; returns otherwise."""
    if not _checks.is_concrete(value) or np.isfinite(np.asarray(value)).all():
        return
    if not _is_concrete_tree((seqs, lengths, operator)):
        return
    found, slot, cand, cand_length, bad_value = _bad_neighbours(operator, seqs, lengths)
    found = np.asarray(found)
    if not found.any():
        return
    i = int(np.flatnonzero(found)[0])
    length = int(cand_length[i])
    raise ValueError(
        f"`log_prob` is {float(bad_value[i])} at a neighbour of seqs[{i}] (the edit in slot "
        f"{int(slot[i])}: {np.asarray(cand[i])[:length].tolist()}, length {length}): it must be "
        "finite at every neighbour, or -inf outside the model's support."
    )
