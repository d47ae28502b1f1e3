"""KSD for sequences (Baum, Kanagawa & Gretton 2023): neighbourhoods against a Python
enumeration, the Stein identity by exact enumeration, the Stein kernel matrix against a Python
double sum, kernels against naive code, the models, level and power, compile-once, bad input.

Replicates run inside one jitted `lax.map` (one compilation each, body compiled unbatched:
on a CPU this compiles several times faster than `vmap` and runs as fast at these sizes).
"""

import dataclasses
import functools
import itertools
import json
import math
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kmethods as km
from experiments import load_config, run_experiment
from experiments.config import ConfigError, DevicesConfig
from kmethods import sequences as ks
from kmethods.calibration import multinomial_weights
from kmethods.sequences import _ksd, models

# ------------------------------------------------------------------ Python reference (naive)


def py_neighbours(x, num_states, neighbourhood, window):
    """The ZS neighbourhood as a set of tuples, edit by edit as in the authors' action sets
    (indices counted from the end of the sequence)."""
    x = tuple(x)
    length = len(x)
    j = length + 1 if neighbourhood == "zs_inf" or window is None else window
    out = set()
    for k in range(min(j, length)):  # substitutions
        for s in range(num_states):
            y = list(x)
            y[length - 1 - k] = s
            out.add(tuple(y))
    if neighbourhood != "substitution":
        for k in range(min(j, length + 1)):  # insertions in the gap k from the end
            for s in range(num_states):
                out.add((*x[: length - k], s, *x[length - k :]))
        for k in range(min(j, length)):  # deletions
            p = length - 1 - k
            out.add(x[:p] + x[p + 1 :])
    out.discard(x)
    return out


def py_kappa(log_ratio, balance):
    r = math.exp(log_ratio)
    return r / (1.0 + r) if balance == "barker" else math.sqrt(r)


def py_stein_matrix(seqs, logp, kernel, num_states, neighbourhood, window, balance):
    """h(x, x') = sum_{y, y'} c_y c'_y' k(y, y') with c = [-sum w, w], by explicit loops."""

    def measure(x):
        lx = logp(x)
        items, total = [], 0.0
        for y in sorted(py_neighbours(x, num_states, neighbourhood, window)):
            ly = logp(y)
            if ly == -math.inf:
                continue
            w = py_kappa(ly - lx, balance)
            items.append((y, w))
            total += w
        return [(x, -total), *items]

    k = functools.lru_cache(maxsize=None)(kernel)
    mus = [measure(x) for x in seqs]
    n = len(seqs)
    h = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            h[i, j] = sum(a * b * k(y, z) for y, a in mus[i] for z, b in mus[j])
    return h


def py_hamming(x, y, lengthscale=None):
    if len(x) != len(y):
        return 0.0
    d = sum(a != b for a, b in zip(x, y, strict=True))
    return math.exp(-d / (lengthscale or max(len(x), 1)))


def py_csk(x, y, lo, hi):
    """The authors' ContiguousSubsequenceKernel, transcribed: dictionaries of substrings."""

    def features(z):
        out = {}
        num_orders = min(hi, len(z)) - lo + 1
        for order in range(lo, min(hi, len(z)) + 1):
            windows = len(z) - order + 1
            for u, c in Counter(z[i : i + order] for i in range(windows)).items():
                out[u] = math.sqrt(c / (windows * num_orders))
        return out

    fx, fy = features(tuple(x)), features(tuple(y))
    return sum(v * fy.get(u, 0.0) for u, v in fx.items())


def py_ssk_brute(x, y, order, decay):
    """sum over all index tuples i_1 < ... < i_n, j_1 < ... < j_n with x[i] = y[j] of
    decay^(span(i) + span(j)), by enumeration."""
    total = 0.0
    for i in itertools.combinations(range(len(x)), order):
        for j in itertools.combinations(range(len(y)), order):
            if all(x[a] == y[b] for a, b in zip(i, j, strict=True)):
                total += decay ** (i[-1] - i[0] + 1 + j[-1] - j[0] + 1)
    return total


def py_ssk(x, y, order, decay, normalise=True):
    value = py_ssk_brute(x, y, order, decay)
    if not normalise:
        return value
    norm = py_ssk_brute(x, x, order, decay) * py_ssk_brute(y, y, order, decay)
    return value / math.sqrt(norm) if norm > 0 else 0.0


