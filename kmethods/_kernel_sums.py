"""What a sum of kernels is, whatever its points: `kmethods.SumKernel` (on R^d) and
`kmethods.sequences.SumSequenceKernel` (on sequences) are both this, plus their family's own
Stein method."""

from __future__ import annotations

import equinox as eqx


class KernelSum(eqx.Module):
    """k(x, y) = sum_i k_i(x, y) over a non-empty tuple of kernels of one family.

    A subclass names the family (`component`, a class, and `component_name` for the error)
    and adds the family's other methods; the Stein kernel is linear in k, so those are sums of
    the components' too.
    """

    kernels: tuple
    component: eqx.AbstractClassVar[type]
    component_name: eqx.AbstractClassVar[str]

    def __check_init__(self):
        if len(self.kernels) == 0 or not all(isinstance(k, self.component) for k in self.kernels):
            raise TypeError(f"`kernels` must be a non-empty tuple of {self.component_name}.")

    def __call__(self, x, y):
        return sum(k(x, y) for k in self.kernels)

    def gram(self, x, y):
        return sum(k.gram(x, y) for k in self.kernels)
