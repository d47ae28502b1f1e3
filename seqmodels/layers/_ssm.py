"""Diagonal complex state-space layers: LRU and S5."""

from __future__ import annotations

import math
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Complex, Float

from seqmodels._checks import compute_dtype
from seqmodels._scan import linear_recurrence
from seqmodels.layers import _common

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
    """LRU's parameters in float32 (float64 with x64), cast to param_dtype by the caller."""
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

    Shapes and dtypes: u (L, H) -> (L, H). `param_dtype` is the real parameters' dtype
    (default: float32, float64 with x64; B and C are its complex counterpart, complex64 for
    bfloat16); `dtype` the output's (None: u's dtype). The recurrence, its eigenvalues and
    the complex projections are computed in at least float32 / complex64 whatever `dtype`.
    Memory: the N complex states of every step (`linear_recurrence`); `step`, one token at a
    time from `init_state()`, keeps N complex numbers.
    """

    nu_log: jax.Array
    theta_log: jax.Array
    gamma_log: jax.Array
    b: jax.Array  # complex (N, H)
    c: jax.Array  # complex (H, N)
    d: jax.Array  # real (H,)
    dtype: jnp.dtype | None = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        r_min: float = 0.0,
        r_max: float = 1.0,
        max_phase: float = 2 * math.pi,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        if not 0.0 <= r_min < r_max <= 1.0:
            raise ValueError(f"need 0 <= r_min < r_max <= 1, got {r_min}, {r_max}.")
        self.dtype = _common.check_dtype(dtype, "dtype")
        params = _lru_init(key, d_model, d_state, float(r_min), float(r_max), float(max_phase))
        params = _common.cast(params, _common.param_init_dtype(param_dtype))
        self.nu_log, self.theta_log, self.gamma_log, self.b, self.c, self.d = params

    def eigenvalues(self):
        """lambda, shape (N,), complex."""
        return jnp.exp(jax.lax.complex(-jnp.exp(self.nu_log), jnp.exp(self.theta_log)))

    def _inputs(self, u, token):
        """(the layer in the accumulation dtype, u there, lambda, gamma * B u, output dtype)
        for a sequence u (L, H), or one token (H,)."""
        layer, u, out = _ssm_input(self, u, "LRU", token)
        bu = u.astype(layer.b.dtype) @ layer.b.T
        bu = bu * jnp.broadcast_to(jnp.exp(layer.gamma_log).astype(bu.dtype), bu.shape)
        return layer, u, layer.eigenvalues(), bu, out

    def __call__(self, u: Float[Array, "L H"], *, method: str = "auto") -> Float[Array, "L H"]:
        """Maps u of shape (L, H) to y of shape (L, H), in the layer's `dtype` or, when that
        is None, u's dtype (computed in float32 / complex64 at least). For a batch,
        `jax.vmap` it."""
        layer, u, lam, bu, out = self._inputs(u, token=False)
        x = linear_recurrence(lam, bu, method=method)
        return _readout(layer, x, u, out)

    def init_state(self) -> Complex[Array, " N"]:
        """The empty state: N complex zeros (complex64; complex128 for float64 parameters)."""
        return _ssm_state(self)

    def step(
        self, state: Complex[Array, " N"], u_t: Float[Array, " H"]
    ) -> tuple[Complex[Array, " N"], Float[Array, " H"]]:
        """One token u_t (H,): x = lambda x + gamma B u_t, and y_t (H,), the t-th row of
        `__call__` on the tokens so far. The state keeps its dtype; O(N H) time and O(N)
        memory per token."""
        layer, u, lam, bu, out = self._inputs(u_t, token=True)
        state = (lam * state + bu).astype(state.dtype)
        return state, _readout(layer, state, u, out)


def _ssm_input(layer, u, name, token):
    """(the layer cast to the accumulation dtype, u checked and cast there, output dtype) of an
    LRU or S5 layer: its recurrence and complex projections have no bfloat16 form."""
    u, work, out = _common.layer_input(
        u,
        layer.d.shape[0],
        name,
        dtype=layer.dtype,
        params=_common.param_dtype_of(layer),
        argument="u_t" if token else "u",
        token=token,
    )
    acc = compute_dtype(work)
    return _common.cast(layer, acc), u.astype(acc), out


def _readout(layer, x, u, out):
    """y = Re(C x) + D u, for states x (..., N) and inputs u (..., H), in the output dtype."""
    return (jnp.real(x @ layer.c.T) + jnp.broadcast_to(layer.d, u.shape) * u).astype(out)


def _ssm_state(layer):
    """Zeros of the state's shape (N,) in the complex accumulation dtype."""
    acc = compute_dtype(layer.dtype or _common.param_dtype_of(layer))
    return jnp.zeros(layer.b.shape[:1], _common.complex_of(acc))


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

    Shapes, dtypes and memory as in `LRU`, with P states: u (L, H) -> (L, H); the
    discretisation too runs in at least float32; `step` keeps P complex numbers.
    """

    lambda_re_log: jax.Array  # Re(Lambda) = -exp(lambda_re_log) < 0 keeps it stable
    lambda_im: jax.Array
    b: jax.Array  # complex (P, H)
    c: jax.Array  # complex (H, P)
    d: jax.Array
    log_step: jax.Array
    dtype: jnp.dtype | None = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        init: str = "hippo",
        blocks: int = 1,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
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
        self.dtype = _common.check_dtype(dtype, "dtype")
        params = _s5_init(key, basis, lambda_im, d_model, d_state, float(dt_min), float(dt_max))
        params = _common.cast(params, _common.param_init_dtype(param_dtype))
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

    def _inputs(self, u, step_scale, token):
        """(the layer in the accumulation dtype, u there, Lambda_bar, B_bar u, output dtype)
        for a sequence u (L, H) with `step_scale` None or (L,), or one token (H,) with a
        scalar `step_scale`."""
        layer, u, out = _ssm_input(self, u, "S5", token)
        if step_scale is not None:
            step_scale = _check_step_scale(step_scale, None if token else u.shape[0])
            step_scale = step_scale.astype(u.dtype)
        lam_bar, b_bar = layer.discretise(None if step_scale is None else step_scale.reshape(-1))
        uc = u.astype(layer.b.dtype)
        if step_scale is None:
            bu = uc @ b_bar.T
            lam_bar = jnp.broadcast_to(lam_bar, bu.shape)
        elif token:
            bu, lam_bar = b_bar[0] @ uc, lam_bar[0]
        else:
            bu = jnp.einsum("tph,th->tp", b_bar, uc)
        return layer, u, lam_bar, bu, out

    def __call__(
        self,
        u: Float[Array, "L H"],
        *,
        step_scale: Float[ArrayLike, " L"] | None = None,
        method: str = "auto",
    ) -> Float[Array, "L H"]:
        """Maps u of shape (L, H) to y of shape (L, H), in the layer's `dtype` or, when that
        is None, u's dtype (computed in float32 / complex64 at least). For a batch,
        `jax.vmap` it.

        `step_scale`, if given, has shape (L,) and entries >= 0 (0 holds the state: a sample
        at the same time as the previous one). A negative entry is a ValueError when the
        values are known; under `jit` it makes that step's output NaN.
        """
        layer, u, lam_bar, bu, out = self._inputs(u, step_scale, token=False)
        x = linear_recurrence(lam_bar, bu, method=method)
        return _readout(layer, x, u, out)

    def init_state(self) -> Complex[Array, " P"]:
        """The empty state: P complex zeros (complex64; complex128 for float64 parameters)."""
        return _ssm_state(self)

    def step(
        self,
        state: Complex[Array, " P"],
        u_t: Float[Array, " H"],
        *,
        step_scale: Float[ArrayLike, ""] | None = None,
    ) -> tuple[Complex[Array, " P"], Float[Array, " H"]]:
        """One token u_t (H,), with an optional scalar `step_scale` (as one entry of
        `__call__`'s): x = Lambda_bar x + B_bar u_t, and y_t (H,), the t-th row of `__call__`
        on the tokens so far. The state keeps its dtype; O(P H) time and O(P) memory per
        token."""
        layer, u, lam_bar, bu, out = self._inputs(u_t, step_scale, token=True)
        state = (lam_bar * state + bu).astype(state.dtype)
        return state, _readout(layer, state, u, out)


def _check_step_scale(step_scale, length):
    """`step_scale` as an (L,) array (a scalar for `length` None, one step): a ValueError for a
    wrong shape or, when its values are known, a negative or non-finite entry; traced, such
    entries become NaN (a negative step turns the decay exp(Lambda Delta s) into growth:
    finite, and wrong)."""
    step_scale = jnp.asarray(step_scale)
    want, label = ((), "() for one step") if length is None else ((length,), f"(L,) = ({length},)")
    if step_scale.shape != want:
        raise ValueError(f"`step_scale` must have shape {label}, got {step_scale.shape}.")
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
