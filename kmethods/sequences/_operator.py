"""The Zanella-Stein operator of a model: the neighbours of a sequence and their weights, and
the support of the measures mu_x of a batch.

  (A_p f)(x) = sum_{y in N(x)} kappa(p(y) / p(x)) [f(y) - f(x)],

with a balancing function kappa(t) = t kappa(1/t): Barker's t / (1 + t), computed as
sigmoid(log p(y) - log p(x)), or sqrt(t). Because y in N(x) iff x in N(y), p(x) kappa(p(y)/p(x))
is symmetric in (x, y) and E_p[(A_p f)(x)] = 0 for every f. Only ratios p(y)/p(x) enter, so p
need not be normalised; neighbours with p(y) = 0 get weight 0.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from kmethods.sequences._misc import pad_sequences
from kmethods.sequences._neighbours import Neighbourhood, Neighbours
from kmethods.sequences._support import SteinSupport


def balance(log_ratio: Float[Array, "*s"], sqrt_balance: Bool[Array, ""]) -> Float[Array, "*s"]:
    """kappa(exp(log_ratio)), computed in log space: Barker's sigmoid(log_ratio), or
    exp(log_ratio / 2) where `sqrt_balance` (a traced flag, so both share one compilation)."""
    root = jnp.exp(0.5 * jnp.where(sqrt_balance, log_ratio, 0.0))
    return jnp.where(sqrt_balance, root, jax.nn.sigmoid(log_ratio))


class ZSOperator(eqx.Module):
    """The Zanella-Stein operator A_p of a model, as one pytree for `eqx.filter_jit`.

    `log_prob` is a function (static: one compilation per function) or a bound method of an
    equinox module (its array leaves are traced: new parameter values do not recompile); the
    neighbourhood and `num_states` are static; the balancing function is a traced flag.

    Attributes:
      log_prob: log p(seq, length) up to a constant, on one padded sequence of any width.
      neighbourhood: the `Neighbourhood` N.
      num_states: S, the number of symbols.
      sqrt_balance: True for kappa(t) = sqrt(t), False for Barker's t / (1 + t).
    """

    log_prob: Callable
    neighbourhood: Neighbourhood
    num_states: int = eqx.field(static=True)
    sqrt_balance: Bool[Array, ""]

    def neighbours(self, x: Int[Array, " w1"], length: Int[Array, ""], dtype) -> Neighbours:
        """`Neighbours` of one zero-padded sequence x (W + 1,), without input checks.

        The weights are all NaN when the input is garbage that only the eager checks would
        catch: log p(x) not finite, log p NaN or +inf at a neighbour (-inf is fine: outside the
        support, weight 0), a length outside [0, W] or a token outside [0, num_states). A NaN
        weight makes the Stein kernel, and so the statistic, NaN, which never rejects; dropping
        such a neighbour instead (NaN > -inf is False) gave a finite, wrong statistic.
        """
        seqs, lengths, valid = self.neighbourhood.candidates(x, length, self.num_states)
        log_px = jnp.asarray(self.log_prob(x, length)).astype(dtype)
        log_py = jax.vmap(self.log_prob)(seqs, lengths).astype(dtype)
        possible = valid & (log_py > -jnp.inf)
        log_ratio = jnp.where(possible, log_py - log_px, 0.0)
        weights = jnp.where(possible, balance(log_ratio, self.sqrt_balance), 0.0)
        t = jnp.arange(x.shape[0], dtype=jnp.int32)
        tokens_ok = jnp.all((t >= length) | ((x >= 0) & (x < self.num_states)))
        ok = (
            jnp.isfinite(log_px)
            & ~jnp.any(valid & (jnp.isnan(log_py) | (log_py == jnp.inf)))
            & (length >= 0)
            & (length < x.shape[0])
            & tokens_ok
        )
        weights = jnp.where(ok, weights, jnp.nan)
        return Neighbours(seqs, lengths, weights)

    def support(self, seqs: Int[Array, "n w"], lengths: Int[Array, " n"], dtype) -> SteinSupport:
        """Per sequence, the support [x, y_1, ..., y_N] of mu_x and its coefficients
        [-sum w, w]."""
        x = pad_sequences(seqs, lengths, seqs.shape[1] + 1)
        nb = jax.vmap(lambda s, ln: self.neighbours(s, ln, dtype))(x, lengths)
        points = jnp.concatenate([x[:, None], nb.seqs], axis=1)
        support_lengths = jnp.concatenate([lengths[:, None], nb.lengths], axis=1)
        coef = jnp.concatenate([-jnp.sum(nb.weights, axis=1, keepdims=True), nb.weights], axis=1)
        return SteinSupport(
            points, support_lengths, coef, self.num_states, self.neighbourhood.edited_tail
        )
