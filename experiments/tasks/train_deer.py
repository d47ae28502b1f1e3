"""Train a GRU classifier on long time series twice, with DEER and with the sequential scan.

The task: each sequence is a stationary AR(1) process x_t = phi_c x_{t-1} + sqrt(1 - phi_c^2)
eps_t of length L (>= 4,000), seen through additive noise of standard deviation `noise`; the
class decides phi_c (negatively or positively correlated). The model is a GRU
(`seqmodels.cells.GRUCell`) whose states are averaged over time and read out linearly. Both runs
start from the same parameters and see the same data (full-batch AdamW on a fixed training
set): DEER (Lim et al., 2024) computes the same states and, by implicit differentiation, the
same gradients as backpropagation through the scan, so the loss curves must coincide. DEER
warm-starts each step from the previous step's states (`deer_solve(init=...)`), as the paper
does in training.

How closely can two float32 training runs coincide? Full-batch Adam training of an RNN is
sensitive to its initial conditions: when the loss leaves its initial plateau, differences of
a few float32 roundings grow to visible ones. A third run, the sequential scan started from
parameters perturbed by a relative `control_perturbation` (1e-6, about eight float32 ulps),
measures that horizon, and the report gives the number of steps over which each run stays
within `agreement_tol` of the sequential curve.

Devices: the training set is split over the run's device mesh when its size divides evenly
(data parallelism; the batch mean is reduced across devices, so several devices agree with one
to float32 rounding). Resuming: each finished run is a unit (`units/train-<label>.json`); while
one trains, its model, optimiser state, DEER warm start and curves so far are checkpointed with
orbax every `checkpoint_every` steps (`checkpoints/train-<label>/`), and `kseq run --resume`
continues from the latest checkpoint with the results of an uninterrupted run (step times
aside).

Run with `kseq run configs/train_deer.yaml`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from experiments.checkpoints import TrainCheckpoints
from experiments.config import ConfigError, require_at_least
from experiments.plots import style_axis
from seqmodels import deer_solve, sequential_solve
from seqmodels.cells import GRUCell


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      length: sequence length L.
      ar_coefficients: phi_0, phi_1, the AR(1) coefficient of each class, in (-1, 1).
      noise: standard deviation of the additive observation noise.
      hidden_size: GRU hidden size H.
      num_train, num_test: sequences in the training and test sets (half of each class).
      num_steps, learning_rate: full-batch AdamW training.
      clip_norm: global gradient-norm clipping (keeps the GRU out of the unstable regime where
        a large step makes both the training and DEER's Newton iteration diverge).
      method: the DEER variant, "newton" or "quasi".
      warm_start: start each DEER step from the previous step's states.
      control_perturbation: relative perturbation of the control run's initial parameters
        (0 skips the control).
      agreement_tol: two loss curves agree at a step when they differ by at most this.
      max_iter: DEER's iteration cap (as the GRU learns, its Jacobians start to expand and
        Newton needs far more iterations than at initialisation).
      checkpoint_every: steps between orbax checkpoints of each training run (0: none).
    """

    length: int = 4096
    ar_coefficients: tuple[float, float] = (-0.5, 0.5)
    noise: float = 2.0
    hidden_size: int = 8
    num_train: int = 16
    num_test: int = 64
    num_steps: int = 250
    learning_rate: float = 3e-3
    clip_norm: float = 1.0
    method: Literal["newton", "quasi"] = "newton"
    warm_start: bool = True
    max_iter: int = 1000
    control_perturbation: float = 1e-6
    agreement_tol: float = 1e-4
    checkpoint_every: int = 50

    def __post_init__(self):
        if len(self.ar_coefficients) != 2 or max(abs(c) for c in self.ar_coefficients) >= 1:
            raise ConfigError("`params.ar_coefficients` must be two coefficients in (-1, 1).")
        require_at_least(self, ("hidden_size", "num_steps", "max_iter"))
        require_at_least(self, ("length",), minimum=2)
        require_at_least(self, ("num_train", "num_test"), minimum=2)
        require_at_least(self, ("checkpoint_every",), minimum=0)


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
    phi = jnp.asarray(cfg.ar_coefficients, jnp.float32)[labels]
    innovations = jax.random.normal(k1, (cfg.length, n)) * jnp.sqrt(1.0 - phi * phi)[None]

    def ar_step(x, e):
        x = phi * x + e
        return x, x

    start = jax.random.normal(k2, (n,))  # the stationary law, so no burn-in is needed
    _, x = jax.lax.scan(ar_step, start, innovations)
    x = x.T + cfg.noise * jax.random.normal(jax.random.fold_in(k2, 1), (n, cfg.length))
    return x.reshape(n, cfg.length, 1), labels


