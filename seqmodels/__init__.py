"""seqmodels: linear recurrences solved by sequential, associative and chunked scans, the layers
built on them (`seqmodels.layers`), and nonlinear recurrences evaluated in parallel over the
sequence length (DEER, quasi-DEER, ELK; `deer_solve`) with the cells they run (`seqmodels.cells`).
"""

from seqmodels.cells import RNN as RNN
from seqmodels.cells import ElmanCell as ElmanCell
from seqmodels.cells import GRUCell as GRUCell
from seqmodels.cells import LSTMCell as LSTMCell
from seqmodels.cells import NeuralODECell as NeuralODECell
from seqmodels.deer import DeerSolution as DeerSolution
from seqmodels.deer import deer_solve as deer_solve
from seqmodels.deer import sequential_solve as sequential_solve
from seqmodels.scan import linear_recurrence as linear_recurrence

__all__ = [
    "RNN",
    "DeerSolution",
    "ElmanCell",
    "GRUCell",
    "LSTMCell",
    "NeuralODECell",
    "deer_solve",
    "linear_recurrence",
    "sequential_solve",
]
