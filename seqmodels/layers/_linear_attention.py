"""Linear attention and RetNet-style retention."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from seqmodels._checks import compute_dtype
from seqmodels.layers._gated_linear_attention import GatedHeads

__all__ = ["LinearAttention"]


class LinearAttention(GatedHeads):
    """Causal linear attention with a fixed per-head decay: RetNet's retention (Sun et al.,
    2023, "Retentive Network", eq. 1-5), or plain linear attention (Katharopoulos et al., 2020)
    with `decay=False`.

    Per head h with decay gamma_h = 1 - 2^(-5 - h) (RetNet's choice):
      S_t = gamma_h S_{t-1} + k_t^T v_t,  y_t = q_t S_t,
    computed in the chunkwise form (the default; memory linear in L, forward and backward),
    or the recurrent, parallel, or attention ((Q K^T . D) V with D_ts = gamma^(t-s)) form;
    all agree. Heads are concatenated, gated by SiLU(W_g x) as in RetNet, and projected.
    `step` runs the recurrence one token at a time for generation, from `init_state()`: a
    real K x V state per head, O(H K^2) memory whatever the length.

    Shapes and dtypes: x (L, d_model) -> (L, d_model). `param_dtype` is the parameters' dtype
    (default: float32, float64 with x64); `dtype` the computation's and output's (None: x's
    dtype, with float16 and bfloat16 computed in float32). With `dtype=jnp.bfloat16` the
    projections run in bfloat16 while the decays and states are float32.
    """

    log_decay: tuple[float, ...] = eqx.field(static=True)
    gate: eqx.nn.Linear
    out: eqx.nn.Linear
    complex_state: ClassVar[bool] = False

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        *,
        decay: bool = True,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        self._setup(d_model, num_heads, head_dim, dtype, param_dtype, key, num_keys=5)
        heads = self.num_heads
        gammas = 1.0 - 2.0 ** (-5.0 - np.arange(heads)) if decay else np.ones(heads)
        self.log_decay = tuple(float(g) for g in np.log(gammas))

    def gla_inputs(self, x):
        """(q / sqrt(head_dim), k, v, log_a) of a sequence x in the work dtype, with log_a each
        head's fixed log decay in at least float32 (in bfloat16, 1 - 2^-5 and 1 - 2^-9
        round to 0.96875 and 1)."""
        q, k, v = (jax.vmap(layer)(x) for layer in (self.q, self.k, self.v))
        acc = compute_dtype(q.dtype)
        per_column = jnp.repeat(jnp.asarray(self.log_decay, acc), self.head_dim)
        q = q * (1.0 / float(np.sqrt(self.head_dim)))  # a weak Python float keeps q's dtype
        return q, k, v, jnp.broadcast_to(per_column, q.shape)
