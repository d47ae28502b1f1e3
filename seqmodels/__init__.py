"""seqmodels: linear and nonlinear recurrences solved fast, and the layers built on them.

Top level, the solvers:
  `linear_recurrence(a, b, h0, *, method, reverse, chunk_size, axis)`: h_t = a_t h_{t-1} + b_t
    by a sequential, associative (log-depth) or chunked scan, with a custom gradient, along
    `axis` (0: time first; a batch-first array needs axis=1, or it is run along its batch).
  `deer_solve(step, h0, xs, *, method, ...)` -> `DeerSolution`: a nonlinear recurrence
    h_t = step(h_{t-1}, x_t) solved for all t at once (DEER, quasi-DEER, ELK);
    `sequential_solve` is the `lax.scan` reference.
  `RNN(cell, *, solver)`: a cell run over a sequence by the solver its name chooses.

One namespace down:
  `seqmodels.cells`: recurrent cells (`ElmanCell`, `GRUCell`, `LSTMCell`, `NeuralODECell`).
  `seqmodels.layers`: sequence-mixing layers (GateLoop, LinearAttention, LRU, S5, CKConv,
    ShortConv, LearnedKernelAttention, and SoftmaxAttention as the Transformer baseline), the
    `SequenceModel` stack, and gated linear attention as a function; one
    sequence (L, d_model) per call, `step` for token-by-token inference, flax-style `dtype`
    and `param_dtype`.
  `seqmodels.parallel`: the time axis split across devices (LASP-2).
  `seqmodels.flax`: the layers as Flax nnx modules over batch-first (B, L, D) inputs
    (`time_major` for (L, B, D)), parameters named by the equinox fields (imported on its own:
    it needs flax).
"""

from seqmodels import cells as cells
from seqmodels import layers as layers
from seqmodels import parallel as parallel
from seqmodels._deer import DeerSolution as DeerSolution
from seqmodels._deer import deer_solve as deer_solve
from seqmodels._deer import sequential_solve as sequential_solve
from seqmodels._rnn import RNN as RNN
from seqmodels._scan import linear_recurrence as linear_recurrence

__all__ = [
    "RNN",
    "DeerSolution",
    "cells",
    "deer_solve",
    "layers",
    "linear_recurrence",
    "parallel",
    "sequential_solve",
]
