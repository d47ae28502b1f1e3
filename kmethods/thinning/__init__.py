"""Kernel thinning (KT), target / root / power KT, KT+, and Compress++.

Kernel thinning compresses n points to about sqrt(n) whose empirical distribution is much closer
(in MMD) to the input's than a same-size i.i.d. subsample: O(n^{-1/2} log n) instead of
O(n^{-1/4}).

References:
  Dwivedi & Mackey (2021), "Kernel Thinning", arXiv:2105.05842: Algorithm 1 (KT), 1a (KT-SPLIT,
    the self-balancing Hilbert walk with adaptive thresholds), 1b (KT-SWAP).
  Dwivedi & Mackey (2022), "Generalized Kernel Thinning", ICLR, arXiv:2110.01593: target KT
    (split with the target kernel itself), power KT (split with a fractional power k_alpha of
    the kernel; alpha = 1/2 is root KT) and KT+ (split with k / ||k||_inf + k_alpha /
    ||k_alpha||_inf).
  Shetty, Dwivedi & Mackey (2022), "Distribution Compression in Near-linear Time", ICLR,
    arXiv:2111.07941: Compress and Compress++.

How the computation is laid out
-------------------------------
KT-SPLIT halves its input m times. Round j (0-based) holds 2^j coresets of n / 2^j points, each
in arrival order; every coreset is halved by walking its consecutive pairs (x, x') in order and
sending one point to each child. Doing the rounds one after another is the same algorithm as the
paper's interleaved (streaming) loop: a pair's fate depends only on earlier pairs of its own
parent coreset. All 2^j coresets of a round advance together, on arrays whose shapes do not
depend on the round (`_halve`), so the m rounds are one `fori_loop` body: one compilation per
input shape, whatever the seed, bandwidth, delta or round.

For one coreset the walk keeps psi, the difference of the kernel sums of the two children so far,
as its values g_q = psi(x_q) at every point of the coreset. A pair needs
alpha = <k(x, .) - k(x', .), psi> = g(x) - g(x'), and after the decision g moves by
+-(k(x, .) - k(x', .)). Each pass takes the next `block` pairs of every coreset: their small
Gram block gives the inner products for the sequential decisions, then one blocked evaluation
of those 2 block points against the coreset's points (positions viewed as rows that never
straddle two coresets) moves g. Memory is O(block * n), never n x n; the kernel is evaluated
about 2 n^2 times in all (the 2 n^2 floor of KT).

KT-SWAP scores the 2^m candidates and the standard-thinning coreset by MMD to the whole input
(kernel row means from `kmethods.pairwise`, blocked), then swaps each point of the best one in
turn for the input point that lowers the MMD most (Algorithm 1b), holding one length-n vector.

Compress (Compress++'s halvings) lays its symmetrized halvings out differently: each node of
l points is one KT-SPLIT round and a swap pass, and all the kernel values both need are
entries of the node's l x l matrix, so it is evaluated once per node (about l^2 evaluations
instead of 10 l^2) and the walk and the swap read it, all nodes of a level (of every bin, in
CTT) advancing together in batches of at most 2^24 matrix entries. A node whose matrix alone
is larger is halved as KT-SPLIT above, with kernel rows evaluated as needed.

Sizes: with out_size s, KT runs m = floor(log2(n / s)) halving rounds on n' = s 2^m points. When
n' < n, the n - n' points left out of KT-SPLIT are chosen uniformly at random (a documented
drop); KT-SWAP still measures MMD against all n points and may swap any of them in.
"""

from kmethods.thinning._baselines import Thinner as Thinner
from kmethods.thinning._baselines import iid_thin as iid_thin
from kmethods.thinning._baselines import mmd_to_sample as mmd_to_sample
from kmethods.thinning._baselines import standard_thin as standard_thin
from kmethods.thinning._power import kt_plus_kernel as kt_plus_kernel
from kmethods.thinning._power import power_kernel as power_kernel
from kmethods.thinning._power import root_kernel as root_kernel

__all__ = [
    "Thinner",
    "iid_thin",
    "kt_plus_kernel",
    "mmd_to_sample",
    "power_kernel",
    "root_kernel",
    "standard_thin",
]
