"""Sequence-mixing layers built on linear recurrences."""

from seqmodels.layers.gateloop import GateLoop as GateLoop
from seqmodels.layers.linear_attention import LinearAttention as LinearAttention
from seqmodels.layers.retention import gated_linear_attention as gated_linear_attention

__all__ = ["GateLoop", "LinearAttention", "gated_linear_attention"]
