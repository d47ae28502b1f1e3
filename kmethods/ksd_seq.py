"""Kernel Stein discrepancy and goodness-of-fit test for variable-length sequences.

The model p is a distribution over finite sequences x = (x_1, ..., x_l) of tokens in
{0, ..., S - 1} whose length l varies, known only up to normalisation through
`log_prob(seq, length)`. Following Baum, Kanagawa & Gretton (2023), the Stein operator is the
Zanella-Stein (ZS) operator of a symmetric neighbourhood structure N:

  (A_p f)(x) = sum_{y in N(x)} kappa(p(y) / p(x)) [f(y) - f(x)],

with a balancing function kappa(t) = t kappa(1/t): Barker's t / (1 + t) (`balance="barker"`,
computed as sigmoid(log p(y) - log p(x))) or sqrt(t) (`balance="sqrt"`). Because y in N(x) iff
x in N(y), p(x) kappa(p(y)/p(x)) is symmetric in (x, y) and E_p[(A_p f)(x)] = 0 for every f.
Only ratios p(y)/p(x) enter, so p need not be normalised; neighbours with p(y) = 0 get weight 0.

Neighbourhoods (the edits are those of the authors' code, indices counted from the end):

- `"zs"` (the paper's ZS_J, J = `window`): substitute a symbol at one of the last J positions,
  insert a symbol in one of the last J gaps (gap 0 is after the last symbol, gap k before the
  k-th symbol from the end), or delete one of the last J symbols. Inserting at gap k and
  deleting the k-th symbol from the end undo each other, so N is symmetric for every J.
- `"zs_inf"` (ZS_inf): the same edits at every position (`window` is ignored).
- `"substitution"` (ZS'): substitutions only, at the last `window` positions (all positions
  when `window=None`). It never changes the length, so it cannot see the length distribution.

N(x) is a set: edits that give the same sequence (inserting a symbol next to an equal one,
deleting one of two equal neighbours, substituting a symbol by itself) count once. Every
neighbourhood is enumerated as a fixed-size array with a validity mask (`Neighbours`), so
everything is jittable and vmappable.

Padding convention: a batch of sequences is an integer array `seqs` of shape (n, W) plus
`lengths` of shape (n,) in [0, W]; positions >= length are padding and are ignored (set to 0
internally). Insertions need one more slot, so neighbours are held at width W + 1 and
`log_prob` is called on arrays of width W + 1 (it must accept any padded width >= length).

Stein kernel: with the signed measure mu_x = sum_y w_y (delta_y - delta_x), w_y = kappa(...),

  h(x, x') = <mu_x, k mu_x'> = sum_y sum_y' w_y w'_y' [k(y, y') - k(y, x') - k(x, y') + k(x, x')],

computed as c_x^T K(Z_x, Z_x') c_x' over the support Z_x = [x, y_1, ..., y_N] with coefficients
c_x = [-sum_y w_y, w_1, ..., w_N], precomputed once per sequence. Kernels with a finite feature
map (contiguous substrings, lengths) collapse it to <psi_x, psi_x'>, psi_x = sum_a c_a phi(z_a),
one vector per sequence; the Hamming kernel with ZS_J uses that every neighbour keeps
x[:l - J], so only J + 1 trailing positions are compared per pair of neighbours; sums and
positive multiples of kernels are handled term by term (h is linear in k). Pairwise sums go
through `kmethods.pairwise` in row blocks: memory O(block * n * (N + 1)^2), never n x n
kernel blocks of all neighbours at once.

KSD^2 = E_{x, x' ~ q} h(x, x'): the U-statistic 1/(n(n-1)) sum_{i != j} h(x_i, x_j) or the
V-statistic 1/n^2 sum_{i, j} h(x_i, x_j), calibrated by the multinomial (Liu et al. 2016) or
wild (Chwialkowski et al. 2016) bootstrap as in `kmethods.ksd`.

Also here: sequence kernels (the paper's `HammingKernel`, `ContiguousSubsequenceKernel` and
`StringSubsequenceKernel`; `LengthKernel`, and `k1 + k2`, `w * k`) and Markov-chain models with
a stop probability (`MarkovChain`, `SecondOrderMarkovChain`, `random_walk_with_memory`,
`random_second_order_chain`), the models of the paper's experiments.

References:
  Baum, Kanagawa & Gretton, "A Kernel Stein Test of Goodness of Fit for Sequential Models",
  ICML 2023 (arXiv:2210.10741), and the authors' code (ZanellaSteinOperator, the action sets,
  the kernels and the n-gram models followed here).
  Zanella, "Informed Proposals for Local MCMC in Discrete Spaces", JASA 2020 (balancing
  functions).
  Lodhi, Saunders, Shawe-Taylor, Cristianini & Watkins, "Text Classification using String
  Kernels", JMLR 2002 (the gap-weighted subsequence kernel and its recursion).
  Liu, Lee & Jordan, ICML 2016; Chwialkowski, Strathmann & Gretton, ICML 2016 (bootstraps).
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from kmethods import _checks
from kmethods.calibration import stein_bootstrap_columns, stein_bootstrap_result
from kmethods.pairwise import gram_matvec, map_row_blocks

__all__ = [
    "BALANCES",
    "DEFAULT_WINDOW",
    "NEIGHBOURHOODS",
    "ContiguousSubsequenceKernel",
    "HammingKernel",
    "LengthKernel",
    "MarkovChain",
    "Neighbours",
    "ScaledSequenceKernel",
    "SecondOrderMarkovChain",
    "SequenceKernel",
    "StringSubsequenceKernel",
    "SumSequenceKernel",
    "ksd2_seq",
    "ksd_seq_test",
    "num_neighbours",
    "random_second_order_chain",
    "random_walk_with_memory",
    "zs_neighbours",
    "zs_stein_matvec",
]

NEIGHBOURHOODS = ("zs", "zs_inf", "substitution")
"""ZS_J (edits at the last `window` positions), ZS_inf (all positions), ZS' (substitutions)."""

BALANCES = ("barker", "sqrt")
"""Balancing functions kappa(t): Barker t / (1 + t) and sqrt(t)."""

DEFAULT_WINDOW = 3
"""J of ZS_J by default: edits at the last 3 positions (ZS_3, one of the operators compared in
the paper and the authors' code)."""

# Entries of one (block, ...) slab of the Stein-kernel computation (8 MiB in float32).
_BLOCK_ELEMENTS = 2**21
# Kernels whose explicit feature map has at most this many coordinates use it.
_MAX_FEATURE_DIM = 8192


def _float_dtype():
    return jnp.result_type(float)


# ------------------------------------------------------------------------------ neighbourhoods


class Neighbours(NamedTuple):
    """The ZS neighbourhood of one sequence as fixed-size arrays.

    Attributes:
      seqs: (N, W + 1) neighbour sequences, zero-padded.
      lengths: (N,) their lengths.
      weights: (N,) kappa(p(y) / p(x)); 0 for slots that hold no neighbour (an edit that is
        out of range, repeats another one or gives x itself) and for neighbours with p(y) = 0.
    """

    seqs: jax.Array
    lengths: jax.Array
    weights: jax.Array


