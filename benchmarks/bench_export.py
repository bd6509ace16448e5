"""Exported sampler speed: PyTorch vs ONNX Runtime vs TorchScript, ms per shower.

Exports the shipped default (or ``--model``) with the noise drawn inside the graph and a
dynamic batch, then times, for each (batch size, threads) setting, PyTorch's
``model.sample`` (with its per-shower noise streams), the ONNX file in onnxruntime and
the TorchScript file.  Targets (issue 12): ONNX at batch 1 on one thread at most 2x the
PyTorch batch-1 time; at most 5 ms per shower at the best batch on 2 threads.  With
``--fidelity N`` it also generates N showers through onnxruntime and N through PyTorch
and compares them with caloforge.evaluation (classifier AUC against its noise floor).
Prints figures; asserts nothing.

    python benchmarks/bench_export.py --settings 1:1 100:2 1000:2 --fidelity 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from caloforge.data import ShowerBatch
from caloforge.export import export_model
from caloforge.models import load


def per_shower_ms(call, batch: int, min_showers: int, min_seconds: float) -> float:
    """Mean ms per shower over repeated calls after warm-up calls (TorchScript's
    profiling executor specialises the graph during its first runs)."""
    for _ in range(3):
        call(batch)
    n, t0 = 0, time.perf_counter()
    while n < min_showers or time.perf_counter() - t0 < min_seconds:
        call(batch)
        n += batch
    return 1e3 * (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ild-ecal-photons", help="model folder or zoo name")
    p.add_argument("--settings", nargs="+", default=["1:1", "100:2", "1000:2"],
                   help="BATCH:THREADS pairs")
    p.add_argument("--min-showers", type=int, default=20)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--fidelity", type=int, default=0, help="showers per sample (0: skip)")
    p.add_argument("--backends", nargs="+", default=["pytorch", "onnx", "torchscript"],
                   choices=["pytorch", "onnx", "torchscript"],
                   help="what to time (default all; e.g. onnx alone to compare exports)")
    args = p.parse_args()
    import onnxruntime as ort

    model = load(args.model, "cpu").eval()
    lo, hi = model.energy_range_mev
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        onnx_path, ts_path = Path(tmp) / "m.onnx", Path(tmp) / "m.pt"
        export_model(model, onnx_path, to="onnx")
        if "torchscript" in args.backends:
            export_model(model, ts_path, to="torchscript")
        print(f"{args.model} ({model.name}): exported in "
              f"{time.perf_counter() - t0:.0f} s; torch {torch.__version__}, "
              f"onnxruntime {ort.__version__}")
        scripted = torch.jit.load(str(ts_path)) if "torchscript" in args.backends else None

        def inputs(b: int) -> list[np.ndarray]:
            e = (rng.uniform(lo, hi, (b, 1)) / 1e3).astype(np.float32)
            return [e, np.zeros((b, 1), np.float32), np.zeros((b, 1), np.float32)]

        print(f"{'batch':>6} {'threads':>7}" + "".join(f" {b:>11}" for b in args.backends)
              + "   (ms per shower)")
        results = {}
        for setting in args.settings:
            batch, threads = (int(v) for v in setting.split(":"))
            torch.set_num_threads(threads)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sess = ort.InferenceSession(str(onnx_path), opts)
            names = [i.name for i in sess.get_inputs()]
            seed = iter(range(10 ** 6))
            calls = {
                "pytorch": lambda b, s=seed: model.sample(rng.uniform(lo, hi, b), next(s), b),
                "onnx": lambda b, s=sess, n=names: s.run(None, dict(zip(n, inputs(b)))),
            }
            with torch.no_grad():
                calls["torchscript"] = lambda b: scripted(*map(torch.from_numpy, inputs(b)))
                row = {k: per_shower_ms(calls[k], batch, args.min_showers, args.min_seconds)
                       for k in args.backends}
            results[(batch, threads)] = row
            print(f"{batch:>6} {threads:>7}" + "".join(f" {row[k]:>11.2f}" for k in args.backends),
                  flush=True)
        if (1, 1) in results and {"onnx", "pytorch"} <= set(args.backends):
            r = results[(1, 1)]
            print(f"ONNX / PyTorch at batch 1, 1 thread: {r['onnx'] / r['pytorch']:.2f} "
                  f"(target <= 2)")
        two = [v["onnx"] for (b, t), v in results.items() if t == 2 and "onnx" in v]
        if two:
            print(f"ONNX best on 2 threads: {min(two):.2f} ms per shower (target <= 5)")
        if args.fidelity:
            fidelity(model, sess, names, args.fidelity)


def fidelity(model, sess, names: list[str], n: int) -> None:  # noqa: ANN001
    """n showers through onnxruntime vs n through PyTorch at the same energies."""
    from caloforge.evaluation import evaluate

    e = np.random.default_rng(1).uniform(*model.energy_range_mev, n)
    t0 = time.perf_counter()
    torch_showers = model.sample(e, seed=7, batch_size=500)
    parts = []
    for i in range(0, n, 500):
        b = len(e[i:i + 500])
        parts.append(sess.run(None, dict(zip(names, [
            (e[i:i + 500, None] / 1e3).astype(np.float32), np.zeros((b, 1), np.float32),
            np.zeros((b, 1), np.float32)])))[0])
    onnx_showers = ShowerBatch(model.geometry.name, np.concatenate(parts).astype(np.float64),
                               torch_showers.conditions)
    print(f"generated 2 x {n} showers in {time.perf_counter() - t0:.0f} s; evaluating")
    res = evaluate(torch_showers, [onnx_showers], ["onnx"], threads=2)
    print(f"overall verdicts: {res.metrics['generated'][0]['verdict']}")
    for key, val in _find(res.metrics, "auc"):
        print(f"{key}: AUC {val['auc']:.4f}, floor {val.get('auc_floor', float('nan')):.4f}, "
              f"null std {val.get('auc_null_std', float('nan')):.4f}, "
              f"verdict {val.get('verdict')}")


def _find(d, key: str, prefix: str = ""):  # noqa: ANN001, ANN202
    """(path, dict) of every nested dict holding ``key``."""
    if isinstance(d, dict):
        if key in d:
            yield prefix, d
        for k, v in d.items():
            yield from _find(v, key, f"{prefix}/{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _find(v, key, f"{prefix}/{i}")


if __name__ == "__main__":
    main()
