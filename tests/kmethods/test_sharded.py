"""Exact kernel statistics across devices: `mesh=` splits the row blocks over every mesh axis.

On the 8 simulated CPU devices (conftest), each statistic and test on a mesh equals the
one-device result up to the float32 rounding of its kernel sums (taken in another order):
absolute 2e-6 for the unit-height Gaussian kernel, and the same permutation decisions for the
same key. The compiled per-device memory plan shrinks about 8-fold; rows that do not divide
over the devices are padded and masked; two processes joined by `jax.distributed` (the
runner's `devices:` section) give one process's value.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kmethods as km
from kmethods.pairwise import kernel_matvec, kernel_sum

ROOT = pathlib.Path(__file__).resolve().parents[2]
ATOL = 2e-6  # float32 rounding of O(1) kernel sums; MMD^2 is a small difference of them
KERNEL = km.Gaussian(1.0)  # unit height: k(x, x) = 1


def _mesh(shape=(4, 2)):
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    return jax.make_mesh(shape, ("rows", "more")[: len(shape)])


def _samples(n, m, d=2, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (n, d))
    y = jax.random.normal(ky, (m, d)) * 1.1 + 0.05
    return x, y


def _statistics(x, y, mesh):
    """mmd2 (U and V), hsic (biased and unbiased) and ksd2 (score -z) of x, y."""
    n = min(x.shape[0], y.shape[0])
    return {
        "mmd2": km.mmd2(x, y, KERNEL, mesh=mesh),
        "mmd2_v": km.mmd2(x, y, KERNEL, unbiased=False, mesh=mesh),
        "hsic": km.hsic(x[:n], y[:n], KERNEL, KERNEL, mesh=mesh),
        "hsic_u": km.hsic(x[:n], y[:n], KERNEL, KERNEL, unbiased=True, mesh=mesh),
        "ksd2": km.ksd2(x, lambda z: -z, KERNEL, mesh=mesh),
    }


def _assert_same_test(sharded, one):
    """Statistic and null draws to `ATOL`; the same p-value and decision."""
    np.testing.assert_allclose(sharded.statistic, one.statistic, rtol=0, atol=ATOL)
    np.testing.assert_allclose(sharded.null_samples, one.null_samples, rtol=0, atol=ATOL)
    assert float(sharded.p_value) == float(one.p_value)
    assert bool(sharded.reject) == bool(one.reject)


def _one_then_sharded(fn, mesh):
    """`fn(None)` and then `fn(mesh)`, each finished before the next starts: the simulated
    CPU devices abort a collective that waits over 40 s for one device, and device 0 would
    still be busy with the one-device program (dispatched asynchronously) at n = 2^15."""
    one = jax.block_until_ready(fn(None))
    return one, jax.block_until_ready(fn(mesh))


def _check_statistics_and_mmd_test(n, num_permutations, mesh):
    x, y = _samples(n, n)
    one, sharded = _one_then_sharded(lambda m: _statistics(x, y, m), mesh)
    for name, value in one.items():
        np.testing.assert_allclose(sharded[name], value, rtol=0, atol=ATOL, err_msg=name)
    key = jax.random.key(1)
    one_test, sharded_test = _one_then_sharded(
        lambda m: km.mmd_test(key, x, y, KERNEL, num_permutations=num_permutations, mesh=m), mesh
    )
    _assert_same_test(sharded_test, one_test)
    return one, one_test


def test_statistics_and_mmd_test_on_a_4x2_mesh_equal_one_device():
    _check_statistics_and_mmd_test(2**11, 50, _mesh((4, 2)))


@pytest.mark.slow
def test_statistics_and_mmd_test_at_n_2_to_15():
    """The must-show size: n = m = 2^15 (about six minutes on two loaded cores)."""
    one, test = _check_statistics_and_mmd_test(2**15, 20, _mesh((8,)))
    assert all(np.isfinite(float(v)) for v in one.values()) and np.isfinite(test.p_value)


# n = 203 rows on 8 devices: padded to 208, the padding masked
X, Y = _samples(203, 203, d=3)
KEY = jax.random.key(2)
UNEVEN_TESTS = {
    "ksd multinomial": lambda m: km.ksd_test(
        KEY, X, lambda z: -z, KERNEL, num_bootstrap=50, mesh=m
    ),
    "hsic unbiased": lambda m: km.hsic_test(
        KEY, X, Y, KERNEL, KERNEL, num_permutations=50, unbiased=True, mesh=m
    ),
}
MORE_UNEVEN_TESTS = {
    "ksd wild": lambda m: km.ksd_test(
        KEY, X, lambda z: -z, KERNEL, bootstrap="wild", num_bootstrap=50, mesh=m
    ),
    "hsic": lambda m: km.hsic_test(KEY, X, Y, KERNEL, KERNEL, num_permutations=50, mesh=m),
    "hsic gamma": lambda m: km.hsic_test(KEY, X, Y, KERNEL, KERNEL, null="gamma", mesh=m),
    "mmd gamma": lambda m: km.mmd_test(KEY, X, Y, KERNEL, null="gamma", mesh=m),
}


def test_rows_not_dividing_over_the_devices():
    """A bootstrap test, the streamed permutation HSIC and a Gram matvec (blocks of 16 rows,
    2 per device) equal one device."""
    mesh = _mesh((8,))
    for test in UNEVEN_TESTS.values():
        one, sharded = _one_then_sharded(test, mesh)
        _assert_same_test(sharded, one)
    v = jax.random.normal(KEY, (203, 3))
    np.testing.assert_allclose(
        kernel_matvec(KERNEL, X, Y, v, exclude_diagonal=True, block_size=16, mesh=mesh),
        kernel_matvec(KERNEL, X, Y, v, exclude_diagonal=True, block_size=16),
        rtol=0,
        atol=1e-5,
    )


@pytest.mark.slow
def test_more_tests_and_gradients_on_rows_not_dividing():
    """The other nulls (wild bootstrap, biased permutation HSIC, the gamma approximations)
    and the gradient of mmd2 through the sharded sums."""
    mesh = _mesh((8,))
    for test in MORE_UNEVEN_TESTS.values():
        one, sharded = _one_then_sharded(test, mesh)
        _assert_same_test(sharded, one)
    grad = lambda mesh: jax.grad(lambda a: km.mmd2(a, Y, KERNEL, mesh=mesh))(X)
    np.testing.assert_allclose(*_one_then_sharded(grad, mesh)[::-1], rtol=0, atol=1e-7)


def test_per_device_memory_plan_shrinks_with_the_devices():
    """The compiled plan of a kernel sum and of mmd2 on a 4 x 2 mesh: every device holds a
    p-th of each block (p = 8, both axes used), so the per-device temporaries are within 1.5x
    of 1/8 of one device's."""
    mesh = _mesh((4, 2))
    x = jax.ShapeDtypeStruct((2**13, 2), jnp.float32)

    def temp(fn, mesh):
        return fn(mesh).lower(x).compile().memory_analysis().temp_size_in_bytes

    programs = {
        "kernel_sum": lambda mesh: jax.jit(lambda a: kernel_sum(KERNEL, a, a, mesh=mesh)),
        "mmd2": lambda mesh: jax.jit(lambda a: km.mmd2(a, a[::-1], KERNEL, mesh=mesh)),
    }
    for name, fn in programs.items():
        one, sharded = temp(fn, None), temp(fn, mesh)
        assert one > 2**22, (name, one)  # the (block, n) slabs: 2^21 float32 entries
        assert sharded <= 1.5 * one / 8, (name, one, sharded)
    out = km.mmd2(jnp.ones((16, 2)), jnp.zeros((16, 2)), KERNEL, mesh=mesh)
    assert len(out.sharding.device_set) == 8