def py_length(x, y, bandwidth):
    return math.exp(-((len(x) - len(y)) ** 2) / (2 * bandwidth**2))


# --------------------------------------------- a model on every sequence of length <= 4, S = 2

S_ENUM, L_ENUM = 2, 4
_RNG = np.random.default_rng(20230101)
LOGP_TABLE = _RNG.normal(size=(S_ENUM + 1) ** (L_ENUM + 2))  # indexed by `_code`
F_TABLE = _RNG.normal(size=(S_ENUM + 1) ** (L_ENUM + 2))


def _code(seq, length):
    """A distinct integer for every sequence of length <= 5: sum_t (x_t + 1) (S + 1)^t."""
    w = min(seq.shape[0], L_ENUM + 1)
    t = jnp.arange(w, dtype=jnp.int32)
    digits = jnp.where(t < length, seq[:w] + 1, 0)
    return jnp.sum(digits * (S_ENUM + 1) ** t, dtype=jnp.int32)


def table_log_prob(seq, length):
    """Random log-probabilities on all sequences of length 0..4 (empty one included), zero
    probability beyond: the neighbourhoods of length-4 sequences reach length 5."""
    value = jnp.asarray(LOGP_TABLE)[_code(seq, length)]
    return jnp.where(length <= L_ENUM, value, -jnp.inf)


def py_table_log_prob(x):
    if len(x) > L_ENUM:
        return -math.inf
    return float(LOGP_TABLE[sum((v + 1) * (S_ENUM + 1) ** t for t, v in enumerate(x))])


def _space():
    """Every sequence over S_ENUM symbols with length 0..L_ENUM, padded to width L_ENUM."""
    tuples = [t for n in range(L_ENUM + 1) for t in itertools.product(range(S_ENUM), repeat=n)]
    seqs = np.array([list(t) + [0] * (L_ENUM - len(t)) for t in tuples], np.int32)
    return tuples, seqs, np.array([len(t) for t in tuples], np.int32)


@functools.cache
def _jitted_neighbours(neighbourhood, window):
    """jit((seqs, lengths) -> (Barker `Neighbours`, codes of the neighbours, codes of x))."""

    def one(seq, length):
        nb = ks.zs_neighbours(
            seq,
            length,
            table_log_prob,
            num_states=S_ENUM,
            neighbourhood=neighbourhood,
            window=window,
        )
        return nb, jax.vmap(_code)(nb.seqs, nb.lengths), _code(seq, length)

    return jax.jit(jax.vmap(one))


# --------------------------------------------------------------------------- neighbourhoods


@pytest.mark.parametrize(
    "neighbourhood,window", [("zs", 2), ("zs_inf", None), ("substitution", None)]
)
def test_stein_identity_by_exact_enumeration(x64, neighbourhood, window):
    """E_p[(A_p f)(x)] = 0 over the whole space, for a random f, with the neighbour sets equal
    to the Python enumeration and the weights equal to kappa(p(y) / p(x))."""
    tuples, seqs, lengths = _space()
    p = np.exp([py_table_log_prob(t) for t in tuples])
    p /= p.sum()
    nb, codes, own_codes = _jitted_neighbours(neighbourhood, window)(seqs, lengths)
    barker = np.asarray(nb.weights)
    # The sqrt weights from the same ratios: kappa_sqrt = sqrt(r), r = w / (1 - w) for Barker's
    # w = r / (1 + r) (its own code path is checked in the Stein-kernel tests below).
    ratio = np.where(barker > 0, barker / np.where(barker < 1, 1 - barker, 1.0), 0.0)
    for balance, weights in (("barker", barker), ("sqrt", np.sqrt(ratio))):
        # The sets and weights, sequence by sequence.
        for i in (0, 3, 9, 17, 30):
            valid = barker[i] > 0
            got = {
                tuple(np.asarray(nb.seqs[i, j, : nb.lengths[i, j]])): weights[i, j]
                for j in np.flatnonzero(valid)
            }
            expected = {
                y: py_kappa(py_table_log_prob(y) - py_table_log_prob(tuples[i]), balance)
                for y in py_neighbours(tuples[i], S_ENUM, neighbourhood, window)
                if py_table_log_prob(y) > -math.inf
            }
            assert got.keys() == expected.keys() and int(valid.sum()) == len(expected)
            np.testing.assert_allclose([got[y] for y in expected], list(expected.values()))
        fy, fx = F_TABLE[np.asarray(codes)], F_TABLE[np.asarray(own_codes)]
        stein = np.sum(weights * (fy - fx[:, None]), axis=1)
        assert np.abs(stein).max() > 0.1  # A_p f itself is not zero ...
        assert abs(p @ stein) < 1e-12  # ... but its mean under p is


