"""Finite-difference gradient checks of jitted functions (the recurrence and DEER tests).

`jax.test_util.check_grads` evaluates its function a dozen times with perturbed arguments of
the same shapes. Run eagerly, every elementwise op of every evaluation dispatches (and the
first time compiles) on its own; jitted, each evaluation is one call of one program, compiled
once. The custom gradients under test are the same either way.
"""

import jax
from jax.test_util import check_grads as _check_grads


def check_grads(f, args, order=1, modes=("rev",), **kwargs):
    """`jax.test_util.check_grads` of `jax.jit(f)` (default: first order, reverse mode)."""
    _check_grads(jax.jit(f), args, order=order, modes=modes, **kwargs)
