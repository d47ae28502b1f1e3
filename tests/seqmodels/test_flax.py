import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import seqmodels.flax as sf
from seqmodels import layers

CASES = [
    pytest.param(  # the same adapter as LRU and S5; the heaviest compile, so under slow
        "GateLoop",
        (8,),
        {"num_heads": 2},
        {"mode": "chunkwise", "chunk_size": 4},
        marks=pytest.mark.slow,
        id="GateLoop",
    ),
    pytest.param("LRU", (8, 6), {}, {}, id="LRU"),
    pytest.param("S5", (8, 6), {}, {}, id="S5"),
]


def flax_model(state_size=4, **kwargs):
    """A small `seqmodels.flax.SequenceModel` (d_model 8, 3 outputs) over LRU mixers;
    `kwargs` chooses the inputs (`num_tokens=` or `input_dim=`) and the rest."""
    kwargs = {"num_layers": 1, **kwargs}
    mixer = lambda d, key: layers.LRU(d, state_size, key=key)
    return sf.SequenceModel(mixer, d_model=8, num_outputs=3, rngs=nnx.Rngs(0), **kwargs)


def _paths(state):
    """{'a/b/0/c': leaf} of an nnx state."""
    return {"/".join(map(str, path)): leaf for path, leaf in nnx.to_flat_state(state)}


def _eqx_paths(tree):
    """{'a/b/0/c': leaf} of an equinox module's inexact arrays, named by their fields."""
    flat = jax.tree_util.tree_flatten_with_path(eqx.filter(tree, eqx.is_inexact_array))[0]
    name = lambda e: str(getattr(e, "name", getattr(e, "idx", getattr(e, "key", e))))
    return {"/".join(name(e) for e in path): leaf for path, leaf in flat}


@pytest.mark.parametrize("name,args,kwargs,call", CASES)
def test_flax_layers_equal_equinox_on_batch_first_input(getkey, name, args, kwargs, call):
    """Batch-first (B, L, D) through the adapter equals `jax.vmap` of the equinox layer, and
    so does time-major (L, B, D); gradients agree parameter by parameter, named alike."""
    flax_layer = getattr(sf, name)(*args, rngs=nnx.Rngs(params=3), **kwargs)
    eqx_layer = getattr(layers, name)(*args, key=nnx.Rngs(params=3).params(), **kwargs)
    x = jax.random.normal(getkey(), (3, 12, 8))
    # jitted: the layers run op by op cost seconds of dispatch
    want = eqx.filter_jit(lambda m, x: jax.vmap(lambda s: m(s, **call))(x))(eqx_layer, x)
    run = nnx.jit(lambda m, x, time_major: m(x, time_major=time_major, **call), static_argnums=2)
    np.testing.assert_array_equal(run(flax_layer, x, False), want)
    np.testing.assert_array_equal(run(flax_layer, x.swapaxes(0, 1), True).swapaxes(0, 1), want)

    g_flax = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x, **call) ** 2)))(flax_layer)
    loss = lambda m: jnp.sum(jax.vmap(lambda s: m(s, **call))(x) ** 2)
    g_eqx = eqx.filter_jit(eqx.filter_grad(loss))(eqx_layer)
    flat_flax, flat_eqx = _paths(nnx.state(g_flax)), _eqx_paths(g_eqx)
    assert flat_flax.keys() == flat_eqx.keys()
    for path, leaf in flat_eqx.items():
        np.testing.assert_allclose(flat_flax[path], leaf, rtol=1e-6, atol=1e-7, err_msg=path)


def test_parameters_are_named_as_the_equinox_fields(getkey):
    layer = sf.GateLoop(8, num_heads=2, rngs=nnx.Rngs(0))
    names = set(_paths(nnx.state(layer, nnx.Param)))
    assert {"q/weight", "k/weight", "magnitude/weight", "magnitude/bias", "out/weight"} <= names
    model = flax_model(num_layers=2, num_tokens=5, conv_width=3)
    names = set(_paths(nnx.state(model, nnx.Param)))
    assert {"embed/weight", "blocks/1/mixer/nu_log", "blocks/0/conv/weight"} <= names
    assert {"blocks/0/mlp/layers/0/weight", "head/weight", "norm/bias"} <= names
    assert names == set(_eqx_paths(model.to_equinox()))
    # an optax mask by name: weight decay on the matrices only
    params = nnx.state(model, nnx.Param)
    mask = jax.tree_util.tree_map_with_path(
        lambda path, p: path[-1].key == "weight" and p[...].ndim == 2,
        params,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    masked = _paths(mask)
    assert masked["head/weight"] and not masked["norm/weight"] and not masked["head/bias"]
    optax.add_decayed_weights(1e-2, mask=mask).init(params)


def test_batch_first_model_time_major_flag_and_batched_step(getkey):
    model = flax_model(num_tokens=5, time_major=True)
    tokens = jax.random.randint(getkey(), (2, 7), 0, 5)
    eqx_model = model.to_equinox()
    want = jax.vmap(eqx_model)(tokens)
    np.testing.assert_allclose(model(tokens.T), want.swapaxes(0, 1), rtol=1e-6)  # (L, B)
    np.testing.assert_allclose(model(tokens, time_major=False), want, rtol=1e-6)
    _, first = model.step(model.init_state(batch_size=2), tokens[:, 0])
    np.testing.assert_allclose(first, want[:, 0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(L, B\)"):
        model(jnp.zeros((), jnp.int32))


def test_flax_model_trains_with_nnx_optimizer(getkey):
    model = flax_model(8, input_dim=2)
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(getkey(), (4, 10, 2))
    y = jnp.cumsum(x[..., :1], axis=1)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return jnp.mean((m(x)[..., :1] - y) ** 2)  # batch-first (B, L, D)

        value, grads = nnx.value_and_grad(loss)(model)
        with jax.numpy_dtype_promotion("standard"):
            opt.update(model, grads)
        return value

    first = step(model, opt)
    for _ in range(30):
        last = step(model, opt)
    assert float(last) < float(first)
    eqx_model = model.to_equinox()
    assert isinstance(eqx_model, layers.SequenceModel)
