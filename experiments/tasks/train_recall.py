"""Train sequence models on multi-query associative recall (MQAR), side by side.

MQAR (Arora et al., 2023, "Zoology"): a sequence lists `num_pairs` key-value pairs
k_1 v_1 ... k_P v_P, then `num_queries` keys drawn from those pairs; at each query the model
must output the value bound to that key. Keys and values use disjoint token ranges; the loss
and accuracy count query positions only. Each mixer (GateLoop, LRU, S5, linear attention,
CKConv) is trained in the same `SequenceModel` stack with optax AdamW, and the accuracy curves
are plotted together.

Devices: each training batch is split over the run's device mesh (data parallelism: the
parameters and optimiser state are replicated, the batch mean is reduced across devices), so a
run on several devices agrees with a one-device run to float32 rounding (the order of the
batch reduction changes), not bit for bit.

Resuming: each mixer's finished curve is a unit (`units/train-<mixer>.json`); while a mixer
trains, its model, optimiser state, data key and curve so far are checkpointed with orbax every
`checkpoint_every` steps (`checkpoints/train-<mixer>/`), and `kseq run --resume` continues from
the latest checkpoint with the results of an uninterrupted run.

Run with `kseq run configs/train_recall.yaml`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.config import ConfigError, require_at_least
from experiments.mesh import split_leading_axis
from experiments.plots import style_axis
from seqmodels.layers import LRU, S5, CKConv, GateLoop, LinearAttention, SequenceModel

MIXERS = {
    "gateloop": lambda d, key: GateLoop(d, num_heads=2, key=key),
    "linear_attention": lambda d, key: LinearAttention(d, num_heads=2, key=key),
    "lru": lambda d, key: LRU(d, 2 * d, r_min=0.9, r_max=0.999, max_phase=0.314, key=key),
    "s5": lambda d, key: S5(d, 2 * d, key=key),
    "ckconv": lambda d, key: CKConv(d, d, key=key),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the recall experiment.

    Attributes:
      mixers: which mixing layers to train.
      num_keys: key vocabulary size.
      num_values: value vocabulary size.
      num_pairs: key-value pairs per sequence.
      num_queries: queries per sequence.
      d_model, num_layers: model size.
      conv_width: width of the short causal convolution before each mixer
        (`seqmodels.layers.ShortConv`, as in H3 and the Zoology study; 0: none).
      batch_size, num_steps, learning_rate, weight_decay: training.
      eval_every: steps between evaluations on a fixed held-out batch.
      eval_batch: size of that batch.
      checkpoint_every: steps between orbax checkpoints of the training state (0: none).
    """

    mixers: tuple[Literal["gateloop", "linear_attention", "lru", "s5", "ckconv"], ...] = (
        "gateloop",
        "linear_attention",
        "lru",
        "s5",
    )
    num_keys: int = 16
    num_values: int = 16
    num_pairs: int = 8
    num_queries: int = 8
    d_model: int = 64
    num_layers: int = 2
    conv_width: int = 4
    batch_size: int = 64
    num_steps: int = 1500
    learning_rate: float = 3e-3
    weight_decay: float = 0.01
    eval_every: int = 100
    eval_batch: int = 256
    checkpoint_every: int = 250

    def __post_init__(self):
        require_at_least(
            self,
            (
                "num_keys",
                "num_values",
                "num_pairs",
                "num_queries",
                "d_model",
                "num_layers",
                "batch_size",
                "num_steps",
                "eval_every",
                "eval_batch",
            ),
        )
        require_at_least(self, ("checkpoint_every", "conv_width"), minimum=0)
        if self.num_pairs > self.num_keys:
            raise ConfigError("`params.num_pairs` must be <= `params.num_keys` (distinct keys).")


def mqar_batch(key, cfg: Config, batch: int):
    """Tokens (batch, L), targets (batch, L) and a mask of the query positions."""

    def one(key):
        kk, kv, kq = jax.random.split(key, 3)
        keys = jax.random.permutation(kk, cfg.num_keys)[: cfg.num_pairs]
        values = cfg.num_keys + jax.random.randint(kv, (cfg.num_pairs,), 0, cfg.num_values)
        pairs = jnp.stack([keys, values], axis=1).reshape(-1)
        which = jax.random.randint(kq, (cfg.num_queries,), 0, cfg.num_pairs)
        tokens = jnp.concatenate([pairs, keys[which]])
        targets = jnp.concatenate([jnp.zeros_like(pairs), values[which]])
        mask = jnp.concatenate([jnp.zeros(pairs.shape, bool), jnp.ones(which.shape, bool)])
        return tokens, targets, mask

    return jax.vmap(one)(jax.random.split(key, batch))


def _loss_and_accuracy(model, tokens, targets, mask):
    logits = jax.vmap(model)(tokens)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    weight = mask.astype(logits.dtype)
    loss = jnp.sum(nll * weight) / jnp.sum(weight)
    correct = (jnp.argmax(logits, -1) == targets).astype(logits.dtype)
    return loss, jnp.sum(correct * weight) / jnp.sum(weight)


