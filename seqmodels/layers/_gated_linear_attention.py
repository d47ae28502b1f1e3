"""Gated linear attention as a function: one head, or several side by side.

y_t = q_t H_t with H_t = diag(a_t) H_{t-1} + k_t^T v_t, the recurrence shared by GateLoop,
RetNet and linear attention, computed by one of four equal forms (`seqmodels._gla`) that the
`mode` string names, or split over devices (`seqmodels.parallel`).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Inexact

from seqmodels._checks import check_positive_int, common_dtype, compute_dtype, head_sizes
from seqmodels._gla import check_mode, check_qkv, outer, resolve_form
from seqmodels.layers._common import (
    cast,
    check_dtype,
    complex_of,
    layer_input,
    param_dtype_of,
    param_init_dtype,
)
from seqmodels.parallel import gated_linear_attention_sharded

__all__ = [
    "GatedHeads",
    "gated_linear_attention",
    "multihead_gated_linear_attention",
    "qkv_projections",
]


def gated_linear_attention(
    q: Inexact[Array, "L K"],
    k: Inexact[Array, "L K"],
    v: Inexact[Array, "L V"],
    log_a: Inexact[Array, "L K"],
    *,
    mode: str | Callable = "chunkwise",
    chunk_size: int = 64,
) -> Inexact[Array, "L V"]:
    """y_t = q_t H_t with H_t = diag(a_t) H_{t-1} + k_t^T v_t, for one head.

    Args:
      q, k: (L, K). v: (L, V). Real or complex.
      log_a: (L, K) logarithms of the gates (real, or complex for rotating gates as in
        GateLoop); Re(log_a) <= 0 keeps the recurrence stable.
      mode: "chunkwise" (the default), "recurrent", "parallel" or "attention"; all four are
        equal. Memory, forward and backward: chunkwise O(L (K + V) + (L / C) K V) (Yang et
        al., 2024, GLA: states only at chunk boundaries, each chunk recomputed in the
        backward pass); recurrent O(L K V) for the backward pass (O(K V) forward); parallel
        O(L K V); attention O(L^2 K). A callable `form(q, k, v, log_a) -> y` on one head is
        used as it is.
      chunk_size: C, the chunk length of the chunkwise form, a positive int; one longer than
        L is cut to L (a longer chunk would only be padding), and C is rounded up to a
        multiple of its sub-chunk, c = min(16, C). Each chunk works in O(C K (c + C / c))
        memory, so C belongs in the tens to hundreds (64, the default, is fastest on GPUs in
        flash-linear-attention; 32 is 10% faster on CPU).

    Returns:
      y of shape (L, V), in the common dtype of the inputs. float16 and bfloat16 inputs are
      computed in float32 (state, cumulative gates, sums) and rounded once at the end.

    Raises:
      ValueError: an unknown `mode`, a `chunk_size` that is not a positive int, or shapes
        that do not fit.
    """
    check_mode(mode)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    check_qkv(q, k, v, log_a)
    dtype = common_dtype(q, k, v, log_a)
    work = compute_dtype(dtype)
    q, k, v, log_a = (x.astype(work) for x in (q, k, v, log_a))
    form = resolve_form(mode, min(chunk_size, q.shape[0]))
    return form(q, k, v, log_a).astype(dtype)


def multihead_gated_linear_attention(
    q: Inexact[Array, "L HK"],
    k: Inexact[Array, "L HK"],
    v: Inexact[Array, "L HV"],
    log_a: Inexact[Array, "L HK"],
    num_heads: int,
    *,
    mode: str | Callable = "chunkwise",
    chunk_size: int = 64,
    mesh: jax.sharding.Mesh | None = None,
    axis_name: str = "seq",
) -> Inexact[Array, "L HV"]:
    """`gated_linear_attention` on `num_heads` independent heads, concatenated.

    Args:
      q, k, log_a: (L, H * K); v: (L, H * V). Head h owns columns [h K, (h + 1) K) of q, k and
        log_a and [h V, (h + 1) V) of v.
      num_heads: H, which must divide the feature sizes.
      mode, chunk_size: as in `gated_linear_attention`.
      mesh, axis_name: with a `jax.sharding.Mesh`, the time axis is split across the devices
        of `mesh[axis_name]` (`seqmodels.parallel.gated_linear_attention_sharded`, LASP-2;
        `mode` is then not used).

    Returns:
      (L, H * V), the heads' outputs side by side, in the common dtype of the inputs (float16
      and bfloat16 computed in float32, as in `gated_linear_attention`).
    """
    num_heads = check_positive_int(num_heads, "num_heads")
    length = q.shape[0] if jnp.ndim(q) else 0
    if length < 1:
        raise ValueError(f"the sequence must have length L >= 1, got q of shape {jnp.shape(q)}.")
    for name, x in (("q", q), ("k", k), ("v", v), ("log_a", log_a)):
        if x.ndim != 2 or x.shape[1] % num_heads:
            raise ValueError(
                f"`{name}` must have shape (L, num_heads * size) with num_heads={num_heads}; "
                f"got {x.shape}."
            )
    split = lambda x: x.reshape(length, num_heads, -1).swapaxes(0, 1)
    if mesh is None:
        head = lambda *a: gated_linear_attention(*a, mode=mode, chunk_size=chunk_size)
    else:
        head = lambda *a: gated_linear_attention_sharded(
            *a, mesh=mesh, axis_name=axis_name, chunk_size=chunk_size
        )
    y = jax.vmap(head)(split(q), split(k), split(v), split(log_a))
    return y.swapaxes(0, 1).reshape(length, -1)


def qkv_projections(d_model: int, inner: int, keys, dtype=None) -> tuple[eqx.nn.Linear, ...]:
    """The bias-free query, key and value projections d_model -> inner of a layer built on
    `multihead_gated_linear_attention`, from keys[0], keys[1] and keys[2], with parameters in
    `dtype` (default: the default float)."""
    return tuple(
        eqx.nn.Linear(d_model, inner, use_bias=False, dtype=dtype, key=k) for k in keys[:3]
    )


class GatedHeads(eqx.Module):
    """The common part of the token-mixing layers built on `multihead_gated_linear_attention`
    (GateLoop, LinearAttention): the query, key, value, gate and output projections, the head
    sizes and `dtype`, and one `__call__`, `init_state` and `step` for all of them.

    A subclass declares `gate` and `out` (eqx.nn.Linear) after its own fields, sets them
    through `_setup`, and provides `gla_inputs(x) -> (q, k, v, log_a)` for a sequence x in
    the work dtype (log_a in at least float32) and `complex_state` (True for rotating,
    complex gates). The heads' output y is mixed as
    Re(y) * SiLU(W_g x) and projected by W_o.
    """

    # gate and out are the subclass's fields, after its own (their order is the order of
    # the leaves, which checkpoints of the layers rely on)
    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    num_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    dtype: jnp.dtype | None = eqx.field(static=True)

    def _setup(self, d_model, num_heads, head_dim, dtype, param_dtype, key, num_keys):
        """Sets the projections, `num_heads`, `head_dim` and `dtype` (from `__init__`);
        returns (inner = num_heads * head_dim, the parameters' dtype, the `num_keys` keys,
        of which the first three made q, k and v and the last two the gate and output
        `gate` and `out`, set here as the subclass's fields)."""
        self.num_heads, self.head_dim, inner = head_sizes(d_model, num_heads, head_dim)
        self.dtype = check_dtype(dtype, "dtype")
        pdt = param_init_dtype(param_dtype)
        keys = jax.random.split(key, num_keys)
        self.q, self.k, self.v = qkv_projections(d_model, inner, keys, pdt)
        self.gate = eqx.nn.Linear(d_model, inner, dtype=pdt, key=keys[-2])
        self.out = eqx.nn.Linear(inner, d_model, use_bias=False, dtype=pdt, key=keys[-1])
        return inner, pdt, keys

    def _prepared(self, x, *, token):
        """(the layer with its parameters in the work dtype, x checked and cast, work, out)."""
        x, work, out = layer_input(
            x,
            self.q.in_features,
            type(self).__name__,
            dtype=self.dtype,
            params=param_dtype_of(self),
            argument="x_t" if token else "x",
            token=token,
        )
        return cast(self, work), x, work, out

    def _output(self, y, x, work):
        """The heads' output y (L, H V), mixed as Re(y) * SiLU(W_g x) and projected by W_o, in
        the work dtype (the states were accumulated in at least float32)."""
        y = jnp.real(y).astype(work)  # GateLoop's complex states; a real y passes through
        return jax.vmap(self.out)(y * jax.nn.silu(jax.vmap(self.gate)(x)))

    def __call__(
        self,
        x: Float[Array, "L d_model"],
        *,
        mode: str = "chunkwise",
        chunk_size: int = 64,
        mesh: jax.sharding.Mesh | None = None,
        axis_name: str = "seq",
    ) -> Float[Array, "L d_model"]:
        """Mixes a sequence x of shape (L, d_model); returns (L, d_model) in the layer's
        `dtype`, or x's dtype when that is None (float16 and bfloat16 are then computed in
        float32). States and gates accumulate in at least float32. `mode` and `chunk_size`
        choose the form (`gated_linear_attention`; all equal). With a `mesh`, the time axis
        is split across `mesh[axis_name]` (sequence parallelism, LASP-2). For a batch,
        `jax.vmap` it."""
        layer, x, work, out = self._prepared(x, token=False)
        y = multihead_gated_linear_attention(
            *layer.gla_inputs(x),
            self.num_heads,
            mode=mode,
            chunk_size=chunk_size,
            mesh=mesh,
            axis_name=axis_name,
        )
        return layer._output(y, x, work).astype(out)

    def init_state(self) -> Inexact[Array, "num_heads head_dim head_dim"]:
        """The empty state: zeros of shape (num_heads, head_dim, head_dim), one K x V matrix
        per head, in the accumulation dtype (float32 for bfloat16, float16 and float32 layers,
        float64 for float64 parameters; complex for GateLoop's rotating gates)."""
        acc = compute_dtype(self.dtype or param_dtype_of(self))
        shape = (self.num_heads, self.head_dim, self.head_dim)
        return jnp.zeros(shape, complex_of(acc) if self.complex_state else acc)

    def step(
        self, state: Inexact[Array, "num_heads head_dim head_dim"], x_t: Float[Array, " d_model"]
    ) -> tuple[Inexact[Array, "num_heads head_dim head_dim"], Float[Array, " d_model"]]:
        """One token x_t of shape (d_model,): H = diag(a_t) H + k_t^T v_t per head, and
        y_t (d_model,), the t-th row of `__call__` on the tokens so far (any `mode`), in the
        dtype `__call__` would give. The state keeps its dtype. O(H K V) memory and time per
        token, independent of t: for generation, `lax.scan` over the tokens."""
        layer, x, work, out = self._prepared(x_t, token=True)
        q, k, v, log_a = (a.reshape(self.num_heads, -1) for a in layer.gla_inputs(x[None]))
        acc = state.dtype
        q, k, v, decay = q.astype(acc), k.astype(acc), v.astype(acc), jnp.exp(log_a.astype(acc))
        state = decay[:, :, None] * state + outer(k, v)
        y = jnp.einsum("hk,hkv->hv", q, state).reshape(1, -1)
        return state, layer._output(y, x[None], work)[0].astype(out)