def _windows(width, neighbourhood, window):
    """(substitution, insertion, deletion) slots for sequences of padded width `width`."""
    if neighbourhood == "zs_inf" or window is None:
        j = width + 1
    else:
        j = int(window)
    sub = min(j, width)
    if neighbourhood == "substitution":
        return sub, 0, 0
    return sub, min(j, width + 1), min(j, width)


def num_neighbours(width, num_states, *, neighbourhood="zs", window=DEFAULT_WINDOW) -> int:
    """N, the number of neighbour slots per sequence of padded width `width`."""
    width = _checks.positive_int(width, "width")
    num_states, _ = _check_options(num_states, neighbourhood, window, "barker")
    sub, ins, dele = _windows(width, neighbourhood, window)
    return sub * num_states + ins * num_states + dele


def _pad_sequences(seqs, lengths, width):
    """Zero-pads (..., W) to (..., width) and zeroes the padding positions."""
    pad = [(0, 0)] * (seqs.ndim - 1) + [(0, width - seqs.shape[-1])]
    seqs = jnp.pad(seqs.astype(jnp.int32), pad)
    t = jnp.arange(width, dtype=jnp.int32).reshape((1,) * (seqs.ndim - 1) + (width,))
    return jnp.where(t < lengths[..., None], seqs, 0)


def _edit_candidates(x, length, *, num_states, neighbourhood, window):
    """All edit slots of one zero-padded sequence x (W + 1,) of length <= W.

    Returns (seqs (N, W + 1), lengths (N,), valid (N,)); `valid` is False for slots outside the
    sequence and for edits that repeat another slot's result or return x itself.
    """
    w1 = x.shape[0]
    sub, ins, dele = _windows(w1 - 1, neighbourhood, window)
    t = jnp.arange(w1, dtype=jnp.int32)
    symbols = jnp.arange(num_states, dtype=jnp.int32)
    clip = lambda i: jnp.clip(i, 0, w1 - 1)
    parts = []
    if sub:
        k = jnp.arange(sub, dtype=jnp.int32)
        p = clip(length - 1 - k)  # the k-th position from the end
        y = jnp.where(
            t[None, None, :] == p[:, None, None], symbols[None, :, None], x[None, None, :]
        )
        valid = (k < length)[:, None] & (symbols[None, :] != x[p][:, None])
        parts.append((y, jnp.broadcast_to(length, valid.shape), valid))
    if ins:
        k = jnp.arange(ins, dtype=jnp.int32)
        p = clip(length - k)  # gap k from the end: the new symbol lands at position l - k
        shifted = jnp.where(t[None, :] > p[:, None], x[clip(t - 1)][None, :], x[None, :])
        y = jnp.where(
            t[None, None, :] == p[:, None, None], symbols[None, :, None], shifted[:, None]
        )
        # Inserting s before an equal symbol equals inserting it one gap to the right (k - 1).
        repeat = (k >= 1)[:, None] & (x[p][:, None] == symbols[None, :])
        valid = (k <= length)[:, None] & ~repeat
        parts.append((y, jnp.broadcast_to(length + 1, valid.shape), valid))
    if dele:
        k = jnp.arange(dele, dtype=jnp.int32)
        p = clip(length - 1 - k)
        y = jnp.where(t[None, :] >= p[:, None], x[clip(t + 1)][None, :], x[None, :])
        # Deleting one of two equal neighbours: keep only the right one (k - 1).
        repeat = (k >= 1) & (x[p] == x[clip(p + 1)])
        valid = (k < length) & ~repeat
        parts.append(
            (y[:, None], jnp.broadcast_to(length - 1, valid.shape)[:, None], valid[:, None])
        )
    seqs = jnp.concatenate([a.reshape(-1, w1) for a, _, _ in parts])
    lengths = jnp.concatenate([b.reshape(-1) for _, b, _ in parts]).astype(jnp.int32)
    valid = jnp.concatenate([c.reshape(-1) for _, _, c in parts])
    lengths = jnp.where(valid, lengths, 0)
    seqs = jnp.where(t[None, :] < lengths[:, None], seqs, 0)
    return seqs, lengths, valid


def _balance(log_ratio, sqrt_balance):
    """kappa(exp(log_ratio)), computed in log space: Barker's sigmoid(log_ratio), or
    exp(log_ratio / 2) where `sqrt_balance` (a traced flag, so both share one compilation)."""
    root = jnp.exp(0.5 * jnp.where(sqrt_balance, log_ratio, 0.0))
    return jnp.where(sqrt_balance, root, jax.nn.sigmoid(log_ratio))


def _neighbours(x, length, log_prob, *, num_states, neighbourhood, window, balance, dtype):
    """`Neighbours` of one zero-padded sequence x (W + 1,), without input checks.

    The weights are all NaN when the input is garbage that only the eager checks would catch:
    log p(x) not finite, log p NaN or +inf at a neighbour (-inf is fine: outside the support,
    weight 0), a length outside [0, W] or a token outside [0, num_states). A NaN weight makes
    the Stein kernel, and so the statistic, NaN, which never rejects; dropping such a neighbour
    instead (NaN > -inf is False) gave a finite, wrong statistic.
    """
    seqs, lengths, valid = _edit_candidates(
        x, length, num_states=num_states, neighbourhood=neighbourhood, window=window
    )
    log_px = jnp.asarray(log_prob(x, length)).astype(dtype)
    log_py = jax.vmap(log_prob)(seqs, lengths).astype(dtype)
    possible = valid & (log_py > -jnp.inf)
    log_ratio = jnp.where(possible, log_py - log_px, 0.0)
    weights = jnp.where(possible, _balance(log_ratio, balance), 0.0)
    t = jnp.arange(x.shape[0], dtype=jnp.int32)
    tokens_ok = jnp.all((t >= length) | ((x >= 0) & (x < num_states)))
    ok = (
        jnp.isfinite(log_px)
        & ~jnp.any(valid & (jnp.isnan(log_py) | (log_py == jnp.inf)))
        & (length >= 0)
        & (length < x.shape[0])
        & tokens_ok
    )
    weights = jnp.where(ok, weights, jnp.nan)
    return Neighbours(seqs, lengths, weights)


