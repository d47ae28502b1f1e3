"""Byte-level language modelling on the Python standard library's source, model by model.

The corpus is text that no one here wrote and every machine with Python already has: the `.py`
files under `sysconfig.get_paths()["stdlib"]`, read as bytes (vocabulary 256). Left out:
`site-packages` and `dist-packages` (installed packages, which differ between machines), every
folder named `test`, `tests` or `idle_test` (CPython's test suite, half of the stdlib's bytes
and mostly repetitive assertions), `__pycache__`, the `config-*` build folder and the
generated `_sysconfigdata*` modules (machine-specific). The split is fixed and deterministic:
a file is held out when the first 8 bytes of the SHA-256 of its relative POSIX path, read as
an integer, fall below `holdout_fraction` of 2^64, so the split does not depend on the file
order, the machine or the Python version (a file present in two versions lands on the same
side in both). The files of each split are concatenated in sorted path order. `manifest.json`
in the run folder lists every file used (path relative to the stdlib folder, bytes, split)
with the Python version, so a run says exactly what it was trained and evaluated on; a resumed
run refuses a corpus that differs from its manifest.

The models are `seqmodels.layers.SequenceModel` stacks (byte embedding, `num_layers` pre-norm
blocks of [short causal convolution, mixer, MLP], head) that differ only in the mixer:

  gateloop: `GateLoop` (Katsch, 2023), data-controlled complex gates;
  linear_attention: `LinearAttention` with RetNet's fixed per-head decays (Sun et al., 2023);
  learned_kernel: `LearnedKernelAttention` with a Gaussian-mixture spectrum (GMM-RKS;
    Chowdhury et al., 2022, "On Learning the Transformer Kernel");
  softmax: `SoftmaxAttention`, causal softmax attention over `eqx.nn.MultiheadAttention`
    with rotary embeddings, the Transformer baseline.

Equal size: the softmax model's heads have head_dim = d_model / num_heads; every other model's
head_dim is chosen so that its trainable parameter count is the nearest to the softmax
model's (the count is affine in head_dim, so two abstract evaluations per model find it; the
learned-kernel layer's fixed noise is not counted). All models see the same optimiser (AdamW,
linear warm-up then cosine decay to a tenth, gradient clipping, weight decay on the weight
matrices only) and the same number of steps of `batch_tokens` bytes at each context length
(so `batch_tokens / L` windows per step, drawn uniformly from the training bytes).

Reported per model and length: held-out bits per byte (the mean next-byte negative log
likelihood over evenly spread held-out windows of L + 1 bytes, in bits, every position of a
window counted) and training throughput in tokens (bytes) per second over the timed steps
(each process's first step, which compiles, is not timed).

Resuming: each model x length is a unit (`units/<model>-L<length>.json`); while one trains,
its model, optimiser state, key, curve and timings are checkpointed with orbax every
`checkpoint_every` steps (`checkpoints/<model>-L<length>/`), and `kseq run --resume` continues
from the latest checkpoint with the results of an uninterrupted run (throughput aside).

Run with `kseq run configs/train_text.yaml`; longer runs with e.g.
`--set params.steps=3000 --set params.d_model=128`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import platform
import sys
import sysconfig
import time
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.config import ConfigError, require_at_least, require_non_empty, require_sizes
from experiments.mesh import split_leading_axis
from experiments.plots import style_axis
from seqmodels.layers import (
    GateLoop,
    LearnedKernelAttention,
    LinearAttention,
    SequenceModel,
    SoftmaxAttention,
)

MODELS = ("gateloop", "linear_attention", "learned_kernel", "softmax")
EXCLUDED_FOLDERS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
)


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the text benchmark.

    Attributes:
      models: which mixers to train (gateloop, linear_attention, learned_kernel, softmax).
      d_model, num_layers, num_heads: model size; num_heads is every mixer's head count.
      num_features: frequencies M per head of the learned-kernel attention (2M features).
      conv_width: width of the short causal convolution before each mixer (0: none).
      lengths: context lengths L (bytes per training window).
      steps: training steps of every model at every length.
      batch_tokens: bytes per training step; each step takes batch_tokens / L windows.
      learning_rate, warmup_steps, weight_decay, clip_norm: AdamW with linear warm-up and
        cosine decay to learning_rate / 10, weight decay on weight matrices, gradient-norm
        clipping (None: none).
      eval_every: steps between held-out evaluations (and at the last step).
      eval_tokens: held-out bytes per evaluation (evenly spread windows of L + 1 bytes).
      holdout_fraction: the share of files held out, by a hash of their paths.
      max_files: at most this many files of each split, the first in sorted order (0: all).
      checkpoint_every: steps between orbax checkpoints of the training state (0: none).
    """

    models: tuple[Literal["gateloop", "linear_attention", "learned_kernel", "softmax"], ...] = (
        MODELS
    )
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    num_features: int = 32
    conv_width: int = 4
    lengths: tuple[int, ...] = (512, 2048)
    steps: int = 180
    batch_tokens: int = 4096
    learning_rate: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.1
    clip_norm: float | None = 1.0
    eval_every: int = 60
    eval_tokens: int = 32768
    holdout_fraction: float = 0.1
    max_files: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        require_non_empty(self, ("models",))
        require_sizes(self, "lengths", 2, "L")
        require_at_least(
            self,
            ("d_model", "num_layers", "num_heads", "num_features", "steps", "eval_every"),
        )
        require_at_least(self, ("conv_width", "max_files", "checkpoint_every"), minimum=0)
        if self.batch_tokens < max(self.lengths):
            raise ConfigError(
                f"`params.batch_tokens` ({self.batch_tokens}) must be at least the longest of "
                f"`params.lengths` ({max(self.lengths)}): a step holds batch_tokens / L windows."
            )
        if self.eval_tokens < max(self.lengths):
            raise ConfigError("`params.eval_tokens` must be at least the longest length.")
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ConfigError(
                "`params.d_model` / `params.num_heads` must be an even integer (the softmax "
                "model's rotary head size)."
            )
        if not 0 <= self.warmup_steps < self.steps:
            raise ConfigError("`params.warmup_steps` must lie in [0, params.steps).")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError("`params.holdout_fraction` must lie in (0, 1).")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ConfigError(
                "`params.learning_rate` must be positive and `params.weight_decay` non-negative."
            )
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError("`params.clip_norm` must be positive, or None for no clipping.")


