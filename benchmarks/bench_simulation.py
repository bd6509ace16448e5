"""Speed and memory of the builtin engine: 50 GeV photons in the ILD ECAL.

    python benchmarks/bench_simulation.py [--n 200] [--energy-gev 50] [--detector ild-ecal]

Prints showers per second (one process, after the numba compilation / cache load) by
wall clock and by CPU time (the per-core figure, robust on a shared machine), and
the peak resident memory, measured for a streaming run of ``--n`` showers in chunks.
"""

from __future__ import annotations

import argparse
import resource
import time

import psutil

from caloforge.simulation import iter_simulate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--energy-gev", type=float, default=50.0)
    ap.add_argument("--detector", default="ild-ecal")
    ap.add_argument("--particle", default="photon")
    ap.add_argument("--chunk-size", type=int, default=50)
    args = ap.parse_args()
    e = args.energy_gev * 1000.0
    # warm-up: compile / load the numba cache and build the tables
    for _ in iter_simulate(args.detector, args.particle, e, 1, seed=999):
        pass
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    c0 = time.process_time()
    n = 0
    for batch in iter_simulate(args.detector, args.particle, e, args.n, seed=1,
                               chunk_size=args.chunk_size):
        n += len(batch)
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(f"{args.particle} {args.energy_gev:g} GeV in {args.detector}: {n} showers in "
          f"{dt:.1f} s wall = {n / dt:.1f} showers/s; CPU time {cpu:.1f} s = {n / cpu:.1f} "
          f"showers/s per core ({1000 * cpu / n:.1f} ms/shower)")
    print(f"memory: rss before {rss0 / 2**20:.0f} MiB, peak rss {peak:.0f} MiB")


if __name__ == "__main__":
    main()
