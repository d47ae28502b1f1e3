"""Diagonal complex state-space layers: LRU and S5."""

from __future__ import annotations

import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from seqmodels._checks import prepare_sequence
from seqmodels._scan import linear_recurrence

__all__ = ["LRU", "S5", "hippo_n"]


def _complex_normal(key, shape, scale):
    kr, ki = jax.random.split(key)
    return jax.lax.complex(jax.random.normal(kr, shape), jax.random.normal(ki, shape)) * scale


def hippo_n(size: int):
    """The normal part of the HiPPO-LegS matrix and its eigendecomposition (Smith, Warrington &
    Linderman, 2023, Section 4.3 and Appendix B.1; Gu et al., 2022, "How to Train Your HiPPO").

    A_N = A_LegS + P P^T with P_n = sqrt(n + 1/2), i.e. A_N = -I / 2 + S with S skew-symmetric,
    S_nk = -sqrt((n + 1/2)(k + 1/2)) for n > k and +sqrt((n + 1/2)(k + 1/2)) for n < k. Being
    normal, it is diagonalised by a unitary V: A_N = V diag(Lambda) V^H, with
    Re(Lambda) = -1/2. Computed in NumPy float64 (an initialisation, at static sizes).

    Returns:
      (A_N (size, size) real, Lambda (size,) complex, V (size, size) complex unitary).
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"`size` must be a positive integer, got {size}.")
    q = np.sqrt(np.arange(size) + 0.5)
    outer = q[:, None] * q[None, :]
    skew = np.where(np.arange(size)[:, None] > np.arange(size)[None, :], -outer, outer)
    np.fill_diagonal(skew, 0.0)
    a_n = skew - 0.5 * np.eye(size)
    # S = i H with H = -i S Hermitian: S = V diag(i w) V^H.
    w, v = np.linalg.eigh(-1j * skew)
    return a_n, -0.5 + 1j * w, v


@partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _lru_init(key, d_model, d_state, r_min, r_max, max_phase):
    # One compiled program: a dozen eager ops would each compile on their own.
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    u1 = jax.random.uniform(k1, (d_state,))
    u2 = jax.random.uniform(k2, (d_state,))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    modulus = jnp.exp(-jnp.exp(nu_log))
    gamma_log = jnp.log(jnp.sqrt(1.0 - modulus**2))
    b = _complex_normal(k3, (d_state, d_model), 1.0 / math.sqrt(2 * d_model))
    c = _complex_normal(k4, (d_model, d_state), 1.0 / math.sqrt(d_state))
    return nu_log, theta_log, gamma_log, b, c, jax.random.normal(k5, (d_model,))


class LRU(eqx.Module):
    """Linear Recurrent Unit (Orvieto et al., 2023, "Resurrecting Recurrent Neural Networks for
    Long Sequences", Section 3 and Appendix A).

      x_t = diag(lambda) x_{t-1} + gamma * (B u_t),   y_t = Re(C x_t) + D * u_t,

    with the exponential parameterisation lambda = exp(-exp(nu_log) + i exp(theta_log)), the
    ring initialisation (|lambda| uniform on the ring r_min <= |lambda| <= r_max in area, phase
    uniform in [0, max_phase]) and the normalisation gamma = sqrt(1 - |lambda|^2), stored as
    gamma_log and trained.
    """

    nu_log: jax.Array
    theta_log: jax.Array
    gamma_log: jax.Array
    b: jax.Array  # complex (N, H)
    c: jax.Array  # complex (H, N)
    d: jax.Array  # real (H,)

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        key,
    ):
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got {r_min}, {r_max}.")
        params = _lru_init(key, d_model, d_state, float(r_min), float(r_max), float(max_phase))
        self.nu_log, self.theta_log, self.gamma_log, self.b, self.c, self.d = params

    def eigenvalues(self):
        """lambda, shape (N,), complex."""
        return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log), jnp.exp(self.theta_log)))

    def __call__(self, u: Float[Array, "L H"], *, method: str = "auto") -> Float[Array, "L H"]:
        """Maps u of shape (L, H) to y of shape (L, H), in u's dtype (float16 and bfloat16 are
        computed in float32 / complex64). For a batch, `jax.vmap` it."""
        u, dtype = prepare_sequence(u, self.d.shape[0], "LRU")
        lam = self.eigenvalues()
        bu = (u.astype(self.b.dtype) @ self.b.T) * jnp.exp(self.gamma_log).astype(self.b.dtype)[
            None
        ]
        x = linear_recurrence(lam, bu, method=method)
        return (jnp.real(x @ self.c.T) + self.d[None] * u).astype(dtype)


@partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _s5_init(key, basis, lambda_im, d_model, d_state, dt_min, dt_max):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    real = jnp.result_type(float)
    lambda_re_log = jnp.full((d_state,), math.log(0.5), real)
    if basis is None:  # S4D-Lin
        b = _complex_normal(k1, (d_state, d_model), 1.0 / math.sqrt(2 * d_model))
        c = _complex_normal(k2, (d_model, d_state), 1.0 / math.sqrt(d_state))
    else:  # B~ = V^H B with B real, C~ = C V
        basis = basis.astype(jnp.result_type(complex))
        b_real = jax.random.normal(k1, (d_state, d_model)) / math.sqrt(d_model)
        b = basis.conj().T @ b_real.astype(basis.dtype)
        c = _complex_normal(k2, (d_model, d_state), 1.0 / math.sqrt(d_state)) @ basis
    d = jax.random.normal(k3, (d_model,))
    log_step = jax.random.uniform(k4, (d_state,), minval=math.log(dt_min), maxval=math.log(dt_max))
    return lambda_re_log, lambda_im.astype(real), b, c, d, log_step


class S5(eqx.Module):
    """Simplified state-space layer S5 (Smith, Warrington & Linderman, 2023, "Simplified State
    Space Layers for Sequence Modeling", Sections 3-4).

    A diagonal continuous-time system x'(t) = Lambda x + B u, y = Re(C x) + D u with P complex
    states, discretised by zero-order hold with learned timescales Delta (one per state):

      Lambda_bar = exp(Lambda Delta s_t),  B_bar = (Lambda_bar - 1) / Lambda * B,
      x_t = Lambda_bar x_{t-1} + B_bar u_t.

    s_t (`step_scale`, default 1) rescales the step per time point, for irregularly sampled
    sequences (the paper's Section 6.3).

    Initialisation (`init`): "hippo" (the paper's default) takes Lambda and V from the
    diagonalised HiPPO-N matrix (`hippo_n`), block-diagonal with `blocks` copies of size
    d_state / blocks (the paper's J), draws B real (LeCun normal) and C complex, and stores
    B~ = V^H B and C~ = C V, so the diagonal system equals the dense one x' = A_N x + B u with
    y = Re(C x) (tested). "s4d-lin" uses Lambda = -1/2 + i pi n with random complex B and C.
    log Delta is uniform in [log dt_min, log dt_max] (one timescale per state).
    The paper's conjugate-symmetry halving of the state is not used: all P states are kept.
    """

    lambda_re_log: jax.Array  # Re(Lambda) = -exp(lambda_re_log) < 0 keeps it stable
    lambda_im: jax.Array
    b: jax.Array  # complex (P, H)
    c: jax.Array  # complex (H, P)
    d: jax.Array
    log_step: jax.Array

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "hippo",
        blocks: int = 1,
        key,
    ):
        if init not in ("hippo", "s4d-lin"):
            raise ValueError(f"`init` must be 'hippo' or 's4d-lin', got {init!r}.")
        if not isinstance(blocks, int) or blocks < 1 or d_state % blocks:
            raise ValueError(
                f"`blocks` must be a positive integer dividing d_state = {d_state}, got {blocks!r}."
            )
        if init == "hippo":
            _, lam, v = hippo_n(d_state // blocks)
            basis = np.kron(np.eye(blocks), v)  # block-diagonal V
            lambda_im = np.tile(lam.imag, blocks)
        else:
            basis, lambda_im = None, np.pi * np.arange(d_state)
        params = _s5_init(key, basis, lambda_im, d_model, d_state, float(dt_min), float(dt_max))
        self.lambda_re_log, self.lambda_im, self.b, self.c, self.d, self.log_step = params

    def discretise(self, step_scale=None):
        """(Lambda_bar, B_bar) by zero-order hold; with `step_scale` (L,), per time step."""
        lam = jax.lax.complex(-jnp.exp(self.lambda_re_log), self.lambda_im)
        step = jnp.exp(self.log_step)
        b = self.b
        if step_scale is not None:
            step = jnp.asarray(step_scale, step.dtype)[:, None] * step[None]
            lam, b = lam[None], b[None]
        lam_bar = jnp.exp(lam * step.astype(lam.dtype))
        b_bar = ((lam_bar - 1.0) / lam)[..., :, None] * b
        return lam_bar, b_bar

    def __call__(
        self,
        u: Float[Array, "L H"],
        *,
        step_scale: Float[ArrayLike, " L"] | None = None,
        method: str = "auto",
    ) -> Float[Array, "L H"]:
        """Maps u of shape (L, H) to y of shape (L, H), in u's dtype (float16 and bfloat16 are
        computed in float32 / complex64). For a batch, `jax.vmap` it.

        `step_scale`, if given, has shape (L,) and entries >= 0 (0 holds the state: a sample
        at the same time as the previous one). A negative entry is a ValueError when the
        values are known; under `jit` it makes that step's output NaN.
        """
        u, dtype = prepare_sequence(u, self.d.shape[0], "S5")
        if step_scale is not None:
            step_scale = _check_step_scale(step_scale, u.shape[0])
        lam_bar, b_bar = self.discretise(step_scale)
        uc = u.astype(self.b.dtype)
        bu = uc @ b_bar.T if step_scale is None else jnp.einsum("tph,th->tp", b_bar, uc)
        a = lam_bar if step_scale is not None else jnp.broadcast_to(lam_bar, bu.shape)
        x = linear_recurrence(a, bu, method=method)
        return (jnp.real(x @ self.c.T) + self.d[None] * u).astype(dtype)


def _check_step_scale(step_scale, length):
    """`step_scale` as an (L,) array: a ValueError for a wrong shape or, when its values are
    known, a negative or non-finite entry; traced, such entries become NaN (a negative step
    turns the decay exp(Lambda Delta s) into growth: finite, and wrong)."""
    step_scale = jnp.asarray(step_scale)
    if step_scale.shape != (length,):
        raise ValueError(
            f"`step_scale` must have shape (L,) = ({length},), got {step_scale.shape}."
        )
    if not jnp.issubdtype(step_scale.dtype, jnp.floating):
        step_scale = step_scale.astype(jnp.float32)
    if isinstance(step_scale, jax.core.Tracer):
        return jnp.where(step_scale >= 0, step_scale, jnp.nan)
    values = np.asarray(step_scale)
    if not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError(
            f"`step_scale` must be finite and >= 0, got min {float(values.min())} "
            f"(entries {np.flatnonzero(~(np.isfinite(values) & (values >= 0)))[:5].tolist()})."
        )
    return step_scale
