"""Generation speed: ms per shower and batch size for every model, vs the reference simulation.

Each architecture is built at its default size on ILD ECAL (30x30x30) — or at another
preset with ``--preset`` — with preprocessing fitted on a few reference-simulation showers
(weights untrained: the time per shower depends on the architecture, not on the
weights).  The reference simulation is timed in the same run, on the same threads.
Prints a table; asserts nothing.

    python benchmarks/bench_generation.py --threads 2 --batch-sizes 1 10 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from caloforge.models import build, list_models
from caloforge.simulation import simulate


def time_model(model, batch_size: int, min_showers: int, min_seconds: float) -> float:
    """Mean ms per shower over repeated calls (after one warm-up call)."""
    rng = np.random.default_rng(0)
    lo, hi = model.energy_range_mev
    gen = torch.Generator().manual_seed(0)
    model.sample(rng.uniform(lo, hi, batch_size), gen, batch_size)  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < min_showers or time.perf_counter() - t0 < min_seconds:
        model.sample(rng.uniform(lo, hi, batch_size), gen, batch_size)
        n += batch_size
    return 1e3 * (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list_models())
    p.add_argument("--preset", default="default")
    p.add_argument("--geometry", default="ild-ecal")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--min-showers", type=int, default=20, help="per model and batch size")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--sim-showers", type=int, default=10, help="reference showers to time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    simulate(args.geometry, "photon", 10e3, 1, seed=99)  # compile the kernels first
    t0 = time.perf_counter()
    ref = simulate(args.geometry, "photon", (10e3, 100e3), args.sim_showers, seed=1)
    sim_ms = 1e3 * (time.perf_counter() - t0) / args.sim_showers
    print(f"torch {torch.__version__}, {args.threads} threads, geometry {args.geometry}, "
          f"preset {args.preset}")
    print(f"reference simulation (builtin, photons 10-100 GeV): {sim_ms:.1f} ms/shower "
          f"({args.sim_showers} showers)")
    x = torch.from_numpy(ref.energies)
    e = torch.from_numpy(ref.incident_energy.astype(np.float32))
    print(f"{'model':<10} {'params':>10} {'batch':>6} {'ms/shower':>10} {'vs sim':>8}")
    for name in args.models:
        model = build(name, args.geometry, preset=args.preset)
        model.fit_preprocessing(x, e)
        model.finalize(x, e, torch.Generator().manual_seed(0))  # e.g. the BIB-AE KDE
        model.eval()
        n_par = sum(q.numel() for q in model.parameters())
        for bs in args.batch_sizes:
            ms = time_model(model, bs, args.min_showers, args.min_seconds)
            print(f"{name:<10} {n_par:>10,d} {bs:>6d} {ms:>10.2f} {sim_ms / ms:>7.1f}x",
                  flush=True)


if __name__ == "__main__":
    main()
