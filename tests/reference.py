"""Dense NumPy (float64) reference formulas, written independently of kmethods."""

import numpy as np


def sqdist(x, y):
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def gram(name, x, y, **p):
    r2 = sqdist(x, y)
    r = np.sqrt(r2)
    if name == "gaussian":
        return np.exp(-r2 / (2 * p["bandwidth"] ** 2))
    if name == "imq":
        return (p["c"] ** 2 + r2 / p["bandwidth"] ** 2) ** p["beta"]
    if name == "laplace":
        return np.exp(-r / p["bandwidth"])
    if name == "matern":
        nu, h = p["nu"], p["bandwidth"]
        if nu == 0.5:
            return np.exp(-r / h)
        if nu == 1.5:
            a = np.sqrt(3) * r / h
            return (1 + a) * np.exp(-a)
        a = np.sqrt(5) * r / h
        return (1 + a + a**2 / 3) * np.exp(-a)
    if name == "sinc":
        return np.prod(np.sinc((x[:, None, :] - y[None, :, :]) / p["bandwidth"]), axis=-1)
    if name == "linear":
        return x @ y.T
    if name == "polynomial":
        return (p["scale"] * (x @ y.T) + p["c"]) ** p["degree"]
    raise ValueError(name)


def mmd2(kxx, kyy, kxy, unbiased):
    n, m = kxx.shape[0], kyy.shape[0]
    if unbiased:
        return (
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def hsic(k, l_mat, unbiased):
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - 1.0 / n
        return np.trace(k @ h @ l_mat @ h) / n**2
    kt = k - np.diag(np.diag(k))
    lt = l_mat - np.diag(np.diag(l_mat))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2.0 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def stein_gram(name, x, s, **p):
    """Langevin Stein kernel matrix from hand-derived kernel derivatives."""
    d = x.shape[1]
    diff = x[:, None, :] - x[None, :, :]  # x_i - x_j
    r2 = (diff**2).sum(-1)
    ss = s @ s.T
    # (s_j - s_i) . (x_i - x_j)
    cross = np.einsum("jk,ijk->ij", s, diff) - np.einsum("ik,ijk->ij", s, diff)
    if name == "gaussian":
        h2 = p["bandwidth"] ** 2
        k = np.exp(-r2 / (2 * h2))
        return k * ss + (-k / h2) * cross + (d / h2 - r2 / h2**2) * k
    if name == "imq":
        c, beta, h2 = p["c"], p["beta"], p["bandwidth"] ** 2
        base = c**2 + r2 / h2
        k = base**beta
        d1 = beta / h2 * base ** (beta - 1)
        d2 = beta * (beta - 1) / h2**2 * base ** (beta - 2)
        return k * ss + 2 * d1 * cross - 2 * d * d1 - 4 * d2 * r2
    if name == "linear":
        k = x @ x.T
        return k * ss + (s * x).sum(1)[:, None] + (s * x).sum(1)[None, :] + d
    if name == "polynomial":
        a, c, deg = p["scale"], p["c"], p["degree"]
        t = a * (x @ x.T) + c
        k = t**deg
        # s_j . grad_x k(x_i, x_j) = p a t^{p-1} s_j.x_j; s_i . grad_y k = p a t^{p-1} s_i.x_i
        gx = deg * a * t ** (deg - 1) * (x * s).sum(1)[None, :]
        gy = deg * a * t ** (deg - 1) * (x * s).sum(1)[:, None]
        tr = deg * a * d * t ** (deg - 1) + deg * (deg - 1) * a**2 * t ** (deg - 2) * (x @ x.T)
        return k * ss + gx + gy + tr
    raise ValueError(name)


def kt_split(K, m, uniforms, delta):
    """KT-SPLIT as written in Dwivedi & Mackey (2021), Algorithm 1a: the streaming loop.

    Pairs arrive one at a time; after pair i, every level j whose parents have received two new
    points since their last halving step sends one of the two to each child. uniforms[j - 1,
    c * (n / 2^j) + k] is the draw for the k-th pair of parent (j - 1, c).
    """
    n = K.shape[0]
    coresets = {(j, c): [] for j in range(m + 1) for c in range(2**j)}
    sig2 = {key: 0.0 for key in coresets}
    count = {key: 0 for key in coresets}
    for i in range(n // 2):
        coresets[(0, 0)] += [2 * i, 2 * i + 1]
        for j in range(1, m + 1):
            if (i + 1) % 2 ** (j - 1):
                break
            log_mult = 2 * np.log(2 * n * m / (delta * 2 ** (j - 1)))
            for c in range(2 ** (j - 1)):
                parent = (j - 1, c)
                x1, x2 = coresets[parent][-2:]
                b2 = K[x1, x1] + K[x2, x2] - 2 * K[x1, x2]
                s2 = sig2[parent]
                a = max(np.sqrt(s2 * b2 * log_mult), b2)
                if a > 0:
                    sig2[parent] = s2 + b2 * max(0.0, 1 + (b2 - 2 * a) * s2 / a**2)
                else:
                    a = 1.0
                left, right = coresets[(j, 2 * c)], coresets[(j, 2 * c + 1)]
                alpha = sum(K[x1, r] - K[x2, r] for r in right) - sum(
                    K[x1, z] - K[x2, z] for z in left
                )
                u = uniforms[j - 1, c * (n // 2**j) + count[parent]]
                count[parent] += 1
                if u <= 0.5 * (1 - alpha / a):
                    left.append(x2)
                    right.append(x1)
                else:
                    left.append(x1)
                    right.append(x2)
    return np.array([coresets[(m, c)] for c in range(2**m)])


def kt_swap(K, candidates, weights=None):
    """KT-SWAP (Algorithm 1b) on a dense kernel matrix: best candidate, then greedy swaps,
    toward the empirical distribution of all points (or sum_i weights_i delta_i)."""
    mean_k = K.mean(axis=1) if weights is None else K @ weights
    scores = [K[np.ix_(c, c)].mean() - 2 * mean_k[c].mean() for c in candidates]
    best = np.array(candidates[int(np.argmin(scores))])
    s = len(best)
    stat = np.diag(K) / s - 2 * mean_k + 2 / s * K[:, best].sum(axis=1)
    for i in range(s):
        stat -= 2 / s * K[best[i]]
        best[i] = int(np.argmin(stat))
        stat += 2 / s * K[best[i]]
    return best


def mmd_to_indices(K, idx, weights=None):
    """MMD between all points (or sum_i weights_i delta_i) and the points idx (repeats
    counted), from a dense K."""
    w = np.full(len(K), 1.0 / len(K)) if weights is None else weights
    return np.sqrt(max(w @ K @ w - 2 * (K @ w)[idx].mean() + K[np.ix_(idx, idx)].mean(), 0.0))