# ---------------------------------------------------------------------------- the corpus


def stdlib_root() -> pathlib.Path:
    """The standard library's folder, `sysconfig.get_paths()["stdlib"]`."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: pathlib.Path) -> list[str]:
    """The sorted relative POSIX paths of the `.py` files under `root`, without the excluded
    folders (`EXCLUDED_FOLDERS`, `config-*`) and the generated `_sysconfigdata*` modules."""
    paths = []
    for folder, subfolders, names in os.walk(root):
        # pruned in place, so os.walk does not enter them (site-packages is large)
        subfolders[:] = [
            f for f in subfolders if f not in EXCLUDED_FOLDERS and not f.startswith("config-")
        ]
        rel = pathlib.Path(folder).relative_to(root)
        paths += [
            (rel / name).as_posix()
            for name in names
            if name.endswith(".py")
            and not name.startswith("_sysconfigdata")
            and os.path.isfile(os.path.join(folder, name))
        ]
    return sorted(paths)


def is_held_out(path: str, fraction: float) -> bool:
    """Whether the file at relative path `path` is held out: the first 8 bytes of the SHA-256
    of the path, as a big-endian integer, below `fraction` of 2^64."""
    digest = hashlib.sha256(path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2.0**64


def split_files(paths: list[str], fraction: float, max_files: int = 0) -> dict[str, list[str]]:
    """{"train": [...], "heldout": [...]}: `paths` (sorted) split by `is_held_out`, each split
    cut to its first `max_files` (0: all)."""
    split = {"train": [], "heldout": []}
    for path in sorted(paths):
        split["heldout" if is_held_out(path, fraction) else "train"].append(path)
    if max_files:
        split = {name: files[:max_files] for name, files in split.items()}
    return split


def load_corpus(cfg: Config, root: pathlib.Path | None = None):
    """(manifest, {"train": bytes as uint8, "heldout": ...}) of the stdlib corpus: each
    split's files concatenated in sorted order, and the manifest of the files used."""
    root = stdlib_root() if root is None else root
    split = split_files(corpus_files(root), cfg.holdout_fraction, cfg.max_files)
    for name, files in split.items():
        if not files:
            raise ConfigError(
                f"the {name} split is empty: raise `params.max_files` (0: all) or change "
                "`params.holdout_fraction`."
            )
    data, files = {}, []
    for name in ("train", "heldout"):
        chunks = [(root / path).read_bytes() for path in split[name]]
        files += [
            {"path": p, "bytes": len(c), "split": name}
            for p, c in zip(split[name], chunks, strict=True)
        ]
        data[name] = np.frombuffer(b"".join(chunks), np.uint8)
    manifest = {
        "python_version": platform.python_version(),
        "implementation": sys.implementation.name,
        "root": 'sysconfig.get_paths()["stdlib"]',
        "excluded_folders": [*sorted(EXCLUDED_FOLDERS), "config-*"],
        "excluded_files": ["_sysconfigdata*"],
        "holdout_fraction": cfg.holdout_fraction,
        "bytes": {name: int(d.size) for name, d in data.items()},
        "files": files,
    }
    return manifest, data


