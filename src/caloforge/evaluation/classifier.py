"""Classifier two-sample test (CaloChallenge recipe, seeded).

A fully connected network learns to tell reference from generated showers; if it cannot,
the generated sample is good.  Following the CaloChallenge evaluation (Krause et al.,
arXiv:2410.21611, Sec. 4.2; CaloFlow, arXiv:2106.05285): an MLP on either the voxels
(low level: voxel energy / E_inc, here compressed as log1p(1000 E/E_inc), plus
log E_inc) or the high-level features, classes balanced, trained with Adam and early
stopping on a validation split, probabilities calibrated on the validation split
(Platt scaling of the logit), and scored on a held-out test split by

- ROC AUC (0.5: indistinguishable, 1: perfectly separable) and
- JSD = (ln 2 - BCE) / ln 2, the Jensen-Shannon divergence estimate from the calibrated
  binary cross-entropy (0: indistinguishable, 1: separable).

Unlike the challenge script, every random choice (subsampling to balance the classes,
the 60/20/20 split, initialisation, batch order) comes from ``seed``, so a result can be
reproduced exactly on the same device.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from caloforge.errors import InputError

MIN_SHOWERS_CLASSIFIER = 250  # per class, so that the test split has >= 50 per class


@dataclass
class ClassifierConfig:
    """Training settings; the defaults follow the CaloChallenge classifier."""

    hidden: tuple[int, ...] = (512, 512)
    dropout: float = 0.0
    learning_rate: float = 2e-4
    batch_size: int = 512
    max_epochs: int = 40
    patience: int = 5
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    device: str = "cpu"
    seed: int = 0
    # Wall-time cap per training run (best state so far kept, "stopped": "time_limit"):
    # keeps the low-level test of 27k-voxel showers within minutes on a CPU.
    max_seconds: float | None = 200.0
    threads: int | None = 1  # torch CPU threads (1 avoids oversubscription on shared CPUs)


def null_auc_std(n_pos: int, n_neg: int) -> float:
    """Standard deviation of the ROC AUC of a useless classifier (Mann-Whitney U under
    H0): sqrt((n1 + n2 + 1) / (12 n1 n2))."""
    return math.sqrt((n_pos + n_neg + 1) / (12.0 * n_pos * n_neg))


# Power statement (every classifier result): the minimum detectable AUC is the true AUC
# that a one-sided test at 5 % significance detects with 80 % probability,
# 0.5 + (z_0.95 + z_0.80) sigma_0, with sigma_0 the AUC spread of a useless classifier
# on the test split (Hanley & McNeil 1982 at AUC = 0.5, identical to the Mann-Whitney
# null spread).
Z_SIGNIFICANCE = 1.6449  # one-sided 5 %
Z_POWER = 0.8416  # 80 % power
VERDICT_PASS = "pass"
VERDICT_FAIL = "fail"
VERDICT_INCONCLUSIVE = "inconclusive (sample too small)"


def min_detectable_auc(n_pos: int, n_neg: int) -> float:
    """Smallest true AUC detected (5 % one-sided, 80 % power) with these test sizes."""
    return 0.5 + (Z_SIGNIFICANCE + Z_POWER) * null_auc_std(n_pos, n_neg)


def classifier_power(auc: float, n_pos: int, n_neg: int, val_bce: float, val_auc: float,
                     n_val_pos: int, n_val_neg: int,
                     control: dict | None = None) -> dict[str, object]:
    """Whether a classifier learned anything, what it could have detected, and the verdict.

    ``learned``: its validation BCE went below ln 2 *and* its validation AUC is above
    0.5 at 5 % one-sided significance.  ``control`` (optional) is the result of the same
    classifier on reference vs a distortion of known size; it shows that the classifier
    has the power to detect such a distortion at this sample size.

    Verdict: ``fail`` if the test AUC reaches the minimum detectable AUC; otherwise
    ``pass`` only if the classifier demonstrably had power (the control was detected,
    or without a control, it learned on validation), else ``inconclusive (sample too
    small)`` -- a classifier that learned nothing says nothing about the samples.
    """
    mda = min_detectable_auc(n_pos, n_neg)
    val_sig = 0.5 + Z_SIGNIFICANCE * null_auc_std(max(n_val_pos, 1), max(n_val_neg, 1))
    learned = bool(val_bce < math.log(2.0) and val_auc > val_sig)
    out: dict[str, object] = {
        "learned": learned, "val_bce": val_bce, "ln2": math.log(2.0), "val_auc": val_auc,
        "min_detectable_auc": mda,
        "min_detectable_auc_method": "Hanley-McNeil null spread of the test split, "
                                     "5% one-sided significance, 80% power",
    }
    if control is not None:
        out["control"] = control
    if auc >= mda:
        verdict, why = VERDICT_FAIL, f"test AUC {auc:.4f} >= minimum detectable {mda:.4f}"
    elif control is not None:
        if control["detected"]:
            verdict, why = VERDICT_PASS, (
                f"test AUC {auc:.4f} < {mda:.4f}, and the same classifier detects "
                f"{control['distortion']} (AUC {control['auc']:.4f})")
        else:
            verdict, why = VERDICT_INCONCLUSIVE, (
                f"the classifier did not detect {control['distortion']} (AUC "
                f"{control['auc']:.4f} < {control['min_detectable_auc']:.4f}): no power "
                "at this sample size")
    elif learned:
        verdict, why = VERDICT_PASS, f"test AUC {auc:.4f} < {mda:.4f}; learned on validation"
    else:
        verdict, why = VERDICT_INCONCLUSIVE, (
            f"validation BCE {val_bce:.4f} vs ln 2 = {math.log(2.0):.4f}, validation AUC "
            f"{val_auc:.4f}: the classifier learned nothing")
    out["power_verdict"] = verdict
    out["power_reason"] = why
    return out


def _split_indices(n: int, split: tuple[float, float, float],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    perm = rng.permutation(n)
    n_tr = int(round(split[0] * n))
    n_va = int(round(split[1] * n))
    return perm[:n_tr], perm[n_tr:n_tr + n_va], perm[n_tr + n_va:]


def classifier_test(reference: np.ndarray, generated: np.ndarray,
                    config: ClassifierConfig | None = None,
                    transform: Callable[[np.ndarray], np.ndarray] | None = None,
                    progress_label: str = "", reference_rows: np.ndarray | None = None,
                    generated_rows: np.ndarray | None = None) -> dict[str, float | int | str]:
    """Train the two-sample classifier on ``reference`` (label 0) vs ``generated`` (1).

    ``reference``/``generated`` are (N, d) arrays (any float dtype; float16 is kept as is
    and converted per mini-batch to bound memory).  ``transform`` maps a float32 chunk to
    network inputs before standardisation.  ``reference_rows``/``generated_rows``
    restrict the samples to these rows without copying (e.g. two halves of one array for
    a noise floor).  Returns AUC, JSD, BCE and bookkeeping.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    cfg = config or ClassifierConfig()
    ref, gen = np.asarray(reference), np.asarray(generated)
    if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1]:
        raise InputError(f"classifier inputs must be (N, d) with equal d, got {ref.shape} "
                         f"and {gen.shape}")
    rows_r = np.arange(len(ref)) if reference_rows is None else np.asarray(reference_rows)
    rows_g = np.arange(len(gen)) if generated_rows is None else np.asarray(generated_rows)
    n = min(len(rows_r), len(rows_g))
    if n < MIN_SHOWERS_CLASSIFIER:
        raise InputError(f"the classifier test needs at least {MIN_SHOWERS_CLASSIFIER} "
                         f"showers per sample, got {len(rows_r)} reference and "
                         f"{len(rows_g)} generated")
    t0 = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 21])
    # Class balance: both classes subsampled to the size of the smaller one.
    ir = np.sort(rng.choice(rows_r, size=n, replace=False))
    ig = np.sort(rng.choice(rows_g, size=n, replace=False))
    splits = [_split_indices(n, cfg.split, rng) for _ in range(2)]
    tr = [ir[splits[0][0]], ig[splits[1][0]]]
    va = [ir[splits[0][1]], ig[splits[1][1]]]
    te = [ir[splits[0][2]], ig[splits[1][2]]]
    tf = transform or (lambda a: a)

    def chunk(src: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.asarray(tf(src[idx].astype(np.float32)), dtype=np.float32)

    # Standardisation from the training split (both classes), computed in chunks.
    d = tf(ref[:1].astype(np.float32)).shape[1]
    s1, s2, cnt = np.zeros(d), np.zeros(d), 0
    # Small chunks: with 27k voxels a float64 chunk of 4096 rows would be ~1 GB.
    for src, idx in ((ref, tr[0]), (gen, tr[1])):
        for lo in range(0, len(idx), 256):
            x = chunk(src, idx[lo:lo + 256]).astype(np.float64)
            s1 += x.sum(0)
            s2 += np.einsum("ij,ij->j", x, x)
            cnt += len(x)
    mean = s1 / cnt
    std = np.sqrt(np.clip(s2 / cnt - mean ** 2, 0, None))
    std = np.where(std > 1e-8, std, 1.0)
    mean_t = torch.as_tensor(mean, dtype=torch.float32)
    std_t = torch.as_tensor(std, dtype=torch.float32)

    old_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    gen_t = torch.Generator().manual_seed(int(rng.integers(2**31)))
    # Build (and so initialise) the network under a private, seeded torch RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**31)))
        layers: list[torch.nn.Module] = []
        width = d
        for h in cfg.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.LeakyReLU(0.2)]
            if cfg.dropout > 0:
                layers.append(torch.nn.Dropout(cfg.dropout))
            width = h
        layers.append(torch.nn.Linear(width, 1))
        net = torch.nn.Sequential(*layers).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def batches(idx_pair: list[np.ndarray], shuffle: bool):
        lab = np.concatenate([np.zeros(len(idx_pair[0])), np.ones(len(idx_pair[1]))])
        which = np.concatenate([idx_pair[0], idx_pair[1]])
        order = np.arange(len(lab))
        if shuffle:
            order = torch.randperm(len(lab), generator=gen_t).numpy()
        for lo in range(0, len(order), cfg.batch_size):
            o = order[lo:lo + cfg.batch_size]
            y = lab[o]
            x = np.empty((len(o), d), np.float32)
            m0 = y == 0
            # Gather sorted rows per class (faster on large float16 arrays).
            for cls, src in ((0, ref), (1, gen)):
                sel = np.flatnonzero(m0 if cls == 0 else ~m0)
                if len(sel):
                    rows = which[o[sel]]
                    srt = np.argsort(rows)
                    x[sel[srt]] = chunk(src, rows[srt])
            xt = (torch.from_numpy(x) - mean_t) / std_t
            yield xt.to(device), torch.as_tensor(y, dtype=torch.float32, device=device)

    def predict(idx_pair: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        net.eval()
        out, ys = [], []
        with torch.no_grad():
            for xb, yb in batches(idx_pair, shuffle=False):
                out.append(net(xb).squeeze(1).cpu().numpy())
                ys.append(yb.cpu().numpy())
        return np.concatenate(out), np.concatenate(ys)

    best, best_state, bad_epochs, epochs = math.inf, None, 0, 0
    stopped = "max_epochs"
    try:
        for epoch in range(cfg.max_epochs):
            net.train()
            for xb, yb in batches(tr, shuffle=True):
                opt.zero_grad()
                loss = loss_fn(net(xb).squeeze(1), yb)
                loss.backward()
                opt.step()
            logits, ys = predict(va)
            val = float(loss_fn(torch.as_tensor(logits), torch.as_tensor(ys)))
            epochs = epoch + 1
            if val < best - 1e-5:
                best, best_state, bad_epochs = val, copy.deepcopy(net.state_dict()), 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    stopped = "early_stopping"
                    break
            if cfg.max_seconds and time.perf_counter() - t0 > cfg.max_seconds:
                stopped = "time_limit"
                break
        if best_state is not None:
            net.load_state_dict(best_state)
        v_logit, v_y = predict(va)
        t_logit, t_y = predict(te)
    finally:
        if cfg.threads:
            torch.set_num_threads(old_threads)
    # Calibration on the validation split: Platt scaling p = sigmoid(a * logit + b).
    # (Isotonic regression overfits small validation sets and then makes the test BCE,
    # hence the JSD, noticeably worse than chance for indistinguishable samples.)
    a, b = platt_scaling(v_logit, v_y)
    z = np.clip(a * t_logit + b, -30, 30)
    p = np.clip(1.0 / (1.0 + np.exp(-z)), 1e-7, 1 - 1e-7)
    bce = float(-np.mean(t_y * np.log(p) + (1 - t_y) * np.log(1 - p)))
    auc = float(roc_auc_score(t_y, t_logit))
    n_pos, n_neg = int(t_y.sum()), int(len(t_y) - t_y.sum())
    power = classifier_power(auc, n_pos, n_neg, float(best), float(roc_auc_score(v_y, v_logit)),
                             int(v_y.sum()), int(len(v_y) - v_y.sum()))
    return power | {
        "auc": auc,
        "jsd": (math.log(2.0) - bce) / math.log(2.0),
        "bce": bce,
        "auc_null_std": null_auc_std(n_pos, n_neg),
        "n_train": int(len(tr[0]) + len(tr[1])),
        "n_val": int(len(va[0]) + len(va[1])),
        "n_test": n_pos + n_neg,
        "n_features": int(d),
        "epochs": epochs,
        "stopped": stopped,
        "best_val_bce": best,
        "seconds": time.perf_counter() - t0,
        "config": {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in asdict(cfg).items()},
        "label": progress_label,
    }


def platt_scaling(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) minimising the BCE of sigmoid(a * logit + b) (Platt 1999), by Newton steps.

    Deterministic and well-conditioned; a >= 0 keeps the ranking (and the AUC) intact.
    """
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    a, b = 1.0, 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(a * x + b, -30, 30)))
        w = p * (1 - p) + 1e-9
        g = np.array([np.sum((p - y) * x), np.sum(p - y)])
        h = np.array([[np.sum(w * x * x), np.sum(w * x)], [np.sum(w * x), np.sum(w)]])
        h += 1e-9 * np.eye(2)
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    if a < 0:  # anti-correlated on validation: fall back to the class prior
        ybar = np.clip(y.mean(), 1e-6, 1 - 1e-6)
        return 0.0, float(np.log(ybar / (1 - ybar)))
    return float(a), float(b)


def lowlevel_transform(stored: np.ndarray, log_e_inc_column: bool = True) -> np.ndarray:
    """Network input from stored low-level rows: log1p of 1000 E/E_inc per voxel, with
    the last column (log E_inc / MeV) passed through."""
    x = np.asarray(stored, dtype=np.float32)
    out = np.empty_like(x)
    out[:, :-1] = np.log1p(np.clip(x[:, :-1], 0, None))
    out[:, -1] = x[:, -1]
    return out