STEIN_CASES = {
    # (kernel, Python kernel, neighbourhood, window, balances): one compilation each
    "hamming-zs2": (ks.HammingKernel(), py_hamming, "zs", 2, ("barker", "sqrt")),
    "hamming2-zsinf": (
        ks.HammingKernel(2.0),
        functools.partial(py_hamming, lengthscale=2.0),
        "zs_inf",
        None,
        ("barker", "sqrt"),
    ),
    "hamming-substitution": (
        ks.HammingKernel(),
        py_hamming,
        "substitution",
        None,
        ("barker", "sqrt"),
    ),
    "ssk-zs1": (
        ks.StringSubsequenceKernel(2, 0.6),
        functools.partial(py_ssk, order=2, decay=0.6),
        "zs",
        1,
        ("sqrt",),
    ),
    "length+csk-zsinf": (
        ks.LengthKernel(1.5) + 0.5 * ks.ContiguousSubsequenceKernel(1, 3),
        lambda x, y: py_length(x, y, 1.5) + 0.5 * py_csk(x, y, 1, 3),
        "zs_inf",
        None,
        ("barker",),
    ),
}


@pytest.mark.parametrize("case", list(STEIN_CASES))
def test_stein_kernel_matches_python_double_sum_and_has_zero_mean(x64, case):
    """H = [h(x_i, x_j)] over the whole space equals the explicit double sum over neighbour
    sets (1e-10), and E_{x, x' ~ p} h(x, x') = 0 exactly; indeed H p = 0, since
    E_{x' ~ p} h(x, x') = 0 for every x."""
    kernel, py_kernel, neighbourhood, window, balances = STEIN_CASES[case]
    tuples, seqs, lengths = _space()
    p = np.exp([py_table_log_prob(t) for t in tuples])
    p /= p.sum()
    columns = np.concatenate([p[:, None], np.eye(len(tuples))], axis=1)
    for balance in balances:
        out = ks.zs_stein_matvec(
            seqs,
            lengths,
            table_log_prob,
            kernel,
            columns,
            num_states=S_ENUM,
            neighbourhood=neighbourhood,
            window=window,
            balance=balance,
            block_size=7,  # several row blocks, the last one padded
        )
        h = np.asarray(out[:, 1:])
        expected = py_stein_matrix(
            tuples, py_table_log_prob, py_kernel, S_ENUM, neighbourhood, window, balance
        )
        np.testing.assert_allclose(h, expected, rtol=1e-10, atol=1e-12)
        scale = np.abs(h).max()
        assert np.abs(np.asarray(out[:, 0])).max() < 1e-12 * scale
        assert abs(p @ h @ p) < 1e-13 * scale


def test_num_neighbours_and_padding_convention():
    """N = J S + J S + J slots for ZS_J (fewer where J exceeds the width), and neighbours are
    held at width W + 1: an insertion into a full-width sequence still fits."""
    assert ks.num_neighbours(6, 3, neighbourhood="zs", window=2) == 2 * 3 + 2 * 3 + 2
    assert ks.num_neighbours(6, 3, neighbourhood="zs_inf") == 6 * 3 + 7 * 3 + 6
    assert ks.num_neighbours(6, 3, neighbourhood="substitution", window=None) == 18
    uniform = lambda s, ln: jnp.zeros(())
    neighbours = jax.jit(lambda s, ln: ks.zs_neighbours(s, ln, uniform, num_states=3, window=1))
    nb = neighbours(jnp.array([1, 0, 2]), 3)
    assert nb.seqs.shape == (3 + 3 + 1, 4)
    appended = {tuple(np.asarray(s)) for s, ln in zip(nb.seqs, nb.lengths, strict=True) if ln == 4}
    assert appended == {(1, 0, 2, 0), (1, 0, 2, 1), (1, 0, 2, 2)}
    # A uniform model gives Barker weights 1/2 to every real neighbour.
    weights = np.asarray(nb.weights)
    assert np.unique(weights[weights > 0]).tolist() == [0.5] and (weights > 0).sum() == 6
    empty = neighbours(jnp.zeros(3, jnp.int32), 0)
    assert np.asarray(empty.weights).sum() == 3 * 0.5  # only the three insertions