def _check_manifest(ctx, manifest: dict) -> None:
    """A resumed run must see the corpus it started with."""
    path = pathlib.Path(ctx.out_dir) / "manifest.json"
    if path.is_file():
        before = json.loads(path.read_text())
        if before.get("files") != manifest["files"]:
            raise ConfigError(
                f"the corpus differs from the run's {path} (another Python or `max_files`?); "
                "start a new run rather than resuming this one."
            )
    ctx.write_json("manifest.json", manifest)


# ---------------------------------------------------------------------------- the models


def make_mixer(name: str, d_model: int, head_dim: int, cfg: Config, key) -> eqx.Module:
    """The mixing layer `name` of width d_model with `cfg.num_heads` heads of `head_dim`."""
    heads = cfg.num_heads
    if name == "gateloop":
        return GateLoop(d_model, heads, head_dim, key=key)
    if name == "linear_attention":
        return LinearAttention(d_model, heads, head_dim, key=key)
    if name == "learned_kernel":
        return LearnedKernelAttention(
            d_model, heads, head_dim, num_features=cfg.num_features, key=key
        )
    if name == "softmax":
        return SoftmaxAttention(d_model, heads, head_dim, key=key)
    raise ValueError(f"`name` must be one of {MODELS}, got {name!r}.")


def build_model(name: str, head_dim: int, cfg: Config, key) -> SequenceModel:
    """The byte-level `SequenceModel` with mixer `name` (vocabulary 256)."""
    return SequenceModel(
        lambda d, k: make_mixer(name, d, head_dim, cfg, k),
        d_model=cfg.d_model,
        num_layers=cfg.num_layers,
        num_outputs=256,
        num_tokens=256,
        conv_width=cfg.conv_width,
        key=key,
    )


def _leaf_name(path) -> str:
    return str(getattr(path[-1], "name", "")) if path else ""


def count_parameters(model) -> int:
    """The trainable parameters of `model` (arrays or shape structs): its inexact arrays (the
    learned-kernel attention's fixed noise is stored as an integer key, not counted)."""
    inexact = lambda x: (
        isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) and jnp.issubdtype(x.dtype, jnp.inexact)
    )
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(eqx.filter(model, inexact)))


@functools.cache
def abstract_count(name: str, head_dim: int, cfg: Config) -> int:
    """`count_parameters` of model `name` with heads of `head_dim`, without building it."""
    shapes = eqx.filter_eval_shape(build_model, name, head_dim, cfg, jax.random.key(0))
    return count_parameters(shapes)


