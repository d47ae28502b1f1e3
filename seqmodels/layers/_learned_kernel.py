"""Learned-kernel linear attention: random Fourier features whose spectral distribution is
learned (Chowdhury, Solomou, Dubey & Sachan, 2022, "On Learning the Transformer Kernel",
TMLR; KL-TRANSFORMER).

A shift-invariant kernel k(x, y) = E_{w ~ p}[cos(w^T (x - y))] (Bochner) is approximated by
random features phi(x) = sqrt(m) [cos(W x), sin(W x)] over M frequencies W = (w_1 .. w_M) with
masses m (summing to one), so that phi(x)^T phi(y) = sum_i m_i cos(w_i^T (x - y)) ~ k(x, y),
and causal attention with that kernel,

    y_t = phi(q_t)^T (sum_{s <= t} phi(k_s) v_s^T) / (phi(q_t)^T sum_{s <= t} phi(k_s)),

is a gated linear attention with all gates 1 (`seqmodels._gla`), linear in L. The spectral
distribution p is one of three strategies (the paper's Section 3):

  `GaussianSpectrum`: p = N(0, I / h^2), the spectral density of a `kmethods.Gaussian(h)`,
    the fixed-kernel baseline of Performer / RFA (Rahimi & Recht, 2007).
  `MixtureSpectrum`: GMM-RKS, p = sum_c pi_c N(mu_c, Sigma_c) with learned weights, means and
    diagonal (optionally plus low-rank) covariances, sampled by reparameterisation
    w = mu_c + Sigma_c^{1/2} eps; the kernel is the spectral mixture kernel
    sum_c pi_c exp(-(x - y)^T Sigma_c (x - y) / 2) cos(mu_c^T (x - y)).
  `GenerativeSpectrum`: GEN-RKS, an implicit p: w = g(eps), a small MLP g applied to Gaussian
    noise eps.

Each is given to the layer unbuilt (its sizes only) and built with the layer's heads.
"""

from __future__ import annotations

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, Float

import kmethods
from seqmodels._checks import check_positive_int, compute_dtype, head_sizes
from seqmodels._gla import outer
from seqmodels.layers._common import (
    cast,
    check_dtype,
    layer_input,
    param_dtype_of,
    param_init_dtype,
)
from seqmodels.layers._gated_linear_attention import (
    multihead_gated_linear_attention,
    qkv_projections,
)

__all__ = [
    "GaussianSpectrum",
    "GenerativeSpectrum",
    "LearnedKernelAttention",
    "MixtureSpectrum",
    "gaussian_spectral_frequencies",
    "random_fourier_features",
]


def gaussian_spectral_frequencies(kernel: kmethods.Gaussian, noise: Array) -> Array:
    """Frequencies w = noise / h of the Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 h^2))
    (`kmethods.Gaussian`'s bandwidth convention), whose spectral density is N(0, I / h^2):
    `noise` is standard normal, of any shape (..., d). Reparameterised, so a traced (array)
    bandwidth receives gradients. Draw the noise with `jax.random.normal(key, (M, d))`."""
    if not isinstance(kernel, kmethods.Gaussian):
        raise TypeError(f"expected a kmethods.Gaussian, got {type(kernel).__name__}.")
    return noise / jnp.asarray(kernel.bandwidth, noise.dtype)


def random_fourier_features(
    x: Float[Array, "L d"], omega: Float[Array, "M d"], mass: Float[Array, " M"]
) -> Float[Array, "L 2M"]:
    """phi(x) = [sqrt(m) cos(W x), sqrt(m) sin(W x)] for each row x: phi(x)^T phi(y) =
    sum_i m_i cos(w_i^T (x - y)), the Monte Carlo estimate of E_{w ~ p} cos(w^T (x - y)) when
    the w_i are samples of p with masses m_i (1 / M for i.i.d. samples)."""
    u = x @ omega.T
    root = jnp.sqrt(mass).reshape((1,) * (u.ndim - 1) + (-1,))
    return jnp.concatenate([root * jnp.cos(u), root * jnp.sin(u)], axis=-1)


