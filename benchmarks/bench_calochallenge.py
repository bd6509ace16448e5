"""Benchmark of the CaloChallenge protocol (``run_calochallenge_protocol``): wall time,
CPU time and peak memory, per stage.

Writes N reference and N generated dataset-2 toy showers (caloforge.evaluation.toy via
bench_evaluation.write_toy, 6480 voxels, generated showers 5 % wider) into a temporary
folder and runs the protocol in a child process, which prints a time stamp per stage and
its peak resident memory.  Target (issue 14): 100k vs 100k in <= 10 min and <= 4 GiB on
2 CPU cores.

The official classifier (3 x 2048 LeakyReLU, 50 epochs, plus our power control) is a GPU
workload: on 2 CPU cores one low-level epoch on 120k training showers takes minutes.
``--epochs`` limits the epochs for a timing run; the per-epoch cost is printed so that
the full 50-epoch cost can be extrapolated.  For comparison, the official script loads
both samples as float64 (100k x 6480 x 8 B = 5.2 GB each for the classifier arrays) and
its FPD mode needed 3.7 GB for 1500 showers (issue 14).

    python benchmarks/bench_calochallenge.py --n 100000
    python benchmarks/bench_calochallenge.py --n 20000 --epochs 1
    python benchmarks/bench_calochallenge.py --n 100000 --classifiers ''   # all but them
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_evaluation import write_toy  # noqa: E402

CHILD = """
import json, os, resource, sys, threading, time
from caloforge.evaluation.calochallenge import run_calochallenge_protocol
from caloforge.evaluation.calochallenge.classifier import OfficialClassifierConfig
ref, gen, out, epochs, control = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
    sys.argv[5] == "1"
classifiers = tuple(c for c in sys.argv[6].split(",") if c)
fpd_kpd = sys.argv[7] == "1"
t0 = time.perf_counter()
stamps = []
# Resident memory sampled every 50 ms: the peak of each stage, to see which one sets it.
stage, stage_peak, page = ["start"], {}, resource.getpagesize()
def sample_rss():
    while True:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * page
        stage_peak[stage[0]] = max(stage_peak.get(stage[0], 0), rss)
        time.sleep(0.05)
if os.path.exists("/proc/self/statm"):
    threading.Thread(target=sample_rss, daemon=True).start()
def log(msg):
    stamps.append((msg, time.perf_counter() - t0))
    rss = max(stage_peak.values(), default=0)
    print(f"  {time.perf_counter() - t0:7.1f} s  {msg:<40s} (peak of the stage before: "
          f"{stage_peak.get(stage[0], 0) / 2**30:.2f} GiB)", flush=True)
    stage[0] = msg
cfg = OfficialClassifierConfig(epochs=epochs, seed=0)
res = run_calochallenge_protocol(ref, gen, "2", out, seed=0, classifier_config=cfg,
                                 classifiers=classifiers, fpd_kpd=fpd_kpd, control=control,
                                 overwrite=True, log=log)
log("done")
cls = {k: {f: v.get(f) for f in ("auc", "jsd", "epochs", "seconds", "power_verdict")}
       for k, v in res["classifiers"].items()}
print("RESULT", json.dumps({"stamps": stamps, "classifiers": cls,
      "fpd": res.get("fpd"), "kpd": res.get("kpd"),
      "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="showers per sample")
    ap.add_argument("--pool", type=int, default=5000, help="distinct toy showers per file")
    ap.add_argument("--chunk", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=50, help="classifier epochs (official 50)")
    ap.add_argument("--no-control", action="store_true", help="skip the power controls")
    ap.add_argument("--classifiers", default="high_level,low_level",
                    help="comma-separated classifiers to run ('' for none)")
    ap.add_argument("--no-fpd-kpd", action="store_true", help="skip FPD and KPD")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--toy-dir", default=None,
                    help="keep the toy files here and reuse them when present (same --n)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        d = Path(tmp)
        toys = Path(args.toy_dir) if args.toy_dir else d
        toys.mkdir(parents=True, exist_ok=True)
        ref, gen = toys / f"ref_{args.n}.h5", toys / f"gen_{args.n}.h5"
        kw = {"energy_range_gev": (1.0, 1000.0), "sampling_fraction": 0.033}
        if not (ref.exists() and gen.exists()):
            t = write_toy(ref, "calochallenge-2", args.n, 1, args.pool, args.chunk, **kw)
            t += write_toy(gen, "calochallenge-2", args.n, 2, args.pool, args.chunk,
                           width_scale=1.05, **kw)
            print(f"wrote 2 x {args.n} dataset-2 toy showers in {t:.0f} s")
        print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        env = dict(os.environ, CALOFORGE_NO_PROGRESS="1", MPLBACKEND="Agg")
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(ref), str(gen), str(d / "out"),
                               str(args.epochs), "0" if args.no_control else "1",
                               args.classifiers, "0" if args.no_fpd_kpd else "1"],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        print(proc.stdout.split("RESULT")[0], end="")
        if proc.returncode:
            print(proc.stderr)
            sys.exit(proc.returncode)
        res = json.loads(proc.stdout.split("RESULT", 1)[1])
        print(f"[CaloChallenge protocol, dataset 2, {args.n} vs {args.n}, {args.epochs} "
              f"classifier epochs] wall {wall:.1f} s, CPU {cpu:.1f} s, peak RSS "
              f"{res['peak_rss_kb'] / 2**20:.2f} GiB, load {os.getloadavg()[0]:.1f}")
        for name, c in res["classifiers"].items():
            per_epoch = c["seconds"] / max(c["epochs"], 1)
            print(f"  classifier {name}: AUC {c['auc']:.4f}, {c['epochs']} epochs in "
                  f"{c['seconds']:.0f} s ({per_epoch:.1f} s/epoch -> 50 epochs ~"
                  f"{50 * per_epoch / 60:.0f} min, twice with the power control)")
        if res["fpd"] is not None:
            print(f"  FPD {res['fpd']}, KPD {res['kpd']}")


if __name__ == "__main__":
    main()
