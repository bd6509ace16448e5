"""Same seed, same showers on any x86-64 machine.

Measured cause of the cross-CPU differences: numpy's run-time CPU dispatch (AVX-512 /
AVX2 / baseline loops of exp, log, power, arctan2... differ in the last bit) in the
physics tables and the pion model; the numba kernel itself gave the same bits for every
``NUMBA_CPU_NAME`` tried, and glibc's FMA / non-FMA variants of libm agreed.  Each
"other CPU" is emulated in a fresh process with its own numba cache: numba compiling
for an older CPU, numpy restricted to its baseline loops, glibc's libm without
AVX2/FMA/AVX-512 variants.  The showers must hash the same as on this host.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = """
import hashlib
from caloforge.simulation import simulate
h = hashlib.sha256()
for det, particle, energy, n in (("ild-ecal", "photon", (1000.0, 4000.0), 3),
                                 ("ild-ahcal", "pi+", 10000.0, 1)):
    b = simulate(det, particle, energy, n=n, seed=11, theta=(0.0, 0.3), phi=(0.0, 6.28))
    h.update(b.energies.tobytes())
    h.update(b.conditions.incident_energy.tobytes())
print(h.hexdigest())
"""


def numpy_dispatch_features() -> str:
    """numpy's optional (run-time dispatched) CPU features present on this machine."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # numpy < 2
        from numpy.core import _multiarray_umath as umath
    return " ".join(f for f in umath.__cpu_dispatch__ if umath.__cpu_features__.get(f))


def shower_hash(tmp_path, name: str, **env: str) -> str:
    run_env = dict(os.environ, CALOFORGE_NO_PROGRESS="1", **env)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=run_env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, f"{name}: {out.stderr[-2000:]}"
    return out.stdout.strip()


OLDEST_X86_64 = {
    "NUMBA_CPU_NAME": "generic",
    "NUMBA_CPU_FEATURES": "",
    "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA",
}


def test_same_showers_on_an_emulated_baseline_cpu(tmp_path):
    here = shower_hash(tmp_path, "host")
    other = shower_hash(tmp_path, "baseline", NUMBA_CACHE_DIR=str(tmp_path / "cache"),
                        NPY_DISABLE_CPU_FEATURES=numpy_dispatch_features(), **OLDEST_X86_64)
    assert here == other


@pytest.mark.slow
@pytest.mark.parametrize("env", [
    {"NUMBA_CPU_NAME": "haswell"},
    {"NUMBA_CPU_NAME": "skylake-avx512"},
    {"NUMBA_CPU_NAME": "znver3"},
    {"NUMBA_DISABLE_INTEL_SVML": "1"},
    {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F,-AVX2,-FMA"},
    {"NPY_DISABLE_CPU_FEATURES": "@numpy"},
], ids=lambda env: "-".join(f"{k}={v}" for k, v in env.items()))
def test_same_showers_under_each_cpu_setting(tmp_path, env):
    env = {k: numpy_dispatch_features() if v == "@numpy" else v for k, v in env.items()}
    assert shower_hash(tmp_path, "host") == shower_hash(
        tmp_path, str(env), NUMBA_CACHE_DIR=str(tmp_path / "cache"), **env)


def test_tables_use_the_scalar_libm():
    """The tables agree bit for bit with the C library's scalar functions (what the
    numba kernel calls), not with numpy's CPU-dependent loops."""
    import math

    from caloforge.simulation import libm
    from caloforge.simulation import tables as T

    grid = np.linspace(T.LOG_E_MIN, T.LOG_E_MAX, T.N_GRID)
    assert T.E_GRID.tobytes() == np.array([math.exp(v) for v in grid]).tobytes()
    x = np.random.default_rng(0).uniform(0.01, 30.0, 500)
    for name, ref in (("log", math.log), ("log10", math.log10), ("log1p", math.log1p),
                      ("exp", math.exp), ("sin", math.sin), ("cos", math.cos)):
        got = getattr(libm, name)(x)
        assert got.tobytes() == np.array([ref(v) for v in x]).tobytes(), name
    assert libm.power(x, 2.6).tobytes() == np.array([math.pow(v, 2.6) for v in x]).tobytes()
    assert np.isnan(libm.log(np.array([0.0, -1.0]))).all()  # domain errors -> nan
