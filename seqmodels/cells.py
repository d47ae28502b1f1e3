"""Recurrent cells as step functions `cell(h, x) -> h_next`, for `lax.scan` and `deer_solve`.

Every cell is an equinox module that works on one time step; `seqmodels.RNN` runs a cell over
a sequence with the solver chosen by option (the sequential scan, DEER or quasi-DEER). The
cells with a closed-form Jacobian diagonal (`ElmanCell`, `GRUCell`, `LSTMCell`) expose it as
`diag_jacobian(h, x)`, which quasi-DEER uses instead of forming any Jacobian.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["ElmanCell", "GRUCell", "LSTMCell", "NeuralODECell"]


def _uniform(key, shape, fan, dtype):
    bound = 1.0 / math.sqrt(fan)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def _dtype(dtype):
    return jnp.zeros((), dtype if dtype is not None else jnp.float32).dtype


def _check_sizes(input_size, hidden_size):
    for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _init_params(key, input_size, hidden_size, dtype, gates, *extra):
    """A cell's weights (W_ih, W_hh, b), with `gates` blocks of hidden_size rows each, then one
    parameter per shape in `extra`; all uniform in +-1/sqrt(hidden_size) (PyTorch's
    initialisation), from one key per parameter."""
    _check_sizes(input_size, hidden_size)
    dtype = _dtype(dtype)
    rows = gates * hidden_size
    shapes = ((rows, input_size), (rows, hidden_size), (rows,), *extra)
    keys = jax.random.split(key, len(shapes))
    return tuple(
        _uniform(k, shape, hidden_size, dtype) for k, shape in zip(keys, shapes, strict=True)
    )


def _check_step(cell, x, **states):
    """A ValueError naming the cell and the argument unless every state in `states` has shape
    (hidden_size,) and x has shape (input_size,): one time step per call. (A wrong shape
    otherwise fails in a matrix product, naming neither, or inside `deer_solve`.)"""
    hidden, width = cell.hidden_size, cell.input_size
    got = {**{name: jnp.shape(v) for name, v in states.items()}, "x": jnp.shape(x)}
    want = {**{name: (hidden,) for name in states}, "x": (width,)}
    if got != want:
        expected = ", ".join(f"{n} of shape {s}" for n, s in want.items())
        received = ", ".join(f"{n} of shape {s}" for n, s in got.items())
        raise ValueError(
            f"{type(cell).__name__} expected {expected} (one time step), got {received}; the "
            "state is h0 at the first step and xs holds one x per step along its leading axis "
            "(use jax.vmap over a batch)."
        )


def _sigmoid_grad(s):
    return s * (1.0 - s)


class _WeightedCell(eqx.Module):
    """What the weighted cells share: a bias b of `_num_gates` blocks of hidden_size rows, and a
    zero initial hidden state."""

    _num_gates = 1

    @property
    def hidden_size(self):
        return self.bias.shape[0] // self._num_gates

    @property
    def input_size(self):
        return self.weight_ih.shape[1]

    def init_state(self):
        return jnp.zeros(self.hidden_size, self.bias.dtype)


class ElmanCell(_WeightedCell):
    """Elman (tanh) RNN: h' = tanh(W_hh h + W_ih x + b) (Elman, 1990)."""

    weight_ih: jax.Array  # (H, D)
    weight_hh: jax.Array  # (H, H)
    bias: jax.Array  # (H,)

    def __init__(self, input_size, hidden_size, *, key, dtype=None):
        params = _init_params(key, input_size, hidden_size, dtype, self._num_gates)
        self.weight_ih, self.weight_hh, self.bias = params

    def __call__(
        self, h: Float[Array, " hidden"], x: Float[Array, " input"]
    ) -> Float[Array, " hidden"]:
        _check_step(self, x, h=h)
        return jnp.tanh(self.weight_hh @ h + self.weight_ih @ x + self.bias)

    def diag_jacobian(self, h, x):
        out = self(h, x)
        return (1.0 - out * out) * jnp.diagonal(self.weight_hh)


