"""Sequence-mixing layers built on linear recurrences."""

from seqmodels.layers.gateloop import GateLoop as GateLoop
from seqmodels.layers.linear_attention import LinearAttention as LinearAttention
from seqmodels.layers.retention import gated_linear_attention as gated_linear_attention
from seqmodels.layers.ssm import LRU as LRU
from seqmodels.layers.ssm import S5 as S5

__all__ = ["LRU", "S5", "GateLoop", "LinearAttention", "gated_linear_attention"]
