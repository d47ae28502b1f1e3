"""The damped (ELK) step of `deer_solve`: a Kalman filter and a Rauch-Tung-Striebel smoother.

ELK (Gonzalez, Warrington, Smith & Linderman, 2024, "Towards Scalable and Stable
Parallelization of Nonlinear RNNs", NeurIPS) replaces the Newton step of DEER by a
Levenberg-Marquardt / trust-region step: the posterior mean of a linear-Gaussian state-space
model with unit process noise and "observations" (the current iterate) of variance 1 / damping.
Both mean passes are linear recurrences (`linear_recurrence`); the covariance recursion, which
does not depend on the data, runs as one `lax.scan`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from seqmodels._scan import linear_recurrence

__all__ = ["damped_step"]


def damped_step(a, b, h0, guess, damping, quasi, solver):
    """argmin_h sum_t ||h_t - a_t h_{t-1} - b_t||^2 + damping ||h_t - guess_t||^2 (h_{-1} = h0).

    Kalman filter (unit process noise, observation guess_t with variance 1 / damping) and RTS
    smoother; see the module docstring.
    """
    size = b.shape[-1]
    noise = 1.0 / damping
    if quasi:

        def cov_step(p, a_t):
            p_pred = a_t * a_t * p + 1.0
            gain = p_pred / (p_pred + noise)
            return (1.0 - gain) * p_pred, (gain, p_pred, (1.0 - gain) * p_pred)

        _, (gain, p_pred, p_filt) = jax.lax.scan(cov_step, jnp.zeros_like(h0), a)
        keep = 1.0 - gain
        m = linear_recurrence(keep * a, keep * b + gain * guess, h0, method=solver)
        # G_t = P_t a_{t+1} / P^-_{t+1}
        smooth_gain = p_filt[:-1] * a[1:] / p_pred[1:]
        m_pred_next = a[1:] * m[:-1] + b[1:]
        offset = m[:-1] - smooth_gain * m_pred_next
    else:
        eye = jnp.eye(size, dtype=b.dtype)

        def cov_step(p, a_t):
            p_pred = a_t @ p @ a_t.T + eye
            # K = P^- (P^- + noise I)^{-1}; both symmetric, so K = solve(S, P^-)^T.
            gain = jnp.linalg.solve(p_pred + noise * eye, p_pred).T
            p_new = (eye - gain) @ p_pred
            p_new = 0.5 * (p_new + p_new.T)
            return p_new, (gain, p_pred, p_new)

        _, (gain, p_pred, p_filt) = jax.lax.scan(cov_step, jnp.zeros((size, size), b.dtype), a)
        keep = eye[None] - gain
        m = linear_recurrence(
            keep @ a,
            jnp.einsum("lij,lj->li", keep, b) + jnp.einsum("lij,lj->li", gain, guess),
            h0,
            method=solver,
        )
        # G_t = P_t a_{t+1}^T (P^-_{t+1})^{-1} = solve(P^-_{t+1}, a_{t+1} P_t)^T
        smooth_gain = jnp.swapaxes(jnp.linalg.solve(p_pred[1:], a[1:] @ p_filt[:-1]), -1, -2)
        m_pred_next = jnp.einsum("lij,lj->li", a[1:], m[:-1]) + b[1:]
        offset = m[:-1] - jnp.einsum("lij,lj->li", smooth_gain, m_pred_next)
    # m^s_t = G_t m^s_{t+1} + offset_t, m^s_{L-1} = m_{L-1}: a reverse linear recurrence.
    # (the zero gain has a's shape: smooth_gain[:1] is empty when L = 1)
    smooth_gain = jnp.concatenate([smooth_gain, jnp.zeros_like(a[:1], smooth_gain.dtype)])
    offset = jnp.concatenate([offset, m[-1:]])
    return linear_recurrence(smooth_gain, offset, jnp.zeros_like(h0), reverse=True, method=solver)
