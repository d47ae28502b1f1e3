"""Split kernels: the alpha-power kernel of power KT, root KT and KT+."""

from __future__ import annotations

from kmethods.kernels import Kernel, SumKernel


def power_kernel(kernel: Kernel, alpha: float, dim: int | None = None) -> Kernel:
    """The alpha-power kernel k_alpha, whose Fourier transform is that of k to the power alpha.

    Generalized KT (Dwivedi & Mackey, 2022, Section 3 and Table 2) splits with k_alpha,
    alpha in (0, 1] (alpha = 1/2 is root KT). Results are normalised to k_alpha(x, x) = 1;
    KT-SPLIT's decisions do not depend on the kernel's scale. Each kernel family gives its own
    power (`Kernel.power`): Gaussian(h) -> Gaussian(sqrt(alpha) h); Matern(nu, h) ->
    Matern(nu', h sqrt(nu' / nu)) with nu' = alpha (nu + d / 2) - d / 2, which exists only when
    alpha > d / (2 nu + d); Laplace(h) is Matern(1/2, h).

    Args:
      kernel: a kernel with a closed-form power (Gaussian, Matern, Laplace).
      alpha: the power, in (0, 1].
      dim: the dimension d of the points; needed for Matern and Laplace.
    """
    alpha = float(alpha)
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"`alpha` must lie in (0, 1], got {alpha}.")
    return kernel.power(alpha, dim)


def root_kernel(kernel: Kernel, dim: int | None = None) -> Kernel:
    """The square-root kernel of root KT (Dwivedi & Mackey, 2021): `power_kernel(k, 1/2)`."""
    return power_kernel(kernel, 0.5, dim)


def kt_plus_kernel(kernel: Kernel, alpha: float = 0.5, dim: int | None = None) -> Kernel:
    """The KT+ split kernel k / ||k||_inf + k_alpha / ||k_alpha||_inf (Dwivedi & Mackey, 2022).

    Both terms are normalised to 1 on the diagonal, so this is k + k_alpha.
    """
    return SumKernel((kernel, power_kernel(kernel, alpha, dim)))
