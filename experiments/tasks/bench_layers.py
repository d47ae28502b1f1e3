"""Benchmark: time and planned memory of the sequence layers, forward and forward+backward.

For each L and each layer (and, for the gated-linear-attention layers, each form: "chunkwise",
the default, "parallel", "recurrent"), one sequence x of shape (L, d_model) with `num_heads`
heads:

- forward is y = layer(x); forward+backward the gradient of sum(y) with respect to the
  layer's parameters and x, each under `jax.jit`, compiled ahead of time;
- planned memory is XLA's compiled memory analysis of that executable: its temporaries
  (`temp_mb`), next to the floor every implementation must hold, its arguments and outputs
  (x, y, the parameters, and in forward+backward their gradients: `floor_mb`);
- time is the median of `repeats` warm calls (`warm_s`), the first call (compilation
  included) as `first_s`.

A combination whose planned temporaries exceed `memory_budget_mb` is compiled (its plan is
recorded) but not run: `skipped`. The softmax-attention baseline is causal
`jax.nn.dot_product_attention` (XLA's, not a flash kernel: it builds the L x L scores) between
the same projections. Ratios: `time_vs_default` and `temp_vs_default`, against the same
layer's default (chunkwise) form; `time_vs_softmax`, against the softmax baseline at that L.

Run with `kseq run configs/bench_layers.yaml`; the results' `table` is a Markdown table.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics

import equinox as eqx
import jax
import jax.numpy as jnp

from experiments.config import ConfigError, require_at_least, require_sizes
from experiments.plots import style_axis
from experiments.timing import timed
from seqmodels.layers import (
    LRU,
    S5,
    CKConv,
    GateLoop,
    LearnedKernelAttention,
    LinearAttention,
)
from seqmodels.layers._gated_linear_attention import qkv_projections

# Layer names, and the forms of those that take a `mode`.
GLA_LAYERS = ("gateloop", "linear_attention", "learned_kernel")
OTHER_LAYERS = ("lru", "s5", "ckconv", "softmax")
FORMS = ("chunkwise", "parallel", "recurrent")
DEFAULT_FORM = "chunkwise"


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the layer benchmark.

    Attributes:
      lengths: sequence lengths L.
      d_model: model width d.
      num_heads: heads of the attention-like layers (head size d_model / num_heads).
      state_size: the state size N of LRU and S5.
      num_features: M, random frequencies per head of LearnedKernelAttention.
      layers: what to time: a layer name (gateloop, linear_attention, learned_kernel, lru,
        s5, ckconv, softmax), or layer:form for the first three (form: chunkwise, parallel
        or recurrent; a bare name is its chunkwise default).
      chunk_size: C of the chunkwise form.
      repeats: warm repeats (median reported).
      memory_budget_mb: combinations planning more temporary memory are not run.
    """

    lengths: tuple[int, ...] = (1024, 4096, 16384)
    d_model: int = 256
    num_heads: int = 4
    state_size: int = 256
    num_features: int = 32
    layers: tuple[str, ...] = (
        "gateloop:chunkwise",
        "gateloop:parallel",
        "gateloop:recurrent",
        "linear_attention:chunkwise",
        "linear_attention:parallel",
        "linear_attention:recurrent",
        "learned_kernel",
        "lru",
        "s5",
        "ckconv",
        "softmax",
    )
    chunk_size: int = 64
    repeats: int = 3
    memory_budget_mb: float = 16000.0

    def __post_init__(self):
        require_sizes(self, "lengths", 2, "L")
        if not self.layers:
            raise ConfigError("`params.layers` must be a non-empty list.")
        for spec in self.layers:
            parse_layer(spec)
        require_at_least(self, ("d_model", "num_heads", "state_size", "num_features"))
        require_at_least(self, ("chunk_size", "repeats"))
        if self.d_model % self.num_heads:
            raise ConfigError("`params.num_heads` must divide `params.d_model`.")


def parse_layer(spec: str) -> tuple[str, str | None]:
    """(layer, form) of a `layers` entry; form None for layers without one."""
    name, _, form = spec.partition(":")
    if name in GLA_LAYERS:
        form = form or DEFAULT_FORM
        if form not in FORMS:
            raise ConfigError(f"`params.layers`: {spec!r}: the form must be one of {FORMS}.")
        return name, form
    if name in OTHER_LAYERS and not form:
        return name, None
    raise ConfigError(
        f"`params.layers`: unknown entry {spec!r}; layers are {GLA_LAYERS + OTHER_LAYERS}, "
        f"forms ({', '.join(FORMS)}) only for {', '.join(GLA_LAYERS)}."
    )


class SoftmaxAttention(eqx.Module):
    """The baseline: causal softmax attention (`jax.nn.dot_product_attention`) between bias-free
    query, key and value projections, heads concatenated and projected."""

    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    out: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)

    def __init__(self, d_model, num_heads, *, key):
        keys = jax.random.split(key, 4)
        self.q, self.k, self.v = qkv_projections(d_model, d_model, keys)
        self.out = eqx.nn.Linear(d_model, d_model, use_bias=False, key=keys[3])
        self.num_heads = num_heads

    def __call__(self, x):
        length = x.shape[0]
        q, k, v = (
            jax.vmap(p)(x).reshape(length, self.num_heads, -1) for p in (self.q, self.k, self.v)
        )
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return jax.vmap(self.out)(y.reshape(length, -1))


def build_layer(name: str, cfg: Config, key):
    """The layer `name` at the config's sizes."""
    d, heads = cfg.d_model, cfg.num_heads
    if name == "gateloop":
        return GateLoop(d, heads, key=key)
    if name == "linear_attention":
        return LinearAttention(d, heads, key=key)
    if name == "learned_kernel":
        return LearnedKernelAttention(d, heads, num_features=cfg.num_features, key=key)
    if name == "lru":
        return LRU(d, cfg.state_size, key=key)
    if name == "s5":
        return S5(d, cfg.state_size, key=key)
    if name == "ckconv":
        return CKConv(d, d, key=key)
    return SoftmaxAttention(d, heads, key=key)