def test_neighbourhood_objects_are_what_the_strings_mean():
    """ "zs", "zs_inf" and "substitution" (with `window`) are `Edits(window)`, `Edits(None)` and
    `Substitutions(window)`: the same slot counts and the same statistic (one compilation)."""
    assert ks.num_neighbours(6, 3, neighbourhood=ks.Edits(2)) == 2 * 3 + 2 * 3 + 2
    assert ks.num_neighbours(6, 3, neighbourhood=ks.Edits(None)) == ks.num_neighbours(
        6, 3, neighbourhood="zs_inf"
    )
    assert ks.num_neighbours(6, 3, neighbourhood=ks.Substitutions()) == 18
    assert ks.Edits(2).edited_tail == 2 and ks.Substitutions().edited_tail is None
    args = (_SEQS, _LENS, _MODEL.log_prob, _K)
    by_name = ks.ksd2_seq(*args, num_states=3, neighbourhood="substitution", window=2)
    by_object = ks.ksd2_seq(*args, num_states=3, neighbourhood=ks.Substitutions(2))
    assert float(by_name) == float(by_object)


class _PlainHamming(ks.SequenceKernel):
    """The Hamming kernel through `__call__` alone: the generic Gram route of `stein_matvec`."""

    def __call__(self, x, y):
        return ks.HammingKernel()(x, y)


class _PlainLength(ks.SequenceKernel):
    """The length kernel without its feature map: the generic Gram route."""

    def __call__(self, x, y):
        return ks.LengthKernel(1.5)(x, y)


def test_stein_matvec_routes_agree(x64):
    """A kernel that only defines `__call__` gets the generic Stein matvec; it matches the
    built-in kernels' own routes (Hamming's short-tail block under ZS_2, the length kernel's
    feature map), also inside a sum."""
    tuples, seqs, lengths = _space()
    v = np.random.default_rng(0).normal(size=(len(tuples), 2))
    opts = dict(num_states=S_ENUM, neighbourhood=ks.Edits(2), block_size=9)
    fast = ks.HammingKernel() + ks.LengthKernel(1.5)
    plain = _PlainHamming() + _PlainLength()
    got = ks.zs_stein_matvec(seqs, lengths, table_log_prob, fast, v, **opts)
    expected = ks.zs_stein_matvec(seqs, lengths, table_log_prob, plain, v, **opts)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------------------- kernels


def _random_strings(rng, count, width, num_states, min_length=0):
    lengths = rng.integers(min_length, width + 1, count)
    seqs = rng.integers(0, num_states, (count, width))
    seqs = np.where(np.arange(width)[None, :] < lengths[:, None], seqs, 0)
    return seqs.astype(np.int32), lengths.astype(np.int32)


KERNEL_CASES = {
    "hamming": (ks.HammingKernel(), py_hamming),
    "hamming-1.5": (ks.HammingKernel(1.5), functools.partial(py_hamming, lengthscale=1.5)),
    "csk-1-3": (ks.ContiguousSubsequenceKernel(1, 3), functools.partial(py_csk, lo=1, hi=3)),
    "ssk-2": (ks.StringSubsequenceKernel(2, 0.7), functools.partial(py_ssk, order=2, decay=0.7)),
    "ssk-3-raw": (
        ks.StringSubsequenceKernel(3, 0.5, normalise=False),
        functools.partial(py_ssk, order=3, decay=0.5, normalise=False),
    ),
    "length": (ks.LengthKernel(2.0), functools.partial(py_length, bandwidth=2.0)),
}