def test_mesh_must_be_a_mesh():
    x, y = _samples(8, 8)
    key = jax.random.key(0)
    calls = {
        "mmd2": lambda m: km.mmd2(x, y, KERNEL, mesh=m),
        "hsic": lambda m: km.hsic(x, y, KERNEL, KERNEL, mesh=m),
        "ksd2": lambda m: km.ksd2(x, -x, KERNEL, mesh=m),
        "mmd_test": lambda m: km.mmd_test(key, x, y, KERNEL, mesh=m),
        "hsic_test": lambda m: km.hsic_test(key, x, y, KERNEL, KERNEL, mesh=m),
        "ksd_test": lambda m: km.ksd_test(key, x, -x, KERNEL, mesh=m),
        "kernel_sum": lambda m: kernel_sum(KERNEL, x, y, mesh=m),
    }
    for call in calls.values():
        for bad in ("cpu", jax.devices(), 8):
            with pytest.raises(TypeError, match="`mesh`"):
                call(bad)
    mesh = _mesh((4, 2))  # explicit axes: fine as an argument, refused as the context
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"`mesh`.*set_mesh"):
        km.mmd2(x, y, KERNEL, mesh=mesh)


# ------------------------------------------------------------------ several processes

# Run by each of two processes: the runner's mesh (`devices.distributed`, every device of
# both processes), and the sharded statistics of one fixed sample; process 0 writes them.
_PROCESS = """
import json, sys
import jax
import kmethods as km
from experiments.config import DevicesConfig
from experiments.mesh import build_mesh

mesh = build_mesh(DevicesConfig(distributed=True))
kx, ky = jax.random.split(jax.random.key(0))
x, y = jax.random.normal(kx, (1000, 2)), jax.random.normal(ky, (900, 2)) + 0.3
k = km.Gaussian(1.0)
test = km.mmd_test(jax.random.key(1), x, y, k, num_permutations=50, mesh=mesh)
out = {
    "devices": mesh.devices.size,
    "mmd2": float(km.mmd2(x, y, k, mesh=mesh)),
    "p_value": float(test.p_value),
    "statistic": float(test.statistic),
}
if jax.process_index() == 0:
    open(sys.argv[1], "w").write(json.dumps(out))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_value_of_one(tmp_path):
    """Two `jax.distributed` processes of two CPU devices each, joined through the runner's
    `devices:` machinery (`build_mesh`), compute mmd2 and an mmd_test on the 4-device mesh;
    the values equal one process on one device (16 s on two cores, 28 s loaded)."""
    out = tmp_path / "two.json"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}",
        "JAX_NUM_PROCESSES": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PROCESS, str(out)],
            cwd=ROOT,
            env={**env, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        results = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    two = json.loads(out.read_text())
    assert two["devices"] == 4

    kx, ky = jax.random.split(jax.random.key(0))
    x, y = jax.random.normal(kx, (1000, 2)), jax.random.normal(ky, (900, 2)) + 0.3
    test = km.mmd_test(jax.random.key(1), x, y, KERNEL, num_permutations=50)
    assert two["mmd2"] == pytest.approx(float(km.mmd2(x, y, KERNEL)), abs=ATOL)
    assert two["statistic"] == pytest.approx(float(test.statistic), abs=ATOL)
    assert two["p_value"] == float(test.p_value)