def _functions(layer, form, chunk_size):
    """(forward, forward+backward) of (params, x), with the layer's static part closed over."""
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    kwargs = {} if form is None else {"mode": form, "chunk_size": chunk_size}
    forward = lambda p, x: eqx.combine(p, static)(x, **kwargs)
    loss = lambda p, x: jnp.sum(forward(p, x))
    return params, {"forward": forward, "forward+backward": jax.grad(loss, argnums=(0, 1))}


def _measure(fn, args, cfg):
    """Compiles fn(*args); its planned memory, and unless over budget its times."""
    seconds, compiled = timed(lambda: jax.jit(fn).lower(*args).compile())
    stats = compiled.memory_analysis()
    mib = lambda n: n / 2**20
    record = {
        "temp_mb": mib(stats.temp_size_in_bytes),
        "floor_mb": mib(stats.argument_size_in_bytes + stats.output_size_in_bytes),
    }
    if record["temp_mb"] > cfg.memory_budget_mb:
        return {**record, "skipped": f"skipped: plans {record['temp_mb']:.4g} MiB"}
    first, _ = timed(lambda: compiled(*args))
    warm = [timed(lambda: compiled(*args))[0] for _ in range(cfg.repeats)]
    return {**record, "first_s": seconds + first, "warm_s": statistics.median(warm)}


def _unit(cfg, length, spec, key):
    name, form = parse_layer(spec)
    k1, k2 = jax.random.split(key)
    layer = build_layer(name, cfg, k1)
    x = jax.random.normal(k2, (length, cfg.d_model))
    params, fns = _functions(layer, form, cfg.chunk_size)
    rows = []
    for direction, fn in fns.items():
        base = {"L": length, "layer": name, "form": form or "-", "direction": direction}
        rows.append({**base, **_measure(fn, (params, x), cfg)})
    return {"rows": rows}


def _ratios(records):
    """time_vs_default, temp_vs_default and time_vs_softmax of every record, in place."""
    index = {(r["L"], r["layer"], r["form"], r["direction"]): r for r in records}
    ratio = lambda a, b, key: a[key] / b[key] if b and key in a and key in b else None
    for r in records:
        default = index.get((r["L"], r["layer"], DEFAULT_FORM, r["direction"]))
        softmax = index.get((r["L"], "softmax", "-", r["direction"]))
        r["time_vs_default"] = ratio(r, default, "warm_s")
        r["temp_vs_default"] = ratio(r, default, "temp_mb")
        r["time_vs_softmax"] = ratio(r, softmax, "warm_s")


def markdown_table(records) -> str:
    """The records as a Markdown table (times in seconds, memory in MiB)."""
    cols = (
        ("L", "L"),
        ("layer", "layer"),
        ("form", "form"),
        ("direction", "direction"),
        ("warm_s", "time (s)"),
        ("temp_mb", "temp (MiB)"),
        ("floor_mb", "floor (MiB)"),
        ("time_vs_default", "time / default"),
        ("temp_vs_default", "temp / default"),
        ("time_vs_softmax", "time / softmax"),
    )

    def cell(r, key):
        value = r.get(key)
        if value is None:
            return r["skipped"] if key == "warm_s" and "skipped" in r else "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(title for _, title in cols) + " |"]
    lines.append("|" + "---|" * len(cols))
    lines += ["| " + " | ".join(cell(r, key) for key, _ in cols) + " |" for r in records]
    return "\n".join(lines)


def run(cfg: Config, ctx) -> dict:
    """Measures every (L, layer, form, direction); returns the records and their table."""
    units = [(length, spec) for length in cfg.lengths for spec in cfg.layers]
    records = []
    for i, (length, spec) in enumerate(ctx.progress(units, desc="bench_layers", total=len(units))):
        key = jax.random.fold_in(ctx.key(), i)
        name = f"L{length}_{spec.replace(':', '_')}"
        records += ctx.unit(name, functools.partial(_unit, cfg, length, spec, key), log=False)[
            "rows"
        ]
    _ratios(records)
    for r in records:
        ctx.log_metrics(**r)
    table = markdown_table(records)
    if ctx.writes_files:
        (ctx.out_dir / "table.md").write_text(table + "\n")
    _plot(records, ctx)
    return {
        "d_model": cfg.d_model,
        "num_heads": cfg.num_heads,
        "backend": jax.default_backend(),
        "records": records,
        "table": table,
    }


def _plot(records, ctx):
    import matplotlib.pyplot as plt

    if not any("warm_s" in r for r in records):
        return  # everything skipped: nothing to draw on log axes

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for col, direction in enumerate(("forward", "forward+backward")):
        rows = [r for r in records if r["direction"] == direction]
        for label in dict.fromkeys(_label(r) for r in rows):
            mine = [r for r in rows if _label(r) == label]
            for row, key in enumerate(("warm_s", "temp_mb")):
                done = [r for r in mine if r.get(key) is not None]
                xs, ys = [r["L"] for r in done], [r[key] for r in done]
                axes[row, col].plot(xs, ys, "o-" if "softmax" not in label else "k--", label=label)
        style_axis(axes[0, col], "L", "warm time (s)", direction, xlog=2, ylog=10)
        style_axis(axes[1, col], "L", "planned temporaries (MiB)", direction, xlog=2, ylog=10)
    ctx.save_figure(fig, "layers")


def _label(r):
    return r["layer"] if r["form"] == "-" else f"{r['layer']}:{r['form']}"
