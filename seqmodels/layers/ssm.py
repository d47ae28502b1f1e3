"""Diagonal complex state-space layers: LRU and S5."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from seqmodels.scan import linear_recurrence

__all__ = ["LRU", "S5"]


def _complex_normal(key, shape, scale):
    kr, ki = jax.random.split(key)
    return jax.lax.complex(jax.random.normal(kr, shape), jax.random.normal(ki, shape)) * scale


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
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        u1 = jax.random.uniform(k1, (d_state,))
        u2 = jax.random.uniform(k2, (d_state,))
        self.nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        self.theta_log = jnp.log(max_phase * u2)
        modulus = jnp.exp(-jnp.exp(self.nu_log))
        self.gamma_log = jnp.log(jnp.sqrt(1.0 - modulus**2))
        self.b = _complex_normal(k3, (d_state, d_model), 1.0 / math.sqrt(2 * d_model))
        self.c = _complex_normal(k4, (d_model, d_state), 1.0 / math.sqrt(d_state))
        self.d = jax.random.normal(k5, (d_model,))

    def eigenvalues(self):
        """lambda, shape (N,), complex."""
        return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log), jnp.exp(self.theta_log)))

    def __call__(self, u, *, method: str = "auto"):
        """Maps u of shape (L, H) to y of shape (L, H)."""
        lam = self.eigenvalues()
        bu = (u.astype(self.b.dtype) @ self.b.T) * jnp.exp(self.gamma_log).astype(self.b.dtype)[
            None
        ]
        x = linear_recurrence(lam, bu, method=method)
        return jnp.real(x @ self.c.T) + self.d[None] * u


class S5(eqx.Module):
    """Simplified state-space layer S5 (Smith, Warrington & Linderman, 2023, "Simplified State
    Space Layers for Sequence Modeling", Sections 3-4).

    A diagonal continuous-time system x'(t) = Lambda x + B u, y = Re(C x) + D u with P complex
    states, discretised by zero-order hold with learned timescales Delta (one per state):

      Lambda_bar = exp(Lambda Delta s_t),  B_bar = (Lambda_bar - 1) / Lambda * B,
      x_t = Lambda_bar x_{t-1} + B_bar u_t.

    s_t (`step_scale`, default 1) rescales the step per time point, for irregularly sampled
    sequences (the paper's Section 6.3). Lambda is initialised with the S4D-Lin eigenvalues
    -1/2 + i pi n (a documented simplification of the paper's diagonalised HiPPO-N), and
    log Delta uniformly in [log dt_min, log dt_max].
    """

    lambda_re_log: jax.Array  # Re(Lambda) = -exp(lambda_re_log) < 0 keeps it stable
    lambda_im: jax.Array
    b: jax.Array  # complex (P, H)
    c: jax.Array  # complex (H, P)
    d: jax.Array
    log_step: jax.Array

    def __init__(
        self, d_model: int, d_state: int, *, dt_min: float = 1e-3, dt_max: float = 1e-1, key
    ):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.lambda_re_log = jnp.full((d_state,), math.log(0.5))
        self.lambda_im = math.pi * jnp.arange(d_state, dtype=jnp.result_type(float))
        self.b = _complex_normal(k1, (d_state, d_model), 1.0 / math.sqrt(2 * d_model))
        self.c = _complex_normal(k2, (d_model, d_state), 1.0 / math.sqrt(d_state))
        self.d = jax.random.normal(k3, (d_model,))
        self.log_step = jax.random.uniform(
            k4, (d_state,), minval=math.log(dt_min), maxval=math.log(dt_max)
        )

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

    def __call__(self, u, *, step_scale=None, method: str = "auto"):
        """Maps u of shape (L, H) to y of shape (L, H)."""
        lam_bar, b_bar = self.discretise(step_scale)
        uc = u.astype(self.b.dtype)
        bu = uc @ b_bar.T if step_scale is None else jnp.einsum("tph,th->tp", b_bar, uc)
        a = lam_bar if step_scale is not None else jnp.broadcast_to(lam_bar, bu.shape)
        x = linear_recurrence(a, bu, method=method)
        return jnp.real(x @ self.c.T) + self.d[None] * u