def zs_neighbours(
    seq,
    length,
    log_prob,
    *,
    num_states,
    neighbourhood="zs",
    window=DEFAULT_WINDOW,
    balance="barker",
):
    """The Zanella-Stein neighbourhood of one sequence and its weights kappa(p(y) / p(x)).

    (A_p f)(x) = sum_j weights[j] (f(seqs[j], lengths[j]) - f(x)) (Baum, Kanagawa & Gretton
    2023, Section 3); slots with weight 0 do not contribute.

    Args:
      seq: (W,) integer tokens in [0, num_states); positions >= length are ignored.
      length: scalar in [0, W].
      log_prob: log p(seq, length) up to a constant, on one padded sequence of any width.
      num_states: S, the number of symbols.
      neighbourhood: "zs" (ZS_J), "zs_inf" or "substitution" (ZS'); see the module docstring.
      window: J, the number of trailing positions edited (None: all).
      balance: "barker" (t / (1 + t)) or "sqrt".

    Returns:
      `Neighbours` with arrays of width W + 1 and N = `num_neighbours(W, S, ...)` slots; the
      weights are float32 (float64 in x64 mode) whatever dtype `log_prob` returns. Eagerly, a
      `log_prob` that is not finite at `seq`, or NaN or +inf at a neighbour, raises; under
      `jit`/`vmap` every weight is NaN then.
    """
    num_states, options = _check_options(num_states, neighbourhood, window, balance)
    if not callable(log_prob):
        raise TypeError(f"`log_prob` must be a function, got {type(log_prob).__name__}.")
    seq = _as_integer_array(seq, "seq", 1, "(W,)")
    length = jnp.asarray(length)
    if length.ndim != 0 or not jnp.issubdtype(length.dtype, jnp.integer):
        raise ValueError(f"`length` must be an integer scalar, got {length.dtype} {length.shape}.")
    length = length.astype(jnp.int32)
    if _checks.is_concrete(length) and not 0 <= int(length) <= seq.shape[0]:
        raise ValueError(f"`length` must lie in [0, W] = [0, {seq.shape[0]}], got {int(length)}.")
    if _checks.is_concrete(seq) and _checks.is_concrete(length):
        used = np.asarray(seq)[: int(length)]
        if ((used < 0) | (used >= num_states)).any():
            raise ValueError(
                f"`seq` must hold tokens in [0, num_states) = [0, {num_states}) before its "
                f"length, got {used.tolist()}."
            )
    arrays, static = _split_function(log_prob)
    out = _zs_neighbours(seq, length, arrays, log_prob_static=static, **options)
    if _checks.is_concrete(out.weights) and np.isnan(np.asarray(out.weights)).any():
        _raise_log_prob_problem(seq[None], length[None], arrays, static, options)
    return out


@partial(jax.jit, static_argnames=("log_prob_static", "num_states", "neighbourhood", "window"))
def _zs_neighbours(seq, length, arrays, *, log_prob_static, **options):
    # Jitted: eagerly, the edits and weights ran op by op (~10 s on a CPU for one sequence).
    log_prob = _merge_function(arrays, log_prob_static)
    x = _pad_sequences(seq, length, seq.shape[0] + 1)
    return _neighbours(x, length, log_prob, dtype=_float_dtype(), **options)


# ------------------------------------------------------------------------------------- kernels


class SequenceKernel(eqx.Module):
    """Base class: a kernel on variable-length sequences, k(x, y) on single points.

    A point is a pair `(seq, length)`: an integer array (W,) and its length; positions >=
    length are ignored. `gram(x, y)` takes batches `(seqs (m, W), lengths (m,))`. A kernel with
    a finite explicit feature map also defines `feature_dim` and `features`, which the Stein
    kernel then uses instead of pairwise evaluations.
    """

    def __call__(self, x, y):
        raise NotImplementedError

    def gram(self, x, y):
        """The (m1, m2) block [k(x_i, y_j)] for batches x = (seqs, lengths), y likewise."""
        (xs, xl), (ys, yl) = x, y
        return jax.vmap(lambda a, la: jax.vmap(lambda b, lb: self((a, la), (b, lb)))(ys, yl))(
            xs, xl
        )

    def feature_dim(self, num_states: int, width: int) -> int | None:
        """The dimension of an explicit feature map for sequences of padded width `width`, or
        None when there is none."""
        return None

    def _pair_elements(self, width: int) -> int:
        # Working memory of one pairwise evaluation, to size the blocks of `gram`.
        return 1

    def features(self, seqs, lengths, num_states: int):
        """phi(x) of shape (m, feature_dim) with k(x, y) = <phi(x), phi(y)>."""
        raise NotImplementedError

    def __add__(self, other):
        if not isinstance(other, SequenceKernel):
            return NotImplemented
        mine = self.kernels if isinstance(self, SumSequenceKernel) else (self,)
        theirs = other.kernels if isinstance(other, SumSequenceKernel) else (other,)
        return SumSequenceKernel((*mine, *theirs))

    def __mul__(self, weight):
        if isinstance(weight, SequenceKernel):
            raise TypeError("Products of sequence kernels are not supported; use a sum.")
        return ScaledSequenceKernel(self, weight)

    __rmul__ = __mul__


def _check_sequence_kernel(kernel):
    if not isinstance(kernel, SequenceKernel):
        raise TypeError(
            "`kernel` must be a sequence kernel (e.g. kmethods.ksd_seq.HammingKernel()), "
            f"got {type(kernel).__name__}."
        )


class HammingKernel(SequenceKernel):
    """Exponentiated Hamming kernel on sequences of equal length (Baum et al. 2023).

    k(x, y) = exp(-d_H(x, y) / lengthscale) if |x| = |y|, and 0 across different lengths, with
    d_H the number of positions where x and y differ. `lengthscale=None` (the default) divides by
    the common length max(|x|, 1), as the authors' code does, so that k = exp(-fraction of
    mismatches).
    """

    lengthscale: jax.Array | float | None = None

    def __check_init__(self):
        if self.lengthscale is not None:
            if isinstance(self.lengthscale, (str, bytes)):
                raise TypeError(
                    f"`lengthscale` must be a positive number, got {self.lengthscale!r}."
                )
            _checks.check_positive(self.lengthscale, "lengthscale")

    def _value(self, mismatches, length, same):
        dtype = _float_dtype()
        if self.lengthscale is None:
            scale = jnp.maximum(length, 1).astype(dtype)
        else:
            scale = jnp.asarray(self.lengthscale).astype(dtype)
        return jnp.where(same, jnp.exp(-mismatches.astype(dtype) / scale), 0.0)

    def __call__(self, x, y):
        (a, la), (b, lb) = x, y
        w = min(a.shape[0], b.shape[0])
        t = jnp.arange(w, dtype=jnp.int32)
        mism = jnp.sum((a[:w] != b[:w]) & (t < la), dtype=jnp.int32)
        return self._value(mism, la, la == lb)

    def gram(self, x, y):
        (xs, xl), (ys, yl) = x, y
        w = min(xs.shape[1], ys.shape[1])
        # One fused pass over positions (no (m1, m2, W) temporary), as pairwise.sqdist does.
        mism = jnp.zeros((xs.shape[0], ys.shape[0]), jnp.int32)
        for t in range(w):
            differ = (xs[:, t, None] != ys[None, :, t]) & (t < xl)[:, None]
            mism = mism + differ.astype(jnp.int32)
        same = xl[:, None] == yl[None, :]
        return self._value(mism, jnp.broadcast_to(xl[:, None], same.shape), same)


