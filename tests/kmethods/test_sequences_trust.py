"""Trust checks of the sequence KSD (issue 14): a `log_prob` that is NaN or +inf at a neighbour
or at the sample is a clear error eagerly and a NaN statistic (no rejection) under jit/vmap,
as are tokens and lengths out of range and NaN model parameters; flags, block sizes and a traced
alpha; the level with a nearly constant kernel."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from scipy import stats

import kmethods as km
from kmethods import sequences as ks
from kmethods.sequences import models

S, WIDTH, N = 3, 6, 12
MODEL = models.MarkovChain(
    np.ones(S) / S,
    np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]]),
    0.3,
    max_length=WIDTH,
)
KERNEL = ks.HammingKernel()
OPTS = dict(num_states=S)


def _sample():
    seqs, lengths = MODEL.sample(jax.random.key(0), N, WIDTH)
    return np.asarray(seqs), np.asarray(lengths)


class _LongerThanSample(eqx.Module):
    """log p, except `value` at every sequence longer than `longest` (the sample's longest):
    only the insertion neighbours of the longest sequences see it. `value` is an array leaf,
    so NaN and inf share one compilation."""

    value: jax.Array
    longest: int = eqx.field(static=True)

    def log_prob(self, seq, length):
        return jnp.where(length > self.longest, self.value, MODEL.log_prob(seq, length))


def _test(seqs, lengths, log_prob, key=jax.random.key(1), **kw):  # noqa: B008
    return km.ksd_seq_test(key, seqs, lengths, log_prob, KERNEL, num_bootstrap=49, **OPTS, **kw)


def _assert_void(result):
    assert np.isnan(float(result.statistic)) and np.isnan(float(result.p_value))
    assert not bool(result.reject)


def test_log_prob_garbage_at_a_neighbour_raises_eagerly_and_is_nan_under_jit():
    """Before the fix a NaN there dropped the neighbour (NaN > -inf is False) and +inf gave
    Barker weight 1: a finite statistic either way. (One test for both values: they share
    every compilation.)"""
    seqs, lengths = _sample()
    jitted = jax.jit(lambda s, ln, model: _test(s, ln, model.log_prob))
    for value in (np.nan, np.inf):
        model = _LongerThanSample(jnp.float32(value), int(lengths.max()))
        longest = int(np.argmax(lengths))
        for call, args in (
            (_test, (seqs, lengths, model.log_prob)),
            (ks.ksd2_seq, (seqs, lengths, model.log_prob, KERNEL)),
            (ks.zs_neighbours, (seqs[longest], lengths[longest], model.log_prob)),
        ):
            with pytest.raises(ValueError, match=f"`log_prob` is {value} at a neighbour"):
                call(*args, **({} if call is _test else OPTS))
        _assert_void(jitted(seqs, lengths, model))


def test_log_prob_inf_at_a_sample_sequence_raises():
    seqs, lengths = _sample()

    def log_prob(seq, length):
        return jnp.where(length == lengths[0], jnp.inf, MODEL.log_prob(seq, length))

    with pytest.raises(ValueError, match=r"`log_prob` is inf at seqs\[0\]"):
        _test(seqs, lengths, log_prob)


def test_garbage_that_only_eager_checks_catch_gives_nan_under_jit():
    """Under jit the token, length and model checks cannot run: a token outside [0, S), a
    length outside [0, W], and NaN in the model's parameters (a traced `log_prob` leaf) each
    give a NaN statistic and no rejection, not a finite statistic from clamped indices or from
    neighbours silently dropped."""
    seqs, lengths = _sample()
    test = jax.jit(lambda s, ln, model: _test(s, ln, model.log_prob))
    _assert_void(
        test(seqs.copy().clip(0, 0) + np.eye(N, WIDTH, dtype=seqs.dtype) * 7, lengths, MODEL)
    )
    _assert_void(test(seqs, lengths.copy().clip(0, 0) + WIDTH + 3, MODEL))
    broken = eqx.tree_at(lambda m: m.transition, MODEL, MODEL.transition.at[0, 1].set(jnp.nan))
    _assert_void(test(seqs, lengths, broken))
    clean = test(seqs, lengths, MODEL)
    assert np.isfinite(float(clean.statistic))


def test_flags_and_sizes_are_validated():
    seqs, lengths = _sample()
    lp = MODEL.log_prob
    with pytest.raises(TypeError, match="`unbiased`"):
        ks.ksd2_seq(seqs, lengths, lp, KERNEL, unbiased="no", **OPTS)
    with pytest.raises(TypeError, match="`exclude_diagonal`"):
        ks.zs_stein_matvec(seqs, lengths, lp, KERNEL, np.ones(N), exclude_diagonal=1, **OPTS)
    with pytest.raises(ValueError, match="`block_size`"):
        ks.ksd2_seq(seqs, lengths, lp, KERNEL, block_size=0, **OPTS)
    with pytest.raises(TypeError, match="`block_size`"):
        _test(seqs, lengths, lp, block_size=2.5)
    with pytest.raises(ValueError, match="`v`"):
        ks.zs_stein_matvec(seqs, lengths, lp, KERNEL, np.float32(1.0), **OPTS)
    with pytest.raises(ValueError, match="`length`"):
        ks.zs_neighbours(seqs[0], WIDTH + 1, lp, **OPTS)
    with pytest.raises(ValueError, match="`seq`"):
        ks.zs_neighbours(np.full(WIDTH, S), 2, lp, **OPTS)
    with pytest.raises(TypeError, match="`flip_probability`"):
        _test(seqs, lengths, lp, flip_probability="0.5")
    with pytest.raises(ValueError, match="`window`"):
        ks.num_neighbours(WIDTH, S, window=0)
    with pytest.raises(TypeError, match="`width`"):
        ks.num_neighbours(6.0, S)
    with pytest.raises(ValueError, match="`neighbourhood`"):
        ks.num_neighbours(WIDTH, S, neighbourhood="zs_2")
    with pytest.raises(ValueError, match="`floor`"):
        models.random_walk_with_memory(5, floor=-0.1)
    with pytest.raises(TypeError, match="`concentration`"):
        models.random_second_order_chain(jax.random.key(0), 3, concentration="1")


def test_traced_alpha_matches_a_loop():
    """alpha only enters p <= alpha, so a vmapped level is supported."""
    seqs, lengths = _sample()
    alphas = jnp.asarray([0.01, 0.5, 0.99])
    res = jax.vmap(lambda a: _test(seqs, lengths, MODEL.log_prob, alpha=a))(alphas)
    single = _test(seqs, lengths, MODEL.log_prob)
    assert res.statistic.dtype == single.statistic.dtype == jnp.float32
    np.testing.assert_allclose(res.p_value, single.p_value)
    np.testing.assert_array_equal(res.reject, single.p_value <= alphas)


def test_level_with_a_nearly_constant_kernel():
    """LengthKernel(1e4): kernel values within 5e-7 of 1, so the Stein kernel is a small
    difference of nearly equal terms. The statistic is column 0 of the same product as the
    bootstrap draws, so rounding affects both alike: over 500 vmapped replicates (n = 30, wild
    bootstrap) the rejection rate lies in the 99% binomial interval of a level-0.05 test."""
    kernel = ks.LengthKernel(1e4)
    replicates, n = 500, 30

    def one(key):
        k_data, k_test = jax.random.split(key)
        seqs, lengths = MODEL.sample(k_data, n, WIDTH)
        return km.ksd_seq_test(
            k_test, seqs, lengths, MODEL.log_prob, kernel, num_bootstrap=199, **OPTS
        )

    res = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(7), replicates))
    assert np.all(np.isfinite(np.asarray(res.statistic)))
    lo, hi = stats.binom.interval(0.99, replicates, 0.05)
    assert lo <= int(np.sum(res.reject)) <= hi, int(np.sum(res.reject))


# ------------------------------------------------------------------ properties

_KERNELS = {
    "hamming": ks.HammingKernel(),
    "substrings": ks.ContiguousSubsequenceKernel(1, 2),
    "lengths": ks.LengthKernel(2.0),
}
# Jitted once per kernel type (the model's arrays and the kernel's numbers are traced).
_KSD2 = jax.jit(lambda s, ln, m, k: ks.ksd2_seq(s, ln, m.log_prob, k, **OPTS))


@settings(max_examples=20, deadline=None, derandomize=True, phases=[Phase.generate])
@given(
    st.sampled_from(sorted(_KERNELS)),
    st.integers(0, 2**16),
    st.sampled_from([None, "token", "length", "model"]),
)
def test_property_ksd2_seq_finite_order_invariant_and_nan_on_garbage(kernel, seed, garbage):
    """Random sequences and a random chain: the statistic is finite and does not depend on the
    order of the sequences; garbage that only the eager checks see gives NaN under jit."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, S, size=(N, WIDTH)).astype(np.int32)
    lengths = rng.integers(1, WIDTH + 1, size=N).astype(np.int32)
    rows = rng.dirichlet(np.ones(S), size=S + 1)
    model = models.MarkovChain(rows[0], rows[1:], 0.3, max_length=WIDTH)
    k = _KERNELS[kernel]
    value = float(_KSD2(seqs, lengths, model, k))
    assert np.isfinite(value)
    perm = rng.permutation(N)
    assert float(_KSD2(seqs[perm], lengths[perm], model, k)) == pytest.approx(value, abs=1e-5)
    if garbage == "token":
        seqs[rng.integers(N), 0] = S + rng.integers(0, 5)
    elif garbage == "length":
        lengths[rng.integers(N)] = WIDTH + 1 + rng.integers(0, 5)
    elif garbage == "model":
        model = eqx.tree_at(lambda m: m.initial, model, model.initial.at[0].set(jnp.nan))
    if garbage is not None:
        assert np.isnan(float(_KSD2(seqs, lengths, model, k)))
