"""Sequence-mixing layers built on linear recurrences, and a model stack around them.

Every layer is an equinox module that maps one sequence of shape (L, d_model) to (L, d_model)
(`jax.vmap` it over a batch; any other rank is a ValueError naming the argument). Dtypes as
in flax: `param_dtype` for the parameters, `dtype` for the computation and output (None: the
input's, float16 and bfloat16 then computed in float32); states and decays always accumulate
in at least float32. For generation, every layer and `SequenceModel` has `init_state()` and
`step(state, x_t) -> (state, y_t)`, one token at a time in memory independent of L, equal to
the parallel call.

Layers:
  `GateLoop`: data-controlled complex gates over gated linear attention (Katsch, 2023).
  `LinearAttention`: RetNet retention with a fixed per-head decay, or plain linear attention.
  `LRU`, `S5`: diagonal complex state-space layers (S5's HiPPO-N initialisation: `hippo_n`).
  `CKConv`: continuous kernel convolution, by FFT (`causal_fft_conv`).
  `ShortConv`: a depthwise causal convolution over a few steps.
  `LearnedKernelAttention`: linear attention with learned random-feature kernels (Chowdhury et
    al., 2022), spectra `GaussianSpectrum` (kmethods.Gaussian), `MixtureSpectrum` (GMM-RKS),
    `GenerativeSpectrum` (GEN-RKS).
  `SoftmaxAttention`: causal softmax attention with rotary embeddings (over
    `eqx.nn.MultiheadAttention`), the Transformer baseline.
  `SequenceModel`: embedding, residual blocks around any mixing layer, head.

Functions:
  `gated_linear_attention`, `multihead_gated_linear_attention`: the recurrence that GateLoop
    and LinearAttention share, in four equal forms chosen by `mode`: "chunkwise" (the
    default, memory linear in L forward and backward), "recurrent", "parallel", "attention".
"""

from seqmodels.layers._ckconv import CKConv as CKConv
from seqmodels.layers._ckconv import causal_fft_conv as causal_fft_conv
from seqmodels.layers._gated_linear_attention import (
    gated_linear_attention as gated_linear_attention,
)
from seqmodels.layers._gated_linear_attention import (
    multihead_gated_linear_attention as multihead_gated_linear_attention,
)
from seqmodels.layers._gateloop import GateLoop as GateLoop
from seqmodels.layers._learned_kernel import GaussianSpectrum as GaussianSpectrum
from seqmodels.layers._learned_kernel import GenerativeSpectrum as GenerativeSpectrum
from seqmodels.layers._learned_kernel import LearnedKernelAttention as LearnedKernelAttention
from seqmodels.layers._learned_kernel import MixtureSpectrum as MixtureSpectrum
from seqmodels.layers._learned_kernel import (
    gaussian_spectral_frequencies as gaussian_spectral_frequencies,
)
from seqmodels.layers._learned_kernel import (
    random_fourier_features as random_fourier_features,
)
from seqmodels.layers._linear_attention import LinearAttention as LinearAttention
from seqmodels.layers._sequence_model import SequenceModel as SequenceModel
from seqmodels.layers._short_conv import ShortConv as ShortConv
from seqmodels.layers._softmax_attention import SoftmaxAttention as SoftmaxAttention
from seqmodels.layers._ssm import LRU as LRU
from seqmodels.layers._ssm import S5 as S5
from seqmodels.layers._ssm import hippo_n as hippo_n

__all__ = [
    "LRU",
    "S5",
    "CKConv",
    "GateLoop",
    "GaussianSpectrum",
    "GenerativeSpectrum",
    "LearnedKernelAttention",
    "LinearAttention",
    "MixtureSpectrum",
    "SequenceModel",
    "ShortConv",
    "SoftmaxAttention",
    "causal_fft_conv",
    "gated_linear_attention",
    "gaussian_spectral_frequencies",
    "hippo_n",
    "multihead_gated_linear_attention",
    "random_fourier_features",
]
