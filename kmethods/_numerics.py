"""Numerical helpers shared by the kmethods modules (internal)."""

from __future__ import annotations

import jax.numpy as jnp


def safe_sqrt(r2):
    """sqrt with a finite (zero) gradient at 0, so that autodiff never produces NaN."""
    positive = r2 > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, r2, 1.0)), 0.0)