class LengthKernel(SequenceKernel):
    """Gaussian kernel on the lengths alone, k(x, y) = exp(-(|x| - |y|)^2 / (2 bandwidth^2)).

    Not one of the paper's kernels: the ZS operator sees a change of the length distribution
    only through the insertion and deletion weights, and a kernel that compares contents
    (Hamming, substrings) dilutes that signal; added to one of them (`k1 + k2`) it gives a
    test that sees both.
    """

    bandwidth: jax.Array | float = 2.0

    def __check_init__(self):
        if isinstance(self.bandwidth, (str, bytes)) or self.bandwidth is None:
            raise TypeError(f"`bandwidth` must be a positive number, got {self.bandwidth!r}.")
        _checks.check_positive(self.bandwidth, "bandwidth")

    def _profile(self, d):
        dtype = _float_dtype()
        d = d.astype(dtype)
        return jnp.exp(-(d * d) / (2.0 * jnp.asarray(self.bandwidth).astype(dtype) ** 2))

    def __call__(self, x, y):
        return self._profile(x[1] - y[1])

    def gram(self, x, y):
        return self._profile(x[1][:, None] - y[1][None, :])

    def feature_dim(self, num_states, width):
        return width + 1

    def features(self, seqs, lengths, num_states):
        # Lengths take width + 1 values: phi(l) = row l of a square root of the (width + 1)^2
        # Gram matrix of the lengths (symmetric eigendecomposition, negative rounding clipped).
        values = jnp.arange(seqs.shape[1] + 1, dtype=jnp.int32)
        gram = self._profile(values[:, None] - values[None, :])
        eigval, eigvec = jnp.linalg.eigh(gram)
        root = eigvec * jnp.sqrt(jnp.maximum(eigval, 0.0))[None, :]
        return root[lengths]


class SumSequenceKernel(SequenceKernel):
    """k(x, y) = sum_i k_i(x, y) (also written `k1 + k2`); the Stein kernel is the sum of the
    components' Stein kernels, each computed by its own fastest route."""

    kernels: tuple

    def __check_init__(self):
        if len(self.kernels) == 0 or not all(isinstance(k, SequenceKernel) for k in self.kernels):
            raise TypeError("`kernels` must be a non-empty tuple of sequence kernels.")

    def __call__(self, x, y):
        return sum(k(x, y) for k in self.kernels)

    def gram(self, x, y):
        return sum(k.gram(x, y) for k in self.kernels)


class ScaledSequenceKernel(SequenceKernel):
    """k(x, y) = weight * base(x, y), weight > 0 (also written `weight * base`)."""

    base: SequenceKernel
    weight: jax.Array | float = 1.0

    def __check_init__(self):
        if not isinstance(self.base, SequenceKernel):
            raise TypeError(f"`base` must be a sequence kernel, got {type(self.base).__name__}.")
        if isinstance(self.weight, (str, bytes)) or self.weight is None:
            raise TypeError(f"`weight` must be a positive number, got {self.weight!r}.")
        _checks.check_positive(self.weight, "weight")

    def __call__(self, x, y):
        return self.weight * self.base(x, y)

    def gram(self, x, y):
        return self.weight * self.base.gram(x, y)


def _check_static_int(value, name, minimum):
    return _checks.positive_int(value, name, minimum=minimum)


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
        _check_static_int(self.min_length, "min_length", 1)
        _check_static_int(self.max_length, "max_length", 1)
        if self.max_length < self.min_length:
            raise ValueError(
                f"`max_length` must be >= `min_length`, got {self.max_length} < {self.min_length}."
            )

    def _orders(self):
        return range(self.min_length, self.max_length + 1)

    def _num_orders(self, length):
        top = jnp.minimum(self.max_length, length)
        return jnp.maximum(top - self.min_length + 1, 0)

    def __call__(self, x, y):
        (a, la), (b, lb) = x, y
        dtype = _float_dtype()
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

    def _pair_elements(self, width):
        return width * width

    def features(self, seqs, lengths, num_states):
        return jax.vmap(lambda s, ln: self._features_one(s, ln, num_states))(seqs, lengths)

    def _features_one(self, seq, length, num_states):
        dtype = _float_dtype()
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
    decay: jax.Array | float = 0.5
    normalise: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        _check_static_int(self.order, "order", 1)
        if isinstance(self.decay, (str, bytes)) or self.decay is None:
            raise TypeError(f"`decay` must be a number in (0, 1], got {self.decay!r}.")
        if _checks.is_concrete(self.decay):
            d = float(np.asarray(self.decay))
            if not 0.0 < d <= 1.0:
                raise ValueError(f"`decay` must lie in (0, 1], got {self.decay!r}.")

    def _pair_elements(self, width):
        return self.order * (width + 1)

    def unnormalised(self, x, y):
        """K_n(x, y) without the normalisation."""
        (s, ls), (t, lt) = x, y
        dtype = _float_dtype()
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

    def __call__(self, x, y):
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


# -------------------------------------------------------------------------------- Stein kernel


def _stein_support(seqs, lengths, log_prob, *, dtype, **options):
    """Per sequence, the support [x, y_1, ..., y_N] of mu_x and its coefficients.

    Returns (Z (n, N + 1, W + 1), lengths (n, N + 1), C (n, N + 1)), C = [-sum w, w].
    """
    x = _pad_sequences(seqs, lengths, seqs.shape[1] + 1)
    nb = jax.vmap(lambda s, ln: _neighbours(s, ln, log_prob, dtype=dtype, **options))(x, lengths)
    support = jnp.concatenate([x[:, None], nb.seqs], axis=1)
    support_lengths = jnp.concatenate([lengths[:, None], nb.lengths], axis=1)
    coef = jnp.concatenate([-jnp.sum(nb.weights, axis=1, keepdims=True), nb.weights], axis=1)
    return support, support_lengths, coef


