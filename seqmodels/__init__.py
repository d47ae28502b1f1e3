"""seqmodels: linear recurrences solved by sequential, associative and chunked scans.

The layers built on them (GateLoop, LRU, S5, linear attention, CKConv) and DEER are tracked
in their own issues and are not here yet.
"""

from seqmodels.scan import linear_recurrence as linear_recurrence

__all__ = ["linear_recurrence"]
