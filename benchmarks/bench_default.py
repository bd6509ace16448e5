"""Generation speed of the shipped default model vs the reference simulation.

Loads the shipped model (trained weights, as users get it), times ``sample`` at several
batch sizes and the built-in reference simulation in the same run on the same threads,
and prints ms/shower and the speed-up.  Asserts nothing.

    python benchmarks/bench_default.py --threads 2 --batch-sizes 1 10 100 500 1000
"""

from __future__ import annotations

import argparse
import time

import torch

# Scripts in benchmarks/ run with this folder on sys.path: share the timing loop.
from bench_generation import time_model  # noqa: E402

from caloforge.models import load
from caloforge.simulation import simulate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ild-ecal-photons", help="shipped model or folder")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 10, 100, 500, 1000])
    p.add_argument("--min-showers", type=int, default=200, help="per batch size")
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--sim-showers", type=int, default=40, help="reference showers to time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = load(args.model)
    lo, hi = (v / 1e3 for v in model.energy_range_mev)
    simulate(model.geometry.name, "photon", 10e3, 1, seed=99)  # compile the kernels first
    t0 = time.perf_counter()
    simulate(model.geometry.name, "photon", (lo * 1e3, hi * 1e3), args.sim_showers, seed=1)
    sim_ms = 1e3 * (time.perf_counter() - t0) / args.sim_showers
    n_par = sum(q.numel() for q in model.parameters())
    print(f"torch {torch.__version__}, {args.threads} threads, model {args.model} "
          f"({model.name}, {n_par:,d} parameters), photons {lo:g}-{hi:g} GeV")
    print(f"reference simulation (builtin, 1 process): {sim_ms:.1f} ms/shower "
          f"({args.sim_showers} showers)")
    print(f"{'batch':>6} {'ms/shower':>10} {'speed-up vs sim':>16}")
    best = None
    for bs in args.batch_sizes:
        ms = time_model(model, bs, args.min_showers, args.min_seconds)
        best = ms if best is None else min(best, ms)
        print(f"{bs:>6d} {ms:>10.2f} {sim_ms / ms:>15.1f}x", flush=True)
    print(f"best: {best:.2f} ms/shower ({sim_ms / best:.1f}x faster than the simulation)")


if __name__ == "__main__":
    main()