def _default_rows(n, per_row):
    return int(max(1, min(n, _BLOCK_ELEMENTS // max(per_row, 1))))


def _hamming_stein_block(kernel, zb, lb, cb, z, lz, c, tail):
    """Rows of H for the Hamming kernel when every neighbour keeps x[:l - tail + 1] unedited.

    Two support points of equal length L, one of x_i and one of x_j, agree with x_i and x_j
    before split = max(min(l_i, l_j) - tail + 1, 0) and differ only in [split, L), at most
    `tail` positions. So d_H = (mismatches of x_i and x_j before split) + (mismatches of the
    short tails), which costs O(tail) per pair of support points instead of O(W).
    """
    b, m, w1 = zb.shape
    n = z.shape[0]
    differ = (zb[:, 0][:, None, :] != z[:, 0][None, :, :]).astype(jnp.int32)  # (b, n, W1)
    prefix_counts = jnp.concatenate(
        [jnp.zeros((b, n, 1), jnp.int32), jnp.cumsum(differ, axis=-1, dtype=jnp.int32)], axis=-1
    )
    split = jnp.maximum(jnp.minimum(lb[:, 0][:, None], lz[:, 0][None, :]) - tail + 1, 0)
    prefix = jnp.take_along_axis(prefix_counts, split[:, :, None], axis=-1)[:, :, 0]
    pos = split[:, :, None] + jnp.arange(tail, dtype=jnp.int32)[None, None, :]  # (b, n, T)
    inside = (pos < w1)[:, :, None, None, :]
    pos = jnp.minimum(pos, w1 - 1)[:, :, None, :]
    rows = zb[jnp.arange(b)[:, None, None, None], jnp.arange(m)[None, None, :, None], pos]
    cols = z[jnp.arange(n)[None, :, None, None], jnp.arange(m)[None, None, :, None], pos]
    # Padding is zero in every support point, so positions past L never count.
    tails = (rows[:, :, :, None, :] != cols[:, :, None, :, :]) & inside
    mismatches = prefix[:, :, None, None] + jnp.sum(tails, axis=-1, dtype=jnp.int32)
    same = lb[:, None, :, None] == lz[None, :, None, :]  # (b, n, m, m)
    length = jnp.broadcast_to(lb[:, None, :, None], same.shape)
    k = kernel._value(mismatches, length, same).astype(c.dtype)
    return jnp.einsum("ia,ijab,jb->ij", cb, k, c)


def _stein_matvec(
    kernel,
    support,
    support_lengths,
    coef,
    v,
    *,
    num_states,
    exclude_diagonal,
    block_size,
    edited_tail=None,
):
    """H v for the Stein kernel matrix H = [h(x_i, x_j)], blocked over rows of H.

    `edited_tail`: when not None, every neighbour of x keeps x[:l - edited_tail] unedited (ZS_J
    and ZS'_J with J = edited_tail), which the Hamming kernel exploits.
    """
    n, m, w1 = support.shape
    if isinstance(kernel, SumSequenceKernel):  # h is linear in k
        parts = [
            _stein_matvec(
                k,
                support,
                support_lengths,
                coef,
                v,
                num_states=num_states,
                exclude_diagonal=exclude_diagonal,
                block_size=block_size,
                edited_tail=edited_tail,
            )
            for k in kernel.kernels
        ]
        return sum(parts[1:], parts[0])
    if isinstance(kernel, ScaledSequenceKernel):
        inner = _stein_matvec(
            kernel.base,
            support,
            support_lengths,
            coef,
            v,
            num_states=num_states,
            exclude_diagonal=exclude_diagonal,
            block_size=block_size,
            edited_tail=edited_tail,
        )
        return jnp.asarray(kernel.weight).astype(inner.dtype) * inner
    if isinstance(kernel, HammingKernel) and edited_tail is not None and edited_tail + 1 < w1:
        rows = block_size or _default_rows(n, n * m * m)
        return gram_matvec(
            lambda zb, lb, cb: _hamming_stein_block(
                kernel, zb, lb, cb, support, support_lengths, coef, edited_tail + 1
            ),
            (support, support_lengths, coef),
            v,
            exclude_diagonal=exclude_diagonal,
            block_size=rows,
        )
    dim = kernel.feature_dim(num_states, w1)
    if dim is not None and dim <= _MAX_FEATURE_DIM:
        # h(x, x') = <psi_x, psi_x'>, psi_x = sum_a c_a phi(z_a): one vector per sequence.
        def psi_rows(rows, zb, lb, cb):
            b = zb.shape[0]
            phi = kernel.features(zb.reshape(b * m, w1), lb.reshape(b * m), num_states)
            return jnp.einsum("ia,iad->id", cb, phi.reshape(b, m, dim).astype(cb.dtype))

        psi = map_row_blocks(
            psi_rows, support, support_lengths, coef, block_size=_default_rows(n, m * dim)
        )
        rows = block_size or _default_rows(n, n)
        return gram_matvec(
            lambda pb: pb @ psi.T, (psi,), v, exclude_diagonal=exclude_diagonal, block_size=rows
        )

    columns = (support.reshape(n * m, w1), support_lengths.reshape(n * m))

    def block(zb, lb, cb):
        b = zb.shape[0]
        k = kernel.gram((zb.reshape(b * m, w1), lb.reshape(b * m)), columns)
        k = k.astype(coef.dtype).reshape(b, m, n, m)
        return jnp.einsum("ia,iajb,jb->ij", cb, k, coef)

    rows = block_size or _default_rows(n, n * m * m * kernel._pair_elements(w1))
    return gram_matvec(
        block,
        (support, support_lengths, coef),
        v,
        exclude_diagonal=exclude_diagonal,
        block_size=rows,
    )


# ------------------------------------------------------------------------------ input checks


def _check_options(num_states, neighbourhood, window, balance):
    num_states = _checks.positive_int(num_states, "num_states")
    _checks.choice(neighbourhood, "neighbourhood", NEIGHBOURHOODS)
    _checks.choice(balance, "balance", BALANCES)
    if window is not None:
        window = _checks.positive_int(window, "window")
    # The balancing function is a traced flag: changing it does not recompile.
    options = dict(
        neighbourhood=neighbourhood,
        window=window,
        balance=jnp.asarray(balance == "sqrt"),
        num_states=num_states,
    )
    return num_states, options


def _as_integer_array(x, name, ndim, shape_text):
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an integer array of shape {shape_text}, got {x!r}.")
    if isinstance(x, np.ndarray) and x.dtype.kind not in "iu":
        raise TypeError(f"`{name}` must hold integers, got dtype {x.dtype}.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integers, got dtype {x.dtype}.")
    if x.ndim != ndim:
        raise ValueError(f"`{name}` must have shape {shape_text}, got shape {x.shape}.")
    return x.astype(jnp.int32)


def _check_sequences(seqs, lengths, num_states):
    """Validates a padded batch; value checks run on concrete arrays only (under `jit`/`vmap`
    a sequence that fails them gets NaN weights, see `_neighbours`)."""
    seqs = _as_integer_array(seqs, "seqs", 2, "(n, W)")
    lengths = _as_integer_array(lengths, "lengths", 1, "(n,)")
    n, width = seqs.shape
    if lengths.shape[0] != n:
        raise ValueError(
            f"`lengths` must have shape (n,) = ({n},) to match `seqs` {seqs.shape}, "
            f"got {lengths.shape}."
        )
    if n < 2:
        raise ValueError(f"`seqs` needs at least 2 sequences, got {n}.")
    if width < 1:
        raise ValueError(f"`seqs` must have a padded width W >= 1, got shape {seqs.shape}.")
    if _checks.is_concrete(lengths):
        ln = np.asarray(lengths)
        if ln.min() < 0 or ln.max() > width:
            raise ValueError(
                f"`lengths` must lie in [0, W] = [0, {width}], got values in "
                f"[{ln.min()}, {ln.max()}]."
            )
        if _checks.is_concrete(seqs):
            s = np.asarray(seqs)
            used = np.arange(width)[None, :] < ln[:, None]
            bad = used & ((s < 0) | (s >= num_states))
            if bad.any():
                i, j = np.argwhere(bad)[0]
                raise ValueError(
                    f"`seqs` must hold tokens in [0, num_states) = [0, {num_states}) before each "
                    f"sequence's length; seqs[{i}, {j}] = {s[i, j]}."
                )
    return seqs, lengths


def _split_function(fn, name="log_prob"):
    """(array leaves, hashable rest) of a function pytree (a plain function or a bound method
    of an equinox module, e.g. `model.log_prob`), so that jit traces the arrays and compiles
    once per function, not once per parameter value."""
    if not callable(fn):
        raise TypeError(
            f"`{name}` must be a function (seq, length) -> scalar, got {type(fn).__name__}."
        )
    leaves, treedef = jax.tree.flatten(fn)
    arrays = [leaf for leaf in leaves if eqx.is_array(leaf)]
    rest = tuple(None if eqx.is_array(leaf) else leaf for leaf in leaves)
    static = (treedef, rest)
    try:
        hash(static)
    except TypeError:
        raise TypeError(
            f"`{name}` must be hashable apart from its array leaves (a function, or a bound "
            "method of an equinox module)."
        ) from None
    return arrays, static


def _merge_function(arrays, static):
    treedef, rest = static
    it = iter(arrays)
    return jax.tree.unflatten(treedef, [next(it) if leaf is None else leaf for leaf in rest])


@functools.lru_cache(maxsize=64)
def _log_probs_fn(static):
    return jax.jit(
        lambda arrays, s, ln: jax.vmap(_merge_function(arrays, static))(s, ln).astype(
            _float_dtype()
        )
    )


def _check_log_prob(log_prob, seqs, lengths):
    arrays, static = _split_function(log_prob)
    out = jax.eval_shape(log_prob, seqs[0], lengths[0])
    if getattr(out, "shape", None) != ():
        raise ValueError(
            "`log_prob` must map one padded sequence and its length to a scalar; it returned "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    if (
        _checks.is_concrete(seqs)
        and _checks.is_concrete(lengths)
        and all(_checks.is_concrete(a) for a in arrays)
    ):
        values = np.asarray(_log_probs_fn(static)(arrays, seqs, lengths))
        if not np.isfinite(values).all():
            i = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ValueError(
                f"`log_prob` is {values[i]} at seqs[{i}] (length {int(lengths[i])}): it must be "
                "finite at every sequence of the sample (which must lie in the support of the "
                "model)."
            )
    return arrays, static


@partial(jax.jit, static_argnames=("log_prob_static", "num_states", "neighbourhood", "window"))
def _neighbour_log_probs(
    seqs, lengths, arrays, *, log_prob_static, num_states, neighbourhood, window
):
    """Per sequence, the first neighbour slot where log p is NaN or +inf: (any, slot, its
    sequence, its length, the value). Runs only to explain a non-finite result."""
    log_prob = _merge_function(arrays, log_prob_static)
    x = _pad_sequences(seqs, lengths, seqs.shape[1] + 1)

    def one(x, length):
        cand, cand_lengths, valid = _edit_candidates(
            x, length, num_states=num_states, neighbourhood=neighbourhood, window=window
        )
        lp = jax.vmap(log_prob)(cand, cand_lengths).astype(_float_dtype())
        bad = valid & (jnp.isnan(lp) | (lp == jnp.inf))
        j = jnp.argmax(bad)
        return jnp.any(bad), j, cand[j], cand_lengths[j], lp[j]

    return jax.vmap(one)(x, lengths)


def _raise_log_prob_problem(seqs, lengths, arrays, static, options):
    """Raises a ValueError naming `log_prob` when it is NaN or +inf at a neighbour of the
    sample (eager calls only, after a non-finite result); returns when it is not."""
    if not all(_checks.is_concrete(a) for a in (seqs, lengths, *arrays)):
        return
    found, slot, cand, cand_length, value = _neighbour_log_probs(
        seqs,
        lengths,
        arrays,
        log_prob_static=static,
        num_states=options["num_states"],
        neighbourhood=options["neighbourhood"],
        window=options["window"],
    )
    found = np.asarray(found)
    if not found.any():
        return
    i = int(np.flatnonzero(found)[0])
    length = int(cand_length[i])
    raise ValueError(
        f"`log_prob` is {float(value[i])} at a neighbour of seqs[{i}] (the edit in slot "
        f"{int(slot[i])}: {np.asarray(cand[i])[:length].tolist()}, length {length}): it must be "
        "finite at every neighbour, or -inf outside the model's support."
    )


def _check_result(value, seqs, lengths, arrays, static, options):
    """A non-finite result of an eager call whose cause is `log_prob` raises naming it."""
    if _checks.is_concrete(value) and not np.isfinite(np.asarray(value)).all():
        _raise_log_prob_problem(seqs, lengths, arrays, static, options)


def _prepare(seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance):
    num_states, options = _check_options(num_states, neighbourhood, window, balance)
    _check_sequence_kernel(kernel)
    seqs, lengths = _check_sequences(seqs, lengths, num_states)
    arrays, static = _check_log_prob(log_prob, seqs, lengths)
    return seqs, lengths, arrays, static, options


# ------------------------------------------------------------------------------------ public


def zs_stein_matvec(
    seqs,
    lengths,
    log_prob,
    kernel,
    v,
    *,
    num_states,
    neighbourhood="zs",
    window=DEFAULT_WINDOW,
    balance="barker",
    exclude_diagonal=False,
    block_size=None,
):
    """H v with H = [h(x_i, x_j)] the Zanella-Stein kernel matrix, without forming H.

    h(x, x') = sum_{y in N(x)} sum_{y' in N(x')} w_y w'_y' [k(y, y') - k(y, x') - k(x, y')
    + k(x, x')], w_y = kappa(p(y) / p(x)) (Baum, Kanagawa & Gretton 2023).

    Args:
      seqs: (n, W) integer tokens; lengths: (n,) in [0, W].
      log_prob: unnormalised log p(seq, length) on one padded sequence (any width).
      kernel: a `SequenceKernel`.
      v: (n,) or (n, p).
      num_states, neighbourhood, window, balance: as in `zs_neighbours`.
      exclude_diagonal: treat h(x_i, x_i) as zero.
      block_size: rows of H held at once.

    Returns:
      (n,) or (n, p), float32 (float64 in x64 mode). Eagerly, a `log_prob` that is NaN or +inf
      at a neighbour raises; under `jit`/`vmap` the rows of such sequences are NaN.
    """
    seqs, lengths, arrays, static, options = _prepare(
        seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance
    )
    exclude_diagonal = _checks.flag(exclude_diagonal, "exclude_diagonal")
    block_size = _checks.block_size(block_size)
    v = jnp.asarray(v)
    if v.ndim not in (1, 2) or v.shape[0] != seqs.shape[0]:
        raise ValueError(
            f"`v` must have shape (n,) or (n, p) with n = {seqs.shape[0]}, got {v.shape}."
        )
    if not (jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)):
        raise TypeError(f"`v` must hold real numbers, got dtype {v.dtype}.")
    out = _zs_stein_matvec(
        seqs,
        lengths,
        arrays,
        kernel,
        v.astype(_float_dtype()),
        log_prob_static=static,
        exclude_diagonal=exclude_diagonal,
        block_size=block_size,
        **options,
    )
    _check_result(out, seqs, lengths, arrays, static, options)
    return out


_STATIC = ("log_prob_static", "num_states", "neighbourhood", "window", "block_size")


@partial(jax.jit, static_argnames=(*_STATIC, "exclude_diagonal"))
def _zs_stein_matvec(
    seqs,
    lengths,
    arrays,
    kernel,
    v,
    *,
    log_prob_static,
    num_states,
    neighbourhood,
    window,
    balance,
    exclude_diagonal,
    block_size,
):
    log_prob = _merge_function(arrays, log_prob_static)
    support = _stein_support(
        seqs,
        lengths,
        log_prob,
        dtype=v.dtype,
        num_states=num_states,
        neighbourhood=neighbourhood,
        window=window,
        balance=balance,
    )
    finite = neighbourhood != "zs_inf" and window is not None
    return _stein_matvec(
        kernel,
        *support,
        v,
        num_states=num_states,
        exclude_diagonal=exclude_diagonal,
        block_size=block_size,
        edited_tail=window if finite else None,
    )


def ksd2_seq(
    seqs,
    lengths,
    log_prob,
    kernel,
    *,
    num_states,
    neighbourhood="zs",
    window=DEFAULT_WINDOW,
    balance="barker",
    unbiased=True,
    block_size=None,
):
    """Squared kernel Stein discrepancy of a sample of sequences from a sequence model.

    With the Zanella-Stein kernel h of `zs_stein_matvec` (Baum, Kanagawa & Gretton 2023):
      unbiased (U-statistic): 1/(n(n-1)) sum_{i != j} h(x_i, x_j);
      biased (V-statistic): 1/n^2 sum_{i, j} h(x_i, x_j).

    Args:
      seqs: (n, W) integer tokens in [0, num_states); positions >= lengths[i] are padding.
      lengths: (n,) integers in [0, W].
      log_prob: log p(seq, length) up to a constant, on ONE padded sequence; it is also called
        on neighbours of width W + 1 (room for an insertion), so it must accept any width.
        A function or a bound method of an equinox module (`model.log_prob`); its array leaves
        are traced, so new parameter values do not recompile.
      kernel: a `SequenceKernel` (`HammingKernel`, `ContiguousSubsequenceKernel`,
        `StringSubsequenceKernel`, ...).
      num_states: S, the number of symbols.
      neighbourhood: "zs" (ZS_J, the default), "zs_inf" or "substitution" (ZS').
      window: J, the trailing positions edited by "zs" and "substitution" (None: all).
      balance: "barker" (default) or "sqrt".
      unbiased: U-statistic (default) or V-statistic (a bool).
      block_size: rows of the Stein kernel matrix held at once (memory O(block_size * n)).

    Returns:
      A scalar, float32 (float64 in x64 mode) whatever dtype `log_prob` returns. Eagerly, a
      `log_prob` that is not finite at a sample sequence, or NaN or +inf at a neighbour,
      raises a ValueError naming it; under `jit`/`vmap`, where the checks cannot run, such
      input (and tokens or lengths out of range) gives NaN.
    """
    unbiased = _checks.flag(unbiased, "unbiased")
    block_size = _checks.block_size(block_size)
    seqs, lengths, arrays, static, options = _prepare(
        seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance
    )
    value = _ksd_seq(
        seqs,
        lengths,
        arrays,
        kernel,
        log_prob_static=static,
        unbiased=unbiased,
        block_size=block_size,
        **options,
    )
    _check_result(value, seqs, lengths, arrays, static, options)
    return value


@partial(jax.jit, static_argnames=(*_STATIC, "unbiased"))
def _ksd_seq(
    seqs,
    lengths,
    arrays,
    kernel,
    *,
    log_prob_static,
    num_states,
    neighbourhood,
    window,
    balance,
    unbiased,
    block_size,
):
    n = seqs.shape[0]
    ones = jnp.ones(n, _float_dtype())
    rows = _zs_stein_matvec(
        seqs,
        lengths,
        arrays,
        kernel,
        ones,
        log_prob_static=log_prob_static,
        num_states=num_states,
        neighbourhood=neighbourhood,
        window=window,
        balance=balance,
        exclude_diagonal=unbiased,
        block_size=block_size,
    )
    return jnp.sum(rows) / (n * (n - 1.0) if unbiased else float(n) ** 2)


def ksd_seq_test(
    key,
    seqs,
    lengths,
    log_prob,
    kernel,
    *,
    num_states,
    neighbourhood="zs",
    window=DEFAULT_WINDOW,
    balance="barker",
    num_bootstrap=1000,
    alpha=0.05,
    bootstrap="wild",
    flip_probability=0.5,
    block_size=None,
):
    """Kernel Stein goodness-of-fit test of H0: the sequences are drawn from p.

    The statistic and its calibration follow `kmethods.ksd_test`, with the Zanella-Stein kernel
    of Baum, Kanagawa & Gretton (2023) in place of the Langevin one:

    `bootstrap="multinomial"` (Liu, Lee & Jordan 2016): the statistic is the U-statistic
    `ksd2_seq(...)`; each draw is sum_{i != j} (w_i - 1/n)(w_j - 1/n) h(x_i, x_j) with
    n w ~ Multinomial(n; 1/n, ..., 1/n). For i.i.d. sequences.

    `bootstrap="wild"` (Chwialkowski, Strathmann & Gretton 2016): the statistic is the
    V-statistic 1/n^2 sum_ij h(x_i, x_j); each draw is 1/n^2 sum_ij W_i W_j h(x_i, x_j) with
    the sign process W of `kmethods.calibration.wild_bootstrap_signs`.

    The Stein kernel matrix is never stored: all B + 1 quadratic forms come from one blocked
    product H [v_0 v_1 ... v_B]. The test compiles once per shape and `log_prob` function.

    Args:
      key: PRNG key.
      seqs, lengths, log_prob, kernel: as in `ksd2_seq`.
      num_states, neighbourhood, window, balance: as in `ksd2_seq`.
      num_bootstrap: B.
      alpha: level in (0, 1); may be traced (e.g. vmapped over).
      bootstrap: "wild" (the default) or "multinomial". With the paper's small samples
        (n = 8-30) the multinomial bootstrap over-rejects (measured 0.087 at n = 20, alpha =
        0.05, 1000 replicates; in the 99% interval at n = 200); the wild bootstrap holds its
        level there.
      flip_probability: wild bootstrap only, in (0, 1).
      block_size: rows of the Stein kernel matrix held at once.

    Returns:
      `TestResult(statistic, p_value, reject, null_samples)`, float32 (float64 in x64 mode).
      It rejects only when the statistic and p-value are finite. Eagerly, a `log_prob` that is
      not finite at a sample sequence, or NaN or +inf at a neighbour, raises a ValueError
      naming it; under `jit`/`vmap` such input (and tokens or lengths out of range) gives a
      NaN statistic and p-value and no rejection.
    """
    _checks.choice(bootstrap, "bootstrap", ("multinomial", "wild"))
    num_bootstrap = _checks.positive_int(num_bootstrap, "num_bootstrap")
    alpha = _checks.probability(alpha, "alpha", traced_ok=True)
    flip_probability = _checks.probability(flip_probability, "flip_probability", traced_ok=True)
    block_size = _checks.block_size(block_size)
    seqs, lengths, arrays, static, options = _prepare(
        seqs, lengths, log_prob, kernel, num_states, neighbourhood, window, balance
    )
    result = _ksd_seq_bootstrap_test(
        key,
        seqs,
        lengths,
        arrays,
        kernel,
        alpha,
        flip_probability,
        log_prob_static=static,
        num_bootstrap=num_bootstrap,
        wild=bootstrap == "wild",
        block_size=block_size,
        **options,
    )
    _check_result(result.statistic, seqs, lengths, arrays, static, options)
    return result


@partial(jax.jit, static_argnames=(*_STATIC, "num_bootstrap", "wild"))
def _ksd_seq_bootstrap_test(
    key,
    seqs,
    lengths,
    arrays,
    kernel,
    alpha,
    flip_probability,
    *,
    log_prob_static,
    num_states,
    neighbourhood,
    window,
    balance,
    num_bootstrap,
    wild,
    block_size,
):
    columns = stein_bootstrap_columns(
        key,
        seqs.shape[0],
        num_bootstrap,
        wild=wild,
        flip_probability=flip_probability,
        dtype=_float_dtype(),
    )
    h_columns = _zs_stein_matvec(
        seqs,
        lengths,
        arrays,
        kernel,
        columns,
        log_prob_static=log_prob_static,
        num_states=num_states,
        neighbourhood=neighbourhood,
        window=window,
        balance=balance,
        exclude_diagonal=not wild,
        block_size=block_size,
    )
    return stein_bootstrap_result(columns, h_columns, wild=wild, alpha=alpha)


# -------------------------------------------------------------------------------------- models


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
    path of each chain's own order. Subclasses define `initial`, `stop_probability`,
    `max_length`, `_order`, `_path_log_prob` and `_draw_path`."""

    _order: eqx.AbstractClassVar[int]
    initial: eqx.AbstractVar[jax.Array]
    stop_probability: eqx.AbstractVar[jax.Array]
    max_length: eqx.AbstractVar[int | None]

    @property
    def num_states(self) -> int:
        return self.initial.shape[0]

    def _path_log_prob(self, x, t, length):
        """log p(x_1..x_length) of the symbols alone; x is zero past the length, t = arange."""
        raise NotImplementedError

    def _draw_path(self, u, n):
        """(max(width, order), n) symbols from uniforms u of that shape, by inverse CDFs."""
        raise NotImplementedError

    def log_prob(self, seq, length):
        """log p(seq[:length]), exact (normalised); -inf outside the support."""
        seq = jnp.asarray(seq).astype(jnp.int32)
        length = jnp.asarray(length).astype(jnp.int32)
        seq = jnp.pad(seq, (0, max(0, self._order + 1 - seq.shape[0])))
        t = jnp.arange(seq.shape[0], dtype=jnp.int32)
        x = jnp.where(t < length, seq, 0)
        lp = self._path_log_prob(x, t, length)
        return lp + _length_log_prob(length, self.stop_probability, self.max_length)

    @eqx.filter_jit
    def sample(self, key, n, width):
        """n sequences, padded to `width`: (seqs (n, width) int32, lengths (n,) int32).

        Jitted (n and width static); the draw is exact for the model, see the class docstring.
        """
        n, width = _sample_check(n, width)
        # All the randomness is one draw up front; the scan only inverts CDFs (random draws
        # inside a scan compile slowly on CPU).
        u = jax.random.uniform(key, (max(width, self._order) + 1, n), self.stop_probability.dtype)
        lengths = _sample_lengths(u[-1], width, self.stop_probability, self.max_length)
        seqs = self._draw_path(u[:-1], n)[:width].T
        return _pad_sequences(seqs, lengths, width), lengths

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
    initial: jax.Array
    transition: jax.Array
    stop_probability: jax.Array
    max_length: int | None = eqx.field(static=True)

    def __init__(self, initial, transition, stop_probability, *, max_length=None):
        dtype = _float_dtype()
        self.initial = _as_probabilities(initial, "initial", 1, dtype)
        self.transition = _as_probabilities(transition, "transition", 2, dtype)
        s = self.initial.shape[0]
        if self.transition.shape != (s, s):
            raise ValueError(
                f"`transition` must have shape ({s}, {s}), got {self.transition.shape}."
            )
        self.stop_probability = _check_stop(stop_probability, dtype)
        self.max_length = _check_max_length(max_length)

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
    initial: jax.Array
    second: jax.Array
    transition: jax.Array
    stop_probability: jax.Array
    max_length: int | None = eqx.field(static=True)

    def __init__(self, initial, second, transition, stop_probability, *, max_length=None):
        dtype = _float_dtype()
        self.initial = _as_probabilities(initial, "initial", 1, dtype)
        self.second = _as_probabilities(second, "second", 2, dtype)
        self.transition = _as_probabilities(transition, "transition", 3, dtype)
        s = self.initial.shape[0]
        if self.second.shape != (s, s):
            raise ValueError(f"`second` must have shape ({s}, {s}), got {self.second.shape}.")
        if self.transition.shape != (s, s, s):
            raise ValueError(
                f"`transition` must have shape ({s}, {s}, {s}), got {self.transition.shape}."
            )
        self.stop_probability = _check_stop(stop_probability, dtype)
        self.max_length = _check_max_length(max_length)

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
    num_states=10, *, mean_length=8.0, memory=0.95, floor=1e-3, max_length=None
):
    """The paper's random walk with memory on a cycle of S symbols (a second-order chain).

    The walk starts uniformly and steps to x - 1 or x + 1 (mod S) with probability 1/2 each,
    except that after an upward step (x_{t-2} = i, x_{t-1} = i + 1) it continues upward to
    i + 2 with probability `memory` and returns to i otherwise. Every probability is floored at
    `floor` and renormalised, and the stop probability is 1 / mean_length, as in the authors'
    `RandomWalkWithMemory` (their experiment: S = 10, mean length 8, memory 0.95 against
    0.05). Needs S >= 3.
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
    key, num_states=10, *, mean_length=8.0, concentration=1.0, floor=1e-3, max_length=None
):
    """A random second-order chain: every row Dirichlet(concentration), floored at `floor` and
    renormalised, stop probability 1 / mean_length (the authors' `RandomNgramModel`, n = 2,
    which uses concentration 1). Dirichlet(1) rows are normalised exponential draws (uniform on
    the simplex), which spares compiling the gamma sampler."""
    num_states = _checks.positive_int(num_states, "num_states")
    _check_mean_length(mean_length)
    _check_floor(floor)
    if isinstance(concentration, (str, bytes, bool)) or concentration is None:
        raise TypeError(f"`concentration` must be a positive number, got {concentration!r}.")
    _checks.check_positive(concentration, "concentration")
    dtype = _float_dtype()
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
