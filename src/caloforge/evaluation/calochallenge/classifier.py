"""The CaloChallenge classifier metric (low- and high-level), seeded.

Recipe of the challenge's ``evaluate.py --mode cls-low / cls-high`` (re-implemented):

- inputs, low level: ``[log10 E_inc, voxel E / E_inc ...]`` of the thresholded showers;
  high level: the feature vector of :mod:`.features`; no further normalisation;
- network: Linear(d, 2048) - LeakyReLU(0.01), then 2 x [Linear(2048, 2048) -
  LeakyReLU(0.01)], then Linear(2048, 1) (dropout 0), BCE-with-logits loss, Adam with
  learning rate 2e-4, batches of 1000, 50 epochs;
- each sample is shuffled and split train / selection / final ("train", "test", "val"
  in the challenge code); after every epoch the accuracy on the selection split is
  measured and the network with the best one (first maximum) is kept; training stops
  early if it reaches 1;
- the kept network's probabilities on the selection split calibrate an isotonic
  regression (clipped, outputs in [1e-6, 1 - 1e-6]); the reported AUC and
  ``JSD = (ln 2 - BCE) / ln 2`` are those of the calibrated probabilities on the final
  split.

Deviations (listed in the protocol output): every random choice comes from ``seed``
(the challenge is unseeded); the splits are fractions (0.6 / 0.2 / 0.2 of the smaller
sample, both samples subsampled to equal size) instead of the hard-coded 60k/20k/20k;
the network runs in float32 (the challenge sets float64 as torch's default); low-level
inputs are held in memory as float16 ``2^15 E / E_inc`` (relative rounding 2^-11, every
value in float16's normal range) instead of float64, to fit 100k + 100k showers in RAM.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from caloforge.errors import InputError
from caloforge.evaluation.classifier import classifier_power, min_detectable_auc

LOWLEVEL_SCALE = np.float32(2.0 ** 15)
MIN_SHOWERS = 250  # per sample: 50 per class in the final split


@dataclass
class OfficialClassifierConfig:
    n_layer: int = 2
    n_hidden: int = 2048
    dropout: float = 0.0
    batch_size: int = 1000
    epochs: int = 50
    learning_rate: float = 2e-4
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    device: str = "cpu"
    seed: int = 0
    threads: int | None = None
    # Wall-time cap (None = the official 50 epochs); a run cut short says so.
    max_seconds: float | None = None


class DenseInputs:
    """Network inputs held as one float array (the high-level features)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.values)

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self.values[rows]


