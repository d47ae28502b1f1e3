"""Flax (nnx) versions of the seqmodels layers, over the very same code.

Each class here is an `nnx.Module` that holds the inexact arrays of the equinox layer as
`nnx.Param`s and its static structure as plain attributes; calling it reassembles the
equinox layer (`eqx.combine`) and calls it. So the computation is the equinox one, line for
line, while `nnx.grad`, `nnx.jit` and `nnx.Optimizer` see ordinary Flax parameters.

    from flax import nnx
    from seqmodels.flax import GateLoop
    layer = GateLoop(64, num_heads=4, rngs=nnx.Rngs(0))
    y = layer(x, mode="chunkwise")

Construction with `rngs` draws one key from `rngs.params()` and passes it as the equinox
layer's `key`, so `GateLoop(..., rngs=nnx.Rngs(params=k))` equals
`seqmodels.layers.GateLoop(..., key=k')` for that drawn key `k'` (see `from_equinox`).
"""

from __future__ import annotations

import equinox as eqx
import jax
from flax import nnx

from seqmodels import layers as _layers

__all__ = [
    "LRU",
    "S5",
    "CKConv",
    "EquinoxModule",
    "GateLoop",
    "LinearAttention",
    "SequenceModel",
]


class EquinoxModule(nnx.Module):
    """An nnx wrapper around any equinox module: its inexact arrays become `nnx.Param`s."""

    def __init__(self, module: eqx.Module):
        params, static = eqx.partition(module, eqx.is_inexact_array)
        leaves, treedef = jax.tree.flatten(params)
        self.weights = nnx.List([nnx.Param(leaf) for leaf in leaves])
        self._treedef = treedef
        self._static = static

    @classmethod
    def from_equinox(cls, module: eqx.Module):
        """Wraps an existing equinox layer (sharing its current parameter values)."""
        obj = cls.__new__(cls)
        EquinoxModule.__init__(obj, module)
        return obj

    def to_equinox(self) -> eqx.Module:
        """The equinox layer with the current parameter values."""
        params = jax.tree.unflatten(self._treedef, [w[...] for w in self.weights])
        return eqx.combine(params, self._static)

    def __call__(self, *args, **kwargs):
        return self.to_equinox()(*args, **kwargs)


def _wrap(layer_cls):
    class Wrapped(EquinoxModule):
        def __init__(self, *args, rngs: nnx.Rngs, **kwargs):
            super().__init__(layer_cls(*args, key=rngs.params(), **kwargs))

    Wrapped.__name__ = Wrapped.__qualname__ = layer_cls.__name__
    Wrapped.__doc__ = (
        f"Flax (nnx) version of `seqmodels.layers.{layer_cls.__name__}`: same arguments, "
        f"with `rngs=nnx.Rngs(...)` in place of `key`.\n\n{layer_cls.__doc__}"
    )
    return Wrapped


GateLoop = _wrap(_layers.GateLoop)
LinearAttention = _wrap(_layers.LinearAttention)
LRU = _wrap(_layers.LRU)
S5 = _wrap(_layers.S5)
CKConv = _wrap(_layers.CKConv)
SequenceModel = _wrap(_layers.SequenceModel)
