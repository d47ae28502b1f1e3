"""The kernel witnesses that the tests bet on: their histories and payoffs.

Each witness is a NamedTuple of fixed-capacity history buffers and running kernel sums, with an
`update(witness, new points, kernels) -> (payoff, witness)` function that evaluates the kernels
between the new points and the history only (O(capacity) per step; no Gram matrix is formed).
Each payoff is an exactly odd function of the swap that H0 leaves invariant (the new points'
kernel rows enter as a difference, row by row), and its normaliser depends on the past only, so
rounding cannot bias the level.

References:
  Podkopaev, Bloebaum, Kasiviswanathan & Ramdas, "Sequential Kernelized Independence Testing",
  ICML 2023 (the HSIC witness payoff).
  Shekhar & Ramdas, "Nonparametric Two-Sample Testing by Betting", IEEE Transactions on
  Information Theory, 2023 (the kernel-MMD plug-in witness payoff).
  Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for computing sample
  variances", 1979 (the pairwise merge of the running co-moment).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from kmethods.betting._core import StepSpec, append, masked_rows, safe_ratio

__all__ = ["HsicWitness", "MmdWitness", "hsic_update", "mmd_update"]


class HsicWitness(NamedTuple):
    """SKIT's history: the points seen so far and centred running sums of the witness norm.

    With K, L the Gram matrices of the m history points, k_bar = 1'K1 / m^2 and
    r_i = (K1)_i - m k_bar (l_bar, s_i likewise for L):

    Attributes:
      x: (capacity, d_x) history of x, rows past `count` are zero.
      y: (capacity, d_y) history of y.
      k_dev: (capacity,) the centred row sums r_i (zero past `count`).
      l_dev: (capacity,) the centred row sums s_i.
      k_mean: k_bar. l_mean: l_bar.
      comoment: sum_ij (K_ij - k_bar)(L_ij - l_bar).
      count: m, the number of history points (int32).
    """

    x: Float[Array, "capacity d_x"]
    y: Float[Array, "capacity d_y"]
    k_dev: Float[Array, " capacity"]
    l_dev: Float[Array, " capacity"]
    k_mean: Float[Array, ""]
    l_mean: Float[Array, ""]
    comoment: Float[Array, ""]
    count: Int[Array, ""]

    STEP = StepSpec(points=2, names=("x_pair", "y_pair"), capacity_name="num_pairs")

    def norm2_terms(self):
        """(sum_ij (K_ij - k_bar)(L_ij - l_bar), (2/m) sum_i r_i s_i): their difference is
        m^2 ||g||^2.

        m^2 ||g||^2 = tr(KL) - (2/m) (K1).(L1) + (1'K1)(1'L1) / m^2 = tr(KHLH), and substituting
        (K1)_i = m k_bar + r_i (sum_i r_i = 0) gives the two centred terms. The plain form
        subtracts O(m^2) sums to get an O(m) result: in float32 at m = 2000 (independent data)
        its relative error was ~5e-3, the centred form's ~5e-6.
        """
        m = jnp.maximum(self.count, 1).astype(self.comoment.dtype)
        return self.comoment, 2.0 * jnp.dot(self.k_dev, self.l_dev) / m

    def norm2(self) -> Float[Array, ""]:
        """||g||^2 of the empirical HSIC witness g = C_xy - mu_x (x) mu_y of the history.

        ||g||^2 = tr(KHLH) / m^2, the biased HSIC of the m history points (0 when m = 0).
        """
        comoment, rows = self.norm2_terms()
        m = jnp.maximum(self.count, 1).astype(self.comoment.dtype)
        return (comoment - rows) / m**2


class MmdWitness(NamedTuple):
    """The two-sample test's history and the squared norm of its MMD witness.

    Attributes:
      x: (capacity, d) past x_s. y: (capacity, d) past y_s (rows past `count` are zero).
      h_sum: sum_ij h(i, j), h(i, j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i),
        which is m^2 ||mu_x - mu_y||^2.
      count: m, the number of past observations of each sample (int32).
    """

    x: Float[Array, "capacity d"]
    y: Float[Array, "capacity d"]
    h_sum: Float[Array, ""]
    count: Int[Array, ""]

    STEP = StepSpec(points=1, names=("x_new", "y_new"), capacity_name="num_steps")


def empty_hsic_witness(capacity: int, x_dim: int, y_dim: int, dtype) -> HsicWitness:
    zero = jnp.zeros((), dtype)
    return HsicWitness(
        x=jnp.zeros((capacity, x_dim), dtype),
        y=jnp.zeros((capacity, y_dim), dtype),
        k_dev=jnp.zeros((capacity,), dtype),
        l_dev=jnp.zeros((capacity,), dtype),
        k_mean=zero,
        l_mean=zero,
        comoment=zero,
        count=jnp.zeros((), jnp.int32),
    )


def empty_mmd_witness(capacity: int, dim: int, dtype) -> MmdWitness:
    return MmdWitness(
        x=jnp.zeros((capacity, dim), dtype),
        y=jnp.zeros((capacity, dim), dtype),
        h_sum=jnp.zeros((), dtype),
        count=jnp.zeros((), jnp.int32),
    )


def hsic_update(w: HsicWitness, x_pair, y_pair, kernel_x, kernel_y):
    """The SKIT payoff of one new pair against the history, and the history with the pair added.

    With m history points, k_a = [k(x_a, x_i)]_i, l_a = [l(y_a, y_i)]_i for the pair's points
    a = 2t, b = 2t + 1, dk = k_b - k_a and dl = l_b - l_a:
      f = 1/2 [g(x_b, y_b) + g(x_a, y_a) - g(x_a, y_b) - g(x_b, y_a)] / ||g||
        = 1/2 [dk.dl - (1'dk)(1'dl) / m] / sqrt(m^2 ||g||^2),
    with g(x, y) = (1/m) sum_i k(x, x_i) l(y, y_i) - (1/m sum_i k(x, x_i)) (1/m sum_i l(y, y_i))
    (Podkopaev et al. 2023).

    The update treats the entries of K and L as a growing set of paired values: the pair adds
    n_B = 4m + 4 entries (its rows and columns against the history, twice each, and its own
    2 x 2 block), merged into the means and the co-moment with the pairwise update of Chan,
    Golub & LeVeque (1979); the centred row sums gain the pair's rows minus the shift of
    m k_bar, and two new rows are appended. O(m) work.
    """
    m = w.count
    dtype = w.comoment.dtype
    capacity = w.x.shape[0]
    mask = (jnp.arange(capacity, dtype=m.dtype) < m)[None, :]
    kx = masked_rows(kernel_x, x_pair, w.x, m)  # (2, capacity)
    ly = masked_rows(kernel_y, y_pair, w.y, m)
    mf = m.astype(dtype)
    safe_m = jnp.maximum(mf, 1.0)

    # The payoff, from the history before the pair.
    dk, dl = kx[1] - kx[0], ly[1] - ly[0]
    numerator = jnp.dot(dk, dl) - jnp.sum(dk) * jnp.sum(dl) / safe_m  # m <g, dphi (x) dpsi>
    comoment, row_term = w.norm2_terms()
    norm2 = comoment - row_term  # m^2 ||g||^2
    # Predictable: whether to bet depends on the history only. An empty history, or a witness
    # at round-off level, gives a zero payoff.
    valid = (m > 0) & (norm2 > jnp.finfo(dtype).eps * (jnp.abs(comoment) + jnp.abs(row_term)))
    payoff = jnp.clip(0.5 * safe_ratio(numerator, norm2, valid), -1.0, 1.0)
    # A NaN history (or kernel row) must not read as "witness at round-off level, payoff 0".
    payoff = jnp.where(jnp.isfinite(numerator) & jnp.isfinite(norm2), payoff, jnp.nan)

    # Merge the n_B new kernel entries into the means and the co-moment.
    pair_k = kernel_x.gram(x_pair, x_pair)
    pair_l = kernel_y.gram(y_pair, y_pair)
    n_old = mf**2
    n_new = 4.0 * mf + 4.0
    k_mean_new_entries = (2.0 * jnp.sum(kx) + jnp.sum(pair_k)) / n_new
    l_mean_new_entries = (2.0 * jnp.sum(ly) + jnp.sum(pair_l)) / n_new
    zero = jnp.zeros((), dtype)
    cross = jnp.where(mask, (kx - k_mean_new_entries) * (ly - l_mean_new_entries), zero)
    comoment_new_entries = 2.0 * jnp.sum(cross) + jnp.sum(
        (pair_k - k_mean_new_entries) * (pair_l - l_mean_new_entries)
    )
    fraction = n_new / (n_old + n_new)
    delta_k = k_mean_new_entries - w.k_mean
    delta_l = l_mean_new_entries - w.l_mean
    k_mean = w.k_mean + fraction * delta_k
    l_mean = w.l_mean + fraction * delta_l
    comoment = w.comoment + comoment_new_entries + n_old * fraction * delta_k * delta_l

    # Centred row sums: r_i + k_ai + k_bi - ((m + 2) k_bar' - m k_bar) on the old rows.
    m_next = mf + 2.0
    k_shift = m_next * fraction * delta_k + 2.0 * w.k_mean
    l_shift = m_next * fraction * delta_l + 2.0 * w.l_mean
    k_dev = w.k_dev + jnp.where(mask[0], kx[0] + kx[1] - k_shift, zero)
    l_dev = w.l_dev + jnp.where(mask[0], ly[0] + ly[1] - l_shift, zero)
    k_dev_pair = jnp.sum(kx, axis=1) + jnp.sum(pair_k, axis=1) - m_next * k_mean
    l_dev_pair = jnp.sum(ly, axis=1) + jnp.sum(pair_l, axis=1) - m_next * l_mean
    new = HsicWitness(
        x=append(w.x, x_pair, m),
        y=append(w.y, y_pair, m),
        k_dev=append(k_dev, k_dev_pair, m),
        l_dev=append(l_dev, l_dev_pair, m),
        k_mean=k_mean,
        l_mean=l_mean,
        comoment=comoment,
        count=m + 2,
    )
    return payoff, new


def mmd_update(w: MmdWitness, x_new, y_new, kernel):
    """The two-sample payoff of (x_t, y_t) against the history, and the updated history.

    With the plug-in witness g = (mu_x - mu_y) / ||mu_x - mu_y|| of the m past observations,
    mu_x = (1/m) sum_i k(., x_i), and h(t, i) = k(x_t, x_i) + k(y_t, y_i) - k(x_t, y_i)
    - k(x_i, y_t):
      f = (g(x_t) - g(y_t)) / 2 = sum_i h(t, i) / (2 sqrt(m^2 ||mu_x - mu_y||^2)),
    and m^2 ||mu_x - mu_y||^2 = sum_ij h(i, j) gains 2 sum_i h(t, i) + h(t, t). Summing h
    entrywise keeps the O(m^2) kernel sums from cancelling in floating point.
    """
    m = w.count
    z = jnp.concatenate([x_new, y_new])  # (2, d): x_t, y_t
    kzx = masked_rows(kernel, z, w.x, m)  # [k(x_t, x_i); k(y_t, x_i)]
    kzy = masked_rows(kernel, z, w.y, m)  # [k(x_t, y_i); k(y_t, y_i)]
    h_row = jnp.sum((kzx[0] - kzy[0]) - (kzx[1] - kzy[1]))  # sum_i h(t, i)
    norm2 = w.h_sum
    # An empty history or a witness of norm 0 (all points equal so far) gives a zero payoff.
    # Any positive normaliser keeps the payoff odd under swapping x_t and y_t, so validity
    # never depends on its accuracy.
    valid = (m > 0) & (norm2 > 0)
    payoff = jnp.clip(0.5 * safe_ratio(h_row, norm2, valid), -1.0, 1.0)
    # A NaN history (or kernel row) must not read as "witness of norm 0, payoff 0".
    payoff = jnp.where(jnp.isfinite(h_row) & jnp.isfinite(norm2), payoff, jnp.nan)
    pair = kernel.gram(z, z)
    h_self = (pair[0, 0] - pair[0, 1]) + (pair[1, 1] - pair[1, 0])
    new = MmdWitness(
        x=append(w.x, x_new, m),
        y=append(w.y, y_new, m),
        h_sum=w.h_sum + 2.0 * h_row + h_self,
        count=m + 1,
    )
    return payoff, new