def _loss(logits, labels):
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _states(model, xs, method, init, max_iter):
    h0 = model.cell.init_state()
    if method == "sequential":
        states = jax.vmap(lambda x: sequential_solve(model.cell, h0, x))(xs)
        return states, (jnp.int32(1), jnp.bool_(True))
    sol = jax.vmap(
        lambda x, i: deer_solve(model.cell, h0, x, method=method, init=i, max_iter=max_iter)
    )(xs, init)
    return sol.states, (jnp.max(sol.num_iters), jnp.all(sol.converged))


def _optimiser(learning_rate, clip_norm):
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(learning_rate))


@functools.cache
def _train_step(learning_rate, clip_norm, method, max_iter):
    """The jitted training step (one compilation per setting, shared by every run in a
    process, e.g. a run and its resumption)."""
    optimiser = _optimiser(learning_rate, clip_norm)

    def loss_fn(model, xs, labels, init):
        states, iters = _states(model, xs, method, init, max_iter)
        logits = jax.vmap(model.logits)(states)
        return _loss(logits, labels), (jax.lax.stop_gradient(states), iters)

    @jax.jit
    def step(model, opt_state, xs, labels, init):
        (loss, (states, (iters, converged))), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            model, xs, labels, init
        )
        # optax mixes Python floats and int32 step counts, which strict promotion rejects
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimiser.update(grads, opt_state, model)
        return optax.apply_updates(model, updates), opt_state, loss, states, iters, converged

    return step


def _accuracy(model, xs, labels):
    states = jax.vmap(lambda x: sequential_solve(model.cell, model.cell.init_state(), x))(xs)
    return float(jnp.mean(jnp.argmax(jax.vmap(model.logits)(states), -1) == labels))


def agreement_steps(losses, reference, tol):
    """How many leading steps stay within `tol` of the reference curve."""
    for i, (a, b) in enumerate(zip(losses, reference, strict=True)):
        if abs(a - b) > tol:
            return i
    return len(losses)


def train(cfg: Config, key, method, ctx=None, *, perturbation=0.0, label=None):
    """Trains from the model made by `key` (its parameters scaled by 1 + `perturbation`);
    returns the loss curve and diagnostics. With a run context, the training set is split over
    its devices and the loop is checkpointed (`checkpoints/train-<label>/`) and continued from
    the latest checkpoint if there is one."""
    label = label or method
    k_model, k_train, k_test = jax.random.split(key, 3)
    model = Classifier(cfg.hidden_size, key=k_model)
    if perturbation:
        model = jax.tree.map(
            lambda p: p * (1.0 + perturbation) if eqx.is_inexact_array(p) else p, model
        )
    xs, labels = make_data(k_train, cfg.num_train, cfg)
    opt_state = _optimiser(cfg.learning_rate, cfg.clip_norm).init(eqx.filter(model, eqx.is_array))
    step = _train_step(cfg.learning_rate, cfg.clip_norm, method, cfg.max_iter)
    init = jnp.zeros((cfg.num_train, cfg.length, cfg.hidden_size), jnp.float32)
    if ctx is None:
        checkpoints = TrainCheckpoints(".", every=0)
    else:
        xs, labels, init = ctx.shard((xs, labels, init))
        model, opt_state = ctx.replicate((model, opt_state))
        checkpoints = ctx.checkpoints(f"train-{label}", every=cfg.checkpoint_every)
    history = {"losses": [], "iterations": [], "times": [], "unconverged": []}
    with checkpoints:
        done, (model, opt_state, init), history = checkpoints.restore(
            (model, opt_state, init), history
        )
        for i in range(done, cfg.num_steps):
            start = time.perf_counter()
            model, opt_state, loss, states, iters, converged = step(
                model, opt_state, xs, labels, init
            )
            loss = float(loss)
            history["times"].append(time.perf_counter() - start)
            if method != "sequential" and cfg.warm_start:
                init = states
            history["losses"].append(loss)
            history["iterations"].append(int(iters))
            if not bool(converged):
                history["unconverged"].append(i)
            if ctx is not None:
                ctx.log_metrics(
                    run=label, step=i, loss=loss, iterations=int(iters), converged=bool(converged)
                )
            checkpoints.save(i + 1, (model, opt_state, init), history)
    times = history["times"]
    test_x, test_labels = make_data(k_test, cfg.num_test, cfg)
    return {
        "losses": history["losses"],
        "iterations": history["iterations"],
        "unconverged_steps": history["unconverged"],
        "first_step_s": times[0],
        "median_step_s": sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0],
        "test_accuracy": _accuracy(model, test_x, test_labels),
    }