@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernels_match_naive_python(x64, case):
    """Gram blocks (and single-pair calls) against the naive definitions on short strings;
    the string-subsequence DP against brute-force enumeration of index tuples."""
    kernel, py_kernel = KERNEL_CASES[case]
    rng = np.random.default_rng(1)
    xs, xl = _random_strings(rng, 9, 6, 3)
    ys, yl = _random_strings(rng, 7, 6, 3)
    xs[0, :4], xl[0] = [0, 1, 0, 1], 4  # equal strings and repeated substrings
    ys[0, :4], yl[0] = [0, 1, 0, 1], 4
    xs[np.arange(6)[None, :] >= xl[:, None]] = 2  # padding is ignored, whatever it holds
    expected = np.array(
        [
            [py_kernel(tuple(a[:la]), tuple(b[:lb])) for b, lb in zip(ys, yl, strict=True)]
            for a, la in zip(xs, xl, strict=True)
        ]
    )
    gram = jax.jit(kernel.gram)((xs, xl), (ys, yl))
    np.testing.assert_allclose(gram, expected, rtol=1e-12, atol=1e-14)
    if type(kernel).gram is not ks.SequenceKernel.gram:  # else gram is vmap(__call__)
        single = jax.jit(kernel)((xs[0], xl[0]), (ys[1], yl[1]))
        np.testing.assert_allclose(single, expected[0, 1], rtol=1e-12, atol=1e-14)
    if kernel.feature_dim(3, 6) is not None:
        features = jax.jit(lambda s, ln: kernel.features(s, ln, 3))
        products = features(xs, xl) @ features(ys, yl).T
        np.testing.assert_allclose(products, expected, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------------- models


def _chain_arrays():
    init = np.array([0.5, 0.3, 0.2])
    trans = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.3, 0.4]])
    return init, trans


def test_model_log_probs_are_exact_and_normalised(x64):
    """log_prob equals a Python loop over the chain and sums to one over every sequence of
    length <= max_length (the truncation is part of the model)."""
    init, trans = _chain_arrays()
    first = models.MarkovChain(init, trans, 0.3, max_length=5)
    second = models.random_second_order_chain(jax.random.key(3), 3, mean_length=2.5, max_length=5)
    walk = models.random_walk_with_memory(4, mean_length=3.0, memory=0.9, max_length=5)
    tuples = [t for n in range(7) for t in itertools.product(range(3), repeat=n)]
    seqs = np.array([list(t) + [0] * (6 - len(t)) for t in tuples], np.int32)
    lengths = np.array([len(t) for t in tuples], np.int32)

    def py_first(x):
        if not 1 <= len(x) <= 5:
            return -math.inf
        lp = math.log(init[x[0]]) + sum(math.log(trans[a, b]) for a, b in itertools.pairwise(x))
        lp += math.log(0.3) + (len(x) - 1) * math.log(0.7) - math.log(1 - 0.7**5)
        return lp

    got = np.asarray(jax.jit(jax.vmap(first.log_prob))(seqs, lengths))
    np.testing.assert_allclose(got, [py_first(t) for t in tuples], rtol=1e-12)
    noisy = np.where(np.arange(6)[None, :] < lengths[:, None], seqs, 1).astype(np.int32)
    np.testing.assert_allclose(jax.jit(jax.vmap(first.log_prob))(noisy, lengths), got)
    for model in (first, second):
        lp = np.asarray(jax.jit(jax.vmap(model.log_prob))(seqs, lengths))
        np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-12)
    # The walk: 4 symbols (needs a larger space), up-steps continue upwards w.p. ~memory.
    w = np.asarray(walk.transition)
    assert w[0, 1, 2] == pytest.approx(0.9, abs=0.01) and w[0, 1, 0] == pytest.approx(0.1, abs=0.01)
    assert w[1, 0, 3] == pytest.approx(0.5, abs=0.01)  # after a down-step: plain walk


def test_model_samples_follow_the_model(x64):
    """Empirical frequencies of lengths and first two symbols against log_prob's marginals."""
    init, trans = _chain_arrays()
    model = models.MarkovChain(init, trans, 0.3, max_length=6)
    seqs, lengths = model.sample(jax.random.key(4), 20000, 8)
    seqs, lengths = np.asarray(seqs), np.asarray(lengths)
    assert seqs.shape == (20000, 8) and lengths.min() >= 1 and lengths.max() <= 6
    assert (seqs[np.arange(8)[None, :] >= lengths[:, None]] == 0).all()  # zero padding
    p_len = 0.3 * 0.7 ** np.arange(6) / (1 - 0.7**6)
    np.testing.assert_allclose(np.bincount(lengths, minlength=7)[1:] / 20000, p_len, atol=0.012)
    np.testing.assert_allclose(np.bincount(seqs[:, 0], minlength=3) / 20000, init, atol=0.012)
    two = lengths >= 2
    pair = np.bincount(3 * seqs[two, 0] + seqs[two, 1], minlength=9).reshape(3, 3) / two.sum()
    np.testing.assert_allclose(pair, init[:, None] * trans, atol=0.012)
    # Without max_length, lengths past the width are cut to it.
    free = models.MarkovChain(init, trans, 0.05)
    _, cut = free.sample(jax.random.key(5), 2000, 8)
    assert int(np.max(cut)) == 8 and np.mean(np.asarray(cut) == 8) > 0.5


