"""GateLoop: linear recurrence with fully data-controlled, complex state transitions."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
from jax.typing import DTypeLike

from seqmodels._checks import compute_dtype
from seqmodels.layers._gated_linear_attention import GatedHeads

__all__ = ["GateLoop"]


class GateLoop(GatedHeads):
    """A GateLoop token-mixing layer (Katsch, 2023, "GateLoop: Fully Data-Controlled Linear
    Recurrence for Sequence Modeling").

    Per head, with x_t the input token:
      q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t;
      a_t = sigmoid(W_m x_t) * exp(i W_phi x_t)   (magnitude in (0, 1), data-controlled phase);
      H_t = diag(a_t) H_{t-1} + k_t^T v_t,  y_t = Re(q_t H_t);
    the heads are concatenated, gated by SiLU(W_g x_t) and projected by W_o.

    `mode` selects the form: "chunkwise" (the default; Yang et al., 2024, GLA: memory
    O(L d + (L / C) K V) forward and backward, 108 MiB of planned temporaries for
    forward+backward at L = 4096, d = 256, 4 heads), or the recurrent, parallel (associative
    scan) or surrogate attention (O(L^2)) form of Section 3 of the paper; all give the same
    output. `step` runs the recurrence one token at a time for generation, from
    `init_state()`: a complex K x V state per head, O(H K^2) memory whatever the length.

    Shapes and dtypes: x (L, d_model) -> (L, d_model). `param_dtype` is the parameters' dtype
    (default: float32, float64 with x64); `dtype` the computation's and output's (None: x's
    dtype, with float16 and bfloat16 computed in float32). With `dtype=jnp.bfloat16` the
    projections run in bfloat16 while the gates, their logarithms and the complex states are
    computed in float32 / complex64.

    Attributes:
      num_heads: heads. head_dim: key and value size per head. dtype: the computation dtype.
    """

    magnitude: eqx.nn.Linear
    phase: eqx.nn.Linear
    gate: eqx.nn.Linear
    out: eqx.nn.Linear
    complex_state: ClassVar[bool] = True

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        *,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        inner, pdt, keys = self._setup(
            d_model, num_heads, head_dim, dtype, param_dtype, key, num_keys=7
        )
        self.magnitude = eqx.nn.Linear(d_model, inner, dtype=pdt, key=keys[3])
        self.phase = eqx.nn.Linear(d_model, inner, dtype=pdt, key=keys[4])

    def gla_inputs(self, x):
        """(q, k, v, log_a) of a sequence x in the work dtype, with
        log_a = log sigmoid(W_m x) + i W_phi x in at least float32 (a bfloat16 gate near 1
        rounds to 1, and its logarithm to 0)."""
        proj = lambda layer: jax.vmap(layer)(x)
        acc = compute_dtype(x.dtype)
        magnitude, phase = proj(self.magnitude).astype(acc), proj(self.phase).astype(acc)
        log_a = jax.lax.complex(jax.nn.log_sigmoid(magnitude), phase)
        return proj(self.q), proj(self.k), proj(self.v), log_a
