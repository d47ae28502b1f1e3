"""Markov-chain models over variable-length sequences with a stop probability: the models of
the experiments of Baum, Kanagawa & Gretton (2023).

`MarkovChain` and `SecondOrderMarkovChain` are equinox modules with an exact (normalised)
`log_prob(seq, length)` and a jitted `sample(key, n, width)`; `random_walk_with_memory` and
`random_second_order_chain` build the paper's second-order chains (the authors'
`RandomWalkWithMemory` and `RandomNgramModel`, n = 2). Pass `model.log_prob` to the tests of
`kmethods.sequences`: its arrays are traced, so a new model of the same shapes does not
recompile.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from kmethods import _checks
from kmethods.sequences._misc import float_dtype, pad_sequences

__all__ = [
    "MarkovChain",
    "SecondOrderMarkovChain",
    "random_second_order_chain",
    "random_walk_with_memory",
]


def _as_probabilities(value, name, shape_rank, dtype):
    arr = jnp.asarray(value, dtype)
    if arr.ndim != shape_rank:
        raise ValueError(f"`{name}` must have {shape_rank} dimension(s), got shape {arr.shape}.")
    if _checks.is_concrete(arr):
        a = np.asarray(arr)
        if not np.all(np.isfinite(a)) or (a < 0).any():
            raise ValueError(f"`{name}` must hold finite non-negative probabilities.")
        if not np.allclose(a.sum(-1), 1.0, atol=1e-5):
            raise ValueError(f"`{name}` must sum to 1 along its last axis.")
    return arr


def _check_stop(stop_probability, dtype):
    q = jnp.asarray(stop_probability, dtype)
    if q.ndim != 0:
        raise ValueError(f"`stop_probability` must be a scalar, got shape {q.shape}.")
    if _checks.is_concrete(q) and not 0.0 < float(q) < 1.0:
        raise ValueError(f"`stop_probability` must lie in (0, 1), got {float(q)}.")
    return q


def _check_max_length(max_length):
    if max_length is None:
        return None
    return _checks.positive_int(max_length, "max_length")


def _init_chain(chain, tables, stop_probability, max_length):
    """Sets a chain's probability tables ({name: value}, of ranks 1, 2, ... in that order, each
    of shape (S,) * rank with S read from the first), its stop probability and length cap."""
    dtype = float_dtype()
    arrays = {
        name: _as_probabilities(value, name, rank, dtype)
        for rank, (name, value) in enumerate(tables.items(), 1)
    }
    s = arrays["initial"].shape[0]
    for rank, (name, arr) in enumerate(arrays.items(), 1):
        setattr(chain, name, arr)
        if arr.shape != (s,) * rank:
            dims = ", ".join([str(s)] * rank)
            raise ValueError(f"`{name}` must have shape ({dims}), got {arr.shape}.")
    chain.stop_probability = _check_stop(stop_probability, dtype)
    chain.max_length = _check_max_length(max_length)


def _length_log_prob(length, q, max_length):
    """log P(length) for length - 1 ~ Geometric(q), conditioned on length <= max_length."""
    dtype = q.dtype
    log_continue = jnp.log1p(-q)
    lp = jnp.log(q) + (length - 1).astype(dtype) * log_continue
    if max_length is not None:
        # log(1 - (1 - q)^max_length), the probability of length <= max_length.
        lp = lp - jnp.log(-jnp.expm1(max_length * log_continue))
    inside = length >= 1
    if max_length is not None:
        inside = inside & (length <= max_length)
    return jnp.where(inside, lp, -jnp.inf)


def _sample_lengths(u, width, q, max_length):
    """Lengths from uniforms u (n,): geometric lengths >= 1, conditioned on <= max_length."""
    if max_length is not None:
        if width < max_length:
            raise ValueError(
                f"`width` must be >= the model's max_length = {max_length}, got {width}."
            )
        ell = jnp.arange(max_length, dtype=jnp.int32)
        # P(length <= l) / P(length <= max_length) for l = 1 .. max_length.
        cdf = jnp.expm1((ell + 1).astype(q.dtype) * jnp.log1p(-q))
        cdf = cdf / jnp.expm1(max_length * jnp.log1p(-q))
        return _inverse_cdf(jnp.broadcast_to(cdf, (u.shape[0], max_length)), u) + 1
    u = jnp.maximum(1.0 - u, jnp.finfo(q.dtype).tiny)  # in (0, 1]
    ell = 1 + jnp.floor(jnp.log(u) / jnp.log1p(-q))
    # Lengths past the width are truncated to it (a tail of probability (1 - q)^width).
    return jnp.minimum(ell, width).astype(jnp.int32)


def _sample_check(n, width):
    n = _checks.positive_int(n, "n")
    width = _checks.positive_int(width, "width")
    return n, width


def _inverse_cdf(cdf, u):
    """The index i with cdf[i - 1] <= u < cdf[i], rows of `cdf` (..., S) against u (...)."""
    index = jnp.sum(cdf < u[..., None], axis=-1, dtype=jnp.int32)
    return jnp.minimum(index, cdf.shape[-1] - 1)


def _safe_log(p):
    return jnp.where(p > 0, jnp.log(jnp.where(p > 0, p, 1.0)), -jnp.inf)


class _ChainWithStops(eqx.Module):
    """What the Markov chains share: a constant stop probability (geometric lengths >= 1,
    optionally conditioned on l <= max_length), `log_prob` and `sample` around the symbol
    path of each chain's own order. Subclasses declare their other tables as fields and define
    `_order`, `_path_log_prob` and `_draw_path`."""

    _order: eqx.AbstractClassVar[int]
    initial: jax.Array
    stop_probability: jax.Array
    max_length: int | None = eqx.field(static=True)

    @property
    def num_states(self) -> int:
        return self.initial.shape[0]

    def _path_log_prob(self, x, t, length):
        """log p(x_1..x_length) of the symbols alone; x is zero past the length, t = arange."""
        raise NotImplementedError

    def _draw_path(self, u, n):
        """(max(width, order), n) symbols from uniforms u of that shape, by inverse CDFs."""
        raise NotImplementedError

    def log_prob(self, seq: Int[Array, " w"], length: int | Int[Array, ""]) -> Float[Array, ""]:
        """log p(seq[:length]), exact (normalised); -inf outside the support."""
        seq = jnp.asarray(seq).astype(jnp.int32)
        length = jnp.asarray(length).astype(jnp.int32)
        seq = jnp.pad(seq, (0, max(0, self._order + 1 - seq.shape[0])))
        t = jnp.arange(seq.shape[0], dtype=jnp.int32)
        x = jnp.where(t < length, seq, 0)
        lp = self._path_log_prob(x, t, length)
        return lp + _length_log_prob(length, self.stop_probability, self.max_length)

    @eqx.filter_jit
    def sample(
        self, key: PRNGKeyArray, n: int, width: int
    ) -> tuple[Int[Array, "n width"], Int[Array, " n"]]:
        """n sequences, padded to `width`: (seqs (n, width) int32, lengths (n,) int32).

        Jitted (n and width static); the draw is exact for the model, see the class docstring.
        """
        n, width = _sample_check(n, width)
        # All the randomness is one draw up front; the scan only inverts CDFs (random draws
        # inside a scan compile slowly on CPU).
        u = jax.random.uniform(key, (max(width, self._order) + 1, n), self.stop_probability.dtype)
        lengths = _sample_lengths(u[-1], width, self.stop_probability, self.max_length)
        seqs = self._draw_path(u[:-1], n)[:width].T
        return pad_sequences(seqs, lengths, width), lengths

    def _first(self, u0, n):
        return _inverse_cdf(jnp.broadcast_to(jnp.cumsum(self.initial), (n, self.num_states)), u0)


class MarkovChain(_ChainWithStops):
    """First-order Markov chain over S symbols with a constant stop probability.

    p(x_1..x_l) = initial[x_1] prod_{t >= 2} transition[x_{t-1}, x_t] * P(l), with
    l - 1 ~ Geometric(stop_probability) (mean length 1 / stop_probability), lengths >= 1; with
    `max_length` the distribution is conditioned on l <= max_length and `log_prob` is exact
    (normalised) including that truncation. Without it, `sample` cuts sequences longer than its
    `width` to `width` (a tail of probability (1 - q)^width that `log_prob` does not know).

    Attributes:
      initial: (S,) distribution of the first symbol.
      transition: (S, S) row-stochastic matrix.
      stop_probability: q in (0, 1), the probability of stopping after each symbol.
      max_length: optional cap on the length (static).
    """

    _order = 1
    transition: jax.Array

    def __init__(
        self,
        initial: Float[Array, " S"],
        transition: Float[Array, "S S"],
        stop_probability: float | Float[Array, ""],
        *,
        max_length: int | None = None,
    ):
        tables = {"initial": initial, "transition": transition}
        _init_chain(self, tables, stop_probability, max_length)

    def _path_log_prob(self, x, t, length):
        steps = _safe_log(self.transition)[x[:-1], x[1:]]
        return _safe_log(self.initial)[x[0]] + jnp.sum(jnp.where(t[1:] < length, steps, 0.0))

    def _draw_path(self, u, n):
        cdf = jnp.cumsum(self.transition, axis=-1)

        def step(prev, u_t):
            nxt = _inverse_cdf(cdf[prev], u_t)
            return nxt, nxt

        first = self._first(u[0], n)
        _, rest = lax.scan(step, first, u[1:])
        return jnp.concatenate([first[None], rest])


class SecondOrderMarkovChain(_ChainWithStops):
    """Second-order Markov chain over S symbols with a constant stop probability.

    p(x_1..x_l) = initial[x_1] second[x_1, x_2] prod_{t >= 3} transition[x_{t-2}, x_{t-1}, x_t]
    * P(l), with P(l) as in `MarkovChain` (geometric lengths >= 1, optionally conditioned on
    l <= max_length, exact). This is the n-gram model (n = 2) of the authors' code, with the
    start context written out as `initial` and `second`.

    Attributes:
      initial: (S,). second: (S, S), x_2 given x_1. transition: (S, S, S), x_t given
        (x_{t-2}, x_{t-1}). stop_probability: q in (0, 1). max_length: optional cap (static).
    """

    _order = 2
    second: jax.Array
    transition: jax.Array

    def __init__(
        self,
        initial: Float[Array, " S"],
        second: Float[Array, "S S"],
        transition: Float[Array, "S S S"],
        stop_probability: float | Float[Array, ""],
        *,
        max_length: int | None = None,
    ):
        tables = {"initial": initial, "second": second, "transition": transition}
        _init_chain(self, tables, stop_probability, max_length)

    def _path_log_prob(self, x, t, length):
        lp = _safe_log(self.initial)[x[0]]
        lp = lp + jnp.where(length >= 2, _safe_log(self.second)[x[0], x[1]], 0.0)
        steps = _safe_log(self.transition)[x[:-2], x[1:-1], x[2:]]
        return lp + jnp.sum(jnp.where(t[2:] < length, steps, 0.0))

    def _draw_path(self, u, n):
        cdf = jnp.cumsum(self.transition, axis=-1)

        def step(prev, u_t):
            nxt = _inverse_cdf(cdf[prev[0], prev[1]], u_t)
            return (prev[1], nxt), nxt

        first = self._first(u[0], n)
        second = _inverse_cdf(jnp.cumsum(self.second, axis=-1)[first], u[1])
        _, rest = lax.scan(step, (first, second), u[2:])
        return jnp.concatenate([first[None], second[None], rest])


def _check_floor(floor):
    if isinstance(floor, bool) or not isinstance(floor, (int, float, np.floating)):
        raise TypeError(f"`floor` must be a number in [0, 1), got {floor!r}.")
    if not 0.0 <= floor < 1.0:
        raise ValueError(f"`floor` must lie in [0, 1), got {floor}.")


def _floor_rows(p, floor):
    """max(p, floor) renormalised along the last axis: every transition stays possible
    (`ensure_positive_density` of the authors' code)."""
    if isinstance(p, np.ndarray):
        p = np.maximum(p, floor)
        return p / p.sum(axis=-1, keepdims=True)
    p = jnp.maximum(p, floor)
    return p / jnp.sum(p, axis=-1, keepdims=True)


def random_walk_with_memory(
    num_states: int = 10,
    *,
    mean_length: float = 8.0,
    max_length: int | None = None,
    memory: float = 0.95,
    floor: float = 1e-3,
) -> SecondOrderMarkovChain:
    """The paper's random walk with memory on a cycle of S symbols (a second-order chain).

    The walk starts uniformly and steps to x - 1 or x + 1 (mod S) with probability 1/2 each,
    except that after an upward step (x_{t-2} = i, x_{t-1} = i + 1) it continues upward to
    i + 2 with probability `memory` and returns to i otherwise. Every probability is floored at
    `floor` and renormalised, and the stop probability is 1 / mean_length, as in the authors'
    `RandomWalkWithMemory` (their experiment: S = 10, mean length 8, memory 0.95 against
    0.05).

    Args:
      num_states: S >= 3, the number of symbols on the cycle.
      mean_length: the mean length (> 1); the stop probability is 1 / mean_length.
      max_length: optional cap on the length (the model is conditioned on it).
      memory: in [0, 1], the probability of a second upward step after an upward step.
      floor: in [0, 1), the floor of every transition probability before renormalising.

    Returns:
      A `SecondOrderMarkovChain`.
    """
    num_states = _checks.positive_int(num_states, "num_states", minimum=3)
    _check_mean_length(mean_length)
    _check_floor(floor)
    if isinstance(memory, bool) or not isinstance(memory, (int, float, np.floating)):
        raise TypeError(f"`memory` must be a number in [0, 1], got {memory!r}.")
    if not 0.0 <= memory <= 1.0:
        raise ValueError(f"`memory` must lie in [0, 1], got {memory}.")
    # Built in NumPy: a constructor of constants, no compilation.
    eye = np.eye(num_states)
    walk = 0.5 * (np.roll(eye, -1, axis=0) + np.roll(eye, 1, axis=0))
    transition = np.repeat(walk[None], num_states, axis=0)
    for i in range(num_states):
        up = (i + 1) % num_states
        transition[i, up] = (1.0 - memory) * eye[i] + memory * eye[(i + 2) % num_states]
    return SecondOrderMarkovChain(
        np.full(num_states, 1.0 / num_states),
        _floor_rows(walk, floor),
        _floor_rows(transition, floor),
        1.0 / mean_length,
        max_length=max_length,
    )


def _check_mean_length(mean_length):
    if isinstance(mean_length, bool) or not isinstance(mean_length, (int, float, np.floating)):
        raise TypeError(f"`mean_length` must be a number > 1, got {mean_length!r}.")
    if not mean_length > 1.0:
        raise ValueError(f"`mean_length` must be > 1, got {mean_length}.")


def random_second_order_chain(
    key: PRNGKeyArray,
    num_states: int = 10,
    *,
    mean_length: float = 8.0,
    concentration: float = 1.0,
    floor: float = 1e-3,
    max_length: int | None = None,
) -> SecondOrderMarkovChain:
    """A random second-order chain: every row Dirichlet(concentration), floored at `floor` and
    renormalised, stop probability 1 / mean_length (the authors' `RandomNgramModel`, n = 2,
    which uses concentration 1). Dirichlet(1) rows are normalised exponential draws (uniform on
    the simplex), which spares compiling the gamma sampler.

    Args:
      key: PRNG key of the Dirichlet draws.
      num_states: S, the number of symbols.
      mean_length: the mean length (> 1); the stop probability is 1 / mean_length.
      concentration: the Dirichlet concentration (> 0) of every row.
      floor: in [0, 1), the floor of every transition probability before renormalising.
      max_length: optional cap on the length (the model is conditioned on it).

    Returns:
      A `SecondOrderMarkovChain`.
    """
    num_states = _checks.positive_int(num_states, "num_states")
    _check_mean_length(mean_length)
    _check_floor(floor)
    if isinstance(concentration, (str, bytes, bool)) or concentration is None:
        raise TypeError(f"`concentration` must be a positive number, got {concentration!r}.")
    _checks.check_positive(concentration, "concentration")
    dtype = float_dtype()
    shape = (1 + num_states + num_states**2, num_states)
    if isinstance(concentration, (int, float)) and concentration == 1:
        draws = jax.random.exponential(key, shape, dtype)
    else:
        draws = jax.random.gamma(key, jnp.asarray(concentration, dtype), shape, dtype)
    rows = _floor_rows(draws / jnp.sum(draws, axis=-1, keepdims=True), floor)
    return SecondOrderMarkovChain(
        rows[0],
        rows[1 : 1 + num_states],
        rows[1 + num_states :].reshape((num_states,) * 3),
        1.0 / mean_length,
        max_length=max_length,
    )
