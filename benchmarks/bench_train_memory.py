"""Peak memory of `caloforge train` on a large ILD ECAL file: the data are streamed, so
the peak resident memory must stay far below the file's dense size (target < 4 GiB for
100k showers, whose dense float32 form is 10.8 GB).

    python benchmarks/bench_train_memory.py [--n 100000] [--steps 20] [--model l2lflows]
                                            [--data FILE] [--keep]

Writes a synthetic sparse ILD ECAL file (toy showers drawn directly as hits, ~400 per
shower, so that 100k showers take seconds rather than a simulation), then runs a short
training in a child process and prints the child's peak RSS next to the dense size.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from caloforge.data import Conditions, ShowerBatch
from caloforge.data.io import write_showers
from caloforge.geometry import get_geometry


def toy_hits_batch(geometry: str, e_inc: np.ndarray, rng: np.random.Generator) -> ShowerBatch:
    """Toy showers as sparse hits: a Gaussian blob around the grid centre whose depth grows
    with log(E), exponential cell energies summing to ~1.5% of E (not physics)."""
    geo = get_geometry(geometry)
    n_l, (a, b) = geo.n_layers, geo.layer_shape(0)
    n = len(e_inc)
    hits = rng.poisson(400, n)
    shower = np.repeat(np.arange(n), hits)
    depth = 0.3 + 0.15 * np.log10(e_inc / 1e3)
    layer = np.clip(np.rint(rng.normal(depth[shower] * n_l, n_l * 0.2)), 0, n_l - 1)
    x = np.clip(np.rint(rng.normal(a / 2, a / 8, len(shower))), 0, a - 1)
    y = np.clip(np.rint(rng.normal(b / 2, b / 8, len(shower))), 0, b - 1)
    cell = (layer * a * b + x * b + y).astype(np.int64)
    energy = rng.exponential(1.0, len(shower))
    energy *= (0.015 * e_inc / np.maximum(np.bincount(shower, energy, n), 1e-9))[shower]
    dense = np.zeros((n, geo.n_voxels), np.float32)
    np.add.at(dense, (shower, cell), energy.astype(np.float32))
    return ShowerBatch(geo.name, dense, Conditions(e_inc))


def write_file(path: Path, n: int, seed: int = 0, chunk: int = 2000) -> None:
    rng = np.random.default_rng(seed)
    with write_showers(path, "caloforge", "ild-ecal", sparse=True) as w:
        for lo in range(0, n, chunk):
            e = rng.uniform(10e3, 100e3, min(chunk, n - lo))
            w.append(toy_hits_batch("ild-ecal", e, rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="showers in the file")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--model", default="l2lflows")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="use this shower file instead of writing one")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_train_memory_"))
    data = Path(args.data) if args.data else work / "ild_ecal_toy.h5"
    if not args.data:
        t0 = time.perf_counter()
        write_file(data, args.n)
        print(f"wrote {args.n} toy ILD ECAL showers (sparse) in "
              f"{time.perf_counter() - t0:.1f} s: {data.stat().st_size / 2**20:.0f} MiB")
    n_vox = get_geometry("ild-ecal").n_voxels
    print(f"dense float32 size of the file: {args.n * n_vox * 4 / 2**30:.1f} GiB")
    cmd = [sys.executable, "-m", "caloforge.cli", "train", "--model", args.model,
           "--data", str(data), "--out", str(work / "run"), "--preset", args.preset,
           "--steps", str(args.steps), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads), "--no-progress"]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=dict(os.environ, CALOFORGE_NO_PROGRESS="1"),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(f"train {args.model} ({args.preset}), {args.steps} steps of {args.batch_size}: "
          f"{wall:.0f} s wall")
    print(f"peak RSS of the training process: {peak:.2f} GiB (target < 4 GiB)")
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