class GRUCell(_WeightedCell):
    """Gated recurrent unit (Cho et al., 2014), in the cuDNN / PyTorch form:

    r = sigma(W_ir x + W_hr h + b_r), z = sigma(W_iz x + W_hz h + b_z),
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) * n + z * h.
    """

    weight_ih: jax.Array  # (3H, D): rows r, z, n
    weight_hh: jax.Array  # (3H, H)
    bias: jax.Array  # (3H,): b_r, b_z, b_in
    bias_hn: jax.Array  # (H,)
    _num_gates = 3

    def __init__(self, input_size, hidden_size, *, key, dtype=None):
        params = _init_params(key, input_size, hidden_size, dtype, self._num_gates, (hidden_size,))
        self.weight_ih, self.weight_hh, self.bias, self.bias_hn = params

    def _gates(self, h, x):
        _check_step(self, x, h=h)
        size = self.hidden_size
        gi = self.weight_ih @ x + self.bias
        gh = self.weight_hh[: 2 * size] @ h
        r = jax.nn.sigmoid(gi[:size] + gh[:size])
        z = jax.nn.sigmoid(gi[size : 2 * size] + gh[size:])
        hn = self.weight_hh[2 * size :] @ h + self.bias_hn
        n = jnp.tanh(gi[2 * size :] + r * hn)
        return r, z, hn, n

    def __call__(
        self, h: Float[Array, " hidden"], x: Float[Array, " input"]
    ) -> Float[Array, " hidden"]:
        _, z, _, n = self._gates(h, x)
        return (1.0 - z) * n + z * h

    def diag_jacobian(self, h, x):
        size = self.hidden_size
        r, z, hn, n = self._gates(h, x)
        diag_r = jnp.diagonal(self.weight_hh[:size])
        diag_z = jnp.diagonal(self.weight_hh[size : 2 * size])
        diag_n = jnp.diagonal(self.weight_hh[2 * size :])
        dr = _sigmoid_grad(r) * diag_r
        dz = _sigmoid_grad(z) * diag_z
        dn = (1.0 - n * n) * (r * diag_n + hn * dr)
        return (1.0 - z) * dn + z + (h - n) * dz


class LSTMCell(_WeightedCell):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997) with forget gate; state (h, c):

    i, f, g, o = sigma, sigma, tanh, sigma of (W_i x + W_h h + b) in four blocks,
    c' = f * c + i * g, h' = o * tanh(c').
    """

    weight_ih: jax.Array  # (4H, D): rows i, f, g, o
    weight_hh: jax.Array  # (4H, H)
    bias: jax.Array  # (4H,)
    _num_gates = 4

    def __init__(self, input_size, hidden_size, *, key, dtype=None):
        params = _init_params(key, input_size, hidden_size, dtype, self._num_gates)
        self.weight_ih, self.weight_hh, self.bias = params

    def init_state(self):
        zeros = super().init_state()
        return zeros, zeros

    def _gates(self, h, c, x):
        _check_step(self, x, h=h, c=c)
        pre = self.weight_ih @ x + self.weight_hh @ h + self.bias
        i, f, g, o = jnp.split(pre, 4)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c_new = f * c + i * g
        return i, f, g, o, c_new

    def __call__(
        self,
        state: tuple[Float[Array, " hidden"], Float[Array, " hidden"]],
        x: Float[Array, " input"],
    ) -> tuple[Float[Array, " hidden"], Float[Array, " hidden"]]:
        h, c = state
        _, _, _, o, c_new = self._gates(h, c, x)
        return o * jnp.tanh(c_new), c_new

    def diag_jacobian(self, state, x):
        h, c = state
        i, f, g, o, c_new = self._gates(h, c, x)
        blocks = self.weight_hh.reshape(4, self.hidden_size, self.hidden_size)
        diag_i, diag_f, diag_g, diag_o = jnp.diagonal(blocks, 0, 1, 2)
        dc_dh = (
            c * _sigmoid_grad(f) * diag_f
            + g * _sigmoid_grad(i) * diag_i
            + i * (1.0 - g * g) * diag_g
        )
        tanh_c = jnp.tanh(c_new)
        dh_dh = _sigmoid_grad(o) * diag_o * tanh_c + o * (1.0 - tanh_c * tanh_c) * dc_dh
        # the diagonal of the (h, c) -> (h', c') Jacobian: dh'_j/dh_j and dc'_j/dc_j = f_j
        return dh_dh, f


class NeuralODECell(eqx.Module):
    """One fixed step of the classical Runge-Kutta method (RK4) on dh/dt = v(h, x), with the
    vector field v(h, x) = tanh(W_h h + W_x x + b) (an `ElmanCell` used as a field) held
    constant in x over the step (Chen et al., 2018, "Neural Ordinary Differential Equations").
    Its Jacobian diagonal has no short closed form, so quasi-DEER takes it by forward-mode
    products."""

    field: ElmanCell
    dt: float = eqx.field(static=True)

    def __init__(self, input_size, hidden_size, *, key, dt=0.1, dtype=None):
        if not float(dt) > 0:
            raise ValueError(f"`dt` must be > 0, got {dt!r}.")
        self.field = ElmanCell(input_size, hidden_size, key=key, dtype=dtype)
        self.dt = float(dt)

    @property
    def hidden_size(self):
        return self.field.hidden_size

    @property
    def input_size(self):
        return self.field.input_size

    def init_state(self):
        return self.field.init_state()

    def __call__(
        self, h: Float[Array, " hidden"], x: Float[Array, " input"]
    ) -> Float[Array, " hidden"]:
        _check_step(self, x, h=h)
        dt, v = self.dt, self.field
        k1 = v(h, x)
        k2 = v(h + 0.5 * dt * k1, x)
        k3 = v(h + 0.5 * dt * k2, x)
        k4 = v(h + dt * k3, x)
        return h + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
