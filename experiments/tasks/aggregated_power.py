"""Experiment: does aggregation pay? MMDAgg and KSDAgg against their median-bandwidth tests.

Three comparisons, each a sweep over a perturbation level whose first value is the null, so that
every setting reports its level too (`num_replicates` replicates per point, vmapped: one
compile per shape).

- `mmd`: the perturbed uniform densities of Schrab et al. (MMDAgg, JMLR 2023, Section 5.4,
  Eq. 17): x has density f(u) = 1 + c_d P^(-s) sum_nu theta_nu prod_r G(P u_r - nu_r) on
  [0, 1]^d, with P perturbations per axis, random signs theta_nu (drawn afresh for every
  replicate, as in the paper), G the smooth bump-and-dip of the paper on (-1, 0), s = 1 and
  c_1 = 2.7, c_2 = 7.3 (so the density dips to about 0); y is uniform. P = 0 is the null.
  x is drawn by rejection from 4 n + 64 uniform proposals (acceptance >= 1 / 2; a replicate
  with fewer than n acceptances is counted in `num_sampling_shortfall`, expected 0). Tests:
  `kmethods.mmdagg` with its default collection (l1-Laplace and Gaussian kernels, 10
  bandwidths each, uniform weights) against `kmethods.mmd_test` with
  `Gaussian(median_bandwidth(z))` on the pooled sample z.
- `mmd_paper`: the paper's own setting for one of its power figures (Figure 3/4: d = 1,
  n = m = 500, permutations): MMDAgg over its collection Lambda(-4, 0), Gaussian kernels
  exp(-||u - v||^2 / (2^l lambda)^2) for l = -4..0 with lambda the per-coordinate median
  distance of the pooled sample, against the paper's median test (l = 0 alone). The paper's
  powers (500 replicates; `paper/raw/results.csv` of the authors' reproducibility repository)
  are drawn as stars and compared. (The authors' sampler draws y from a fresh copy of the
  random stream that proposed x's points, so many points of x are also points of y: 195 of 500
  at P = 3 for one seed. Here x and y are independent, as the test assumes.)
- `ksd`: the Gaussian-Bernoulli RBM of Liu, Lee & Jordan (2016) as in the KSDAgg paper (Schrab,
  Guedj & Gretton, NeurIPS 2022, Section 4.4): p(x, h) proportional to
  exp(x'Bh / 2 + b'x + c'h - ||x||^2 / 2), d_x = 50, d_h = 40, B with +-1 entries, b and c
  standard normal; the sample comes from the same RBM with B + sigma E (E standard normal,
  one draw), sigma = 0 the null; the score is the unperturbed model's. As in the paper, a pool
  of `rbm_pool` independent blocked-Gibbs chains (`rbm_burnin` steps each) is drawn per sigma and
  each replicate takes n rows of it without replacement. Tests: `kmethods.ksdagg` with its
  default collection (KSDAgg* in the paper: IMQ kernels at bandwidths from 1 to the largest
  distance, divided by d) against `kmethods.ksd_test` with `IMQ(bandwidth=median_bandwidth(x))`
  (multinomial bootstrap); with `ksd_paper_collection`, also KSDAgg over the paper's
  Lambda(l-, l+) = {2^i median : l- <= i <= l+}. The paper's powers at n = 1000 (read off the
  plotted points of its Figure 2, 200 replicates) are drawn as stars.

Reported for each point: each test's rejection rate with a 95% binomial half-width, the
difference aggregated minus single with the standard error of the paired per-replicate
differences (`difference_se`; "lower beyond noise" means below -2.58 se), and at the null the
99% interval of the number of rejections of a level-alpha test, Binomial(R, alpha)
(`level_interval99`, as rates) with whether each test's level lies in it.

Run with `kseq run configs/aggregated_power.yaml`.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import kmethods as km
from experiments.config import ConfigError, require_at_least, require_non_empty, require_probability
from experiments.plots import binomial_halfwidth, pyplot, rate_bars, style_axis
from experiments.tasks import nonfinite
from kmethods.aggregated import KernelCollection

# Powers from the papers' own runs: (level, MMDAgg / KSDAgg*, median test).
# MMDAgg, d = 1, n = m = 500, permutations, Gaussian Lambda(-4, 0), uniform weights, 500
# replicates (5000 at P = 0); the authors' paper/raw/results.csv.
MMD_PUBLISHED = ((0, 0.0496, 0.0468), (1, 1.0, 1.0), (2, 0.976, 0.804), (3, 0.348, 0.082))
# KSDAgg, RBM, n = 1000, wild bootstrap, KSDAgg* (the default collection) and the median KSD
# test, 200 replicates, read off the plotted points of Figure 2 (figures/figure_2.eps).
KSD_PUBLISHED = ((0.0, 0.06, 0.055), (0.01, 0.31, 0.2), (0.02, 0.99, 0.795), (0.03, 1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class Config:
    """Parameters of the experiment.

    Attributes:
      experiments: which comparisons to run: "mmd", "mmd_paper", "ksd" (module docstring).
      num_replicates: replicates per point (each test sees the same data).
      num_permutations: B1 = B2 of the aggregated tests (quantile and correction draws), and
        the permutations / bootstrap draws of the single tests.
      alpha: level.
      dimensions: d of each `mmd` sweep.
      sample_sizes: n = m of each `mmd` sweep, one per dimension.
      perturbations: the numbers of perturbations P of each `mmd` sweep, one list per
        dimension (0: the null).
      perturbation_multipliers: c_d of each `mmd` sweep, one per dimension (the paper's 2.7
        for d = 1 and 7.3 for d = 2).
      smoothness: s, the perturbation's amplitude is c_d P^(-s).
      paper_sample_size: n = m of `mmd_paper` (the paper's 500; d = 1).
      paper_perturbations: the P of `mmd_paper` (among 0..3, the paper's).
      paper_exponents: l-, l+ of `mmd_paper`'s collection Lambda(l-, l+).
      rbm_sample_size: n of `ksd`.
      rbm_sigmas: the perturbation standard deviations sigma of `ksd` (0: the null).
      rbm_pool: Gibbs chains per sigma; replicates draw n of them without replacement.
      rbm_burnin: blocked Gibbs steps per chain (the paper's 2000).
      ksd_paper_collection: also run KSDAgg over the paper's Lambda(l-, l+) of median multiples.
      ksd_paper_exponents: l-, l+ of that collection (the paper's -20, 0 for the RBM).
    """

    experiments: tuple[str, ...] = ("mmd", "mmd_paper", "ksd")
    num_replicates: int = 100
    num_permutations: int = 250
    alpha: float = 0.05
    dimensions: tuple[int, ...] = (1, 2)
    sample_sizes: tuple[int, ...] = (200, 250)
    perturbations: tuple[tuple[int, ...], ...] = ((0, 1, 2, 3, 4), (0, 1, 2, 3))
    perturbation_multipliers: tuple[float, ...] = (2.7, 7.3)
    smoothness: float = 1.0
    paper_sample_size: int = 500
    paper_perturbations: tuple[int, ...] = (0, 2, 3)
    paper_exponents: tuple[int, int] = (-4, 0)
    rbm_sample_size: int = 1000
    rbm_sigmas: tuple[float, ...] = (0.0, 0.01, 0.02)
    rbm_pool: int = 20000
    rbm_burnin: int = 2000
    ksd_paper_collection: bool = False
    ksd_paper_exponents: tuple[int, int] = (-20, 0)

    def __post_init__(self):
        unknown = set(self.experiments) - {"mmd", "mmd_paper", "ksd"}
        if unknown or not self.experiments:
            raise ConfigError(
                "`params.experiments` must name some of mmd, mmd_paper, ksd; "
                f"got {list(self.experiments)}."
            )
        require_non_empty(self, ("dimensions", "rbm_sigmas", "paper_perturbations"))
        require_at_least(self, ("num_replicates", "num_permutations", "rbm_burnin"))
        require_at_least(self, ("paper_sample_size", "rbm_sample_size"), minimum=4)
        require_probability(self)
        per_dimension = ("sample_sizes", "perturbations", "perturbation_multipliers")
        if any(len(getattr(self, name)) != len(self.dimensions) for name in per_dimension):
            raise ConfigError(
                "`params.sample_sizes`, `params.perturbations` and "
                "`params.perturbation_multipliers` need one entry per `params.dimensions`."
            )
        levels = [p for ps in self.perturbations for p in ps] + list(self.paper_perturbations)
        if min(levels) < 0 or min(self.sample_sizes) < 4:
            raise ConfigError("perturbation numbers must be >= 0 and sample sizes >= 4.")
        if self.rbm_pool < self.rbm_sample_size:
            raise ConfigError("`params.rbm_pool` must be >= `params.rbm_sample_size`.")


# ------------------------------------------------------------------ the perturbed uniform


def _bump(t):
    """G of the paper on t in [-1, 0]: a smooth bump on (-1, -1/2), a dip on (-1/2, 0)."""

    def smooth(u):  # exp(-1 / (1 - u^2)) on (-1, 1), 0 elsewhere
        inside = jnp.abs(u) < 1
        return jnp.where(inside, jnp.exp(-1.0 / jnp.where(inside, 1.0 - u * u, 1.0)), 0.0)

    return jnp.where(t < -0.5, smooth(4 * t + 3), -smooth(4 * t + 1))


def perturbed_density(u, theta, p, amplitude):
    """f(u) = 1 + amplitude theta_nu prod_r G(p u_r - nu_r) for u in [0, 1]^d, (k, d) -> (k,):
    in each coordinate only the cell nu_r = ceil(p u_r) contributes. theta is flat, cell nu at
    sum_r (nu_r - 1) p^r (p may be traced; theta may be longer than p^d)."""
    p = jnp.asarray(p, u.dtype)
    cell = jnp.clip(jnp.ceil(p * u), 1.0, p)
    strides = p ** jnp.arange(u.shape[1], dtype=u.dtype)
    index = jnp.sum((cell - 1) * strides[None, :], axis=1).astype(jnp.int32)
    return 1.0 + amplitude * theta[index] * jnp.prod(_bump(p * u - cell), axis=1)


def perturbed_uniform(key, n, d, p, multiplier, smoothness, max_p):
    """n points of the paper's perturbed uniform density with p perturbations per axis (p = 0:
    uniform; p traced, at most max_p), by rejection from 4 n + 64 proposals. Returns the points
    and whether fewer than n proposals were accepted."""
    k_theta, k_u, k_v = jax.random.split(key, 3)
    p = jnp.asarray(p, jnp.float32)
    cells = jnp.maximum(p, 1.0)
    amplitude = jnp.where(p > 0, multiplier * cells ** (-smoothness), 0.0)
    theta = jax.random.rademacher(k_theta, (max(max_p, 1) ** d,), jnp.float32)
    proposals = 4 * n + 64
    u = jax.random.uniform(k_u, (proposals, d))
    ceiling = 1.0 + amplitude * math.exp(-d)  # the density's maximum
    accept = jax.random.uniform(k_v, (proposals,)) * ceiling <= perturbed_density(
        u, theta, cells, amplitude
    )
    first = jnp.argsort(~accept, stable=True)[:n]
    return u[first], jnp.sum(accept) < n


# ------------------------------------------------------------------ the tests, vmapped


def _coordinate_medians(z):
    """The per-coordinate median distance of the pooled sample (the paper's lambda)."""
    return jnp.stack([km.median_bandwidth(z[:, r : r + 1]) for r in range(z.shape[1])])


@partial(jax.jit, static_argnames=("n", "d", "max_p", "paper", "cfg"))
def _mmd_batch(keys, p, multiplier, *, n, d, max_p, paper, cfg):
    b = cfg.num_permutations

    def one(key):
        kx, ky, ka, ks = jax.random.split(key, 4)
        x, short = perturbed_uniform(kx, n, d, p, multiplier, cfg.smoothness, max_p)
        y = jax.random.uniform(ky, (n, d))
        z = jnp.concatenate([x, y])
        if paper:  # the paper's kernels exp(-||(u - v) / lambda||^2 / c^2), c = 2^l
            scale = _coordinate_medians(z)
            x, y = x / scale[None, :], y / scale[None, :]
            low, high = cfg.paper_exponents
            c = 2.0 ** jnp.arange(low, high + 1, dtype=x.dtype)
            kernels = KernelCollection((km.Gaussian(c / math.sqrt(2.0)),))
            single = km.Gaussian(1.0 / math.sqrt(2.0))
        else:
            kernels, single = None, km.Gaussian(km.median_bandwidth(z))
        agg = km.mmdagg(ka, x, y, kernels, alpha=cfg.alpha, num_permutations=b, num_correction=b)
        one_kernel = km.mmd_test(ks, x, y, single, num_permutations=b, alpha=cfg.alpha)
        return {
            "agg": agg.reject,
            "single": one_kernel.reject,
            "short": short,
            "nonfinite": nonfinite(agg) | nonfinite(one_kernel),
        }

    return jax.vmap(one)(keys)


def rbm_model(key, dx=50, dh=40):
    """(B, b, c, E) of a Gaussian-Bernoulli RBM as in the KSDAgg paper, and E the direction of
    the perturbation of B."""
    kb_, kb, kc, ke = jax.random.split(key, 4)
    weights = jax.random.rademacher(kb_, (dx, dh), jnp.float32)
    return (
        weights,
        jax.random.normal(kb, (dx,)),
        jax.random.normal(kc, (dh,)),
        (jax.random.normal(ke, (dx, dh))),
    )


def rbm_score(x, weights, b, c):
    """grad log p(x) of the RBM: b - x + tanh(x'B / 2 + c) B' / 2."""
    return b[None, :] - x + jnp.tanh(0.5 * x @ weights + c[None, :]) @ (0.5 * weights.T)


@partial(jax.jit, static_argnames=("rows", "burnin"))
def rbm_gibbs(key, weights, b, c, *, rows, burnin):
    """`rows` independent blocked-Gibbs chains of the RBM after `burnin` steps, shape (rows, dx):
    h | x has P(h_j = 1) = sigmoid((x'B)_j + 2 c_j) on {-1, 1}, x | h ~ N(B h / 2 + b, I)."""
    k0, k1 = jax.random.split(key)
    dx, dh = weights.shape

    def step(x, k):
        kh, kx = jax.random.split(k)
        h = jnp.where(
            jax.random.uniform(kh, (rows, dh)) <= jax.nn.sigmoid(x @ weights + 2 * c[None, :]),
            1.0,
            -1.0,
        )
        return 0.5 * h @ weights.T + b[None, :] + jax.random.normal(kx, (rows, dx)), None

    x, _ = jax.lax.scan(step, jax.random.normal(k0, (rows, dx)), jax.random.split(k1, burnin + 1))
    return x


@partial(jax.jit, static_argnames=("n", "cfg"))
def _ksd_batch(keys, pool, scores, *, n, cfg):
    b = cfg.num_permutations

    def one(key):
        kc, ka, kp, ks = jax.random.split(key, 4)
        rows = jax.random.choice(kc, pool.shape[0], (n,), replace=False)
        x, s = pool[rows], scores[rows]
        median = km.median_bandwidth(x)
        options = dict(alpha=cfg.alpha, num_bootstrap=b, num_correction=b)
        agg = km.ksdagg(ka, x, s, **options)
        single = km.ksd_test(ks, x, s, km.IMQ(bandwidth=median), num_bootstrap=b, alpha=cfg.alpha)
        out = {
            "agg": agg.reject,
            "single": single.reject,
            "nonfinite": nonfinite(agg) | nonfinite(single),
        }
        if cfg.ksd_paper_collection:
            low, high = cfg.ksd_paper_exponents
            kernels = [km.IMQ(bandwidth=2.0**i * median) for i in range(low, high + 1)]
            out["agg_paper"] = km.ksdagg(kp, x, s, kernels, **options).reject
        return out

    return jax.vmap(one)(keys)


# ------------------------------------------------------------------ rates and intervals


def binomial_interval(replicates: int, alpha: float, level: float = 0.99) -> tuple[int, int]:
    """The central `level` interval of Binomial(replicates, alpha), as counts (lo, hi): the
    smallest k with cdf(k) >= (1 - level) / 2 and the smallest with cdf(k) >= (1 + level) / 2
    (scipy's `binom.interval`)."""
    pmf = [
        math.comb(replicates, k) * alpha**k * (1 - alpha) ** (replicates - k)
        for k in range(replicates + 1)
    ]
    cdf = np.cumsum(pmf)
    lo = int(np.searchsorted(cdf, (1 - level) / 2 - 1e-12))
    hi = int(np.searchsorted(cdf, (1 + level) / 2 - 1e-12))
    return lo, hi


def _summarise(out: dict, *, null: bool, alpha: float) -> dict:
    """Rates, their half-widths, the paired difference and, at the null, the level check."""
    agg, single = np.asarray(out["agg"], bool), np.asarray(out["single"], bool)
    reps = agg.size
    diff = agg.astype(float) - single.astype(float)
    row = {
        "replicates": reps,
        "agg": float(agg.mean()),
        "single": float(single.mean()),
        "agg_halfwidth95": binomial_halfwidth(float(agg.mean()), reps),
        "single_halfwidth95": binomial_halfwidth(float(single.mean()), reps),
        "difference": float(diff.mean()),
        "difference_se": float(diff.std(ddof=1) / math.sqrt(reps)) if reps > 1 else 0.0,
        "num_nonfinite": int(np.sum(out["nonfinite"])),
    }
    if "agg_paper" in out:
        row["agg_paper"] = float(np.mean(out["agg_paper"]))
    if "short" in out:
        row["num_sampling_shortfall"] = int(np.sum(out["short"]))
    if null:
        lo, hi = binomial_interval(reps, alpha)
        row["level_interval99"] = [lo / reps, hi / reps]
        for name in ("agg", "single", "agg_paper"):
            if name in row:
                row[f"{name}_level_ok"] = lo <= round(row[name] * reps) <= hi
    return row


def _published_table(cfg, experiment):
    """The papers' powers for this experiment, when it runs at the papers' settings."""
    if experiment == "mmd_paper" and (cfg.paper_sample_size, cfg.paper_exponents) == (500, (-4, 0)):
        return MMD_PUBLISHED
    if experiment == "ksd" and cfg.rbm_sample_size == 1000:
        return KSD_PUBLISHED
    return ()


def _published(table, level):
    for value, agg, single in table:
        if math.isclose(value, level):
            return {"published_agg": agg, "published_single": single}
    return {}


# ------------------------------------------------------------------ the experiment


def run(cfg: Config, ctx) -> dict:
    """Power and level of the aggregated and the median-bandwidth tests at every point."""
    root = ctx.key()
    reps = cfg.num_replicates
    points = []  # (unit name, experiment, d, n, level, compute)
    if "mmd" in cfg.experiments:
        for d, n, ps, c in zip(
            cfg.dimensions,
            cfg.sample_sizes,
            cfg.perturbations,
            cfg.perturbation_multipliers,
            strict=True,
        ):
            for p in ps:
                points.append((f"mmd-d{d}-P{p}", "mmd", d, n, p, (c, max(ps), False)))
    if "mmd_paper" in cfg.experiments:
        n, ps = cfg.paper_sample_size, cfg.paper_perturbations
        for p in ps:
            points.append((f"mmd_paper-P{p}", "mmd_paper", 1, n, p, (2.7, max(ps), True)))
    if "ksd" in cfg.experiments:
        for sigma in cfg.rbm_sigmas:
            points.append((f"ksd-sigma{sigma:g}", "ksd", 50, cfg.rbm_sample_size, sigma, None))
    model = rbm_model(jax.random.fold_in(root, 10_000))

    records = []
    for index, (name, experiment, d, n, level, spec) in ctx.progress(
        list(enumerate(points)), desc="aggregated_power"
    ):
        key = jax.random.fold_in(root, index)

        def compute(key=key, experiment=experiment, d=d, n=n, level=level, spec=spec):
            keys = jax.random.split(key, reps + 1)
            if experiment == "ksd":
                weights, b, c, direction = model
                pool = rbm_gibbs(
                    keys[-1],
                    weights + level * direction,
                    b,
                    c,
                    rows=cfg.rbm_pool,
                    burnin=cfg.rbm_burnin,
                )
                out = _ksd_batch(keys[:-1], pool, rbm_score(pool, weights, b, c), n=n, cfg=cfg)
            else:
                c, max_p, paper = spec
                out = _mmd_batch(
                    keys[:-1], jnp.float32(level), c, n=n, d=d, max_p=max_p, paper=paper, cfg=cfg
                )
            row = {"experiment": experiment, "d": d, "n": n, "level": level}
            row.update(_summarise(out, null=level == 0, alpha=cfg.alpha))
            row.update(_published(_published_table(cfg, experiment), level))
            return row

        records.append(ctx.unit(name, compute))

    _plot(records, cfg, ctx)
    return {"alpha": cfg.alpha, "num_replicates": reps, **_verdicts(records), "records": records}


def _verdicts(records) -> dict:
    """Per experiment: the largest gain of the aggregated test over the single one, the most
    negative difference in standard errors, and whether every null level is in its interval."""
    out = {}
    for experiment in dict.fromkeys(r["experiment"] for r in records):
        rows = [r for r in records if r["experiment"] == experiment]
        alternatives = [r for r in rows if r["level"] != 0] or rows
        out[experiment] = {
            "max_gain": max(r["difference"] for r in alternatives),
            "worst_difference_in_se": min(
                r["difference"] / r["difference_se"] if r["difference_se"] > 0 else 0.0
                for r in alternatives
            ),
            "levels_ok": all(
                r[k] for r in rows for k in ("agg_level_ok", "single_level_ok") if k in r
            ),
        }
    return out


_TITLES = {
    "mmd": "perturbed uniform, d = {d}, n = m = {n}",
    "mmd_paper": "MMDAgg paper's setting, n = m = {n}",
    "ksd": "Gaussian-Bernoulli RBM, n = {n}",
}
_LABELS = {
    "mmd": ("MMDAgg (default collection)", "mmd_test (median)", "perturbations P"),
    "mmd_paper": ("MMDAgg Lambda(-4, 0)", "median test (paper's)", "perturbations P"),
    "ksd": ("KSDAgg (default collection)", "ksd_test (IMQ, median)", "sigma"),
}


def _plot(records, cfg, ctx):
    panels = list(dict.fromkeys((r["experiment"], r["d"], r["n"]) for r in records))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (experiment, d, n) in zip(axes[0], panels, strict=True):
        rows = [r for r in records if (r["experiment"], r["d"], r["n"]) == (experiment, d, n)]
        xs = [r["level"] for r in rows]
        agg_label, single_label, x_label = _LABELS[experiment]
        for key, label in (("agg", agg_label), ("single", single_label)):
            rate_bars(ax, xs, rows, key, f"{key}_halfwidth95", label)
        if any("agg_paper" in r for r in rows):
            ax.plot(xs, [r["agg_paper"] for r in rows], "s--", label="KSDAgg Lambda(-20, 0)")
        published = [r for r in rows if "published_agg" in r]
        if published:
            px = [r["level"] for r in published]
            ax.plot(px, [r["published_agg"] for r in published], "C0*", ms=10, label="paper: agg")
            ax.plot(
                px, [r["published_single"] for r in published], "C1*", ms=10, label="paper: median"
            )
        ax.axhline(
            cfg.alpha, color="grey", linestyle="--", linewidth=1, label=f"alpha = {cfg.alpha}"
        )
        title = _TITLES[experiment].format(d=d, n=n)
        style_axis(ax, x_label, "rejection rate", title, ylim=(-0.02, 1.02), legend_size=7)
        ax.title.set_fontsize(9)
    ctx.save_figure(fig, "aggregated_power")