def run(cfg: Config, ctx) -> dict:
    """Trains with the sequential scan, with DEER and (the control) with the sequential scan
    from slightly perturbed parameters, all from the same start; compares the curves."""
    plan = [("sequential", "sequential", 0.0), (cfg.method, cfg.method, 0.0)]
    if cfg.control_perturbation:
        plan.append(("control", "sequential", cfg.control_perturbation))
    runs = {}
    for label, method, perturbation in ctx.progress(plan, desc="train_deer", total=len(plan)):
        # one resumable unit per run; a run killed midway resumes from its checkpoints
        runs[label] = ctx.unit(
            f"train-{label}",
            lambda label=label, method=method, perturbation=perturbation: train(
                cfg, ctx.key(), method, ctx, perturbation=perturbation, label=label
            ),
            log=False,
        )
    seq, deer = runs["sequential"]["losses"], runs[cfg.method]["losses"]
    summary = {
        "agreement_steps": {
            label: agreement_steps(r["losses"], seq, cfg.agreement_tol)
            for label, r in runs.items()
            if label != "sequential"
        },
        "max_loss_gap": max(abs(a - b) for a, b in zip(seq, deer, strict=True)),
        "final_loss": {m: r["losses"][-1] for m, r in runs.items()},
        "test_accuracy": {m: r["test_accuracy"] for m, r in runs.items()},
        "median_step_s": {m: r["median_step_s"] for m, r in runs.items()},
        "deer_iterations_median_max": [
            sorted(runs[cfg.method]["iterations"])[cfg.num_steps // 2],
            max(runs[cfg.method]["iterations"]),
        ],
        "deer_unconverged_steps": len(runs[cfg.method]["unconverged_steps"]),
    }
    if "control" in runs:
        horizon = summary["agreement_steps"]["control"]
        summary["max_loss_gap_within_control_horizon"] = max(
            [abs(a - b) for a, b in zip(seq[:horizon], deer[:horizon], strict=True)], default=0.0
        )
    _plot(runs, cfg, ctx)
    return {"summary": summary, "runs": runs}


def _plot(runs, cfg, ctx):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    styles = {
        "sequential": dict(lw=3, alpha=0.5),
        cfg.method: dict(lw=1, ls="--"),
        "control": dict(lw=1, ls=":"),
    }
    for label, r in runs.items():
        axes[0].plot(r["losses"], label=label, **styles[label])
    style_axis(
        axes[0],
        "step",
        "training loss",
        f"GRU H = {cfg.hidden_size}, L = {cfg.length}",
        legend_size=None,
    )
    seq = runs["sequential"]["losses"]
    for label, r in runs.items():
        if label != "sequential":
            gap = [max(abs(a - b), 1e-9) for a, b in zip(r["losses"], seq, strict=True)]
            axes[1].plot(gap, label=f"|{label} - sequential|", **styles[label])
    axes[1].axhline(cfg.agreement_tol, color="grey", lw=1, ls="--")
    style_axis(axes[1], "step", "loss gap", ylog=10)
    axes[2].plot(runs[cfg.method]["iterations"], "o", ms=2)
    style_axis(
        axes[2],
        "step",
        f"{cfg.method} iterations",
        "warm-started" if cfg.warm_start else "cold start",
        legend=False,
    )
    ctx.save_figure(fig, "loss_curves")
