"""DEER, quasi-DEER and ELK against the sequential solution; gradients against backprop
through `lax.scan` and finite differences; the cells' closed-form Jacobian diagonals."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import seqmodels as sm
from seqmodels._elk import damped_step
from tests.gradcheck import check_grads

CELLS = [sm.cells.ElmanCell, sm.cells.GRUCell, sm.cells.LSTMCell, sm.cells.NeuralODECell]


def _max_dev(a, b, relative=False):
    if relative:
        return max(
            float(jnp.max(jnp.abs(u - v) / (1.0 + jnp.abs(v))))
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
        )
    return max(
        float(jnp.max(jnp.abs(u - v)))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def _problem(cell_type, hidden, length, dtype, seed=0, inputs=3):
    k1, k2 = jax.random.split(jax.random.key(seed))
    cell = cell_type(inputs, hidden, key=k1, dtype=dtype)
    xs = jax.random.normal(k2, (length, inputs), dtype)
    return cell, xs


@pytest.mark.parametrize("cell_type", [sm.cells.ElmanCell, sm.cells.GRUCell, sm.cells.LSTMCell])
def test_diag_jacobian_is_the_jacobian_diagonal(cell_type, x64):
    cell, xs = _problem(cell_type, 8, 1, jnp.float64)
    state = jax.tree.map(
        lambda v: jax.random.normal(jax.random.key(5), v.shape, v.dtype), cell.init_state()
    )
    flat, unravel = ravel_pytree(state)
    jac = jax.jacfwd(lambda v: ravel_pytree(cell(unravel(v), xs[0]))[0])(flat)
    diag = ravel_pytree(cell.diag_jacobian(state, xs[0]))[0]
    np.testing.assert_allclose(diag, jnp.diagonal(jac), atol=1e-14)


@pytest.mark.parametrize(
    ("cell_type", "hidden", "length"),
    [(sm.cells.GRUCell, 32, 2000), (sm.cells.ElmanCell, 16, 10000)],
)
def test_newton_matches_sequential_float64(cell_type, hidden, length, x64):
    cell, xs = _problem(cell_type, hidden, length, jnp.float64)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    sol = jax.jit(lambda c, x: sm.deer_solve(c, c.init_state(), x))(cell, xs)
    assert bool(sol.converged)
    assert int(sol.num_iters) <= 8
    assert _max_dev(sol.states, ref) < 1e-8


@pytest.mark.parametrize("cell_type", CELLS)
def test_quasi_matches_sequential_float64(cell_type, x64):
    cell, xs = _problem(cell_type, 16, 2000, jnp.float64)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    sol = jax.jit(lambda c, x: sm.deer_solve(c, c.init_state(), x, method="quasi"))(cell, xs)
    assert bool(sol.converged)
    assert _max_dev(sol.states, ref) < 1e-6


@pytest.mark.parametrize(
    ("cell_type", "method"),
    [
        (sm.cells.GRUCell, "newton"),
        (sm.cells.GRUCell, "quasi"),
        (sm.cells.LSTMCell, "newton"),
        (sm.cells.ElmanCell, "quasi"),
        (sm.cells.NeuralODECell, "newton"),
    ],
)
def test_float32_matches_sequential(cell_type, method):
    cell, xs = _problem(cell_type, 16, 1000, jnp.float32)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    sol = jax.jit(lambda c, x: sm.deer_solve(c, c.init_state(), x, method=method))(cell, xs)
    assert bool(sol.converged)
    # the neural ODE's states grow to ~200, where a float32 ulp is 1.5e-5: compare relatively
    assert _max_dev(sol.states, ref, relative=True) < 1e-4


@pytest.mark.parametrize("method", ["newton", "quasi"])
@pytest.mark.parametrize("cell_type", [sm.cells.GRUCell, sm.cells.LSTMCell])
def test_gradients_match_backprop_through_the_scan(cell_type, method, x64):
    cell, xs = _problem(cell_type, 12, 300, jnp.float64)
    h0 = jax.tree.map(lambda v: v + 0.1, cell.init_state())
    weights = jax.random.normal(jax.random.key(7), (300, 12), jnp.float64)

    def loss(solve, cell, h0, xs):
        states = solve(cell, h0, xs)
        first = jax.tree.leaves(states)[0]
        return jnp.sum(weights * jnp.sin(first)) + sum(
            jnp.sum(s[-1] ** 2) for s in jax.tree.leaves(states)
        )

    def deer(c, h, x):
        sol = sm.deer_solve(c, h, x, method=method)
        # the diagnostics are usable under grad (boolean and integer ops on them)
        return jax.tree.map(lambda s: jnp.where(jnp.all(sol.converged), s, jnp.nan), sol.states)

    grads = jax.jit(jax.grad(lambda *a: loss(deer, *a), argnums=(0, 1, 2)))(cell, h0, xs)
    ref = jax.grad(lambda *a: loss(sm.sequential_solve, *a), argnums=(0, 1, 2))(cell, h0, xs)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["newton", "quasi"])
def test_gradient_against_finite_differences(method, x64):
    cell, xs = _problem(sm.cells.ElmanCell, 4, 30, jnp.float64)

    def f(w_hh, h0, xs):
        c = eqx.tree_at(lambda m: m.weight_hh, cell, w_hh)
        return jnp.sum(jnp.cos(sm.deer_solve(c, h0, xs, method=method).states))

    check_grads(f, (cell.weight_hh, jnp.full(4, 0.2), xs), order=1, modes=("rev",), eps=1e-6)


def test_damped_step_is_the_regularised_least_squares_solution(x64):
    """The ELK step against the dense normal equations of
    sum_t ||s_t - a_t s_{t-1} - b_t||^2 + lam ||s_t - y_t||^2."""
    length, size, lam = 7, 3, 0.7
    rng = np.random.default_rng(0)
    b = rng.normal(size=(length, size))
    h0 = rng.normal(size=size)
    guess = rng.normal(size=(length, size))
    for quasi in (False, True):
        a = rng.normal(size=(length, size) if quasi else (length, size, size)) * 0.5
        mats = np.stack([np.diag(v) for v in a]) if quasi else a
        n = length * size
        rows = np.zeros((2 * n, n))
        rhs = np.zeros(2 * n)
        for t in range(length):
            sl = slice(t * size, (t + 1) * size)
            rows[sl, sl] = np.eye(size)
            if t:
                rows[sl, (t - 1) * size : t * size] = -mats[t]
            rhs[sl] = b[t] + (mats[0] @ h0 if t == 0 else 0.0)
            rows[n + t * size : n + (t + 1) * size, sl] = np.sqrt(lam) * np.eye(size)
            rhs[n + t * size : n + (t + 1) * size] = np.sqrt(lam) * guess[t]
        dense = np.linalg.lstsq(rows, rhs, rcond=None)[0].reshape(length, size)
        got = damped_step(
            jnp.asarray(a),
            jnp.asarray(b),
            jnp.asarray(h0),
            jnp.asarray(guess),
            lam,
            quasi,
            "sequential",
        )
        np.testing.assert_allclose(got, dense, atol=1e-12)


@pytest.mark.parametrize("method", ["newton", "quasi"])
def test_damped_solve_converges_to_the_sequential_solution(method, x64):
    cell, xs = _problem(sm.cells.GRUCell, 8, 200, jnp.float64)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    sol = jax.jit(lambda c, x: sm.deer_solve(c, c.init_state(), x, method=method, damping=0.1))(
        cell, xs
    )
    assert bool(sol.converged)
    assert _max_dev(sol.states, ref) < 1e-8


def test_damped_solve_of_one_step():
    """ELK on L = 1 crashed: its smoother's L - 1 gains, an empty array, were extended by
    `zeros_like` of their own (empty) first row."""
    cell, xs = _problem(sm.cells.ElmanCell, 3, 1, jnp.float32)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    for method in ("newton", "quasi"):
        sol = sm.deer_solve(cell, cell.init_state(), xs, method=method, damping=1.0)
        assert bool(sol.converged), method
        assert _max_dev(sol.states, ref) < 1e-5


def test_damped_solve_is_not_cut_at_the_undamped_bound():
    """`max_iter` was capped at L + 1, the bound of undamped Newton, for damped solves too:
    at L = 9 with damping 1, quasi-ELK stopped after 10 unconverged iterations, 0.04 from
    the answer (and `RNN` turned it into NaN); it needs about 40."""
    cell, xs = _problem(sm.cells.ElmanCell, 3, 9, jnp.float32)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    sol = sm.deer_solve(cell, cell.init_state(), xs, method="quasi", damping=1.0)
    assert bool(sol.converged)
    assert int(sol.num_iters) > 10
    assert _max_dev(sol.states, ref) < 1e-4


def test_warm_start_from_the_solution_stops_at_once(x64):
    cell, xs = _problem(sm.cells.GRUCell, 8, 300, jnp.float64)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    cold = sm.deer_solve(cell, cell.init_state(), xs)
    warm = sm.deer_solve(cell, cell.init_state(), xs, init=ref)
    assert int(warm.num_iters) == 1 < int(cold.num_iters)
    assert _max_dev(warm.states, ref) < 1e-12


def test_non_convergence_is_reported():
    cell, xs = _problem(sm.cells.GRUCell, 8, 300, jnp.float32)
    sol = sm.deer_solve(cell, cell.init_state(), xs, method="quasi", max_iter=2)
    assert int(sol.num_iters) == 2
    assert not bool(sol.converged)


def test_overflow_is_returned_not_reset():
    """An exploding recurrence (h' = 3 h + 1 overflows float32 after ~80 steps) returns its
    last iterate as computed, inf and NaN included, with converged=False: the NaN-to-0 reset
    and the clipping are internal to the iteration (they used to be returned as finite
    values)."""

    def step(h, x):
        return 3.0 * h + x

    xs = jnp.ones((200, 2), jnp.float32)
    for method in ("newton", "quasi"):
        sol = sm.deer_solve(step, jnp.zeros(2, jnp.float32), xs, method=method, max_iter=5)
        assert not bool(jnp.any(jnp.isfinite(sol.states[-1])))
        assert not bool(sol.converged)


def test_nan_and_huge_iterates_are_reset_and_the_iteration_recovers():
    """The reset still lets the iteration recover: a NaN / overflowing initial guess is
    sanitised before it is linearised, and the solve converges to the sequential answer."""
    cell, xs = _problem(sm.cells.GRUCell, 4, 50, jnp.float32)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    for bad in (jnp.nan, 1e30):
        sol = sm.deer_solve(cell, cell.init_state(), xs, init=jnp.full((50, 4), bad))
        assert bool(sol.converged)
        assert _max_dev(sol.states, ref) < 1e-5


def test_vmap_over_a_batch_equals_single_calls():
    cell, _ = _problem(sm.cells.GRUCell, 8, 1, jnp.float32)
    xs = jax.random.normal(jax.random.key(3), (4, 400, 3))
    batched = jax.jit(jax.vmap(lambda x: sm.deer_solve(cell, cell.init_state(), x).states))(xs)
    for i in range(4):
        single = sm.deer_solve(cell, cell.init_state(), xs[i]).states
        np.testing.assert_allclose(batched[i], single, atol=1e-5)


def test_plain_function_step_with_closed_over_parameters(x64):
    """A closure (not a module) differentiates through what it captures."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(size=(5, 5)) * 0.3)
    xs = jnp.asarray(rng.normal(size=(100, 5)))

    def loss(w, solve):
        return jnp.sum(solve(lambda h, x: jnp.tanh(w @ h + x), jnp.zeros(5), xs) ** 2)

    g = jax.grad(loss)(w, lambda *a: sm.deer_solve(*a).states)
    ref = jax.grad(loss)(w, sm.sequential_solve)
    np.testing.assert_allclose(g, ref, atol=1e-9)


@pytest.mark.parametrize("solver", ["sequential", "newton", "quasi"])
def test_rnn_layer_solvers_agree(solver):
    cell, xs = _problem(sm.cells.LSTMCell, 8, 300, jnp.float32)
    ref = sm.sequential_solve(cell, cell.init_state(), xs)
    out = sm.RNN(cell, solver=solver)(xs)
    assert _max_dev(out, ref) < 1e-4


def test_bad_input():
    cell, xs = _problem(sm.cells.GRUCell, 4, 10, jnp.float32)
    h0 = cell.init_state()
    with pytest.raises(ValueError, match="method"):
        sm.deer_solve(cell, h0, xs, method="jacobi")
    with pytest.raises(ValueError, match="damping"):
        sm.deer_solve(cell, h0, xs, damping=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        sm.deer_solve(cell, h0, xs, max_iter=0)
    with pytest.raises(ValueError, match="xs"):
        sm.deer_solve(lambda h, x: h + x[0] + x[1][0], h0, (xs, xs[:5]))
    with pytest.raises(TypeError, match="same structure"):
        sm.deer_solve(lambda h, x: h[:2], h0, xs)
    with pytest.raises(TypeError, match="floating"):
        sm.deer_solve(lambda h, x: h, jnp.zeros(4, jnp.int32), xs)
    with pytest.raises(ValueError, match="init"):
        sm.deer_solve(cell, h0, xs, init=jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match="solver"):
        sm.RNN(cell, solver="fast")
    with pytest.raises(ValueError, match="hidden_size"):
        sm.cells.GRUCell(3, 0, key=jax.random.key(0))


@pytest.mark.parametrize("cell_type", CELLS, ids=lambda c: c.__name__)
def test_cells_name_a_wrong_state_or_input_shape(cell_type):
    """A wrong h0 (too short, or batched) or xs (wrong width, or batch-first) is a ValueError
    naming the cell, the argument and both shapes, from every solve (it was a dot_general
    TypeError naming neither)."""
    cell, xs = _problem(cell_type, 4, 6, jnp.float32)
    h0 = cell.init_state()
    bad_h0 = jax.tree.map(lambda h: jnp.zeros((2, 4)), h0)
    solves = [
        sm.sequential_solve,
        lambda *a: sm.deer_solve(*a, method="newton"),
        lambda *a: sm.deer_solve(*a, method="quasi"),
    ]
    for solve in solves:
        with pytest.raises(ValueError, match=rf"{cell_type.__name__}.*h of shape \(4,\).*\(2, 4\)"):
            solve(cell, bad_h0, xs)
        for bad_xs in (jnp.ones((6, 5)), jnp.ones((2, 6, 3))):
            shape = re.escape(str(bad_xs.shape[1:]))
            with pytest.raises(ValueError, match=rf"x of shape \(3,\).*{shape}"):
                solve(cell, h0, bad_xs)
    with pytest.raises(ValueError, match=r"jax\.vmap"):
        sm.RNN(cell)(jnp.ones((2, 6, 3)))
