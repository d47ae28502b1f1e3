"""Issue 14 for seqmodels: no silent wrong answers.

Low precision (float16 / bfloat16 recurrences, DEER and layers accumulate in float32), DEER
divergence made visible, clear errors for bad arguments, and property tests of
`linear_recurrence` against a Python loop."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqmodels as sm
from seqmodels import layers, linear_recurrence

SOLVERS = ["sequential", "associative", "chunked"]
LOW = [jnp.bfloat16, jnp.float16]
# float16 takes the same path as bfloat16 (a float32 solve): checked in the slow suite only
LOW_SLOW_F16 = [jnp.bfloat16, pytest.param(jnp.float16, marks=pytest.mark.slow)]


def small_model(make_mixer, key, **inputs):
    """A one-layer `SequenceModel` (d_model 8, 3 outputs) around `make_mixer`; `inputs` is
    `input_dim=` or `num_tokens=`."""
    return layers.SequenceModel(
        make_mixer, d_model=8, num_layers=1, num_outputs=3, key=key, **inputs
    )


def loop_reference(a, b, h0, reverse=False):
    """h_t = a_t h_{t-1} + b_t by a Python loop in float64 (elementwise transitions)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a = np.broadcast_to(a, b.shape)
    h = np.asarray(h0, np.float64)
    out = np.zeros(b.shape)
    for t in reversed(range(b.shape[0])) if reverse else range(b.shape[0]):
        h = a[t] * h + b[t]
        out[t] = h
    return out


def _f32(x):
    return np.asarray(jnp.asarray(x, jnp.float32))


# ----------------------------------------------------------------------------- low precision


@pytest.mark.parametrize("dtype", LOW)
def test_low_precision_sum_of_ones_is_exact_for_every_solver(dtype):
    """The issue's example: a = b = 1, L = 4096 in bfloat16 ended at 256 (sequential) and
    4032 (tree). Solved in float32 and rounded once, every solver gives round(t + 1)."""
    ones = jnp.ones(4096, dtype)
    want = jnp.arange(1, 4097, dtype=jnp.float32).astype(dtype)
    every = jax.jit(lambda x: [linear_recurrence(x, x, method=m) for m in SOLVERS])
    for method, got in zip(SOLVERS, every(ones), strict=True):
        assert got.dtype == dtype
        np.testing.assert_array_equal(_f32(got), _f32(want), err_msg=method)


@pytest.mark.parametrize("dtype", LOW_SLOW_F16)
def test_low_precision_equals_the_float32_solution_values_and_gradients(dtype, getkey):
    """Every solver, both directions: the result is the float32 solution of the same
    (rounded) values, rounded to the input dtype; the gradients likewise."""
    length = 300
    a = jax.random.uniform(getkey(), (length, 3), minval=0.9, maxval=1.0).astype(dtype)
    b = jax.random.normal(getkey(), (length, 3)).astype(dtype)
    h0 = jax.random.normal(getkey(), (3,)).astype(dtype)
    w = jax.random.normal(getkey(), (length, 3)).astype(dtype)  # the output cotangent
    eps = float(jnp.finfo(dtype).eps)
    up = lambda *x: tuple(v.astype(jnp.float32) for v in x)

    @jax.jit
    def values_and_grads(a, b, h0):
        # every solver and direction in one program (the suite is compile-bound)
        out = {}
        for method in SOLVERS:
            for reverse in (False, True):
                solve = lambda a, b, h0, m=method, r=reverse: linear_recurrence(
                    a, b, h0, method=m, reverse=r
                )
                loss = lambda *x, solve=solve: jnp.sum(w.astype(b.dtype) * solve(*x))
                out[method, reverse] = solve(a, b, h0), jax.grad(loss, (0, 1, 2))(a, b, h0)
        return out

    @jax.jit
    def reference_grads(a, b, h0):
        return {
            reverse: jax.grad(
                lambda *x, r=reverse: jnp.sum(
                    w.astype(jnp.float32) * linear_recurrence(*x, reverse=r)
                ),
                (0, 1, 2),
            )(a, b, h0)
            for reverse in (False, True)
        }

    reference = reference_grads(*up(a, b, h0))
    for (_, reverse), (got, got_grads) in values_and_grads(a, b, h0).items():
        ref = loop_reference(*up(a, b, h0), reverse=reverse)
        scale = np.max(np.abs(ref))
        ref_grads = reference[reverse]
        assert got.dtype == dtype
        # one rounding to the output dtype (half an ulp) plus float32 solver differences
        np.testing.assert_allclose(_f32(got), ref, rtol=eps, atol=1e-5 * scale)
        for g, want in zip(got_grads, ref_grads, strict=True):
            assert g.dtype == dtype
            np.testing.assert_allclose(
                _f32(g), _f32(want), rtol=eps, atol=1e-5 * float(jnp.max(jnp.abs(want)))
            )


