"""Batch-1, one-thread generation time of a model in PyTorch, in CPU time.

The way the Geant4 fast-simulation hooks call a model: one shower per call on one
thread (issue 9 item 8: at most 20 ms per shower for the shipped default).  Timed with
``time.process_time`` (CPU time of this process), in bursts of ``--burst`` calls; the
minimum and median burst are printed per shower.  CPU time is less sensitive than wall
time to other processes on a shared machine, though not immune (caches, hyperthreads):
on a loaded machine the minimum is the better estimate.  Conditions as ``caloforge
bench`` draws them (seed 0, the model's trained ranges).  Asserts nothing.

    python benchmarks/bench_batch1_cpu.py --model ild-ecal-photons --bursts 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from caloforge.export.bench import BenchSettings, bench_conditions
from caloforge.models import load


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ild-ecal-photons", help="shipped model or folder")
    p.add_argument("--bursts", type=int, default=30)
    p.add_argument("--burst", type=int, default=10, help="showers per burst")
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load(args.model)
    cond = bench_conditions(model, BenchSettings(), 64)
    for i in range(args.warmup):
        model.sample(cond[i:i + 1], seed=0, batch_size=1)
    cpu, wall = [], []
    k = 0
    for _ in range(args.bursts):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(args.burst):
            model.sample(cond[k % 64:k % 64 + 1], seed=0, batch_size=1)
            k += 1
        cpu.append(1e3 * (time.process_time() - c0) / args.burst)
        wall.append(1e3 * (time.perf_counter() - w0) / args.burst)
    print(f"torch {torch.__version__}, 1 thread, model {args.model}, batch 1, "
          f"{args.bursts} x {args.burst} showers, load {os.getloadavg()[0]:.1f}")
    print(f"CPU time per shower: min {min(cpu):.2f} ms, median {statistics.median(cpu):.2f} "
          f"ms (target <= 20); wall median {statistics.median(wall):.2f} ms")


if __name__ == "__main__":
    main()
