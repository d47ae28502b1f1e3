"""Aggregated tests at the issue's scale (slow; run with `-m slow`).

- Validity: the level of MMDAgg (equal and unequal sample sizes), HSICAgg (complete and
  incomplete U-statistics) and KSDAgg (two sample sizes), each over 500 null replicates at
  alpha = 0.05 with fixed keys, vmapped 50 replicates at a time: the number of
  rejections lies in the 99% interval of Binomial(500, 0.05), [13, 38]. The default
  collections are used (MMDAgg's 20 kernels, HSICAgg's 25 pairs, KSDAgg's 10 bandwidths).
- Memory: the compiled plan of `mmdagg` at n = m = 20,000, d = 10, 10 bandwidths x 2 families
  and B = 2000 + 2000 permutations holds under 2 GB (XLA's memory analysis of the whole jitted
  call, bandwidth selection included: arguments, outputs and temporaries).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import kmethods

pytestmark = pytest.mark.slow

ALPHA = 0.05
REPS = 500
B = 200  # B1 = B2 of MMDAgg and KSDAgg
# HSICAgg's 25 kernel pairs are nearly independent at n = 60, so u w_i is about 0.005: B1 must
# be well above 200 for a kernel to be able to reject at all (with B1 = 200 the level is 0.006).
B_HSIC = 500
BATCH = 50  # replicates vmapped at once: `aggregate` holds N x B2 x (B1 + 1) comparisons
LOW, HIGH = stats.binom.interval(0.99, REPS, ALPHA)


def _check_level(test, *data):
    """Runs `test(key, *data_i)` on every replicate, BATCH vmapped at once, and checks the
    number of rejections."""
    keys = jax.random.split(jax.random.key(101), REPS)
    run = jax.jit(lambda args: jax.lax.map(lambda a: test(*a).reject, args, batch_size=BATCH))
    count = int(np.sum(np.asarray(run((keys, *data)))))
    assert LOW <= count <= HIGH, (count, (LOW, HIGH))


@pytest.mark.parametrize("n,m,d", [(40, 40, 2), (30, 60, 1)])
def test_mmdagg_level_equal_and_unequal_sizes(n, m, d):
    rng = np.random.default_rng(100 + n + m)
    x = rng.standard_normal((REPS, n, d)).astype(np.float32)
    y = rng.standard_normal((REPS, m, d)).astype(np.float32)
    _check_level(
        lambda k, a, b: kmethods.mmdagg(k, a, b, num_permutations=B, num_correction=B), x, y
    )


@pytest.mark.parametrize("num_diagonals", [None, 10])
def test_hsicagg_level(num_diagonals):
    """Paired observations (HSIC has one sample size), x in d = 2 and y in d = 1."""
    rng = np.random.default_rng(102)
    x = rng.standard_normal((REPS, 60, 2)).astype(np.float32)
    y = rng.standard_normal((REPS, 60, 1)).astype(np.float32)
    options = dict(num_bootstrap=B_HSIC, num_correction=B_HSIC, num_diagonals=num_diagonals)
    _check_level(lambda k, a, b: kmethods.hsicagg(k, a, b, **options), x, y)


@pytest.mark.parametrize("n,d", [(40, 1), (80, 3)])
def test_ksdagg_level(n, d):
    """x ~ N(0, I_d) against its own score -x."""
    rng = np.random.default_rng(104 + n)
    x = rng.standard_normal((REPS, n, d)).astype(np.float32)
    _check_level(lambda k, a: kmethods.ksdagg(k, a, -a, num_bootstrap=B, num_correction=B), x)


def test_mmdagg_memory_plan_at_twenty_thousand_points():
    n, d = 20_000, 10

    def call(key, x, y):
        return kmethods.mmdagg(key, x, y, num_permutations=2000, num_correction=2000).reject

    points = jax.ShapeDtypeStruct((n, d), jnp.float32)
    compiled = jax.jit(call).lower(jax.random.key(0), points, points).compile()
    memory = compiled.memory_analysis()
    total = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        + memory.temp_size_in_bytes
        - memory.alias_size_in_bytes
    )
    assert total < 2 * 2**30, total / 2**30
