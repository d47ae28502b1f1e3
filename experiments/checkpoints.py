"""Checkpoints of training loops with orbax: `<run>/checkpoints/<loop>/<step>/`.

A training loop is an `(init, step)` pair over a state pytree (an equinox model, an optax
state, PRNG keys, warm starts) plus the history it has recorded so far (loss curves: JSON).
`TrainCheckpoints` saves both every `every` steps with an orbax `CheckpointManager`, keeping
the last `keep`, and restores the latest into the structure of a freshly initialised state:
the same arrays bit for bit, the same step, the same history, so a loop resumed after a kill
continues exactly as the uninterrupted loop would have. Orbax writes each checkpoint to a
temporary folder and renames it when complete, so a kill during a save leaves the previous
checkpoint as the latest.

The state's array leaves are stored as host NumPy arrays (typed PRNG keys as their key data;
leaves that are not arrays, such as an equinox module's static fields, come from the fresh
state): a checkpoint does not depend on the device layout, and restored arrays are put back
with the shardings of the fresh state's arrays. In a multi-process run every process calls
`restore` and `save` (orbax synchronises them; arrays sharded over several processes are
gathered first), orbax writes from process 0 only, and the run folder is on a filesystem the
processes share.

Saves are synchronous: the states of this project's tasks are small, and a finished save is
on disk before the loop moves on.
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.distributed import host_array, is_prng_key
from experiments.files import to_jsonable

if TYPE_CHECKING:
    from jaxtyping import PyTree

__all__ = ["TrainCheckpoints"]


def _is_array(x) -> bool:
    import jax

    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def _to_host(leaf) -> np.ndarray:
    import jax

    return host_array(jax.random.key_data(leaf) if is_prng_key(leaf) else leaf)


def _like(template, data):
    """Restored host `data` as an array like `template` (dtype, kind and sharding)."""
    import jax
    import jax.numpy as jnp

    if isinstance(template, (np.ndarray, np.generic)):
        return np.asarray(data, dtype=template.dtype).reshape(template.shape)
    if is_prng_key(template):
        raw = _like(jax.random.key_data(template), data)
        return jax.random.wrap_key_data(raw, impl=jax.random.key_impl(template))
    data = np.asarray(data, dtype=template.dtype).reshape(template.shape)
    sharding = template.sharding
    if len(sharding.device_set) == 1 and sharding.is_fully_addressable:
        return jnp.asarray(data)  # on the default device, as a freshly made array
    return jax.device_put(data, sharding)


class TrainCheckpoints:
    """Every `every` steps, the state and history of a training loop, with orbax.

    Use it as a context manager around the loop:

        with ctx.checkpoints("train-lru", every=100) as ckpt:
            start, state, history = ckpt.restore(state, history)
            for step in range(start + 1, num_steps + 1):
                state = train_step(state, step)
                history.append(...)
                ckpt.save(step, state, history)

    Args:
      directory: the loop's checkpoint folder (created when the first checkpoint is saved).
      every: steps between checkpoints; 0 saves none (and `restore` finds none).
      keep: how many of the latest checkpoints are kept.
    """

    def __init__(self, directory: str | os.PathLike, *, every: int, keep: int = 2):
        if every < 0 or keep < 1:
            raise ValueError(f"`every` must be >= 0 and `keep` >= 1, got {every} and {keep}.")
        self.directory = pathlib.Path(directory).absolute()
        self.every = int(every)
        self.keep = int(keep)
        self._manager = None

    def _open(self, *, create: bool):
        if self._manager is None and (create or self.directory.is_dir()):
            import orbax.checkpoint as ocp

            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep,
                enable_async_checkpointing=False,
                create=True,
                cleanup_tmp_directories=True,  # what a kill during a save left behind
            )
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        return self._manager

    def restore(self, state: PyTree, history: Any = None) -> tuple[int, PyTree, Any]:
        """The latest checkpoint as (step, state, history), the state with the structure,
        dtypes and shardings of `state`; `(0, state, history)` when there is none."""
        import jax

        manager = self._open(create=False) if self.every else None
        step = manager.latest_step() if manager is not None else None
        if step is None:
            return 0, state, history
        import orbax.checkpoint as ocp

        saved = manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.PyTreeRestore(), history=ocp.args.JsonRestore()),
        )
        leaves, treedef = jax.tree.flatten(state)
        arrays = saved["state"]["arrays"]
        positions = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
        if len(arrays) != len(positions):
            raise ValueError(
                f"the checkpoint in {self.directory / str(step)} holds {len(arrays)} arrays, "
                f"the state has {len(positions)}: it is not this loop's checkpoint."
            )
        for i, data in zip(positions, arrays, strict=True):
            leaves[i] = _like(leaves[i], data)
        return int(step), jax.tree.unflatten(treedef, leaves), saved["history"]["history"]

    def save(self, step: int, state: PyTree, history: Any = None, *, force: bool = False) -> bool:
        """Saves `state` and `history` (JSON-able) as the checkpoint of `step` when `step` is a
        multiple of `every` (or `force`); returns whether it saved."""
        import jax

        if not self.every or not (force or step % self.every == 0):
            return False
        import orbax.checkpoint as ocp

        arrays = [_to_host(leaf) for leaf in jax.tree.leaves(state) if _is_array(leaf)]
        self._open(create=True).save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave({"arrays": arrays}),
                history=ocp.args.JsonSave({"history": to_jsonable(history)}),
            ),
            force=True,
        )
        return True

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> TrainCheckpoints:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