@functools.cache
def head_dims(cfg: Config) -> dict[str, int]:
    """Each model's head_dim: the softmax model's d_model / num_heads, and for the others the
    one whose parameter count is nearest the softmax model's (the count is affine in
    head_dim)."""
    reference = cfg.d_model // cfg.num_heads
    target = abstract_count("softmax", reference, cfg)
    dims = {}
    for name in cfg.models:
        if name == "softmax":
            dims[name] = reference
            continue
        low, high = abstract_count(name, 2, cfg), abstract_count(name, 4, cfg)
        guess = 2 + 2 * (target - low) / (high - low)
        candidates = {max(1, math.floor(guess)), max(1, math.ceil(guess))}
        counts = {hd: abstract_count(name, hd, cfg) for hd in candidates}
        dims[name] = min(counts, key=lambda hd: (abs(counts[hd] - target), hd))
    return dims


# ---------------------------------------------------------------------------- training


def sample_windows(key, data, length: int, batch: int):
    """`batch` windows of length + 1 consecutive bytes of `data`, at uniform offsets."""
    starts = jax.random.randint(key, (batch,), 0, data.shape[0] - length)
    return jax.vmap(lambda s: jax.lax.dynamic_slice(data, (s,), (length + 1,)))(starts)


def eval_windows(data: np.ndarray, length: int, count: int) -> np.ndarray:
    """`count` windows of length + 1 bytes evenly spread over `data` (count, length + 1)."""
    if data.size < length + 1:
        raise ConfigError(
            f"the held-out split has {data.size} bytes, fewer than a window of L + 1 = "
            f"{length + 1}: raise `params.max_files` or lower `params.lengths`."
        )
    starts = np.linspace(0, data.size - length - 1, count).astype(np.int64)
    return data[starts[:, None] + np.arange(length + 1)]


def _nll(model, windows):
    """Next-byte negative log likelihoods (B, L), in nats, of windows (B, L + 1)."""
    tokens, targets = windows[:, :-1].astype(jnp.int32), windows[:, 1:].astype(jnp.int32)
    logits = jax.vmap(model)(tokens)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


def _mean_nll(model, windows):
    return jnp.mean(_nll(model, windows))


_eval_sum = eqx.filter_jit(lambda model, windows: jnp.sum(_nll(model, windows)))


