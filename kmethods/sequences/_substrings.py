"""Substring kernels on sequences: contiguous substrings (the authors' kernel, with an explicit
feature map) and gap-weighted subsequences (Lodhi et al. 2002, by their recursion).

References:
  Baum, Kanagawa & Gretton, "A Kernel Stein Test of Goodness of Fit for Sequential Models",
  ICML 2023, and the authors' code.
  Lodhi, Saunders, Shawe-Taylor, Cristianini & Watkins, "Text Classification using String
  Kernels", JMLR 2002 (the gap-weighted subsequence kernel and its recursion).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from kmethods import _checks
from kmethods.sequences._kernels import Point, SequenceKernel
from kmethods.sequences._misc import float_dtype


class ContiguousSubsequenceKernel(SequenceKernel):
    """Contiguous-subsequence (substring) kernel of the authors' code (Baum et al. 2023).

    For each substring length L in [min_length, min(max_length, |x|)], x has n_x(L) =
    |x| - L + 1 windows; c_x(u) counts the windows equal to u. With m_x the number of such L,
    the feature of x at u (|u| = L) is sqrt(c_x(u) / (n_x(L) m_x)) and

      k(x, y) = sum_L sum_{|u| = L} sqrt(c_x(u) c_y(u) / (n_x(L) m_x n_y(L) m_y)),

    a Bhattacharyya-type inner product of the empirical substring distributions; k(x, x) = 1,
    and k = 0 when either sequence is shorter than `min_length`. The feature map has
    sum_L S^L coordinates, used directly by the Stein kernel when that is small.
    """

    min_length: int = eqx.field(static=True, default=1)
    max_length: int = eqx.field(static=True, default=3)

    def __check_init__(self):
        _checks.positive_int(self.min_length, "min_length")
        _checks.positive_int(self.max_length, "max_length")
        if self.max_length < self.min_length:
            raise ValueError(
                f"`max_length` must be >= `min_length`, got {self.max_length} < {self.min_length}."
            )

    def _orders(self):
        return range(self.min_length, self.max_length + 1)

    def _num_orders(self, length):
        top = jnp.minimum(self.max_length, length)
        return jnp.maximum(top - self.min_length + 1, 0)

    def __call__(self, x: Point, y: Point) -> Float[Array, ""]:
        (a, la), (b, lb) = x, y
        dtype = float_dtype()
        mx, my = self._num_orders(la), self._num_orders(lb)
        total = jnp.zeros((), dtype)
        for order in self._orders():
            # M[i, j] = 1 when the windows of length `order` at i in a and at j in b are equal.
            ma, mb, mab = (
                _window_matches(a, la, a, la, order),
                _window_matches(b, lb, b, lb, order),
                _window_matches(a, la, b, lb, order),
            )
            ca, cb = ma.sum(1).astype(dtype), mb.sum(1).astype(dtype)
            inv_a = jnp.where(ca > 0, 1.0 / jnp.sqrt(jnp.where(ca > 0, ca, 1.0)), 0.0)
            inv_b = jnp.where(cb > 0, 1.0 / jnp.sqrt(jnp.where(cb > 0, cb, 1.0)), 0.0)
            # sum over matching window pairs of (c_a c_b)^(-1/2) = sum_u sqrt(c_a(u) c_b(u)).
            value = inv_a @ mab.astype(dtype) @ inv_b
            na = jnp.maximum(la - order + 1, 0) * mx
            nb = jnp.maximum(lb - order + 1, 0) * my
            norm = (na * nb).astype(dtype)
            total = total + jnp.where(norm > 0, value / jnp.sqrt(jnp.where(norm > 0, norm, 1.0)), 0)
        return total

    def feature_dim(self, num_states, width):
        return int(sum(num_states**order for order in self._orders()))

    def pair_memory(self, width):
        return width * width

    def features(self, seqs, lengths, num_states):
        return jax.vmap(lambda s, ln: self._features_one(s, ln, num_states))(seqs, lengths)

    def _features_one(self, seq, length, num_states):
        dtype = float_dtype()
        w = seq.shape[0]
        m = self._num_orders(length)
        parts = []
        for order in self._orders():
            starts = jnp.arange(w, dtype=jnp.int32)
            valid = starts + order <= length
            idx = jnp.clip(starts[:, None] + jnp.arange(order, dtype=jnp.int32)[None, :], 0, w - 1)
            powers = jnp.asarray([num_states**j for j in range(order)], jnp.int32)
            codes = jnp.where(
                valid, jnp.sum(seq[idx] * powers[None, :], axis=1, dtype=jnp.int32), 0
            )
            norm = (jnp.maximum(length - order + 1, 0) * m).astype(dtype)
            # phi(u) = sqrt(c(u) / (n(L) m)), c(u) the number of windows equal to u.
            counts = jnp.zeros(num_states**order, dtype).at[codes].add(valid.astype(dtype))
            scale = jnp.where(norm > 0, 1.0 / jnp.where(norm > 0, norm, 1.0), 0.0)
            parts.append(jnp.sqrt(counts * scale))
        return jnp.concatenate(parts)


def _window_matches(a, la, b, lb, order):
    """(W_a, W_b) booleans: the length-`order` windows at i in a and j in b are equal, valid."""
    wa, wb = a.shape[0], b.shape[0]
    ia = jnp.arange(wa, dtype=jnp.int32)
    ib = jnp.arange(wb, dtype=jnp.int32)
    match = ((ia + order <= la)[:, None]) & ((ib + order <= lb)[None, :])
    for t in range(order):
        at = a[jnp.clip(ia + t, 0, wa - 1)]
        bt = b[jnp.clip(ib + t, 0, wb - 1)]
        match = match & (at[:, None] == bt[None, :])
    return match


class StringSubsequenceKernel(SequenceKernel):
    """Gap-weighted string-subsequence kernel of Lodhi et al. (2002), of one order n.

    K_n(s, t) = sum_{u in S^n} sum_{i : s[i] = u} sum_{j : t[j] = u} decay^(span(i) + span(j)),
    over index tuples i_1 < ... < i_n (not necessarily contiguous), span(i) = i_n - i_1 + 1.
    It is computed by the recursion of Lodhi et al. (Definition 2): K'_0 = 1,
    K'_i(sa, t) = decay K'_i(s, t) + sum_{j : t_j = a} K'_{i-1}(s, t[:j-1]) decay^(|t| - j + 2),
    K_n(sa, t) = K_n(s, t) + sum_{j : t_j = a} K'_{n-1}(s, t[:j-1]) decay^2, as a `lax.scan`
    over the symbols of s with every prefix of t handled at once (O(n |s| |t|^2) work).
    `normalise=True` (the default, as in Lodhi et al.) returns K_n(s, t) / sqrt(K_n(s, s)
    K_n(t, t)), and 0 when either sequence is shorter than n.
    """

    order: int = eqx.field(static=True, default=2)
    decay: Float[Array, ""] | float = 0.5
    normalise: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _checks.positive_int(self.order, "order")
        if isinstance(self.decay, (str, bytes)) or self.decay is None:
            raise TypeError(f"`decay` must be a number in (0, 1], got {self.decay!r}.")
        if _checks.is_concrete(self.decay):
            d = float(np.asarray(self.decay))
            if not 0.0 < d <= 1.0:
                raise ValueError(f"`decay` must lie in (0, 1], got {self.decay!r}.")

    def pair_memory(self, width):
        return self.order * (width + 1)

    def unnormalised(self, x: Point, y: Point) -> Float[Array, ""]:
        """K_n(x, y) without the normalisation."""
        (s, ls), (t, lt) = x, y
        dtype = float_dtype()
        lam = jnp.asarray(self.decay).astype(dtype)
        wt = t.shape[0]
        j = jnp.arange(wt, dtype=jnp.int32)
        b = jnp.arange(wt + 1, dtype=jnp.int32)
        # D[j, b] = lam^(b - j + 1) for j < b: a match at t_j (0-based) seen from prefix t[:b].
        gap = (b[None, :] - j[:, None] + 1).astype(dtype)
        decay_matrix = jnp.where(j[:, None] < b[None, :], lam**gap, 0.0)
        t_valid = j < lt
        # Rows of K'_i(s[:a], t[:b]) over b in [0, |t|], for i = 0 .. n-1; K'_0 = 1.
        init = jnp.zeros((self.order, wt + 1), dtype).at[0].set(1.0)

        def step(carry, inputs):
            rows, total = carry
            symbol, active = inputs
            match = ((t == symbol) & t_valid & active).astype(dtype)  # (|t|,)
            # sum_{j : t_j = s_a} K'_{i-1}(s[:a], t[:j]) decay^(b - j + 1), for i = 1 .. n-1.
            new = lam * rows[1:] + (match[None, :] * rows[:-1, :wt]) @ decay_matrix
            total = total + lam**2 * jnp.sum(match * rows[-1, :wt])
            rows = jnp.concatenate([rows[:1], new])
            return (rows, total), None

        active = jnp.arange(s.shape[0], dtype=jnp.int32) < ls
        (_, total), _ = lax.scan(step, (init, jnp.zeros((), dtype)), (s, active))
        return total

    def __call__(self, x: Point, y: Point) -> Float[Array, ""]:
        value = self.unnormalised(x, y)
        if not self.normalise:
            return value
        norm = self.unnormalised(x, x) * self.unnormalised(y, y)
        return jnp.where(norm > 0, value / jnp.sqrt(jnp.where(norm > 0, norm, 1.0)), 0.0)

    def gram(self, x, y):
        (xs, xl), (ys, yl) = x, y
        raw = jax.vmap(
            lambda a, la: jax.vmap(lambda b, lb: self.unnormalised((a, la), (b, lb)))(ys, yl)
        )(xs, xl)
        if not self.normalise:
            return raw
        dx = jax.vmap(lambda a, la: self.unnormalised((a, la), (a, la)))(xs, xl)
        dy = jax.vmap(lambda b, lb: self.unnormalised((b, lb), (b, lb)))(ys, yl)
        norm = dx[:, None] * dy[None, :]
        return jnp.where(norm > 0, raw / jnp.sqrt(jnp.where(norm > 0, norm, 1.0)), 0.0)
