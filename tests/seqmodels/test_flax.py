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


@pytest.mark.parametrize("name,args,kwargs,call", CASES)
def test_flax_layers_equal_equinox(getkey, name, args, kwargs, call):
    rngs = nnx.Rngs(params=3)
    flax_layer = getattr(sf, name)(*args, rngs=rngs, **kwargs)
    eqx_layer = getattr(layers, name)(*args, key=nnx.Rngs(params=3).params(), **kwargs)
    x = jax.random.normal(getkey(), (12, 8))
    np.testing.assert_array_equal(flax_layer(x, **call), eqx_layer(x, **call))
    # gradients through nnx equal those of equinox, leaf for leaf
    import equinox as eqx

    g_flax = nnx.grad(lambda m: jnp.sum(m(x, **call) ** 2))(flax_layer)
    g_eqx = eqx.filter_grad(lambda m: jnp.sum(m(x, **call) ** 2))(eqx_layer)
    flat_flax = [leaf for leaf in jax.tree.leaves(nnx.state(g_flax))]
    flat_eqx = jax.tree.leaves(eqx.filter(g_eqx, eqx.is_inexact_array))
    assert len(flat_flax) == len(flat_eqx)
    for a, b in zip(flat_flax, flat_eqx, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_flax_model_trains_with_nnx_optimizer(getkey):
    model = sf.SequenceModel(
        lambda d, key: layers.LRU(d, 8, key=key),
        d_model=8,
        num_layers=1,
        num_outputs=3,
        input_dim=2,
        rngs=nnx.Rngs(0),
    )
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jax.random.normal(getkey(), (4, 10, 2))
    y = jnp.cumsum(x[..., :1], axis=1)

    @nnx.jit
    def step(model, opt):
        def loss(m):
            return jnp.mean((jax.vmap(m)(x)[..., :1] - y) ** 2)

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
