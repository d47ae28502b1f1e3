"""Neighbourhood structures of the Zanella-Stein operator and the neighbours of one sequence.

A neighbourhood is a strategy object (`Edits`, `Substitutions`, or any `Neighbourhood`): it
says how many edit slots of each kind a sequence of a given padded width has. The edits are
those of the authors' code, indices counted from the end:

- `Edits(window=J)` (the paper's ZS_J): substitute a symbol at one of the last J positions,
  insert a symbol in one of the last J gaps (gap 0 is after the last symbol, gap k before the
  k-th symbol from the end), or delete one of the last J symbols. Inserting at gap k and
  deleting the k-th symbol from the end undo each other, so N is symmetric for every J.
  `Edits(window=None)` is ZS_inf: the same edits at every position.
- `Substitutions(window=J)` (ZS'): substitutions only, at the last J positions (all positions
  when `window=None`). It never changes the length, so it cannot see the length distribution.

N(x) is a set: edits that give the same sequence (inserting a symbol next to an equal one,
deleting one of two equal neighbours, substituting a symbol by itself) count once. Every
neighbourhood is enumerated as a fixed-size array with a validity mask (`Neighbours`), so
everything is jittable and vmappable. Public functions also accept the strings "zs", "zs_inf"
and "substitution" with a `window`, mapped once by `as_neighbourhood`.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from kmethods import _checks

DEFAULT_WINDOW = 3
"""J of ZS_J by default: edits at the last 3 positions (ZS_3, one of the operators compared in
the paper and the authors' code)."""

_NAMES = ("zs", "zs_inf", "substitution")


class Neighbours(NamedTuple):
    """The ZS neighbourhood of one sequence as fixed-size arrays.

    Attributes:
      seqs: (N, W + 1) neighbour sequences, zero-padded.
      lengths: (N,) their lengths.
      weights: (N,) kappa(p(y) / p(x)); 0 for slots that hold no neighbour (an edit that is
        out of range, repeats another one or gives x itself) and for neighbours with p(y) = 0.
    """

    seqs: Int[Array, "N w1"]
    lengths: Int[Array, " N"]
    weights: Float[Array, " N"]


class Neighbourhood(eqx.Module):
    """A symmetric neighbourhood structure N made of trailing edits (abstract).

    Subclasses give `slots`, the number of substitution, insertion and deletion positions of a
    sequence of padded width `width`, and `edited_tail`, a bound on how far from the end any
    edit reaches (None: anywhere), which the Hamming kernel's Stein block exploits.
    """

    def slots(self, width: int) -> tuple[int, int, int]:
        """(substitution, insertion, deletion) positions for sequences of padded width `width`."""
        raise NotImplementedError

    @property
    def edited_tail(self) -> int | None:
        """Every neighbour of x keeps x[:l - edited_tail] unedited; None when there is no bound."""
        raise NotImplementedError

    def num_slots(self, width: int, num_states: int) -> int:
        """N, the number of neighbour slots per sequence of padded width `width`."""
        sub, ins, dele = self.slots(width)
        return sub * num_states + ins * num_states + dele

    def candidates(
        self, x: Int[Array, " w1"], length: Int[Array, ""], num_states: int
    ) -> tuple[Int[Array, "N w1"], Int[Array, " N"], Bool[Array, " N"]]:
        """All edit slots of one zero-padded sequence x (W + 1,) of length <= W.

        Returns (seqs (N, W + 1), lengths (N,), valid (N,)); `valid` is False for slots outside
        the sequence and for edits that repeat another slot's result or return x itself.
        """
        return _edit_candidates(x, length, num_states, self.slots(x.shape[0] - 1))


def _positions(window, width):
    return width + 1 if window is None else window


class Edits(Neighbourhood):
    """ZS_J: substitutions, insertions and deletions at the last J = `window` positions
    (`window=None`: at every position, ZS_inf)."""

    window: int | None = eqx.field(static=True)

    def __init__(self, window: int | None = DEFAULT_WINDOW):
        self.window = None if window is None else _checks.positive_int(window, "window")

    def slots(self, width):
        j = _positions(self.window, width)
        return min(j, width), min(j, width + 1), min(j, width)

    @property
    def edited_tail(self):
        return self.window


class Substitutions(Neighbourhood):
    """ZS': substitutions only, at the last J = `window` positions (`window=None`: all)."""

    window: int | None = eqx.field(static=True)

    def __init__(self, window: int | None = None):
        self.window = None if window is None else _checks.positive_int(window, "window")

    def slots(self, width):
        return min(_positions(self.window, width), width), 0, 0

    @property
    def edited_tail(self):
        return self.window


def as_neighbourhood(neighbourhood: str | Neighbourhood, window: int | None) -> Neighbourhood:
    """The strategy object for a public `neighbourhood` argument: a `Neighbourhood` as is, or one
    of the strings "zs" (`Edits(window)`), "zs_inf" (`Edits(None)`; `window` is checked but
    not used) and "substitution" (`Substitutions(window)`)."""
    if isinstance(neighbourhood, Neighbourhood):
        if window != DEFAULT_WINDOW:
            raise ValueError(
                "`window` is set by the neighbourhood object itself; leave `window` at its "
                f"default with neighbourhood={neighbourhood!r}."
            )
        return neighbourhood
    if not isinstance(neighbourhood, str):
        raise TypeError(
            "`neighbourhood` must be a Neighbourhood (e.g. kmethods.sequences.Edits(3)) or one "
            f"of {_NAMES}, got {type(neighbourhood).__name__}."
        )
    _checks.choice(neighbourhood, "neighbourhood", _NAMES)
    if window is not None:
        window = _checks.positive_int(window, "window")
    if neighbourhood == "zs":
        return Edits(window)
    if neighbourhood == "zs_inf":
        return Edits(None)
    return Substitutions(window)


def num_neighbours(
    width: int,
    num_states: int,
    *,
    neighbourhood: str | Neighbourhood = "zs",
    window: int | None = DEFAULT_WINDOW,
) -> int:
    """N, the number of neighbour slots per sequence of padded width `width`.

    Args:
      width: W, the padded width of the sequences.
      num_states: S, the number of symbols.
      neighbourhood: a `Neighbourhood`, or "zs", "zs_inf" or "substitution".
      window: J, with a string `neighbourhood` only.

    Returns:
      N, as a Python int.
    """
    width = _checks.positive_int(width, "width")
    num_states = _checks.positive_int(num_states, "num_states")
    return as_neighbourhood(neighbourhood, window).num_slots(width, num_states)


def _edit_candidates(x, length, num_states, slots):
    w1 = x.shape[0]
    sub, ins, dele = slots
    t = jnp.arange(w1, dtype=jnp.int32)
    symbols = jnp.arange(num_states, dtype=jnp.int32)
    clip = lambda i: jnp.clip(i, 0, w1 - 1)
    parts = []
    if sub:
        k = jnp.arange(sub, dtype=jnp.int32)
        p = clip(length - 1 - k)  # the k-th position from the end
        y = jnp.where(
            t[None, None, :] == p[:, None, None], symbols[None, :, None], x[None, None, :]
        )
        valid = (k < length)[:, None] & (symbols[None, :] != x[p][:, None])
        parts.append((y, jnp.broadcast_to(length, valid.shape), valid))
    if ins:
        k = jnp.arange(ins, dtype=jnp.int32)
        p = clip(length - k)  # gap k from the end: the new symbol lands at position l - k
        shifted = jnp.where(t[None, :] > p[:, None], x[clip(t - 1)][None, :], x[None, :])
        y = jnp.where(
            t[None, None, :] == p[:, None, None], symbols[None, :, None], shifted[:, None]
        )
        # Inserting s before an equal symbol equals inserting it one gap to the right (k - 1).
        repeat = (k >= 1)[:, None] & (x[p][:, None] == symbols[None, :])
        valid = (k <= length)[:, None] & ~repeat
        parts.append((y, jnp.broadcast_to(length + 1, valid.shape), valid))
    if dele:
        k = jnp.arange(dele, dtype=jnp.int32)
        p = clip(length - 1 - k)
        y = jnp.where(t[None, :] >= p[:, None], x[clip(t + 1)][None, :], x[None, :])
        # Deleting one of two equal neighbours: keep only the right one (k - 1).
        repeat = (k >= 1) & (x[p] == x[clip(p + 1)])
        valid = (k < length) & ~repeat
        parts.append(
            (y[:, None], jnp.broadcast_to(length - 1, valid.shape)[:, None], valid[:, None])
        )
    seqs = jnp.concatenate([a.reshape(-1, w1) for a, _, _ in parts])
    lengths = jnp.concatenate([b.reshape(-1) for _, b, _ in parts]).astype(jnp.int32)
    valid = jnp.concatenate([c.reshape(-1) for _, _, c in parts])
    lengths = jnp.where(valid, lengths, 0)
    seqs = jnp.where(t[None, :] < lengths[:, None], seqs, 0)
    return seqs, lengths, valid
