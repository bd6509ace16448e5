"""Parity of ``--protocol calochallenge`` with the official CaloChallenge 2022 evaluation.

Runs the official code (a checkout of github.com/CaloChallenge/homepage, folder ``code``;
its FPD/KPD mode needs ``jetnet``) and caloforge's protocol on the same freshly written
files, and prints per-metric agreement against the targets of issue 14:

* separation power per histogram: within 5 % relative or 0.002 absolute;
* FPD and KPD: within their quoted errors (the larger of the two);
* classifier AUC: the mean of caloforge's runs (``--our-runs`` seeds) within 0.02 of the
  mean of several official runs (the official classifier is unseeded; the spread of
  the runs is printed next to it).

The files are written here with h5py in the official layout and energy convention
(``showers`` float32 = deposits / 0.033, ``incident_energies`` float64 in MeV), from
caloforge's toy showers with incident energies, distortions and sample sizes that no
test or tuning of the protocol used.  Nothing of the official code is imported into
caloforge or its tests: it runs in child processes.

How the official code runs here, unchanged in what it computes:

* histograms and FPD/KPD: its ``evaluate.py`` itself (``--mode hist-chi`` and ``fpd``),
  with matplotlib's ``text.usetex`` switched off (no LaTeX on this machine; no figure is
  saved in these modes);
* classifiers: its own functions (``prepare_*_data_for_classifier``, ``ttv_split``,
  ``DNN``, ``train_and_evaluate_cls``, ``evaluate_cls`` with isotonic calibration) in the
  order of its ``__main__``, but with its fractional 0.6 / 0.2 / 0.2 split instead of the
  hard-coded 60k / 20k / 20k (which needs 100k + 100k showers: ~26 GB in its float64
  arrays, more than this machine has) and with fewer epochs (``--epochs``; the same for
  caloforge).  Each official run is seeded (numpy, torch) so that the parity run is
  reproducible; different runs use different seeds, as the unseeded script would.

    python benchmarks/parity_calochallenge.py --official ~/homepage/code --work /tmp/parity
    python benchmarks/parity_calochallenge.py --official DIR --work DIR --cases ds2-d-low \\
        --epochs 8 --our-runs 3
    python benchmarks/parity_calochallenge.py --official DIR --work DIR --cases ds2-d-high \\
        --epochs 15 --our-runs 3

Prints one table per case and writes ``parity.json`` in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLING_FRACTION = 0.033


@dataclass
class Case:
    """Two files of one CaloChallenge dataset and what to compare on them."""

    name: str
    dataset: str
    n_ref: int
    n_gen: int
    seed: int
    energies_gev: tuple[float, float]
    log_uniform: bool
    width_scale: float
    energy_scale: float
    classifiers: tuple[str, ...] = ()
    fpd_kpd: bool = True
    files: str = field(default="")  # the files of another case (same showers)


CASES = {
    # Equal sizes so that the official classifier split applies; 3 % wider, 2 % low.
    "ds2-a": Case("ds2-a", "2", 20000, 20000, 7101, (1.0, 1000.0), True, 1.03, 0.98,
                  ("high_level", "low_level")),
    # Unequal sizes, uniform energies, energy scale only (histograms and FPD/KPD).
    "ds2-b": Case("ds2-b", "2", 15000, 9000, 7202, (5.0, 300.0), False, 1.0, 1.05),
    # Nearly identical samples: separation powers near their floor.
    "ds2-c": Case("ds2-c", "2", 12000, 12000, 7303, (1.0, 1000.0), True, 1.0, 1.0,
                  ("high_level",)),
    # A quick check of the harness itself.
    "smoke": Case("smoke", "2", 2000, 2000, 7505, (1.0, 1000.0), True, 1.05, 1.0,
                  ("high_level",)),
    # A clearly visible distortion (10 % wider): classifiers far from AUC 0.5.
    "ds2-d": Case("ds2-d", "2", 20000, 20000, 7606, (1.0, 1000.0), True, 1.10, 1.0,
                  ("high_level", "low_level")),
    # The same files, low-level classifier only: it jumps from AUC ~0.55 to ~0.97 around
    # epoch 4-5 (official runs and caloforge alike), so 5 epochs compare two coin tosses;
    # run it with --epochs 8 (past the jump).
    "ds2-d-low": Case("ds2-d-low", "2", 20000, 20000, 7606, (1.0, 1000.0), True, 1.10, 1.0,
                      ("low_level",), fpd_kpd=False, files="ds2-d"),
    # The high-level classifier on the same files, run to convergence (--epochs 15): at
    # 5 epochs it is still learning and the runs scatter by +-0.04.
    "ds2-d-high": Case("ds2-d-high", "2", 20000, 20000, 7606, (1.0, 1000.0), True, 1.10,
                       1.0, ("high_level",), fpd_kpd=False, files="ds2-d"),
    "ds3-a": Case("ds3-a", "3", 8000, 8000, 7404, (1.0, 1000.0), True, 1.06, 1.0,
                  ("high_level",)),
}

GEOMETRY = {"2": "calochallenge-2", "3": "calochallenge-3"}

NO_TEX = ("import matplotlib, runpy, sys; matplotlib.use('Agg'); "
          "import matplotlib.pyplot as plt; _rc = plt.rc\n"
          "def rc(group, **kw):\n"
          "    if group == 'text': kw.pop('usetex', None)\n"
          "    if kw: _rc(group, **kw)\n"
          "plt.rc = rc\n"
          "sys.argv = ['evaluate.py'] + sys.argv[1:]\n"
          "runpy.run_path('evaluate.py', run_name='__main__')\n")

OFFICIAL_CLS = """
import json, sys, types
import numpy as np, torch, h5py
given, sys.argv = sys.argv[1:], ['evaluate.py']
import matplotlib; matplotlib.use('Agg')
import matplotlib.pyplot as plt
plt.rc = lambda *a, **k: None
import evaluate as ev
import HighLevelFeatures as HLF
ref_path, gen_path, dataset, mode, epochs, run_seed, out = given
np.random.seed(int(run_seed)); torch.manual_seed(int(run_seed))
args = types.SimpleNamespace(mode=mode, dataset=dataset, output_dir=out,
    cls_n_epochs=int(epochs), cls_batch_size=1000, cls_lr=2e-4, cls_n_layer=2,
    cls_n_hidden=2048, cls_dropout_probability=0., save_mem=False,
    device=torch.device('cpu'), min_energy=0.5e-3 / 0.033)