def test_float32_program_is_unchanged_by_the_upcast():
    """Only float16 / bfloat16 inputs get dtype conversions: a float32 recurrence has none,
    and a bfloat16 one converts its inputs and output."""
    for dtype, converts in ((jnp.float32, False), (jnp.bfloat16, True)):
        x = jnp.ones((16, 2), dtype)
        for method in SOLVERS:
            fn = lambda a, b, m=method: linear_recurrence(a, b, method=m)
            jaxpr = str(jax.make_jaxpr(fn)(x, x))
            assert ("convert_element_type[new_dtype=float" in jaxpr) == converts, method


@pytest.mark.parametrize(
    ("name", "make", "shape"),
    [
        ("GateLoop", lambda k: layers.GateLoop(8, num_heads=2, key=k), (32, 8)),
        ("LinearAttention", lambda k: layers.LinearAttention(8, num_heads=2, key=k), (32, 8)),
        ("LRU", lambda k: layers.LRU(8, 6, key=k), (32, 8)),
        ("S5", lambda k: layers.S5(8, 6, key=k), (32, 8)),
        ("CKConv", lambda k: layers.CKConv(8, 4, key=k), (32, 8)),
        ("ShortConv", lambda k: layers.ShortConv(8, key=k), (32, 8)),
        pytest.param(
            "SequenceModel",
            lambda k: small_model(lambda d, key: layers.LRU(d, 4, key=key), k, input_dim=5),
            (32, 5),
            marks=pytest.mark.slow,  # its mixers are checked one by one above
        ),
    ],
)
def test_layers_bfloat16_against_float32(name, make, shape, getkey):
    """bfloat16 activations are computed in float32 and returned in bfloat16: within 1e-2 of
    the float32 output on the same values."""
    layer = eqx.filter_jit(make(getkey()))
    x = jax.random.normal(getkey(), shape).astype(jnp.bfloat16)
    got = layer(x)
    want = layer(x.astype(jnp.float32))
    assert got.dtype == jnp.bfloat16 and want.dtype == jnp.float32, name
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(_f32(got), want, rtol=1e-2, atol=1e-2 * scale, err_msg=name)


@pytest.mark.parametrize("mode", ["recurrent", "parallel", "chunkwise"])
def test_gated_linear_attention_low_precision(mode, getkey):
    """A slowly decaying state summed over 512 positive terms: in bfloat16 it stalls (a
    state near 300 does not change by adding 1); computed in float32, every mode is within
    1e-2 of the float32 result on the same values."""
    length = 512
    q, k, v = (jax.random.uniform(getkey(), (length, 4), minval=0.5) for _ in range(3))
    log_a = jnp.full((length, 4), -1e-3)
    args = [x.astype(jnp.bfloat16) for x in (q, k, v, log_a)]
    got = layers.gated_linear_attention(*args, mode=mode, chunk_size=32)
    want = layers.gated_linear_attention(*(x.astype(jnp.float32) for x in args), mode="recurrent")
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(_f32(got), want, rtol=1e-2, atol=1e-2 * scale)