def _decay_mask(params):
    """Weight decay on the weight matrices only (not biases, norms, spectra or noise)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: _leaf_name(path) == "weight" and p.ndim == 2, params
    )


def _optimiser(cfg: Config):
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, cfg.warmup_steps, cfg.steps, end_value=cfg.learning_rate / 10
    )
    adamw = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_decay_mask)
    if cfg.clip_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw)


@functools.cache
def _train_step(cfg: Config, length: int, mesh, data_axes):
    """The jitted training step at context `length` (one compilation per config, length and
    device mesh, shared by a run and its resumption)."""
    optimiser = _optimiser(cfg)
    batch = cfg.batch_tokens // length

    @eqx.filter_jit
    def step(model, opt_state, data, k_train, i):
        windows = sample_windows(jax.random.fold_in(k_train, i), data, length, batch)
        windows = split_leading_axis(windows, mesh, data_axes)  # data parallelism
        loss, grads = eqx.filter_value_and_grad(_mean_nll)(model, windows)
        # optax mixes Python floats and int32 step counts, which strict promotion rejects
        with jax.numpy_dtype_promotion("standard"):
            params = eqx.filter(model, eqx.is_inexact_array)
            updates, opt_state = optimiser.update(grads, opt_state, params)
        return eqx.apply_updates(model, updates), opt_state, loss

    return step


@eqx.filter_jit
def _initial_state(key, name: str, head_dim: int, cfg: Config):
    """Model, optimiser state and training key, made in one compiled call."""
    k_model, k_train = jax.random.split(key)
    model = build_model(name, head_dim, cfg, k_model)
    opt_state = _optimiser(cfg).init(eqx.filter(model, eqx.is_inexact_array))
    return model, opt_state, k_train


def bits_per_byte(model, windows: np.ndarray, batch: int) -> float:
    """The mean next-byte negative log likelihood of `windows`, in bits, in batches."""
    total = 0.0
    for i in range(0, len(windows), batch):
        total += float(_eval_sum(model, jnp.asarray(windows[i : i + batch])))
    return total / (windows.shape[0] * (windows.shape[1] - 1)) / math.log(2.0)


def train_one(key, name: str, length: int, cfg: Config, ctx, data: dict) -> dict:
    """Trains one model at one context length; returns its table row and curve. Checkpointed
    every `cfg.checkpoint_every` steps and continued from the latest checkpoint."""
    head_dim = head_dims(cfg)[name]
    model, opt_state, k_train = _initial_state(key, name, head_dim, cfg)
    batch = cfg.batch_tokens // length
    windows = eval_windows(data["heldout"], length, max(1, cfg.eval_tokens // length))
    train_data = ctx.replicate(jnp.asarray(data["train"]))
    step = _train_step(cfg, length, ctx.mesh, ctx.data_axes)
    state = ctx.replicate((model, opt_state, k_train))
    history = {"curve": [], "train_seconds": 0.0, "timed_steps": 0}
    label = f"{name}-L{length}"
    with ctx.checkpoints(label, every=cfg.checkpoint_every) as checkpoints:
        done, (model, opt_state, k_train), history = checkpoints.restore(state, history)
        for i in ctx.progress(range(done + 1, cfg.steps + 1), desc=label, total=cfg.steps - done):
            start = time.perf_counter()
            model, opt_state, loss = step(
                model, opt_state, train_data, k_train, np.asarray(i, np.uint32)
            )
            loss = float(loss)  # waits for the step
            if i > done + 1:  # this process's first step compiles
                history["train_seconds"] += time.perf_counter() - start
                history["timed_steps"] += 1
            if i % cfg.eval_every == 0 or i == cfg.steps:
                record = {
                    "model": name,
                    "length": length,
                    "step": i,
                    "train_bits_per_byte": loss / math.log(2.0),
                    "eval_bits_per_byte": bits_per_byte(model, windows, batch),
                }
                ctx.log_metrics(**record)
                history["curve"].append(record)
            checkpoints.save(i, (model, opt_state, k_train), history)
    seconds, timed = history["train_seconds"], history["timed_steps"]
    return {
        "model": name,
        "length": length,
        "parameters": count_parameters(model),
        "head_dim": head_dim,
        "bits_per_byte": history["curve"][-1]["eval_bits_per_byte"],
        "tokens_per_s": timed * cfg.batch_tokens / seconds if timed else None,
        "curve": history["curve"],
    }


def run(cfg: Config, ctx) -> dict:
    """Trains every model at every length on the same byte stream; returns the table of
    held-out bits per byte and training tokens per second."""
    manifest, data = load_corpus(cfg)
    _check_manifest(ctx, manifest)
    root = ctx.key()
    results = {}
    for length in cfg.lengths:
        for name in cfg.models:
            results[name, length] = ctx.unit(
                f"{name}-L{length}",
                lambda n=name, L=length: train_one(
                    jax.random.fold_in(root, 0), n, L, cfg, ctx, data
                ),
                log=False,
            )
    _plot(results, cfg, ctx)
    table = [{k: v for k, v in r.items() if k != "curve"} for r in results.values()]
    return {
        "corpus": {
            "python_version": manifest["python_version"],
            "files": {s: sum(f["split"] == s for f in manifest["files"]) for s in data},
            "bytes": manifest["bytes"],
        },
        "table": table,
    }


def _plot(results, cfg, ctx):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(cfg.lengths), figsize=(5 * len(cfg.lengths), 3.6))
    axes = np.atleast_1d(axes)
    for ax, length in zip(axes, cfg.lengths, strict=True):
        for name in cfg.models:
            curve = results[name, length]["curve"]
            ax.plot(
                [r["step"] for r in curve],
                [r["eval_bits_per_byte"] for r in curve],
                "o-",
                ms=3,
                label=name,
            )
        style_axis(ax, "training step", "held-out bits per byte", f"L = {length}")
    ctx.save_figure(fig, "bits_per_byte")