class GaussianSpectrum(eqx.Module):
    """The fixed Gaussian kernel's spectral density, N(0, I / h^2) (Performer / RFA's random
    Fourier features): frequencies `gaussian_spectral_frequencies(kernel, noise)`, masses 1 / M.

    Attributes:
      kernel: a `kmethods.Gaussian`; None (the default) is built as Gaussian(head_dim ** 0.25),
        for which exp(q.k / sqrt(head_dim)) = exp(-||q - k||^2 / (2 sqrt(head_dim))) times
        the query's and key's norms' factors (softmax attention's temperature). A Python float
        bandwidth stays fixed in training (equinox's filters train arrays only); an array
        bandwidth is learned.
    """

    kernel: kmethods.Gaussian | None = None

    def noise_size(self, head_dim: int) -> int:
        return head_dim

    def build(self, num_heads: int, head_dim: int, key) -> GaussianSpectrum:
        if self.kernel is not None:
            if not isinstance(self.kernel, kmethods.Gaussian):
                raise TypeError(f"expected a kmethods.Gaussian, got {type(self.kernel).__name__}.")
            return self
        return GaussianSpectrum(kmethods.Gaussian(float(head_dim) ** 0.25))

    def __call__(
        self, noise: Float[Array, "H M k"]
    ) -> tuple[Float[Array, "H M K"], Float[Array, "H M"]]:
        """(omega (H, M, K), mass (H, M)) from standard normal noise (H, M, K)."""
        omega = gaussian_spectral_frequencies(self.kernel, noise)
        return omega, jnp.full(noise.shape[:2], 1.0 / noise.shape[1], noise.dtype)


class MixtureSpectrum(eqx.Module):
    """GMM-RKS (Chowdhury et al., 2022, Section 3.2): per head, the spectral distribution
    p = sum_c pi_c N(mu_c, Sigma_c), Sigma_c = diag(s_c^2) + U_c U_c^T, all learned: pi =
    softmax(logits), mu_c, log s_c, and U_c of rank `rank` (0: diagonal).

    Frequencies are stratified over the components (frequency i belongs to component i mod C,
    with mass pi_c / n_c for the n_c frequencies of component c), and reparameterised,
    w_i = mu_c + s_c * eps_i + U_c eps'_i, so that every parameter, pi included, gets exact
    gradients through the fixed noise. (The paper's code pairs each sample with its mirror
    -mu_c + ...; here each frequency is one sample.) Initialised near the Gaussian baseline:
    means N(0, (0.1 / h)^2), scales 1 / h spread over a factor e across components, equal
    weights, U = 0, with h = head_dim ** 0.25.

    Attributes:
      num_components: C. rank: R, of the low-rank part of each covariance.
      means (H, C, K), log_scales (H, C, K), factors (H, C, K, R), logits (H, C): the learned
        parameters, None until the layer builds the spectrum (factors stay None for rank 0:
        no zero-size arrays, which orbax checkpoints refuse).
    """

    num_components: int = eqx.field(default=2, static=True)
    rank: int = eqx.field(default=0, static=True)
    means: Array | None = None
    log_scales: Array | None = None
    factors: Array | None = None
    logits: Array | None = None

    def __check_init__(self):
        check_positive_int(self.num_components, "num_components")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"`rank` must be a non-negative int, got {self.rank!r}.")

    def noise_size(self, head_dim: int) -> int:
        return head_dim + self.rank

    def build(self, num_heads: int, head_dim: int, key) -> MixtureSpectrum:
        size = (num_heads, self.num_components, head_dim)
        inv_h = float(head_dim) ** -0.25
        spread = np.linspace(-0.5, 0.5, self.num_components) if self.num_components > 1 else [0]
        log_scales = math.log(inv_h) + jnp.asarray(spread)[:, None]
        return MixtureSpectrum(
            self.num_components,
            self.rank,
            means=0.1 * inv_h * jax.random.normal(key, size),
            log_scales=jnp.broadcast_to(log_scales, size),
            factors=jnp.zeros((*size, self.rank)) if self.rank else None,
            logits=jnp.zeros(size[:2]),
        )

    def __call__(
        self, noise: Float[Array, "H M k"]
    ) -> tuple[Float[Array, "H M K"], Float[Array, "H M"]]:
        """(omega (H, M, K), mass (H, M)) from standard normal noise (H, M, K + R)."""
        dim = self.means.shape[-1]
        count = noise.shape[1]
        component = np.arange(count) % self.num_components
        members = np.bincount(component, minlength=self.num_components)
        mu, log_s = self.means[:, component], self.log_scales[:, component]
        omega = mu + jnp.exp(log_s) * noise[..., :dim]
        if self.factors is not None:
            u = self.factors[:, component]
            omega = omega + jnp.einsum("hmkr,hmr->hmk", u, noise[..., dim:])
        weights = jax.nn.softmax(self.logits, axis=-1)
        mass = weights[:, component] / jnp.asarray(members[component], weights.dtype)[None]
        return omega.astype(noise.dtype), mass.astype(noise.dtype)


