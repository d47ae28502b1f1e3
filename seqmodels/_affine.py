"""The two algebras of affine maps h -> a h + b that every linear-recurrence solver composes.

Elementwise transitions act by multiplication, matrix transitions (shape (..., D, D)) by
matrix products; `matrix` says which. Shared by the solvers (`_solvers`), the custom gradient
(`_scan`) and the sequence-parallel solve (`parallel`).
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["act", "compose", "identity_like", "outer_or_mul", "transpose"]


def act(a, h, matrix):
    """a h: the transition `a` applied to the state `h`."""
    return jnp.einsum("...ij,...j->...i", a, h) if matrix else a * h


def compose(a_later, a_earlier, matrix):
    """The transition a_later a_earlier (first a_earlier, then a_later)."""
    return jnp.einsum("...ij,...jk->...ik", a_later, a_earlier) if matrix else a_later * a_earlier


def transpose(a, matrix):
    """a^T (elementwise transitions are their own transposes)."""
    return jnp.swapaxes(a, -1, -2) if matrix else a


def identity_like(a, matrix):
    """The identity transition of `a`'s shape and dtype."""
    if matrix:
        eye = jnp.eye(a.shape[-1], dtype=a.dtype)
        return jnp.broadcast_to(eye, a.shape)
    return jnp.ones_like(a)


def outer_or_mul(lam, h, matrix):
    """lam h^T (matrix) or lam * h (elementwise): the gradient of a transition."""
    return jnp.einsum("...i,...j->...ij", lam, h) if matrix else lam * h
