"""Streaming read benchmark: throughput and peak memory when reading a CaloChallenge
dataset-3-sized file (40500 voxels per shower) in batches.

    python benchmarks/bench_io.py [--n 5000] [--batch-size 500] [--format calochallenge]

Prints the file size, showers/s and MB/s read, and the peak resident memory of the
process next to the file size: memory must stay at a few batches, whatever the file size.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from caloforge.data import Conditions, ShowerBatch
from caloforge.data.io import open_showers, write_showers


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (VmHWM; reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="showers in the file")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--format", default="calochallenge")
    parser.add_argument("--geometry", default="calochallenge-3")
    parser.add_argument("--occupancy", type=float, default=0.1)
    parser.add_argument("--read-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read_only:
        read_phase(Path(args.read_only), args.batch_size)
        return

    rng = np.random.default_rng(0)
    from caloforge.geometry import get_geometry

    n_vox = get_geometry(args.geometry).n_voxels
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        with write_showers(path, args.format, args.geometry) as w:
            for lo in range(0, args.n, args.batch_size):
                m = min(args.batch_size, args.n - lo)
                e = rng.exponential(1.0, (m, n_vox)).astype(np.float32)
                e *= rng.random((m, n_vox)) < args.occupancy
                w.append(ShowerBatch(args.geometry, e, Conditions(rng.uniform(1e3, 1e6, m))))
        t_write = time.perf_counter() - t0
        size_mb = path.stat().st_size / 1e6
        print(f"file: {args.n} showers x {n_vox} voxels, {args.format}, {size_mb:.0f} MB on disk")
        print(f"write: {args.n / t_write:.0f} showers/s")
        # Read in a fresh process so that its peak memory is the reader's alone.
        subprocess.run([sys.executable, __file__, "--read-only", str(path),
                        "--batch-size", str(args.batch_size)], check=True)


def read_phase(path: Path, batch_size: int) -> None:
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    total, n, n_vox = 0.0, 0, 0
    with open_showers(path) as f:
        n_vox = f.geometry_object.n_voxels
        for batch in f.iter_batches(batch_size):
            total += float(batch.total_energy().sum())
            n += len(batch)
    t_read = time.perf_counter() - t0
    dense_mb = n * n_vox * 4 / 1e6
    batch_mb = batch_size * n_vox * 4 / 1e6
    print(f"read:  {n / t_read:.0f} showers/s, {dense_mb / t_read:.0f} MB/s (dense float32)")
    print(f"peak RSS of the reader {peak_rss_mb():.0f} MB (after imports {rss_before:.0f} MB) "
          f"for {dense_mb:.0f} MB of dense showers; one batch = {batch_mb:.0f} MB")


if __name__ == "__main__":
    main()
