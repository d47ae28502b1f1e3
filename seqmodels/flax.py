"""Flax (nnx) versions of the seqmodels layers, over the very same code.

Each class here is an `nnx.Module` that holds the inexact arrays of the equinox layer as
`nnx.Param`s, its other arrays as `Buffer`s (not trained), and its static structure as plain
attributes; calling it reassembles the
equinox layer (`eqx.combine`) and maps it over the batch. So the computation is the equinox
one, line for line, while `nnx.grad`, `nnx.jit` and `nnx.Optimizer` see ordinary Flax
parameters.

    from flax import nnx
    from seqmodels.flax import GateLoop
    layer = GateLoop(64, num_heads=4, rngs=nnx.Rngs(0))
    y = layer(x)  # x (B, L, 64) -> (B, L, 64); time_major=True for (L, B, 64)

Conventions, as `nnx.RNN`'s: inputs are batch-first, (*batch, L, D) (any number of batch
axes, usually one: (B, L, D)), or time-major (L, *batch, D) with `time_major=True` (given at
construction, or per call). `SequenceModel` over tokens takes (*batch, L) integers. Keyword
arguments of a call (`mode=`, `step_scale=`, ...) reach every sequence unchanged.

Parameters are named by their place in the equinox layer, as `eqx.tree_at` would reach them:
`q/weight`, `q/bias`, `blocks/0/mixer/q/weight`, `blocks/0/norm1/weight`, ... (equinox's
`Linear.weight` is (out, in), not Flax's `kernel` (in, out), so the equinox name is kept:
a rule written for Flax kernels would shard the wrong axis). `nnx.state(layer, nnx.Param)`
and optax masks address them by these paths, e.g. weight decay on matrices only:
`lambda path, p: path[-1] == "weight" and p.ndim == 2`.

Construction with `rngs` draws one key from `rngs.params()` and passes it as the equinox
layer's `key`, so `GateLoop(..., rngs=nnx.Rngs(params=k))` equals
`seqmodels.layers.GateLoop(..., key=k')` for that drawn key `k'` (see `from_equinox`).
`init_state(batch_size=B)` and `step(state, x_t)` with x_t of shape (B, D) run the equinox
layers' recurrent inference over a batch.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, PyTree

from seqmodels import layers as _layers

__all__ = [
    "LRU",
    "S5",
    "Buffer",
    "CKConv",
    "EquinoxModule",
    "GateLoop",
    "LearnedKernelAttention",
    "LinearAttention",
    "SequenceModel",
    "ShortConv",
]


def _key_name(entry):
    """A path entry of `jax.tree_util` as an attribute name or a list index."""
    for attr in ("name", "idx", "key"):
        if hasattr(entry, attr):
            return getattr(entry, attr)
    raise TypeError(f"unexpected path entry {entry!r}")


class Buffer(nnx.Variable):
    """A non-trainable array of the equinox layer (integer data such as
    `LearnedKernelAttention.noise_key`): part of the module's state, but not an `nnx.Param`,
    so `nnx.grad` and `nnx.Optimizer` (which default to `nnx.Param`) leave it alone."""


class _Node(nnx.Module):
    """A named level of the parameter tree (an equinox submodule's place)."""


def _build(tree):
    """A nested {name: subtree or Param} as nnx modules: lists for runs of indices 0..n-1."""
    if not isinstance(tree, dict):
        return tree
    children = {name: _build(sub) for name, sub in tree.items()}
    if all(isinstance(name, int) for name in children) and sorted(children) == list(
        range(len(children))
    ):
        return nnx.List([children[i] for i in range(len(children))])
    node = _Node()
    for name, child in children.items():
        setattr(node, str(name), child)
    return node


def _get(node, path):
    for name in path:
        node = node[name] if isinstance(name, int) else getattr(node, str(name))
    return node


class EquinoxModule(nnx.Module):
    """An nnx wrapper around any equinox module mapping one sequence (L, D) to (L, D'): its
    inexact arrays become `nnx.Param`s named by their paths in the module, and calls map it
    over batch-first (or, with `time_major`, time-major) inputs."""

    def __init__(self, module: eqx.Module, *, time_major: bool = False):
        params, static = eqx.partition(module, eqx.is_array)
        flat, treedef = jax.tree_util.tree_flatten_with_path(params)
        paths = tuple(tuple(_key_name(entry) for entry in path) for path, _ in flat)
        nested: dict = {}
        for path, (_, leaf) in zip(paths, flat, strict=True):
            level = nested
            for name in path[:-1]:
                level = level.setdefault(name, {})
            inexact = jnp.issubdtype(leaf.dtype, jnp.inexact)
            level[path[-1]] = nnx.Param(leaf) if inexact else Buffer(leaf)
        for name, child in nested.items():
            if hasattr(type(self), str(name)) or str(name) in ("time_major", "_paths"):
                raise ValueError(f"the equinox field {name!r} clashes with the nnx wrapper's.")
            setattr(self, str(name), _build(child))
        self._paths = paths
        self._treedef = treedef
        self._static = static
        self.time_major = bool(time_major)

    @classmethod
    def from_equinox(cls, module: eqx.Module, *, time_major: bool = False):
        """Wraps an existing equinox layer (sharing its current parameter values)."""
        obj = cls.__new__(cls)
        EquinoxModule.__init__(obj, module, time_major=time_major)
        return obj

    def to_equinox(self) -> eqx.Module:
        """The equinox layer with the current parameter values."""
        leaves = [_get(self, path)[...] for path in self._paths]
        return eqx.combine(jax.tree.unflatten(self._treedef, leaves), self._static)

    def _feature_axes(self, layer):
        """1 for (L, D) inputs, 0 for a SequenceModel over (L,) tokens."""
        embed = getattr(layer, "embed", None)
        return 0 if isinstance(embed, eqx.nn.Embedding) else 1

    def __call__(self, x: Array, *args, time_major: bool | None = None, **kwargs) -> Array:
        """Maps (*batch, L, D) to (*batch, L, D') (or, time-major, (L, *batch, D) to
        (L, *batch, D')); `args` and `kwargs` go to the equinox layer's call on each
        sequence."""
        layer = self.to_equinox()
        time_major = self.time_major if time_major is None else time_major
        x = jnp.asarray(x)
        features = self._feature_axes(layer)
        if x.ndim < features + 1:
            shape = "(L, B)" if time_major else "(B, L)"
            shape = shape[:-1] + (", D)" if features else ")")
            raise ValueError(
                f"{type(self).__name__} expected `x` of shape {shape} (any number of batch "
                f"axes), got shape {x.shape}."
            )
        time = x.ndim - features - 1  # its place batch-first
        if time_major:
            x = jnp.moveaxis(x, 0, time)
        batch = x.shape[:time]
        flat = x.reshape(-1, *x.shape[time:])
        y = jax.vmap(lambda s: layer(s, *args, **kwargs))(flat)
        y = y.reshape(*batch, *y.shape[1:])
        return jnp.moveaxis(y, time, 0) if time_major else y

    def init_state(self, batch_size: int | None = None, **kwargs) -> PyTree:
        """The equinox layer's `init_state(**kwargs)`, with a leading batch axis of
        `batch_size` on every leaf when given."""
        state = self.to_equinox().init_state(**kwargs)
        if batch_size is None:
            return state
        return jax.tree.map(lambda s: jnp.broadcast_to(s, (batch_size, *s.shape)), state)

    def step(self, state: PyTree, x_t: Array, **kwargs) -> tuple[PyTree, Array]:
        """One step of the equinox layer's `step`: x_t of shape (D,) (a token: ()) with an
        unbatched state, or (B, D) (tokens: (B,)) with `init_state(batch_size=B)`."""
        layer = self.to_equinox()
        x_t = jnp.asarray(x_t)
        one = lambda s, x: layer.step(s, x, **kwargs)
        return (one if x_t.ndim == self._feature_axes(layer) else jax.vmap(one))(state, x_t)


def _wrap(layer_cls):
    class Wrapped(EquinoxModule):
        def __init__(self, *args, rngs: nnx.Rngs, time_major: bool = False, **kwargs):
            layer = layer_cls(*args, key=rngs.params(), **kwargs)
            super().__init__(layer, time_major=time_major)

    Wrapped.__name__ = Wrapped.__qualname__ = layer_cls.__name__
    Wrapped.__doc__ = (
        f"Flax (nnx) version of `seqmodels.layers.{layer_cls.__name__}`: same arguments, "
        f"with `rngs=nnx.Rngs(...)` in place of `key`, and `time_major` (default False: "
        "inputs (B, L, D); True: (L, B, D)).\n\n"
        f"{layer_cls.__doc__}"
    )
    return Wrapped


GateLoop = _wrap(_layers.GateLoop)
LinearAttention = _wrap(_layers.LinearAttention)
LearnedKernelAttention = _wrap(_layers.LearnedKernelAttention)
LRU = _wrap(_layers.LRU)
S5 = _wrap(_layers.S5)
CKConv = _wrap(_layers.CKConv)
ShortConv = _wrap(_layers.ShortConv)
SequenceModel = _wrap(_layers.SequenceModel)
