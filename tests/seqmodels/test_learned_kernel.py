"""LearnedKernelAttention (Chowdhury et al., 2022): the random-feature attention against a dense
loop, token-by-token `step` against the parallel output, the Gaussian baseline against exact
Gaussian-kernel attention, and gradients (finite differences; the spectra's parameters)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import kmethods
from seqmodels.layers import (
    GaussianSpectrum,
    GenerativeSpectrum,
    LearnedKernelAttention,
    MixtureSpectrum,
    gaussian_spectral_frequencies,
)
from seqmodels.layers._common import cast

SPECTRA = {
    "gaussian": lambda: GaussianSpectrum(kmethods.Gaussian(1.5)),
    "mixture": lambda: MixtureSpectrum(3, rank=2),
    "generative": lambda: GenerativeSpectrum((8,)),
}


def _layer(key, spectrum, d_model=8, num_heads=2, num_features=5, **dtypes):
    return LearnedKernelAttention(
        d_model, num_heads, num_features=num_features, spectrum=spectrum, key=key, **dtypes
    )


def _dense_reference(layer, x):
    """The layer's output by a Python loop over t in NumPy float64: per head, random Fourier
    features of q and k from the spectrum's frequencies, and the normalised causal sums."""
    x = np.asarray(x, np.float64)
    weight = lambda lin: np.asarray(lin.weight, np.float64)
    q, k, v = (x @ weight(lin).T for lin in (layer.q, layer.k, layer.v))
    omega, mass = (np.asarray(a, np.float64) for a in layer.frequencies(dtype=jnp.float64))
    length, heads = x.shape[0], layer.num_heads
    split = lambda a: a.reshape(length, heads, -1)
    q, k, v = split(q), split(k), split(v)
    out = np.zeros((length, heads, layer.head_dim))
    for h in range(heads):
        phi = lambda z, h=h: (
            np.sqrt(np.concatenate([mass[h]] * 2))
            * np.concatenate([np.cos(z @ omega[h].T), np.sin(z @ omega[h].T)], axis=-1)
        )
        for t in range(length):
            scores = np.array([phi(q[t, h]) @ phi(k[s, h]) for s in range(t + 1)])
            out[t, h] = scores @ v[: t + 1, h] / (scores.sum() + layer.eps)
    return out.reshape(length, -1) @ weight(layer.out).T


@pytest.mark.parametrize("name", SPECTRA)
def test_forms_equal_a_dense_loop(x64, getkey, name):
    layer = _layer(getkey(), SPECTRA[name]())
    x = jax.random.normal(getkey(), (11, 8))
    reference = _dense_reference(layer, x)
    # the forms share the features; one spectrum checks a second form
    for mode in ("chunkwise", "parallel") if name == "mixture" else ("chunkwise",):
        y = jax.jit(lambda x, mode=mode: layer(x, mode=mode, chunk_size=4))(x)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), reference, rtol=1e-10, atol=1e-11)


def test_step_equals_the_parallel_output(getkey):
    layer = _layer(getkey(), MixtureSpectrum(2, rank=1), d_model=16, num_features=8)
    x = jax.random.normal(getkey(), (21, 16))
    _, steps = jax.lax.scan(lambda state, x_t: layer.step(state, x_t), layer.init_state(), x)
    parallel = jax.jit(lambda x: layer(x, chunk_size=8))(x)
    np.testing.assert_allclose(steps, parallel, rtol=1e-5, atol=1e-5)
    s, z = layer.init_state()
    assert s.shape == (2, 16, 8) and z.shape == (2, 16)


