"""Sequence-mixing layers built on linear recurrences, and a model stack around them."""

from seqmodels.layers.ckconv import CKConv as CKConv
from seqmodels.layers.ckconv import causal_fft_conv as causal_fft_conv
from seqmodels.layers.gateloop import GateLoop as GateLoop
from seqmodels.layers.linear_attention import LinearAttention as LinearAttention
from seqmodels.layers.retention import gated_linear_attention as gated_linear_attention
from seqmodels.layers.retention import (
    multihead_gated_linear_attention as multihead_gated_linear_attention,
)
from seqmodels.layers.ssm import LRU as LRU
from seqmodels.layers.ssm import S5 as S5
from seqmodels.layers.stack import SequenceModel as SequenceModel
from seqmodels.layers.stack import ShortConv as ShortConv

__all__ = [
    "LRU",
    "S5",
    "CKConv",
    "GateLoop",
    "LinearAttention",
    "SequenceModel",
    "ShortConv",
    "causal_fft_conv",
    "gated_linear_attention",
    "multihead_gated_linear_attention",
]