class GenerativeSpectrum(eqx.Module):
    """GEN-RKS (Chowdhury et al., 2022, Section 3.3): an implicit spectral distribution, the
    push-forward of N(0, I) noise by a small MLP per head, w = g(eps) (leaky-ReLU hidden
    layers, as in the paper; a linear last layer where the paper's tanh would cap each
    frequency at 1), masses 1 / M. The last layer is scaled by 1 / h, h = head_dim ** 0.25,
    so that the initial frequencies have about the Gaussian baseline's scale.

    Attributes:
      hidden: the hidden widths of g. noise_dim: the noise's size (None: head_dim).
      weights, biases: per layer, (H, in, out) and (H, out); None until built.
    """

    hidden: tuple[int, ...] = eqx.field(default=(32,), static=True, converter=tuple)
    noise_dim: int | None = eqx.field(default=None, static=True)
    weights: tuple[Array, ...] | None = None
    biases: tuple[Array, ...] | None = None

    def noise_size(self, head_dim: int) -> int:
        return self.noise_dim or head_dim

    def build(self, num_heads: int, head_dim: int, key) -> GenerativeSpectrum:
        sizes = (self.noise_size(head_dim), *self.hidden, head_dim)
        keys = jax.random.split(key, len(sizes) - 1)
        weights = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            scale = 1.0 / math.sqrt(a) * (float(head_dim) ** -0.25 if i == len(keys) - 1 else 1)
            weights.append(scale * jax.random.normal(keys[i], (num_heads, a, b)))
        biases = tuple(jnp.zeros((num_heads, b)) for b in sizes[1:])
        return GenerativeSpectrum(self.hidden, self.noise_dim, tuple(weights), biases)

    def __call__(
        self, noise: Float[Array, "H M k"]
    ) -> tuple[Float[Array, "H M K"], Float[Array, "H M"]]:
        """(omega (H, M, K), mass (H, M)) from standard normal noise (H, M, noise_dim)."""
        h = noise
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = jnp.einsum("hmi,hio->hmo", h, w.astype(noise.dtype)) + b[:, None].astype(h.dtype)
            if i < len(self.weights) - 1:
                h = jax.nn.leaky_relu(h)
        return h, jnp.full(noise.shape[:2], 1.0 / noise.shape[1], noise.dtype)