def test_gaussian_features_approach_exact_gaussian_attention(getkey):
    """Random Fourier features of kmethods.Gaussian(h) (w ~ N(0, I / h^2)) approach the
    attention with the exact kernel exp(-||q - k||^2 / (2 h^2)) as M grows (fixed keys)."""
    kernel = kmethods.Gaussian(2.0)
    key, x = getkey(), jax.random.normal(getkey(), (24, 8))
    errors = []
    for num_features in (8, 128, 2048):
        layer = _layer(key, GaussianSpectrum(kernel), num_features=num_features)
        project = lambda lin, layer=layer: jax.vmap(lin)(x).reshape(24, 2, 4).swapaxes(0, 1)
        q, k, v = (project(lin) for lin in (layer.q, layer.k, layer.v))
        scores = jax.vmap(kernel.gram)(q, k) * jnp.tril(jnp.ones((24, 24)))[None]
        exact = jnp.einsum("hts,hsv->thv", scores, v) / jnp.sum(scores, -1).T[..., None]
        exact = jax.vmap(layer.out)(exact.reshape(24, 8))
        errors.append(float(jnp.sqrt(jnp.mean((eqx.filter_jit(layer)(x) - exact) ** 2))))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.1 * errors[0], errors


def test_gaussian_spectral_frequencies_follow_the_bandwidth(getkey):
    noise = jax.random.normal(getkey(), (20000, 3))
    omega = gaussian_spectral_frequencies(kmethods.Gaussian(0.5), noise)
    np.testing.assert_allclose(jnp.var(omega, axis=0), 4.0, rtol=0.05)
    with pytest.raises(TypeError, match=r"kmethods\.Gaussian"):
        gaussian_spectral_frequencies(kmethods.IMQ(), noise)


def test_gradients_match_finite_differences(x64, getkey):
    layer = _layer(getkey(), MixtureSpectrum(2, rank=1), num_features=3)
    x = jax.random.normal(getkey(), (6, 8))
    at = lambda m: eqx.tree_at(lambda lyr: lyr.spectrum.means, layer, m)
    call = jax.jit(lambda x, means: at(means)(x, chunk_size=4))
    check_grads(call, (x, layer.spectrum.means), order=1, modes=["rev"])


@pytest.mark.parametrize("name", ["mixture", "generative"])
def test_spectral_parameters_receive_gradients(getkey, name):
    layer = _layer(getkey(), SPECTRA[name]())
    x = jax.random.normal(getkey(), (9, 8))
    grads = eqx.filter_jit(eqx.filter_grad(lambda lyr: jnp.sum(lyr(x) ** 2)))(layer)
    spectral = jax.tree.leaves(eqx.filter(grads.spectrum, eqx.is_inexact_array))
    assert spectral and all(bool(jnp.all(jnp.isfinite(g))) for g in spectral)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in spectral if g.size)
    assert grads.noise_key is None  # the noise is fixed: an integer key, not a parameter


def test_no_optimiser_moves_the_fixed_noise(getkey):
    """Plain `optax.adamw` (weight decay on every parameter) over the layer's inexact arrays:
    the parameters move, the noise (and so the kernel's random features) does not. A stored
    float noise would shrink by the decay at every step."""
    layer = _layer(getkey(), SPECTRA["gaussian"]())
    noise = layer.noise
    params, static = eqx.partition(layer, eqx.is_inexact_array)
    optimiser = optax.adamw(0.1, weight_decay=0.5)
    with jax.numpy_dtype_promotion("standard"):  # optax's step count is an int32
        updates, _ = optimiser.update(params, optimiser.init(params), params)
        moved = eqx.combine(optax.apply_updates(params, updates), static)
    assert not np.allclose(moved.q.weight, layer.q.weight)
    np.testing.assert_array_equal(moved.noise, noise)
    assert noise.shape == (2, 5, 4) and noise.dtype == layer.q.weight.dtype