sf, rf = h5py.File(gen_path, 'r'), h5py.File(ref_path, 'r')
res = {}
for which, f in (('gen', sf), ('ref', rf)):
    shower, energy = ev.extract_shower_and_energy(f, which)
    shower = np.where(shower < args.min_energy, np.zeros_like(shower), shower)
    h = HLF.HighLevelFeatures('electron', filename=f'binning_dataset_{dataset}.xml')
    h.CalculateFeatures(shower); h.Einc = energy
    res[which] = h
    del shower
if mode == 'cls-low':
    src = ev.prepare_low_data_for_classifier(sf, res['gen'], 0., threshold=args.min_energy)
    ref = ev.prepare_low_data_for_classifier(rf, res['ref'], 1., threshold=args.min_energy)
else:
    src = ev.prepare_high_data_for_classifier(sf, res['gen'], 0., threshold=args.min_energy)
    ref = ev.prepare_high_data_for_classifier(rf, res['ref'], 1., threshold=args.min_energy)
train, test, val = ev.ttv_split(src, ref)   # fractional split (see the module docstring)
del src, ref
clf = ev.DNN(num_layer=2, num_hidden=2048, input_dim=train.shape[1] - 1)
opt = torch.optim.Adam(clf.parameters(), lr=args.cls_lr)
dl = lambda d, sh: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
    torch.tensor(d)), batch_size=1000, shuffle=sh)
train_dl, test_dl, val_dl = dl(train, True), dl(test, False), dl(val, False)
ev.train_and_evaluate_cls(clf, train_dl, test_dl, opt, args)
clf = ev.load_classifier(clf, args)
with torch.no_grad():
    acc, auc, jsd = ev.evaluate_cls(clf, val_dl, args, final_eval=True,
                                    calibration_data=test_dl)
print('PARITY_RESULT', json.dumps({'auc': float(auc), 'jsd': float(jsd),
                                   'best_epoch': args.best_epoch}))