def _optimiser(cfg: Config):
    return optax.adamw(cfg.learning_rate, weight_decay=cfg.weight_decay)


@functools.cache
def _train_step(cfg: Config, mesh, data_axes):
    """The jitted training step for `cfg` (one compilation per config, model and device mesh,
    shared by every run in a process, e.g. a run and its resumption)."""
    optimiser = _optimiser(cfg)

    @eqx.filter_jit
    def step(model, opt_state, k_train, i):
        # data parallelism: parameters on every device, each batch split over the mesh
        batch = split_leading_axis(
            mqar_batch(jax.random.fold_in(k_train, i), cfg, cfg.batch_size), mesh, data_axes
        )
        (loss, acc), grads = eqx.filter_value_and_grad(_loss_and_accuracy, has_aux=True)(
            model, *batch
        )
        # optax mixes Python floats and int32 step counts, which strict promotion rejects
        with jax.numpy_dtype_promotion("standard"):
            params = eqx.filter(model, eqx.is_inexact_array)
            updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss, acc

    return step


_evaluate = eqx.filter_jit(_loss_and_accuracy)


@eqx.filter_jit
def _initial_state(key, mixer: str, cfg: Config):
    """Model, optimiser state, held-out batch and training key, made in one compiled call
    (built op by op, the dozens of small initialisation ops each compiled on their own)."""
    k_model, k_eval, k_train = jax.random.split(key, 3)
    vocab = cfg.num_keys + cfg.num_values
    model = SequenceModel(
        MIXERS[mixer],
        d_model=cfg.d_model,
        num_layers=cfg.num_layers,
        num_outputs=vocab,
        num_tokens=vocab,
        conv_width=cfg.conv_width,
        key=k_model,
    )
    opt_state = _optimiser(cfg).init(eqx.filter(model, eqx.is_inexact_array))
    return model, opt_state, mqar_batch(k_eval, cfg, cfg.eval_batch), k_train


def train_one(key, mixer: str, cfg: Config, ctx) -> list[dict]:
    """Trains one model; returns its evaluation curve. Checkpointed every
    `cfg.checkpoint_every` steps, and continued from the latest checkpoint if there is one."""
    model, opt_state, eval_data, k_train = _initial_state(key, mixer, cfg)
    eval_data = ctx.shard(eval_data)
    step = _train_step(cfg, ctx.mesh, ctx.data_axes)
    state = ctx.replicate((model, opt_state, k_train))
    with ctx.checkpoints(f"train-{mixer}", every=cfg.checkpoint_every) as checkpoints:
        done, (model, opt_state, k_train), curve = checkpoints.restore(state, [])
        steps = ctx.progress(
            range(done + 1, cfg.num_steps + 1), desc=mixer, total=cfg.num_steps - done
        )
        for i in steps:
            model, opt_state, loss, _ = step(model, opt_state, k_train, np.asarray(i, np.uint32))
            if i % cfg.eval_every == 0 or i == cfg.num_steps:
                eval_loss, eval_acc = _evaluate(model, *eval_data)
                record = {
                    "mixer": mixer,
                    "step": i,
                    "train_loss": float(loss),
                    "eval_loss": float(eval_loss),
                    "eval_accuracy": float(eval_acc),
                }
                ctx.log_metrics(**record)
                curve.append(record)
            checkpoints.save(i, (model, opt_state, k_train), curve)
    return curve


def run(cfg: Config, ctx) -> dict:
    """Trains every mixer on the same data stream; returns the final and best accuracies."""
    root = ctx.key()
    curves = {
        m: ctx.unit(f"train-{m}", lambda m=m: train_one(jax.random.fold_in(root, 0), m, cfg, ctx))
        for m in cfg.mixers
    }
    _plot(curves, cfg, ctx)
    summary = [
        {
            "mixer": m,
            "final_accuracy": c[-1]["eval_accuracy"],
            "best_accuracy": max(r["eval_accuracy"] for r in c),
            "final_loss": c[-1]["eval_loss"],
        }
        for m, c in curves.items()
    ]
    return {"chance": 1.0 / cfg.num_values, "summary": summary}


def _plot(curves, cfg, ctx):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mixer, curve in curves.items():
        ax.plot([r["step"] for r in curve], [r["eval_accuracy"] for r in curve], label=mixer)
    ax.axhline(1.0 / cfg.num_values, color="grey", linestyle="--", linewidth=1, label="chance")
    style_axis(
        ax,
        "training step",
        "query accuracy (held out)",
        f"MQAR, {cfg.num_pairs} pairs, {cfg.num_queries} queries",
        ylim=(0, 1.02),
        legend_size=8,
    )
    ctx.save_figure(fig, "accuracy")