class LearnedKernelAttention(eqx.Module):
    """Causal linear attention with a learned random-feature kernel (Chowdhury et al., 2022,
    "On Learning the Transformer Kernel", TMLR: KL-TRANSFORMER).

    Per head h, with q_t, k_t, v_t = W_q x_t, W_k x_t, W_v x_t split into heads and phi the
    random Fourier features of the head's spectral distribution (`random_fourier_features`,
    2M features from M frequencies),

      S_t = S_{t-1} + phi(k_t) v_t^T,  z_t = z_{t-1} + phi(k_t),
      y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps),

    computed as one gated linear attention with gates 1 on the values with a column of ones
    appended (the normaliser is that column), in the form `mode` names (`seqmodels._gla`);
    the heads are concatenated and projected by W_o.

    Frequencies. The standard normal noise behind the frequencies is fixed at initialisation:
    the layer stores the key it is drawn from (`noise_key`, integer key data) and `noise`
    redraws the same values at each call. An integer array is not a parameter to equinox
    (`eqx.is_inexact_array`), optax or Flax, so no optimiser, weight decay included, can move
    the noise (a stored float noise would shrink under plain `optax.adamw`, silently changing
    the kernel). The spectrum's parameters are learned through the noise by
    reparameterisation. Passing `key=` to the call redraws the noise for that call
    (Performer's feature redrawing); `step` always uses the stored noise.

    Shapes and dtypes: x (L, d_model) -> (L, d_model). `param_dtype` is the parameters' dtype
    (projections, spectrum and noise; default: float32, float64 with x64); `dtype` the
    computation's and output's (None: x's dtype, with float16 and bfloat16 computed in
    float32). With `dtype=jnp.bfloat16` the query, key, value and output projections run in
    bfloat16, while the frequencies, the random features (cosines of the projections, whose
    arguments bfloat16 would round by about 1%), the states and the normaliser are float32.
    Memory: in the chunkwise form (the default), O(L (2M + d)) plus the
    (L / C) chunk states of 2M x (head_dim + 1) per head, forward and backward; `step` keeps
    one such state per head, O(1) in L.

    Attributes:
      num_heads, head_dim: heads and their query, key and value size. dtype: the
        computation dtype.
      num_features: M, frequencies per head (2M features).
      spectrum: the built spectral distribution (`GaussianSpectrum`, `MixtureSpectrum`,
        `GenerativeSpectrum`).
      noise_key: the raw key data (`jax.random.key_data`, default PRNG implementation) of
        the fixed noise. noise_shape, noise_dtype: its (H, M, noise size) and dtype.
      noise: (property) the fixed standard normal noise, drawn from `noise_key`.
      eps: added to the normaliser. Random Fourier features are not positive, so the
        normaliser is an estimate of a positive sum that can come near 0 with few features;
        more features (or a wider kernel) keep it away.
    """

    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    out: eqx.nn.Linear
    spectrum: eqx.Module
    noise_key: Array
    noise_shape: tuple[int, int, int] = eqx.field(static=True)
    noise_dtype: jnp.dtype = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)
    head_dim: int = eqx.field(static=True)
    num_features: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    dtype: jnp.dtype | None = eqx.field(static=True)

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        head_dim: int | None = None,
        *,
        num_features: int = 32,
        spectrum: eqx.Module | None = None,
        eps: float = 1e-6,
        dtype: DTypeLike | None = None,
        param_dtype: DTypeLike | None = None,
        key,
    ):
        num_heads, head_dim, inner = head_sizes(d_model, num_heads, head_dim)
        self.num_features = check_positive_int(num_features, "num_features")
        spectrum = MixtureSpectrum() if spectrum is None else spectrum
        if not all(hasattr(spectrum, a) for a in ("build", "noise_size")):
            raise TypeError(
                "`spectrum` must be GaussianSpectrum(...), MixtureSpectrum(...) or "
                f"GenerativeSpectrum(...), got {type(spectrum).__name__}."
            )
        self.dtype = check_dtype(dtype, "dtype")
        pdt = param_init_dtype(param_dtype)
        keys = jax.random.split(key, 6)
        self.q, self.k, self.v = qkv_projections(d_model, inner, keys, pdt)
        self.out = eqx.nn.Linear(inner, d_model, use_bias=False, dtype=pdt, key=keys[3])
        self.spectrum = cast(spectrum.build(num_heads, head_dim, keys[4]), pdt)
        self.noise_shape = (num_heads, self.num_features, spectrum.noise_size(head_dim))
        self.noise_dtype = jnp.dtype(pdt)
        typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
        self.noise_key = jax.random.key_data(keys[5]) if typed else keys[5]
        self.num_heads, self.head_dim, self.eps = num_heads, head_dim, float(eps)

    @property
    def noise(self) -> Array:
        """The fixed standard normal noise (H, M, noise size), the same at every call."""
        key = jax.random.wrap_key_data(self.noise_key)
        return jax.random.normal(key, self.noise_shape, self.noise_dtype)

    def frequencies(self, noise: Array | None = None, dtype=jnp.float32):
        """(omega (H, M, head_dim), mass (H, M)) of the spectrum from `noise` (default: the
        stored noise), in `dtype`."""
        noise = self.noise if noise is None else noise
        return cast(self.spectrum, dtype)(noise.astype(dtype))

    def features(self, x, omega, mass):
        """phi of each head: (..., H * head_dim) inputs to (..., H * 2M) features."""
        heads = x.reshape(*x.shape[:-1], self.num_heads, self.head_dim)
        phi = jax.vmap(random_fourier_features, in_axes=(-2, 0, 0), out_axes=-2)
        return phi(heads, omega, mass).reshape(*x.shape[:-1], -1)

    def _prepared(self, x, *, token):
        """(the layer with its projections in the work dtype, x checked and cast, work, out);
        the spectrum and noise keep their dtype (`frequencies` casts them)."""
        x, work, out = layer_input(
            x,
            self.q.in_features,
            "LearnedKernelAttention",
            dtype=self.dtype,
            params=param_dtype_of(self),
            argument="x_t" if token else "x",
            token=token,
        )
        linears = lambda layer: (layer.q, layer.k, layer.v, layer.out)
        return eqx.tree_at(linears, self, cast(linears(self), work)), x, work, out

    def _projections(self, x, noise=None):
        """(phi(q), phi(k), v) in the accumulation dtype (at least float32) of a work-dtype
        sequence (L, d_model) or token (d_model,), the projections in x's dtype."""
        project = lambda layer: jax.vmap(layer)(x) if x.ndim == 2 else layer(x)
        acc = compute_dtype(x.dtype)
        omega, mass = self.frequencies(noise, acc)
        q, k, v = (project(layer).astype(acc) for layer in (self.q, self.k, self.v))
        return self.features(q, omega, mass), self.features(k, omega, mass), v

    def __call__(
        self,
        x: Float[Array, "L d_model"],
        *,
        mode: str = "chunkwise",
        chunk_size: int = 64,
        key=None,
    ) -> Float[Array, "L d_model"]:
        """Mixes a sequence x of shape (L, d_model); returns (L, d_model) in the layer's
        `dtype`, or x's dtype when that is None (float16 and bfloat16 then computed in float32).

        Args:
          mode, chunk_size: the form of the linear attention, as in
            `gated_linear_attention` ("chunkwise", the default, "recurrent", "parallel",
            "attention"); all are equal.
          key: if given, fresh noise for this call's frequencies (feature redrawing).
        """
        layer, x, work, out = self._prepared(x, token=False)
        acc = compute_dtype(work)
        noise = None if key is None else jax.random.normal(key, self.noise_shape, acc)
        phi_q, phi_k, v = layer._projections(x, noise)
        length, heads = x.shape[0], self.num_heads
        ones = jnp.ones((length, heads, 1), v.dtype)
        values = jnp.concatenate([v.reshape(length, heads, -1), ones], axis=-1)
        y = multihead_gated_linear_attention(
            phi_q,
            phi_k,
            values.reshape(length, -1),
            jnp.zeros_like(phi_q),
            heads,
            mode=mode,
            chunk_size=chunk_size,
        ).reshape(length, heads, -1)
        y = (y[..., :-1] / (y[..., -1:] + self.eps)).astype(work)
        return jax.vmap(layer.out)(y.reshape(length, -1)).astype(out)

    def init_state(self):
        """The empty recurrent state: (S (H, 2M, head_dim), z (H, 2M)) of zeros, in the
        accumulation dtype (float32 for float32, bfloat16 and float16 layers, float64 for
        float64 parameters)."""
        size, dtype = 2 * self.num_features, compute_dtype(self.dtype or param_dtype_of(self))
        return (
            jnp.zeros((self.num_heads, size, self.head_dim), dtype),
            jnp.zeros((self.num_heads, size), dtype),
        )

    def step(self, state, x_t: Float[Array, " d_model"]):
        """One token: (state, x_t of shape (d_model,)) -> (state, y_t of shape (d_model,)), the
        t-th output of `__call__` when the state holds steps 1 .. t-1 (stored noise); O(1)
        memory in the sequence length."""
        layer, x, work, out = self._prepared(x_t, token=True)
        phi_q, phi_k, v = layer._projections(x)
        split = lambda a: a.reshape(self.num_heads, -1)
        phi_q, phi_k, v = split(phi_q), split(phi_k), split(v)
        s, z = state
        s = s + outer(phi_k, v).astype(s.dtype)
        z = z + phi_k.astype(z.dtype)
        num = jnp.einsum("hf,hfv->hv", phi_q, s.astype(phi_q.dtype))
        den = jnp.einsum("hf,hf->h", phi_q, z.astype(phi_q.dtype))[:, None]
        y = (num / (den + self.eps)).reshape(-1).astype(work)
        return (s, z), layer.out(y).astype(out)