class LowLevelInputs:
    """``[log10 E_inc, E / E_inc]`` rows, stored compactly (see module docstring)."""

    def __init__(self, n: int, n_voxels: int) -> None:
        self.scaled = np.zeros((n, n_voxels), dtype=np.float16)
        self.log_e_inc = np.zeros(n, dtype=np.float64)

    def fill(self, start: int, energies: np.ndarray, e_inc: np.ndarray) -> None:
        e_inc = np.asarray(e_inc, dtype=np.float64).reshape(-1)
        # In blocks of rows: float64 temporaries of a whole chunk would add ~0.5 GB to the
        # peak on top of the 2.6 GB of float16 inputs (100k + 100k dataset-2 showers).
        for lo in range(0, len(e_inc), 512):
            rows = slice(lo, lo + 512)
            frac = np.asarray(energies[rows], np.float64) / e_inc[rows, None]
            frac *= float(LOWLEVEL_SCALE)
            self.scaled[start + lo:start + lo + len(frac)] = frac.astype(np.float16)
        self.log_e_inc[start:start + len(e_inc)] = np.log10(e_inc)

    def __len__(self) -> int:
        return len(self.log_e_inc)

    @property
    def dim(self) -> int:
        return self.scaled.shape[1] + 1

    def take(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        out[:, 0] = self.log_e_inc[rows]
        out[:, 1:] = self.scaled[rows].astype(np.float32) / LOWLEVEL_SCALE
        return out


class ScaledEnergies:
    """A view of inputs with the shower energies multiplied by ``factor`` (the power
    control): for low-level rows E/E_inc scales; for high-level rows the log10 energy
    columns ``energy_columns`` shift by log10(factor)."""

    def __init__(self, inputs: DenseInputs | LowLevelInputs, factor: float,
                 energy_columns: np.ndarray | None = None) -> None:
        self.inputs, self.factor = inputs, factor
        self.energy_columns = energy_columns

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def dim(self) -> int:
        return self.inputs.dim

    def take(self, rows: np.ndarray) -> np.ndarray:
        x = self.inputs.take(rows)
        if self.energy_columns is None:
            x[:, 1:] *= np.float32(self.factor)
        else:
            x[:, self.energy_columns] += np.float32(math.log10(self.factor))
        return x


def _network(d: int, cfg: OfficialClassifierConfig):
    import torch

    layers = [torch.nn.Linear(d, cfg.n_hidden), torch.nn.LeakyReLU(),
              torch.nn.Dropout(cfg.dropout)]
    for _ in range(cfg.n_layer):
        layers += [torch.nn.Linear(cfg.n_hidden, cfg.n_hidden), torch.nn.LeakyReLU(),
                   torch.nn.Dropout(cfg.dropout)]
    layers.append(torch.nn.Linear(cfg.n_hidden, 1))
    return torch.nn.Sequential(*layers)


def _split(n: int, fractions: tuple[float, float, float], rng: np.random.Generator
           ) -> list[np.ndarray]:
    counts = (n * np.asarray(fractions[:2])).astype(int)
    perm = rng.permutation(n)
    return np.split(perm, np.cumsum(counts))


def train_official_classifier(reference, generated, cfg: OfficialClassifierConfig | None = None,
                              rows_reference: np.ndarray | None = None,
                              rows_generated: np.ndarray | None = None,
                              control: dict | None = None) -> dict:
    """Train and score the challenge classifier: ``reference`` is label 1, ``generated``
    label 0 (as in the challenge).  Inputs are :class:`DenseInputs`,
    :class:`LowLevelInputs` or :class:`ScaledEnergies`; ``rows_*`` restrict a sample to
    these rows (e.g. two halves of the reference for the power control); ``control`` is
    a :func:`power_control` result that enters the verdict."""
    import torch
    from sklearn.isotonic import IsotonicRegression
    from sklearn.metrics import roc_auc_score

    cfg = cfg or OfficialClassifierConfig()
    rr = np.arange(len(reference)) if rows_reference is None else np.asarray(rows_reference)
    rg = np.arange(len(generated)) if rows_generated is None else np.asarray(rows_generated)
    n = min(len(rr), len(rg))
    if n < MIN_SHOWERS:
        raise InputError(f"the classifier needs at least {MIN_SHOWERS} showers per sample "
                         f"for its three splits, got {len(rr)} and {len(rg)}")
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 14])
    rr = np.sort(rng.choice(rr, size=n, replace=False))
    rg = np.sort(rng.choice(rg, size=n, replace=False))
    parts = [(rr[s_r], rg[s_g]) for s_r, s_g in zip(_split(n, cfg.split, rng),
                                                    _split(n, cfg.split, rng))]
    train, select, final = parts
    srcs = (generated, reference)  # label 0, label 1

    def rows_of(part: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        labels = np.concatenate([np.ones(len(part[0])), np.zeros(len(part[1]))])
        return np.concatenate([part[0], part[1]]), labels

    def batch(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        x = np.empty((len(rows), reference.dim), dtype=np.float32)
        for lab, src in ((0, srcs[0]), (1, srcs[1])):
            sel = np.flatnonzero(labels == lab)
            if len(sel):
                order = np.argsort(rows[sel])  # sorted gathers are faster
                x[sel[order]] = src.take(rows[sel][order])
        return x

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    shuffle_gen = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2 ** 31)))
        net = _network(reference.dim, cfg).to(device)
    # The official optimiser (Adam, lr 2e-4); the fused kernel does the same update in
    # one pass over the 22M weights (4x faster than the per-tensor loop on a CPU).
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate, fused=True)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def logits(rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        net.eval()
        out = []
        with torch.no_grad():
            for lo in range(0, len(rows), cfg.batch_size):
                sl = slice(lo, lo + cfg.batch_size)
                xb = torch.from_numpy(batch(rows[sl], labels[sl])).to(device)
                out.append(net(xb).squeeze(1).double().cpu().numpy())
        return np.concatenate(out)

    tr_rows, tr_lab = rows_of(train)
    se_rows, se_lab = rows_of(select)
    fi_rows, fi_lab = rows_of(final)
    best_acc, best_state, best_epoch, epochs, stopped = -1.0, None, 0, 0, "epochs"
    try:
        for epoch in range(cfg.epochs):
            net.train()
            order = torch.randperm(len(tr_rows), generator=shuffle_gen).numpy()
            for lo in range(0, len(order), cfg.batch_size):
                o = order[lo:lo + cfg.batch_size]
                xb = torch.from_numpy(batch(tr_rows[o], tr_lab[o])).to(device)
                yb = torch.as_tensor(tr_lab[o], dtype=torch.float32, device=device)
                opt.zero_grad()
                loss_fn(net(xb).squeeze(1), yb).backward()
                opt.step()
            epochs = epoch + 1
            acc = float(np.mean((logits(se_rows, se_lab) > 0) == (se_lab == 1)))
            if acc > best_acc:
                best_acc, best_epoch = acc, epochs
                best_state = copy.deepcopy(net.state_dict())
            if acc == 1.0:
                stopped = "selection accuracy 1"
                break
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = "time limit"
                break
        net.load_state_dict(best_state)
        se_logit = logits(se_rows, se_lab)
        fi_logit = logits(fi_rows, fi_lab)
    finally:
        if cfg.threads:
            torch.set_num_threads(old_threads)
    sig = lambda z: 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))  # noqa: E731
    iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1.0 - 1e-6)
    iso.fit(sig(se_logit), se_lab)
    p = iso.predict(sig(fi_logit))
    bce = float(-np.mean(fi_lab * np.log(p) + (1 - fi_lab) * np.log(1 - p)))
    auc = float(roc_auc_score(fi_lab, p))
    se_p = np.clip(sig(se_logit), 1e-12, 1 - 1e-12)
    se_bce = float(-np.mean(se_lab * np.log(se_p) + (1 - se_lab) * np.log(1 - se_p)))
    n_pos, n_neg = int(fi_lab.sum()), int(len(fi_lab) - fi_lab.sum())
    n_sp, n_sn = int(se_lab.sum()), int(len(se_lab) - se_lab.sum())
    power = classifier_power(auc, n_pos, n_neg, se_bce, float(roc_auc_score(se_lab, se_logit)),
                             n_sp, n_sn, control)
    return power | {
        "auc": auc, "jsd": (math.log(2.0) - bce) / math.log(2.0), "bce": bce,
        "auc_uncalibrated": float(roc_auc_score(fi_lab, fi_logit)),
        "selection_accuracy": best_acc, "best_epoch": best_epoch, "epochs": epochs,
        "stopped": stopped, "n_train": len(tr_rows), "n_selection": len(se_rows),
        "n_final": len(fi_rows), "n_features": int(reference.dim),
        "seconds": time.perf_counter() - t0,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }


def power_control(reference, cfg: OfficialClassifierConfig, factor: float,
                  energy_columns: np.ndarray | None = None) -> dict:
    """The same classifier on two reference halves, one with energies scaled by
    ``factor``: a distortion of known size it must detect to have power."""
    rng = np.random.default_rng([cfg.seed, 15])
    perm = rng.permutation(len(reference))
    half = len(reference) // 2
    a, b = np.sort(perm[:half]), np.sort(perm[half:2 * half])
    distorted = ScaledEnergies(reference, factor, energy_columns)
    res = train_official_classifier(reference, distorted, cfg, rows_reference=a,
                                    rows_generated=b)
    mda = min_detectable_auc(res["n_final"] // 2, res["n_final"] - res["n_final"] // 2)
    return {"distortion": f"energies scaled by {factor:g}", "auc": res["auc"],
            "min_detectable_auc": mda, "detected": bool(res["auc"] >= mda),
            "epochs": res["epochs"], "seconds": res["seconds"]}
