"""seqmodels: linear recurrences, the layers built on them, and DEER.

Nothing is implemented yet: the recurrence engine and layers are tracked in their own issues
(linear recurrences by parallel scan; DEER). The package exists so that the distribution's
layout is final from the start.
"""

__all__: list[str] = []