@pytest.mark.parametrize("dtype", LOW_SLOW_F16)
def test_low_precision_deer_solves_in_float32(dtype):
    """A bfloat16 / float16 cell is solved in float32: DEER, quasi-DEER and the sequential scan
    agree, in a few iterations (bfloat16 iterates chased rounding noise for ~L iterations),
    and equal the float32 solution of the same values to the output precision."""
    k1, k2 = jax.random.split(jax.random.key(0))
    cell = sm.cells.GRUCell(3, 8, key=k1, dtype=dtype)
    xs = jax.random.normal(k2, (100, 3)).astype(dtype)
    cell32 = jax.tree.map(lambda v: v.astype(jnp.float32), cell)

    @eqx.filter_jit  # one program (the suite is compile-bound)
    def solve_all(cell, cell32, xs):
        want = sm.sequential_solve(cell32, cell32.init_state(), xs.astype(jnp.float32))
        seq = sm.sequential_solve(cell, cell.init_state(), xs)
        sols = [sm.deer_solve(cell, cell.init_state(), xs, method=m) for m in ("newton", "quasi")]
        return want, seq, sols

    want, seq, sols = solve_all(cell, cell32, xs)
    assert seq.dtype == dtype
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(_f32(seq), want, rtol=eps, atol=eps)
    for method, sol in zip(("newton", "quasi"), sols, strict=True):
        assert sol.states.dtype == dtype
        assert bool(sol.converged) and int(sol.num_iters) <= 12, (method, sol.num_iters)
        np.testing.assert_allclose(_f32(sol.states), want, rtol=eps, atol=eps)


# ---------------------------------------------------------------------------- DEER failures


def _exploding(h, x):
    return 3.0 * h + x  # overflows float32 after ~80 steps


DEER_VARIANTS = [
    {"solver": "newton"},
    {"solver": "quasi"},
    {"solver": "newton", "damping": 1.0},  # ELK
    {"solver": "quasi", "damping": 1.0},  # quasi-ELK
]


@pytest.mark.parametrize("kwargs", DEER_VARIANTS, ids=lambda k: "-".join(map(str, k.values())))
def test_diverging_cell_never_gives_finite_output(kwargs):
    """The sequential scan overflows to inf; every DEER-family solver must not return finite
    states for it (they returned the NaN-to-0 reset's zeros, or ELK a stalled iterate it
    called converged), eagerly or under jit."""
    xs = jnp.ones((90, 2), jnp.float32)
    h0 = jnp.zeros(2, jnp.float32)
    assert not bool(jnp.all(jnp.isfinite(sm.RNN(_exploding)(xs, h0))))
    rnn = sm.RNN(_exploding, **kwargs)
    out_jit, sol = eqx.filter_jit(lambda xs: (rnn(xs, h0), rnn.solve(xs, h0)))(xs)
    for out in (rnn(xs, h0), out_jit):
        assert not bool(jnp.any(jnp.isfinite(out[-1])))
    assert not bool(sol.converged)


def test_damped_solve_does_not_stop_on_a_stalled_step():
    """ELK on h' = 3h + x takes ever smaller steps near h = -1/2, far from the solution; that
    is not convergence (the residual is 4/3)."""
    xs = jnp.ones((20, 1), jnp.float32)
    for method in ("newton", "quasi"):
        sol = sm.deer_solve(_exploding, jnp.zeros(1), xs, method=method, damping=1.0)
        assert not bool(sol.converged), method


def test_unconverged_rnn_output_is_nan_or_raises():
    """Stopped by `max_iter`, an RNN gives NaN states (under jit and vmap too) or, with
    on_failure="raise", an error under eager and jit; `solve` still returns the iterate."""
    k1, k2 = jax.random.split(jax.random.key(1))
    cell = sm.cells.GRUCell(3, 4, key=k1)
    xs = jax.random.normal(k2, (2, 100, 3))
    rnn = sm.RNN(cell, solver="quasi", max_iter=2)
    out, sol = eqx.filter_jit(lambda x: (rnn(x), rnn.solve(x)))(xs[0])
    assert bool(jnp.all(jnp.isnan(out)))
    assert not bool(sol.converged) and bool(jnp.all(jnp.isfinite(sol.states)))
    assert bool(jnp.all(jnp.isnan(eqx.filter_jit(lambda x: jax.vmap(rnn)(x))(xs))))
    # nor a finite gradient: a select would have passed zeros
    grads = eqx.filter_jit(eqx.filter_grad(lambda r: jnp.sum(r(xs[0]))))(rnn)
    assert bool(jnp.all(jnp.isnan(grads.cell.weight_hh)))
    strict = sm.RNN(cell, solver="quasi", max_iter=2, on_failure="raise")
    with pytest.raises(Exception, match="did not converge"):
        strict(xs[0])
    with pytest.raises(Exception, match="did not converge"):
        jax.block_until_ready(eqx.filter_jit(strict)(xs[0]))
    with pytest.raises(ValueError, match="on_failure"):
        sm.RNN(cell, on_failure="ignore")