# ------------------------------------------------------------------ statistic and bootstrap


def test_statistics_and_bootstrap_nulls_match_dense_formulas_and_compile_once(x64):
    """ksd_seq (the U-statistic), the wild test (the V-statistic) and the bootstrap draws from
    the Python double sum H; a second call with new data and a new model of the same shapes
    reuses the compiled test."""
    model = models.random_second_order_chain(jax.random.key(6), 3, mean_length=3.0, max_length=6)
    seqs, lengths = model.sample(jax.random.key(7), 12, 6)
    kernel = ks.HammingKernel()
    opts = dict(num_states=3, window=2)
    n = 12
    tuples = [tuple(np.asarray(s[:ln])) for s, ln in zip(seqs, lengths, strict=True)]
    log_prob = jax.jit(lambda s, ln: model.log_prob(s, ln))  # width 7: room to insert
    lp = lambda x: float(log_prob(jnp.array([*x] + [0] * (7 - len(x)), jnp.int32), len(x)))
    h = py_stein_matrix(tuples, lp, py_hamming, 3, "zs", 2, "barker")
    u_stat = (h.sum() - np.trace(h)) / (n * (n - 1))
    np.testing.assert_allclose(
        ks.ksd2_seq(seqs, lengths, model.log_prob, kernel, **opts), u_stat, rtol=1e-10
    )
    key = jax.random.key(8)
    test = functools.partial(
        km.ksd_seq_test, key, seqs, lengths, model.log_prob, kernel, num_bootstrap=30, **opts
    )
    res = test(bootstrap="multinomial")
    draws = jax.jit(multinomial_weights, static_argnums=(1, 2, 3))
    w = np.asarray(draws(key, n, 30, jnp.float64)) - 1 / n
    h_off = h - np.diag(np.diag(h))
    np.testing.assert_allclose(res.statistic, u_stat, rtol=1e-10)
    np.testing.assert_allclose(
        res.null_samples, np.einsum("bi,ij,bj->b", w, h_off, w), rtol=1e-9, atol=1e-14
    )
    assert res.p_value == (1 + np.sum(np.asarray(res.null_samples) >= u_stat)) / 31
    wild = test(bootstrap="wild", flip_probability=0.3)
    # Each wild draw is s^T H s / n^2 for one of the 2^n sign vectors s (all enumerated).
    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=n)))
    forms = np.einsum("bi,ij,bj->b", signs, h, signs) / n**2
    np.testing.assert_allclose(wild.statistic, h.mean(), rtol=1e-10)
    gaps = np.abs(np.asarray(wild.null_samples)[:, None] - forms[None, :]).min(axis=1)
    assert gaps.max() < 1e-12 * np.abs(forms).max()
    # Compile once per shape: new data, a new model (same shapes), another balance.
    # The jitted core's compilations (`eqx.filter_jit` keeps them in a `jax.jit`).
    core = _ksd._bootstrap_test._cached
    before = core._cache_size()
    other = models.random_second_order_chain(jax.random.key(9), 3, mean_length=2.0, max_length=6)
    seqs2, lengths2 = other.sample(jax.random.key(10), 12, 6)
    for m, b in ((other, "barker"), (model, "sqrt")):
        km.ksd_seq_test(
            key, seqs2, lengths2, m.log_prob, kernel, num_bootstrap=30, balance=b, **opts
        )
    assert core._cache_size() == before


# ----------------------------------------------------------------------- level and power

_T_STICKY = np.array([[0.7, 0.15, 0.15], [0.15, 0.7, 0.15], [0.15, 0.15, 0.7]])
_T_SWITCH = np.array([[0.2, 0.4, 0.4], [0.4, 0.2, 0.4], [0.4, 0.4, 0.2]])
_WIDTH = 10


def _models():
    init = np.ones(3) / 3
    target = models.MarkovChain(init, _T_STICKY, 0.2, max_length=_WIDTH)
    return target, {
        "null": target,
        "transitions": models.MarkovChain(init, _T_SWITCH, 0.2, max_length=_WIDTH),
        "lengths": models.MarkovChain(init, _T_STICKY, 0.5, max_length=_WIDTH),
    }


