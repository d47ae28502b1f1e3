"""p-invariant Markov kernels that move one point: the mode-jumping MH kernel and MALA.

A transition is an object with the methods the perturbation needs (`Transition`), passed to
the internals as blackjax passes a proposal to `rmh`: nothing below branches on its name.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from kmethods import _checks
from kmethods.pksd._uniforms import uniform_index


class Transition(eqx.Module):
    """A Markov kernel that leaves p invariant, applied to each point independently.

    `perturb` and `kmethods.pksd_test` take one (or its name, "mh_jump" or "mala"), and call
    only the methods below. It is a pytree: `mh_jump()` and `mala()` hold no arrays, so they
    are static under `jit` and equal ones share a compilation (a subclass's arrays are traced).

    Attributes:
      needs_modes: whether `prepare` uses the modes of p (`find_modes`).
    """

    needs_modes: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def uniforms_per_step(self, d: int) -> int:
        """Uniforms on [0, 1) that one step of one point in dimension d consumes."""

    @abc.abstractmethod
    def prepare(self, modes, dtype):
        """What every step needs from the modes (a pytree; anything when `needs_modes` is
        False, then `modes` may be None)."""

    @abc.abstractmethod
    def init(self, x, log_prob):
        """The chain states of the points x, shape (n, d): a pytree with `x` (the points) and
        `bad` (whether the chain met garbage from `log_prob`) among its fields."""

    @abc.abstractmethod
    def step(self, state, u: Float[Array, " k"], theta, params, log_prob):
        """One step of one point's chain from its uniforms u, shape (k,), at jump scale or step
        size theta, with `params` from `prepare`."""


def garbage(lp):
    """log p is NaN or +inf: a value no density has (-inf is a point outside the support)."""
    return jnp.isnan(lp) | (lp == jnp.inf)


# ------------------------------------------------------------------------------ mode jumps


class Jumps(NamedTuple):
    """What the mode-jumping proposal needs at each mode: mu, H, H^{1/2}, H^{-1/2},
    log det H^{1/2} and the mode mask (the modes first)."""

    mu: jax.Array
    hess: jax.Array
    root: jax.Array
    inv_root: jax.Array
    half_logdet: jax.Array
    mask: jax.Array


def prepare_jumps(modes, dtype):
    """`Jumps` from `Modes` (a mode's slots moved first)."""
    # Modes first (`MHJump.choose_pair` draws among the first sum(mask) slots).
    modes = jax.tree.map(lambda a: a[jnp.argsort(~modes.mask, stable=True)], modes)
    mask = modes.mask
    d = modes.locations.shape[-1]
    eye = jnp.eye(d, dtype=dtype)
    hess = jnp.where(mask[:, None, None], modes.hessians.astype(dtype), eye[None])
    hess = 0.5 * (hess + jnp.swapaxes(hess, -1, -2))
    lam, vec = jnp.linalg.eigh(hess)
    lam = jnp.where(lam > 0, lam, jnp.ones_like(lam))
    vt = jnp.swapaxes(vec, -1, -2)
    sqrt_lam = jnp.sqrt(lam)[..., None, :]
    root = (vec * sqrt_lam) @ vt
    inv_root = (vec / sqrt_lam) @ vt
    half_logdet = 0.5 * jnp.sum(jnp.log(lam), axis=-1)
    mu = jnp.where(mask[:, None], modes.locations.astype(dtype), jnp.zeros((), dtype))
    return Jumps(mu, hess, root, inv_root, half_logdet, mask)


def nearest_mode(x, jumps):
    """The mode nearest to x in the Mahalanobis distance under its own H."""
    diff = x[None, :] - jumps.mu
    dist2 = jnp.einsum("mi,mij,mj->m", diff, jumps.hess, diff)
    return jnp.argmin(jnp.where(jumps.mask, dist2, jnp.inf))


def jump(x, i, j, theta, jumps):
    """x' = theta mu_j + H_j^{-1/2} H_i^{1/2} (x - theta mu_i) and log |det dx'/dx|."""
    centred = x - theta * jumps.mu[i]
    moved = theta * jumps.mu[j] + jumps.inv_root[j] @ (jumps.root[i] @ centred)
    return moved, jumps.half_logdet[i] - jumps.half_logdet[j]


class MHState(NamedTuple):
    x: jax.Array
    lp: jax.Array
    bad: jax.Array


class MHJump(Transition):
    """Metropolis-Hastings with the deterministic mode-jumping proposal (package docstring).

    Attributes:
      nearest: False draws the ordered pair of modes (i, j) uniformly (pair="uniform"); True
        takes i as the mode nearest to x and accepts only if mu_j is nearest to x'
        (pair="nearest").
    """

    nearest: bool = eqx.field(static=True, default=False)
    needs_modes: ClassVar[bool] = True

    def uniforms_per_step(self, d):
        del d
        return 3  # a pair and an acceptance

    def prepare(self, modes, dtype):
        return prepare_jumps(modes, dtype)

    def choose_pair(self, u_i, u_j, x, jumps):
        """An ordered pair (i, j) of distinct modes from two uniforms (the modes come first in
        `jumps`); i == j, i.e. no move, when there are fewer than two modes."""
        m = jnp.sum(jumps.mask)
        i = nearest_mode(x, jumps).astype(m.dtype) if self.nearest else uniform_index(u_i, m)
        j = (i + 1 + uniform_index(u_j, m - 1)) % jnp.maximum(m, 1)
        i = jnp.maximum(i, 0)
        return i, jnp.where(m > 1, j, i)

    def proposal(self, x, lp_x, i, j, theta, jumps, log_prob):
        """The proposal from x for the pair (i, j), its log p, and the log MH ratio."""
        moved, log_det = jump(x, i, j, theta, jumps)
        lp_moved = log_prob(moved).astype(x.dtype)
        log_ratio = lp_moved - lp_x + log_det
        if self.nearest:
            # The reverse move (j, i) is proposed from x' only if mu_j is the mode nearest to x'.
            log_ratio = jnp.where(nearest_mode(moved, jumps) == j, log_ratio, -jnp.inf)
        return moved, lp_moved, jnp.where(i == j, -jnp.inf, log_ratio)

    def init(self, x, log_prob):
        lp = jax.vmap(log_prob)(x).astype(x.dtype)
        return MHState(x, lp, ~jnp.isfinite(lp))

    def step(self, state, u: Float[Array, " k"], theta, params, log_prob):
        """u holds three uniforms (pair, pair, acceptance). `bad` records a NaN or +inf log p
        at a proposal, which the comparison with u would otherwise turn into a silent
        rejection (NaN) or acceptance (+inf) of the move."""
        x, lp, bad = state
        i, j = self.choose_pair(u[0], u[1], x, params)
        moved, lp_moved, log_ratio = self.proposal(x, lp, i, j, theta, params, log_prob)
        accept = jnp.log(u[2]) < log_ratio
        return MHState(
            jnp.where(accept, moved, x), jnp.where(accept, lp_moved, lp), bad | garbage(lp_moved)
        )


# ------------------------------------------------------------------------------ MALA


class MALAState(NamedTuple):
    x: jax.Array
    lp: jax.Array
    score: jax.Array
    bad: jax.Array


class MALA(Transition):
    """Metropolis-adjusted Langevin steps, theta the step size."""

    needs_modes: ClassVar[bool] = False

    def uniforms_per_step(self, d):
        return d + 1  # the Gaussian noise and an acceptance

    def prepare(self, modes, dtype):
        del modes, dtype

    def init(self, x, log_prob):
        lp, score = jax.vmap(jax.value_and_grad(log_prob))(x)
        lp, score = lp.astype(x.dtype), score.astype(x.dtype)
        bad = ~jnp.isfinite(lp) | ~jnp.all(jnp.isfinite(score), axis=-1)
        return MALAState(x, lp, score, bad)

    def step(self, state, u: Float[Array, " k"], theta, params, log_prob):
        """Standard normals by inversion of u[:-1] (the half-spacing shift keeps them in
        (0, 1)), u[-1] for the acceptance."""
        del params
        x, lp, score, bad = state
        noise = jax.scipy.special.ndtri(u[:-1] + 0.5 * jnp.finfo(x.dtype).eps)
        moved = x + theta * score + jnp.sqrt(2.0 * theta) * noise
        lp_moved, score_moved = jax.value_and_grad(log_prob)(moved)
        lp_moved, score_moved = lp_moved.astype(x.dtype), score_moved.astype(x.dtype)
        forward = jnp.sum((moved - x - theta * score) ** 2)
        backward = jnp.sum((x - moved - theta * score_moved) ** 2)
        log_ratio = lp_moved - lp + (forward - backward) / (4.0 * theta)
        accept = jnp.log(u[-1]) < log_ratio
        keep = lambda new, old: jnp.where(accept, new, old)
        nonfinite_score = jnp.isfinite(lp_moved) & ~jnp.all(jnp.isfinite(score_moved))
        bad = bad | garbage(lp_moved) | nonfinite_score
        return MALAState(keep(moved, x), keep(lp_moved, lp), keep(score_moved, score), bad)


# ------------------------------------------------------------------------------ factories


def mh_jump(pair: str = "uniform") -> Transition:
    """The mode-jumping MH transition; theta is the jump scale.

    Args:
      pair: "uniform" (the ordered pair of modes drawn uniformly, as the authors' code) or
        "nearest" (i the mode nearest to x, j uniform among the others).
    """
    _checks.choice(pair, "pair", ("uniform", "nearest"))
    return MHJump(nearest=pair == "nearest")


def mala() -> Transition:
    """The MALA transition; theta is the step size."""
    return MALA()


def as_transition(transition, pair):
    """The `Transition` of the public arguments, mapped here once: a name ("mh_jump" with
    `pair`, or "mala"), or a transition object as is (it carries its own pair rule, so `pair`
    must keep its default)."""
    _checks.choice(pair, "pair", ("uniform", "nearest"))
    if isinstance(transition, Transition):
        if pair != "uniform":
            raise ValueError(
                "`pair` applies to transition='mh_jump' only; a transition object carries its "
                f"own (e.g. kmethods.pksd.mh_jump(pair={pair!r}))."
            )
        return transition
    _checks.choice(transition, "transition", ("mh_jump", "mala"))
    return mh_jump(pair) if transition == "mh_jump" else mala()