def test_damping_can_be_traced():
    """damping only enters arithmetic, so it may be traced (jit, vmap over dampings); a traced
    damping <= 0, which cannot be refused, makes the states NaN and converged False."""
    k1, k2 = jax.random.split(jax.random.key(2))
    cell = sm.cells.GRUCell(3, 4, key=k1)
    xs = jax.random.normal(k2, (30, 3))
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    solve = jax.jit(jax.vmap(lambda d: sm.deer_solve(cell, cell.init_state(), xs, damping=d)))
    sol = solve(jnp.array([0.1, 0.3, -1.0]))
    np.testing.assert_array_equal(sol.converged, [True, True, False])
    np.testing.assert_allclose(sol.states[:2], jnp.stack([ref, ref]), atol=1e-4)
    assert bool(jnp.all(jnp.isnan(sol.states[2])))
    with pytest.raises(TypeError, match="tol"):
        jax.jit(lambda t: sm.deer_solve(cell, cell.init_state(), xs, tol=t).states)(1e-4)


# --------------------------------------------------------------------------------- errors


def test_recurrence_argument_errors():
    b = jnp.ones((10, 3))
    for bad in (11, 64, 0, -1, 2.0, True):
        with pytest.raises(ValueError, match="`chunk_size`"):
            linear_recurrence(b, b, method="chunked", chunk_size=bad)
    # the largest chunk is fine, and a numpy integer is an int
    np.testing.assert_allclose(
        linear_recurrence(b, b, method="chunked", chunk_size=np.int64(10)),
        linear_recurrence(b, b, method="sequential"),
    )
    x = jnp.ones((12, 4))
    with pytest.raises(ValueError, match="`chunk_size`"):
        layers.gated_linear_attention(x, x, x, -x, mode="chunkwise", chunk_size=0)
    with pytest.raises(ValueError, match="`num_heads`"):
        layers.multihead_gated_linear_attention(x, x, x, -x, 0)
    with pytest.raises(ValueError, match="L >= 1"):
        layers.gated_linear_attention(x[:0], x[:0], x[:0], x[:0])
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        layers.gated_linear_attention(x[None], x[None], x[None], x[None])
    # a chunk longer than the sequence is cut to it, not padded with garbage
    np.testing.assert_allclose(
        layers.gated_linear_attention(x, x, x, -x, mode="chunkwise", chunk_size=64),
        layers.gated_linear_attention(x, x, x, -x, mode="recurrent"),
        rtol=1e-5,
    )