@functools.cache
def _rejections(kernel, n, bootstrap):
    """A jitted (keys, sampling model, target model) -> rejections, one test per key."""

    def one(key, model, target):
        k_data, k_test = jax.random.split(key)
        seqs, lengths = model.sample(k_data, n, _WIDTH)
        return km.ksd_seq_test(
            k_test,
            seqs,
            lengths,
            target.log_prob,
            kernel,
            num_states=3,
            num_bootstrap=199,
            bootstrap=bootstrap,
        ).reject

    return jax.jit(lambda keys, model, target: jax.lax.map(lambda k: one(k, model, target), keys))


def _rate(kernel, n, model, target, replicates, seed, bootstrap="wild"):
    # The same number of replicates everywhere: the key array's shape is part of the compiled
    # function (compiling dominates here; 1000 tests run in about a second).
    keys = jax.random.split(jax.random.key(seed), replicates)
    return float(jnp.mean(_rejections(kernel, n, bootstrap)(keys, model, target)))


def test_level_and_power_grow_with_n():
    """Wild bootstrap: the level at alpha = 0.05 over 1000 replicates lies in [0.028, 0.074]
    (the 99% binomial interval at 500), and the power against changed transitions and against a
    changed stop probability grows from n = 10 to n = 30. The kernel adds a (down-weighted)
    substring kernel, which sees the transitions, to a kernel on the lengths, which sees the
    stop probability."""
    target, models = _models()
    kernel = 0.03 * ks.ContiguousSubsequenceKernel(1, 2) + ks.LengthKernel(3.0)
    level = _rate(kernel, 30, models["null"], target, 1000, seed=1)
    assert 0.028 <= level <= 0.074, level
    small = _rate(kernel, 10, models["transitions"], target, 1000, seed=2)
    large = _rate(kernel, 30, models["transitions"], target, 1000, seed=3)
    assert large > 0.7 and large > small + 0.4, (small, large)
    small = _rate(kernel, 10, models["lengths"], target, 1000, seed=4)
    large = _rate(kernel, 30, models["lengths"], target, 1000, seed=5)
    assert large > 0.35 and large > small + 0.15, (small, large)


@pytest.mark.slow
@pytest.mark.parametrize("bootstrap,n", [("wild", 60), ("multinomial", 200)])
def test_level_full(bootstrap, n):
    """1000 replicates. The multinomial bootstrap of the U-statistic over-rejects at small n
    (about 0.08 at n = 20 and 0.07 at n = 40 here), so it is checked at n = 200."""
    target, models = _models()
    level = _rate(ks.HammingKernel(), n, models["null"], target, 1000, seed=11, bootstrap=bootstrap)
    assert 0.028 <= level <= 0.074, level


# ----------------------------------------------------------------------------- experiment


def test_experiment_tiny_run(tmp_path):
    cfg = load_config(
        "configs/ksd_seq.yaml",
        [
            "params.num_states=4",
            "params.max_length=8",
            "params.sample_sizes=[8]",
            "params.kernels=[length]",
            "params.num_replicates=6",
            "params.num_bootstrap=20",
            "params.alt_mean_length=1.5",
            "params.batch_size=2",  # 3 rows of 2 replicates
            "devices.count=1",
        ],
    )
    run_dir = run_experiment(cfg, tmp_path, quiet=True)
    results = json.loads((run_dir / "results.json").read_text())["results"]
    records = results["records"]
    # the rows split over 2 devices: the same rates
    two = run_experiment(
        dataclasses.replace(cfg, devices=DevicesConfig(count=2)), tmp_path, quiet=True
    )
    rates = [r["rejection_rate"] for r in records]
    assert [
        r["rejection_rate"]
        for r in json.loads((two / "results.json").read_text())["results"]["records"]
    ] == rates
    assert {(r["scenario"], r["n"]) for r in records} == {
        (s, 8) for s in ("null", "transitions", "lengths")
    }
    assert all(0.0 <= r["rejection_rate"] <= 1.0 and r["seconds"] > 0 for r in records)
    assert 1.0 < results["mean_length_capped"] < 8.0
    assert (run_dir / "plots" / "ksd_seq.png").is_file()
    with pytest.raises(ConfigError, match="memory"):
        load_config("configs/ksd_seq.yaml", ["params.alt_memory=1.5"])
    with pytest.raises(ConfigError, match="kernels"):
        load_config("configs/ksd_seq.yaml", ["params.kernels=[gaussian]"])


# ------------------------------------------------------------------------------ bad input

