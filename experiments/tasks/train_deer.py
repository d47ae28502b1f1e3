"""Train a GRU classifier on long time series twice, with DEER and with the sequential scan.

The task: each sequence is a noisy sinusoid x_t = sin(2 pi t / T_c + phi) + sigma eps_t of
length L (>= 4,000), with period T_0 or T_1 by class; the model is a GRU (`seqmodels.GRUCell`)
whose states are averaged over time and read out linearly. Both runs start from the same
parameters and see the same data (full-batch AdamW on a fixed training set), so their loss
curves must coincide: DEER (Lim et al., 2024) computes the same states and, by implicit
differentiation, the same gradients as backpropagation through the scan. DEER warm-starts each
step from the previous step's states (`deer_solve(init=...)`), as the paper does in training,
which cuts the Newton iterations once the parameters move slowly.

Run with `kseq run configs/train_deer.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from experiments.config import ConfigError, require_at_least
from seqmodels import GRUCell, deer_solve, sequential_solve


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      length: sequence length L.
      periods: the two class periods T_0, T_1 (in steps).
      noise: sigma of the additive Gaussian noise.
      hidden_size: GRU hidden size H.
      num_train, num_test: sequences in the training and test sets (half of each class).
      num_steps, learning_rate: full-batch AdamW training.
      method: the DEER variant, "newton" or "quasi".
      warm_start: start each DEER step from the previous step's states.
    """

    length: int = 4096
    periods: tuple[float, float] = (60.0, 80.0)
    noise: float = 1.0
    hidden_size: int = 8
    num_train: int = 32
    num_test: int = 64
    num_steps: int = 150
    learning_rate: float = 1e-2
    method: Literal["newton", "quasi"] = "newton"
    warm_start: bool = True

    def __post_init__(self):
        if len(self.periods) != 2 or min(self.periods) <= 0:
            raise ConfigError("`params.periods` must be two positive periods.")
        require_at_least(self, ("hidden_size", "num_steps"))
        require_at_least(self, ("length",), minimum=2)
        require_at_least(self, ("num_train", "num_test"), minimum=2)


class Classifier(eqx.Module):
    """GRU over the sequence, time-averaged states, linear read-out to two logits."""

    cell: GRUCell
    readout: eqx.nn.Linear

    def __init__(self, hidden, *, key):
        k1, k2 = jax.random.split(key)
        self.cell = GRUCell(1, hidden, key=k1)
        self.readout = eqx.nn.Linear(hidden, 2, key=k2)

    def logits(self, states):
        return self.readout(jnp.mean(states, axis=0))


def make_data(key, n, cfg):
    """n sequences of shape (L, 1) and their labels (half of each class)."""
    k1, k2 = jax.random.split(key)
    labels = jnp.arange(n) % 2
    period = jnp.asarray(cfg.periods)[labels]
    phase = jax.random.uniform(k1, (n, 1), minval=0.0, maxval=2 * math.pi)
    t = jnp.arange(cfg.length, dtype=jnp.float32).reshape(1, -1)
    x = jnp.sin(2 * math.pi * t / period.reshape(-1, 1) + phase)
    x = x + cfg.noise * jax.random.normal(k2, x.shape)
    return x.reshape(n, cfg.length, 1), labels


def _loss(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _states(model, xs, method, init):
    h0 = model.cell.init_state()
    if method == "sequential":
        states = jax.vmap(lambda x: sequential_solve(model.cell, h0, x))(xs)
        return states, jnp.int32(1)
    sol = jax.vmap(lambda x, i: deer_solve(model.cell, h0, x, method=method, init=i))(xs, init)
    return sol.states, jnp.max(sol.num_iters)


def _train_step(optimiser, method):
    def loss_fn(model, xs, labels, init):
        states, iters = _states(model, xs, method, init)
        logits = jax.vmap(model.logits)(states)
        return _loss(logits, labels), (jax.lax.stop_gradient(states), iters)

    @jax.jit
    def step(model, opt_state, xs, labels, init):
        (loss, (states, iters)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            model, xs, labels, init
        )
        # optax mixes Python floats and int32 step counts, which strict promotion rejects
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss, states, iters

    return step


def _accuracy(model, xs, labels):
    states = jax.vmap(lambda x: sequential_solve(model.cell, model.cell.init_state(), x))(xs)
    return float(jnp.mean(jnp.argmax(jax.vmap(model.logits)(states), -1) == labels))


def train(cfg: Config, key, method, ctx=None):
    """Trains from the model made by `key`; returns the loss curve and diagnostics."""
    k_model, k_train, k_test = jax.random.split(key, 3)
    model = Classifier(cfg.hidden_size, key=k_model)
    xs, labels = make_data(k_train, cfg.num_train, cfg)
    optimiser = optax.adamw(cfg.learning_rate)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
    step = _train_step(optimiser, method)
    init = jnp.zeros((cfg.num_train, cfg.length, cfg.hidden_size), jnp.float32)
    losses, iterations, times = [], [], []
    for i in range(cfg.num_steps):
        start = time.perf_counter()
        model, opt_state, loss, states, iters = step(model, opt_state, xs, labels, init)
        loss = float(loss)
        times.append(time.perf_counter() - start)
        if method != "sequential" and cfg.warm_start:
            init = states
        losses.append(loss)
        iterations.append(int(iters))
        if ctx is not None:
            ctx.log_metrics(method=method, step=i, loss=loss, iterations=int(iters))
    test_x, test_labels = make_data(k_test, cfg.num_test, cfg)
    return {
        "losses": losses,
        "iterations": iterations,
        "first_step_s": times[0],
        "median_step_s": sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0],
        "test_accuracy": _accuracy(model, test_x, test_labels),
    }


def run(cfg: Config, ctx) -> dict:
    """Trains with the sequential scan and with DEER from the same start; compares curves."""
    runs = {}
    for method in ctx.progress(["sequential", cfg.method], desc="train_deer", total=2):
        runs[method] = train(cfg, ctx.key(), method, ctx)
    seq, deer = runs["sequential"], runs[cfg.method]
    gap = max(abs(a - b) for a, b in zip(seq["losses"], deer["losses"], strict=True))
    _plot(runs, cfg, ctx)
    summary = {
        "max_loss_gap": gap,
        "final_loss": {m: r["losses"][-1] for m, r in runs.items()},
        "test_accuracy": {m: r["test_accuracy"] for m, r in runs.items()},
        "median_step_s": {m: r["median_step_s"] for m, r in runs.items()},
        "deer_iterations_first_last": [deer["iterations"][0], deer["iterations"][-1]],
    }
    return {"summary": summary, "runs": runs}


def _plot(runs, cfg, ctx):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    styles = {"sequential": dict(lw=3, alpha=0.5), cfg.method: dict(lw=1, ls="--")}
    for method, r in runs.items():
        axes[0].plot(r["losses"], label=method, **styles[method])
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].set_title(f"GRU H = {cfg.hidden_size}, L = {cfg.length}")
    axes[0].legend()
    axes[1].plot(runs[cfg.method]["iterations"], "o", ms=2)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"{cfg.method} iterations")
    axes[1].set_title("warm-started" if cfg.warm_start else "cold start")
    ctx.save_figure(fig, "loss_curves")