def test_redrawn_features_and_checks(getkey):
    layer = _layer(getkey(), MixtureSpectrum(2))
    x = jax.random.normal(getkey(), (5, 8))
    call = eqx.filter_jit(lambda x, key: layer(x, key=key))
    assert not np.allclose(call(x, None), call(x, getkey()))
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        layer(jnp.zeros((2, 5, 8)))
    with pytest.raises(TypeError, match="spectrum"):
        _layer(getkey(), "gaussian")
    with pytest.raises(TypeError, match=r"kmethods\.Gaussian"):
        _layer(getkey(), GaussianSpectrum(kmethods.IMQ()))


def test_bfloat16_against_float32_on_the_same_values(getkey):
    """bfloat16 weights computing in bfloat16 (`dtype`) against the float32 layer holding the
    same (bfloat16-rounded) weights, on the same inputs: relative 1e-2; the features and the
    recurrent state stay float32."""
    key = getkey()
    make = lambda **d: _layer(key, MixtureSpectrum(2, rank=1), num_features=8, **d)
    low = make(dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    ref = cast(make(param_dtype=jnp.bfloat16), jnp.float32)  # dtype None: computes in float32
    leaves = jax.tree.leaves(eqx.filter(low, eqx.is_inexact_array))
    assert leaves and all(a.dtype == jnp.bfloat16 for a in leaves)
    x = jax.random.normal(getkey(), (24, 8)).astype(jnp.bfloat16)
    call = eqx.filter_jit(lambda layer, x: layer(x))
    got, want = call(low, x), call(ref, x.astype(jnp.float32))
    assert got.dtype == jnp.bfloat16 and want.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(
        np.asarray(got.astype(jnp.float32)), want, rtol=1e-2, atol=1e-2 * scale
    )
    state, steps = jax.lax.scan(lambda s, x_t: low.step(s, x_t), low.init_state(), x)
    assert all(a.dtype == jnp.float32 for a in state) and steps.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(steps.astype(jnp.float32)), want, rtol=2e-2, atol=2e-2 * scale
    )
    # dtype None on bfloat16 inputs: float32 inside, bfloat16 out
    assert make()(x).dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="param_dtype"):
        make(param_dtype=jnp.int32)


def test_flax_adapter_equals_the_equinox_layer_on_batch_first_input(getkey):
    from flax import nnx

    from seqmodels import flax as sf

    kwargs = dict(num_features=4, spectrum=MixtureSpectrum(2, rank=1))
    flax_layer = sf.LearnedKernelAttention(8, 2, rngs=nnx.Rngs(params=3), **kwargs)
    eqx_layer = LearnedKernelAttention(8, 2, key=nnx.Rngs(params=3).params(), **kwargs)
    x = jax.random.normal(getkey(), (3, 12, 8))
    # jitted: the chunkwise form run op by op costs seconds of dispatch
    want = eqx.filter_jit(lambda m, x: jax.vmap(m)(x))(eqx_layer, x)
    call = nnx.jit(lambda m, x, time_major: m(x, time_major=time_major), static_argnums=2)
    np.testing.assert_array_equal(call(flax_layer, x, False), want)
    np.testing.assert_array_equal(call(flax_layer, x.swapaxes(0, 1), True).swapaxes(0, 1), want)
    flat = lambda *f: {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(*f))}
    names = flat(flax_layer, nnx.Param)
    assert {"q/weight", "out/weight", "spectrum/means"} <= names and "noise_key" not in names
    assert flat(flax_layer, sf.Buffer) == {"noise_key"}  # state, not a parameter
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(flax_layer)
    g_eqx = eqx.filter_jit(eqx.filter_grad(lambda m: jnp.sum(jax.vmap(m)(x) ** 2)))(eqx_layer)
    np.testing.assert_allclose(
        grads.spectrum.means[...], g_eqx.spectrum.means, rtol=1e-5, atol=1e-6
    )
    state = flax_layer.init_state(batch_size=3)
    _, y0 = nnx.jit(lambda m, s, x_t: m.step(s, x_t))(flax_layer, state, x[:, 0])
    np.testing.assert_allclose(y0, want[:, 0], rtol=1e-5, atol=1e-6)
