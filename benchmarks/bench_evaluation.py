"""Benchmark of ``caloforge evaluate``: wall time and peak memory.

Writes synthetic toy showers (caloforge.evaluation.toy, sparse caloforge HDF5 files) in
chunks into a temporary folder, then runs ``caloforge evaluate`` in a child process and
prints its wall time and peak resident memory (``ru_maxrss`` of the child):

1. full report without the classifier, N reference vs N generated ILD ECAL showers;
2. the same with the classifier (high and low level, with noise-floor runs): the extra
   time is the classifier cost;
3. CaloChallenge dataset 3 (40500 voxels) without the classifier: streaming memory check.

Targets (issue 4): 100k vs 100k ILD ECAL in < 5 min on 2 cores, classifier < 10 min more,
peak memory < 4 GiB.  Default sizes are small enough for a few minutes; use
``--n 100000`` for the target.  Toy showers are drawn from a pool of ``--pool`` distinct
showers with random x/y flips, so that writing 2 x 100k showers takes minutes, not an
hour; the evaluation cost does not depend on that.

    python benchmarks/bench_evaluation.py --n 10000
    python benchmarks/bench_evaluation.py --n 100000 --classifier --ds3 20000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_toy(path: Path, geometry: str, n: int, seed: int, pool: int, chunk: int,
              **toy_kw) -> float:
    """Write ``n`` toy showers to ``path`` in chunks; returns seconds spent."""
    from caloforge.data.batch import ShowerBatch
    from caloforge.data.io import write_showers
    from caloforge.evaluation.toy import toy_showers
    from caloforge.geometry import get_geometry

    t0 = time.perf_counter()
    geo = get_geometry(geometry)
    rng = np.random.default_rng(seed)
    base = toy_showers(min(pool, n), geometry, seed=rng, zero_below_mip=0.05,
                       n_mip_hits=200, **toy_kw)
    flips = None
    if geo.is_regular:
        na, nb = geo.layer_shape(0)
        idx = np.arange(geo.n_voxels).reshape(geo.n_layers, na, nb)
        flips = [idx.ravel(), idx[:, ::-1, :].ravel(), idx[:, :, ::-1].ravel(),
                 idx[:, ::-1, ::-1].ravel()]
    with write_showers(path, geometry=geometry, metadata={"time_per_shower_ms": 0.5}) as w:
        for lo in range(0, n, chunk):
            m = min(chunk, n - lo)
            pick = rng.integers(0, len(base), size=m)
            e = base.energies[pick]
            if flips is not None:
                e = e[:, flips[int(rng.integers(4))]]
            w.append(ShowerBatch(geometry, e, base.conditions[pick]))
    return time.perf_counter() - t0


def run_cli(args: list[str]) -> tuple[float, float, int]:
    """Run ``caloforge evaluate`` in a child; (wall seconds, peak RSS GiB, exit code)."""
    env = dict(os.environ, CALOFORGE_NO_PROGRESS="1")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # The child reports its own peak RSS (ru_maxrss of RUSAGE_CHILDREN would be the
    # maximum over all children run so far).
    code = ("import sys, resource; from caloforge.cli import main; rc = main(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "file=sys.stderr); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "evaluate", *args], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = max([int(line.split()[1]) for line in proc.stderr.splitlines()
                if line.startswith("PEAK_RSS_KB")] or [0])
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    # CPU seconds of the child: on a shared machine wall time overstates the cost.
    print(f"  child CPU time {cpu:.1f} s (wall {wall:.1f} s, load {os.getloadavg()[0]:.1f})")
    if proc.returncode:
        print(proc.stdout, proc.stderr, sep="\n")
    return wall, peak / 2**20, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="showers per sample (ILD ECAL)")
    ap.add_argument("--pool", type=int, default=5000, help="distinct toy showers per file")
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--classifier", action="store_true", help="also time the classifier")
    ap.add_argument("--ds3", type=int, default=0,
                    help="showers per sample for the dataset-3 memory check (0: skip)")
    ap.add_argument("--no-ild", action="store_true", help="skip the ILD ECAL runs")
    ap.add_argument("--workdir", default=None, help="folder for the files (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the files and reports")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(dir=args.workdir) if not args.keep else None
    d = Path(tmp.name if tmp else (args.workdir or tempfile.mkdtemp()))
    print(f"working in {d}; {os.cpu_count()} CPUs")
    results: dict = {}
    if not args.no_ild:
        ref, gen = d / "ref_ild.h5", d / "gen_ild.h5"
        t = write_toy(ref, "ild-ecal", args.n, 1, args.pool, args.chunk)
        t += write_toy(gen, "ild-ecal", args.n, 2, args.pool, args.chunk, width_scale=1.05)
        print(f"wrote 2 x {args.n} ILD ECAL toy showers in {t:.0f} s "
              f"({(ref.stat().st_size + gen.stat().st_size) / 2**30:.2f} GiB)")
        wall, rss, rc = run_cli([str(ref), str(gen), "--labels", "toy", "--no-classifier",
                                 "--report", str(d / "report_nocls")])
        results["ild_no_classifier"] = {"n": args.n, "wall_s": wall, "peak_rss_gib": rss, "rc": rc}
        print(f"[ILD ECAL {args.n} vs {args.n}, no classifier] wall {wall:.1f} s, "
              f"peak RSS {rss:.2f} GiB, exit {rc}")
        if args.classifier:
            wall2, rss2, rc2 = run_cli([str(ref), str(gen), "--labels", "toy",
                                        "--report", str(d / "report_cls")])
            m = json.loads((d / "report_cls" / "metrics.json").read_text()) if rc2 == 0 else {}
            cls = m.get("generated", [{}])[0].get("classifier", {})
            secs = {k: round(v.get("seconds", 0) + v.get("floor_seconds", 0), 1)
                    for k, v in cls.items()}
            results["ild_classifier"] = {"wall_s": wall2, "extra_s": wall2 - wall,
                                         "peak_rss_gib": rss2, "classifier_seconds": secs,
                                         "auc": {k: v.get("auc") for k, v in cls.items()}}
            print(f"[ILD ECAL with classifier] wall {wall2:.1f} s (+{wall2 - wall:.1f} s), "
                  f"peak RSS {rss2:.2f} GiB; classifier seconds {secs}")
    if args.ds3:
        r3, g3 = d / "ref_ds3.h5", d / "gen_ds3.h5"
        t = write_toy(r3, "calochallenge-3", args.ds3, 3, min(args.pool, 2000), args.chunk)
        t += write_toy(g3, "calochallenge-3", args.ds3, 4, min(args.pool, 2000), args.chunk)
        print(f"wrote 2 x {args.ds3} dataset-3 toy showers in {t:.0f} s")
        wall3, rss3, rc3 = run_cli([str(r3), str(g3), "--no-classifier",
                                    "--report", str(d / "report_ds3")])
        results["ds3_no_classifier"] = {"n": args.ds3, "wall_s": wall3, "peak_rss_gib": rss3,
                                        "rc": rc3}
        print(f"[dataset 3 {args.ds3} vs {args.ds3}, no classifier] wall {wall3:.1f} s, "
              f"peak RSS {rss3:.2f} GiB, exit {rc3}")
    print(json.dumps(results, indent=1))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