LAYERS = {
    "GateLoop": (lambda k: layers.GateLoop(8, num_heads=2, key=k), 8, "d_model"),
    "LinearAttention": (lambda k: layers.LinearAttention(8, num_heads=2, key=k), 8, "d_model"),
    "LRU": (lambda k: layers.LRU(8, 4, key=k), 8, "d_model"),
    "S5": (lambda k: layers.S5(8, 4, key=k), 8, "d_model"),
    "CKConv": (lambda k: layers.CKConv(8, 4, key=k), 8, "in_channels"),
    "ShortConv": (lambda k: layers.ShortConv(8, key=k), 8, "d_model"),
    "SequenceModel": (
        lambda k: small_model(
            lambda d, key: layers.GateLoop(d, num_heads=2, key=key), k, input_dim=5
        ),
        5,
        "input_dim",
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_input_errors(name, getkey):
    """A batch, a wrong width or an empty sequence is a ValueError naming the expected shape
    and the shape received, before any work (LRU and S5 used to run a batch axis as time)."""
    make, width, label = LAYERS[name]
    layer = make(getkey())
    for shape in [(2, 10, width), (10, width + 1), (width,)]:
        with pytest.raises(ValueError, match=rf"expected \(L, {label}\).*{shape}.*jax.vmap"):
            layer(jnp.ones(shape))
    with pytest.raises(ValueError, match="L >= 1"):
        layer(jnp.ones((0, width)))


def test_layer_constructor_and_step_scale_errors(getkey):
    for cls in (layers.GateLoop, layers.LinearAttention):
        for bad in (0, -2, 1.5):
            with pytest.raises(ValueError, match="`num_heads`"):
                cls(8, num_heads=bad, key=getkey())
    tokens = small_model(lambda d, key: layers.LRU(d, 4, key=key), getkey(), num_tokens=10)
    with pytest.raises(ValueError, match=r"tokens.*jax\.vmap"):
        tokens(jnp.zeros((2, 7), jnp.int32))
    with pytest.raises(ValueError, match="L >= 1"):
        tokens(jnp.zeros((0,), jnp.int32))
    s5 = layers.S5(8, 4, key=getkey())
    x = jax.random.normal(getkey(), (10, 8))
    for bad in (-jnp.ones(10), jnp.ones(10).at[3].set(jnp.nan)):
        with pytest.raises(ValueError, match="`step_scale`"):
            s5(x, step_scale=bad)
    with pytest.raises(ValueError, match="`step_scale`"):
        s5(x, step_scale=jnp.ones(9))
    # traced, a negative step cannot be refused: it poisons its output instead of growing
    scale = jnp.ones(10).at[4].set(-1.0)
    out = jax.jit(lambda s: s5(x, step_scale=s))(scale)
    assert bool(jnp.all(jnp.isnan(out[4]))) and bool(jnp.all(jnp.isfinite(out[:4])))
    # zero is allowed: the state is held, the input not added
    np.testing.assert_allclose(
        s5(x, step_scale=jnp.ones(10).at[0].set(0.0))[0], s5.d * x[0], rtol=1e-6
    )


# ------------------------------------------------------------------------- property tests

# A small fixed set of shapes, so that hypothesis compiles few programs (the suite is
# compile-bound): one program per (shape, dtype) computes every solver in both directions.
SHAPES = [(13,), (9, 2, 3)]
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _all_solvers(a, b, h0, chunk_size):
    return {
        (method, reverse): linear_recurrence(
            a, b, h0, method=method, reverse=reverse, chunk_size=chunk_size
        )
        for method in SOLVERS
        for reverse in (False, True)
    }


_ALL_SOLVERS = jax.jit(_all_solvers, static_argnums=3)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    dtype=st.sampled_from(DTYPES),
    a_scale=st.sampled_from([1e-6, 1e-2, 0.9, 1.0, 1.5]),
    b_scale=st.sampled_from([1e-6, 1.0, 1e4]),
    seed=st.integers(0, 2**31 - 1),
)
def test_linear_recurrence_properties(shape, dtype, a_scale, b_scale, seed):
    """Against a float64 Python loop on the same (rounded) values: every solver, both
    directions, is accurate to the input dtype's rounding plus float32 (float64) accumulation,
    so all solvers agree; finite wherever the exact result is representable; infinite, not
    finite garbage, where it overflows the output dtype."""
    with jax.enable_x64(True):
        _check_properties(shape, dtype, a_scale, b_scale, seed)


def _check_properties(shape, dtype, a_scale, b_scale, seed):
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], size=shape)
    a = jnp.asarray(sign * a_scale * rng.uniform(0.5, 1.0, size=shape), dtype)
    b = jnp.asarray(b_scale * rng.normal(size=shape), dtype)
    h0 = jnp.asarray(b_scale * rng.normal(size=shape[1:]), dtype)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in (a, b, h0))
    got = _ALL_SOLVERS(a, b, h0, 4)
    info = jnp.finfo(dtype)
    work_eps = float(jnp.finfo(jnp.float64 if dtype == "float64" else jnp.float32).eps)
    for (method, reverse), h in got.items():
        assert h.dtype == jnp.dtype(dtype)
        ref = loop_reference(a, b, h0, reverse)
        # the error a sum of up to L + 1 terms can make in the working precision
        size = loop_reference(jnp.abs(a), jnp.abs(b), jnp.abs(h0), reverse)
        tol = 4 * shape[0] * work_eps * size + float(info.eps) * np.abs(ref) + 2 * float(info.tiny)
        h = np.asarray(h.astype(jnp.float64))
        fits = np.abs(ref) < 0.5 * float(info.max)
        assert np.all(np.isfinite(h[fits])), (method, reverse)
        np.testing.assert_array_less(np.abs(h - ref)[fits], tol[fits] + 1e-300)
        overflows = np.abs(ref) > 2.0 * float(info.max)
        assert not np.any(np.isfinite(h[overflows])), (method, reverse)