"""

OURS = """
import json, sys
from caloforge.evaluation.calochallenge import run_calochallenge_protocol
from caloforge.evaluation.calochallenge.classifier import OfficialClassifierConfig
ref, gen, dataset, out, epochs, seed, classifiers, fpd_kpd = sys.argv[1:9]
cfg = OfficialClassifierConfig(epochs=int(epochs), seed=int(seed))
res = run_calochallenge_protocol(ref, gen, dataset, out, seed=int(seed),
    classifier_config=cfg, classifiers=tuple(c for c in classifiers.split(',') if c),
    fpd_kpd=fpd_kpd == '1', control=False, overwrite=True)
print('PARITY_RESULT', json.dumps({
    'histograms': {k: v.get('separation_power') for k, v in res['histograms'].items()
                   if v.get('official', True)},
    'fpd': res.get('fpd'), 'kpd': res.get('kpd'),
    'classifiers': {k: {'auc': v.get('auc'), 'jsd': v.get('jsd')}
                    for k, v in res['classifiers'].items()}}))
"""


def write_case_files(case: Case, folder: Path) -> tuple[Path, Path]:
    """Reference and generated files of ``case`` in the official layout (cached)."""
    import h5py

    from caloforge.evaluation.toy import toy_showers

    paths = []
    for role, n, seed, width, scale in (("ref", case.n_ref, case.seed, 1.0, 1.0),
                                        ("gen", case.n_gen, case.seed + 1, case.width_scale,
                                         case.energy_scale)):
        path = folder / f"{case.files or case.name}_{role}.h5"
        paths.append(path)
        if path.exists():
            continue
        rng = np.random.default_rng(seed)
        lo, hi = case.energies_gev
        e_gev = (np.exp(rng.uniform(np.log(lo), np.log(hi), n)) if case.log_uniform
                 else rng.uniform(lo, hi, n))
        tmp = path.with_suffix(".tmp")
        with h5py.File(tmp, "w") as h5:
            sh = h5.create_dataset("showers", (n, _n_voxels(case.dataset)), "f4")
            inc = h5.create_dataset("incident_energies", (n, 1), "f8")
            for lo_i in range(0, n, 2000):
                hi_i = min(n, lo_i + 2000)
                b = toy_showers(hi_i - lo_i, GEOMETRY[case.dataset], seed=rng,
                                energies_gev=e_gev[lo_i:hi_i], width_scale=width,
                                energy_scale=scale, sampling_fraction=SAMPLING_FRACTION,
                                zero_below_mip=0.3)
                sh[lo_i:hi_i] = (b.energies / SAMPLING_FRACTION).astype(np.float32)
                inc[lo_i:hi_i, 0] = b.incident_energy
        tmp.rename(path)
    return paths[0], paths[1]


def _n_voxels(dataset: str) -> int:
    from caloforge.geometry import get_geometry

    return get_geometry(GEOMETRY[dataset]).n_voxels


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): ... {' '.join(cmd[3:])}\n"
                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)
    return proc.stdout


def _result(stdout: str) -> dict:
    line = [s for s in stdout.splitlines() if s.startswith("PARITY_RESULT ")][-1]
    return json.loads(line.split(" ", 1)[1])


REUSE = False  # --reuse-official: take the official outputs already in --work


def official_histograms(official: Path, ref: Path, gen: Path, dataset: str,
                        out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    done = out / f"histogram_chi2_{dataset}.txt"
    if not (REUSE and done.is_file()):
        done.unlink(missing_ok=True)
        ref.with_suffix(".pkl").unlink(missing_ok=True)  # its feature cache of the reference
        _run([sys.executable, "-c", NO_TEX, "-i", str(gen), "-r", str(ref), "-m", "hist-chi",
              "-d", dataset, "--output_dir", str(out)], cwd=official)
    return parse_separation_powers(done.read_text())


def parse_separation_powers(text: str) -> dict[str, float]:
    """The official ``histogram_chi2_<dataset>.txt``: "NAME: " lines, each followed by
    its separation power (despite the file name, no chi2 is written there)."""
    return {m.group(1).strip(): float(m.group(2))
            for m in re.finditer(r"^([^\n:]+): \n([-+0-9.eE]+)\n", text, re.M)}


def official_fpd_kpd(official: Path, ref: Path, gen: Path, dataset: str, out: Path,
                     jetnet_path: str | None) -> dict[str, tuple[float, float]]:
    env = dict(os.environ)
    if jetnet_path:
        env["PYTHONPATH"] = jetnet_path + os.pathsep + env.get("PYTHONPATH", "")
    done = out / f"fpd_kpd_{dataset}.txt"
    if not (REUSE and done.is_file()):
        _run([sys.executable, "-c", NO_TEX, "-i", str(gen), "-r", str(ref), "-m", "fpd",
              "-d", dataset, "--output_dir", str(out)], cwd=official, env=env)
    return parse_fpd_kpd(done.read_text())


def parse_fpd_kpd(text: str) -> dict[str, tuple[float, float]]:
    """The official ``fpd_kpd_<dataset>.txt``: value and error of each, x10^3."""
    got = {}
    for name in ("FPD", "KPD"):
        m = re.search(name + r" \(x10\^3\): ([-0-9.eE+]+) ± ([-0-9.eE+]+)", text)
        if m is None:
            raise ValueError(f"no {name} line in the official output")
        got[name.lower()] = (float(m.group(1)), float(m.group(2)))
    return got


def official_classifier(official: Path, ref: Path, gen: Path, dataset: str, mode: str,
                        epochs: int, run_seed: int, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    done = out / "parity_result.json"
    if REUSE and done.is_file():
        res = json.loads(done.read_text())
        if res.get("epochs") == epochs:
            return res
    res = _result(_run([sys.executable, "-c", OFFICIAL_CLS, str(ref), str(gen), dataset,
                        mode, str(epochs), str(run_seed), str(out)], cwd=official))
    done.write_text(json.dumps(res | {"epochs": epochs}))
    return res


def ours(ref: Path, gen: Path, dataset: str, out: Path, epochs: int, seed: int,
         classifiers: tuple[str, ...], fpd_kpd: bool) -> dict:
    return _result(_run([sys.executable, "-c", OURS, str(ref), str(gen), dataset, str(out),
                         str(epochs), str(seed), ",".join(classifiers),
                         "1" if fpd_kpd else "0"]))


def compare_histograms(off: dict[str, float], mine: dict[str, float | None]) -> dict:
    rows, missing = [], []
    for name, v_off in off.items():
        v = mine.get(name)
        if v is None:
            missing.append(name)
            continue
        diff = abs(v - v_off)
        rel = diff / abs(v_off) if v_off else math.inf
        rows.append((name, v_off, v, diff, rel, diff <= 0.002 or rel <= 0.05))
    worst = max(rows, key=lambda r: r[3])
    return {"n": len(rows), "passed": sum(r[5] for r in rows), "missing": missing,
            "max_abs_diff": max(r[3] for r in rows),
            "max_rel_diff_above_0.002": max([r[4] for r in rows if r[3] > 0.002],
                                            default=0.0),
            "worst": worst[:5], "failures": [r[:5] for r in rows if not r[5]]}


def run_case(case: Case, args: argparse.Namespace) -> dict:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"[{case.name}] dataset {case.dataset}: {case.n_ref} vs {case.n_gen} showers, "
          f"E {case.energies_gev} GeV {'log-uniform' if case.log_uniform else 'uniform'}, "
          f"generated width x{case.width_scale}, energy x{case.energy_scale}", flush=True)
    ref, gen = write_case_files(case, work)
    out = work / case.name
    report: dict = {"case": vars(case) | {"energies_gev": list(case.energies_gev)}}
    classifiers = case.classifiers if args.classifiers else ()
    print("  caloforge protocol", flush=True)
    mine = ours(ref, gen, case.dataset, out / "caloforge", args.epochs, args.seed,
                classifiers, case.fpd_kpd and not args.no_fpd_kpd)
    print("  official histograms", flush=True)
    hist = compare_histograms(
        official_histograms(Path(args.official), ref, gen, case.dataset, out / "official"),
        mine["histograms"])
    report["histograms"] = hist
    print(f"  separation powers: {hist['passed']} / {hist['n']} within 5 % or 0.002; "
          f"largest |diff| {hist['worst'][3]:.2e} ({hist['worst'][0]}: official "
          f"{hist['worst'][1]:.5f}, caloforge {hist['worst'][2]:.5f}); not in caloforge's "
          f"results: {hist['missing'] or 'none'}", flush=True)
    if case.fpd_kpd and not args.no_fpd_kpd:
        print("  official FPD / KPD", flush=True)
        off = official_fpd_kpd(Path(args.official), ref, gen, case.dataset, out / "official",
                               args.jetnet_path)
        for name in ("fpd", "kpd"):
            v_off, e_off = off[name]
            v, e = mine[name]["value_x1e3"], mine[name]["error_x1e3"]
            ok = abs(v - v_off) <= max(e, e_off)
            report[name] = {"official_x1e3": [v_off, e_off], "caloforge_x1e3": [v, e],
                            "within_errors": ok}
            print(f"  {name.upper()} x1e3: official {v_off:.4f} +- {e_off:.4f}, "
                  f"caloforge {v:.4f} +- {e:.4f}: {'ok' if ok else 'MISS'}", flush=True)
    for name in classifiers:
        mode = {"high_level": "cls-high", "low_level": "cls-low"}[name]
        runs = []
        for k in range(args.official_runs):
            print(f"  official {mode} run {k + 1}", flush=True)
            runs.append(official_classifier(Path(args.official), ref, gen, case.dataset, mode,
                                            args.epochs, 1000 + k, out / f"official_{mode}_{k}"))
        aucs = np.array([r["auc"] for r in runs])
        mine_runs = [mine["classifiers"][name]]
        for k in range(1, args.our_runs):  # more seeds: compare mean with mean
            print(f"  caloforge {name} classifier, seed {args.seed + k}", flush=True)
            mine_runs.append(ours(ref, gen, case.dataset, out / f"caloforge_{name}_{k}",
                                  args.epochs, args.seed + k, (name,), False
                                  )["classifiers"][name])
        my_aucs = np.array([r["auc"] for r in mine_runs])
        ok = abs(my_aucs.mean() - aucs.mean()) <= 0.02
        report[name] = {"official_aucs": aucs.tolist(), "official_mean": aucs.mean(),
                        "official_std": aucs.std(ddof=1) if len(aucs) > 1 else None,
                        "official_jsd": [r["jsd"] for r in runs],
                        "caloforge_aucs": my_aucs.tolist(), "caloforge_mean": my_aucs.mean(),
                        "caloforge_jsd": [r["jsd"] for r in mine_runs],
                        "means_within_0.02": ok, "epochs": args.epochs}
        print(f"  {mode} AUC: official {np.round(aucs, 4).tolist()} (mean {aucs.mean():.4f}), "
              f"caloforge {np.round(my_aucs, 4).tolist()} (mean {my_aucs.mean():.4f}): "
              f"{'ok' if ok else 'MISS'}", flush=True)
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", required=True,
                   help="folder 'code' of a CaloChallenge/homepage checkout")
    p.add_argument("--work", required=True, help="folder for the files and outputs")
    p.add_argument("--cases", nargs="+",
                   default=[c for c in CASES if c not in ("smoke", "ds2-d-low", "ds2-d-high")],
                   choices=list(CASES))
    p.add_argument("--epochs", type=int, default=5, help="classifier epochs (both sides)")
    p.add_argument("--official-runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="caloforge's --seed")
    p.add_argument("--our-runs", type=int, default=1,
                   help="caloforge classifier runs (seeds --seed, --seed + 1, ...)")
    p.add_argument("--no-classifiers", dest="classifiers", action="store_false")
    p.add_argument("--no-fpd-kpd", action="store_true")
    p.add_argument("--jetnet-path", help="extra PYTHONPATH entry where jetnet is installed")
    p.add_argument("--reuse-official", action="store_true",
                   help="reuse the official outputs already in --work (same cases and "
                        "epochs) instead of running the official code again")
    args = p.parse_args()
    global REUSE
    REUSE = args.reuse_official
    if not (Path(args.official) / "evaluate.py").is_file():
        sys.exit(f"--official {args.official}: no evaluate.py there")
    summary = Path(args.work, "parity.json")
    reports = json.loads(summary.read_text()) if summary.exists() else {}
    for name in args.cases:
        reports[name] = run_case(CASES[name], args)
        summary.write_text(json.dumps(reports, indent=1, default=float))
    print(f"wrote {summary} (the cases run so far)")


if __name__ == "__main__":
    main()