_SEQS = np.array([[0, 1, 2, 0], [2, 2, 0, 0], [1, 0, 0, 0]], np.int32)
_LENS = np.array([4, 2, 1], np.int32)
_MODEL = models.MarkovChain(np.ones(3) / 3, np.ones((3, 3)) / 3, 0.3, max_length=4)
_K = ks.HammingKernel()


def _stat(**kw):
    args = dict(seqs=_SEQS, lengths=_LENS, log_prob=_MODEL.log_prob, kernel=_K, num_states=3)
    args.update(kw)
    return ks.ksd2_seq(
        args.pop("seqs"), args.pop("lengths"), args.pop("log_prob"), args.pop("kernel"), **args
    )


def _test(**kw):
    return km.ksd_seq_test(None, _SEQS, _LENS, _MODEL.log_prob, _K, num_states=3, **kw)


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: _stat(seqs=_SEQS.astype(np.float32)), TypeError, "`seqs`.*integers"),
        (lambda: _stat(seqs=_SEQS[0]), ValueError, "`seqs`.*shape"),
        (lambda: _stat(lengths=_LENS[:2]), ValueError, "`lengths`.*shape"),
        (lambda: _stat(lengths=_LENS[:, None]), ValueError, "`lengths`.*shape"),
        (lambda: _stat(lengths=np.array([5, 2, 1])), ValueError, "`lengths`.*\\[0, W\\]"),
        (lambda: _stat(lengths=np.array([-1, 2, 1])), ValueError, "`lengths`"),
        (
            lambda: _stat(seqs=_SEQS.copy() + np.eye(3, 4, dtype=np.int32) * 3),
            ValueError,
            "`seqs`.*tokens",
        ),
        (lambda: _stat(seqs=_SEQS[:1], lengths=_LENS[:1]), ValueError, "at least 2"),
        (lambda: _stat(num_states=0), ValueError, "`num_states`"),
        (lambda: _stat(num_states=3.0), TypeError, "`num_states`"),
        (lambda: _stat(neighbourhood="gibbs"), ValueError, "`neighbourhood`"),
        (lambda: _stat(balance="mh"), ValueError, "`balance`"),
        (lambda: _stat(window=0), ValueError, "`window`"),
        (lambda: _stat(neighbourhood=ks.Edits(2), window=2), ValueError, "`window`"),
        (lambda: _stat(neighbourhood=2), TypeError, "`neighbourhood`"),
        (lambda: ks.Edits(0), ValueError, "`window`"),
        (lambda: _stat(kernel=ks.HammingKernel), TypeError, "`kernel`"),
        (lambda: _stat(log_prob="model"), TypeError, "`log_prob`"),
        (
            lambda: _stat(log_prob=lambda s, ln: s.astype(jnp.float32)),
            ValueError,
            "`log_prob`.*scalar",
        ),
        (
            lambda: _stat(log_prob=models.MarkovChain(np.ones(3) / 3, np.eye(3), 0.3).log_prob),
            ValueError,
            "`log_prob` is -inf",
        ),
        (lambda: _test(alpha=1.5), ValueError, "`alpha`"),
        (lambda: _test(num_bootstrap=0), ValueError, "`num_bootstrap`"),
        (lambda: _test(num_bootstrap=10.0), TypeError, "`num_bootstrap`"),
        (lambda: _test(bootstrap="block"), ValueError, "`bootstrap`"),
        (lambda: _test(flip_probability=0.0), ValueError, "`flip_probability`"),
        (lambda: ks.HammingKernel(-1.0), ValueError, "`lengthscale`"),
        (lambda: ks.ContiguousSubsequenceKernel(3, 2), ValueError, "`max_length`"),
        (lambda: ks.StringSubsequenceKernel(2, 1.5), ValueError, "`decay`"),
        (
            lambda: models.MarkovChain(np.ones(3) / 3, np.ones((3, 2)) / 2, 0.3),
            ValueError,
            "`transition`",
        ),
        (
            lambda: models.MarkovChain(np.ones(3) / 3, np.ones((3, 3)), 0.3),
            ValueError,
            "`transition`",
        ),
        (
            lambda: models.MarkovChain(np.ones(3) / 3, np.ones((3, 3)) / 3, 1.0),
            ValueError,
            "`stop_probability`",
        ),
        (lambda: _MODEL.sample(jax.random.key(0), 5, 3), ValueError, "`width`"),
        (lambda: models.random_walk_with_memory(2), ValueError, "`num_states`"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
