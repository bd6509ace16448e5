"""Figures of the reconstruction level (seed 001, Figs. 7-8): reconstructed energy per
incident energy, linearity and resolution with and without software compensation, with
ratio panels and the reference-halves noise floor."""

from __future__ import annotations

import math
from typing import Any

import mplhep
import numpy as np

from caloforge.evaluation.report.plots import (
    GEN_COLOURS,
    GEN_STYLES,
    REF_COLOUR,
    FigureWriter,
    _finish_ratio,
    _ratio_axes,
    plt,
)

VARIANT_TITLES = {"uncompensated": "without software compensation",
                  "compensated": "with software compensation"}


def reco_figures(fw: FigureWriter, reco: list[dict[str, Any]], labels: list[str]) -> None:
    """All reco figures from the ``reco`` sections of the generated samples."""
    ok = [(r, lab) for r, lab in zip(reco, labels) if isinstance(r, dict) and "compensated" in r]
    if not ok:
        return
    sections, names = [r for r, _ in ok], [lab for _, lab in ok]
    for variant in VARIANT_TITLES:
        distributions(fw, sections, names, variant)
    for key, ylab in (("linearity", r"$\mu_{90}(E_\mathrm{reco})/E_\mathrm{inc}$"),
                      ("sigma90_over_mu90", r"$\sigma_{90}/\mu_{90}(E_\mathrm{reco})$")):
        curve(fw, sections, names, key, ylab)


def distributions(fw: FigureWriter, reco: list[dict[str, Any]], labels: list[str],
                  variant: str) -> None:
    """E_reco/E_inc per incident energy, reference (filled) vs generated."""
    edges = np.asarray(reco[0]["ratio_edges"], float)
    ref = reco[0][variant]
    e_inc = ref["reference"]["e_inc"]
    nb = len(e_inc)
    ncol = min(4, nb)
    nrow = math.ceil(nb / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    for k in range(nb):
        ax = axes[k // ncol][k % ncol]
        h = np.asarray(ref["histograms_reference"][k], float)
        mplhep.histplot(h / max(h.sum(), 1), edges, ax=ax, histtype="fill", color=REF_COLOUR,
                        alpha=0.5, label="reference")
        for i, (r, lab) in enumerate(zip(reco, labels)):
            hg = np.asarray(r[variant]["histograms_generated"][k], float)
            mplhep.histplot(hg / max(hg.sum(), 1), edges, ax=ax, color=GEN_COLOURS[i % 6],
                            ls=GEN_STYLES[i % 6], label=lab)
        ax.set_title(f"{e_inc[k]:.3g} GeV", fontsize=9)
        ax.set_xlabel(r"$E_\mathrm{reco}/E_\mathrm{inc}$", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(nb, nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"reconstructed energy, {VARIANT_TITLES[variant]}", fontsize=10)
    fig.tight_layout()
    fw.save(fig, f"reco_energy_{variant}",
            f"Reconstructed energy over incident energy per incident energy, "
            f"{VARIANT_TITLES[variant]} (digitised, calibrated on the reference).")


def curve(fw: FigureWriter, reco: list[dict[str, Any]], labels: list[str], key: str,
          ylabel: str) -> None:
    """Linearity or resolution vs E_inc, both variants; ratio panel with the floor band."""
    fig, ax, rax = _ratio_axes()
    floor_key = "mu90" if key == "linearity" else key
    for variant, marker, fill in (("uncompensated", "o", "none"), ("compensated", "o", None)):
        ref = reco[0][variant]["reference"]
        x = np.asarray(ref["e_inc"], float)
        y_ref = np.asarray(ref[key], float)
        tag = "SC" if variant == "compensated" else "no SC"
        ax.plot(x, y_ref, marker + ("-" if fill is None else ":"), color="k",
                mfc=fill or "k", label=f"reference ({tag})")
        floor = reco[0][variant].get(f"{floor_key}_max_rel_dev_floor")
        if floor is not None and math.isfinite(floor) and variant == "compensated":
            rax.axhspan(1 - floor, 1 + floor, color=REF_COLOUR, alpha=0.3, lw=0,
                        label="noise floor (SC)")
        for i, (r, lab) in enumerate(zip(reco, labels)):
            y = np.asarray(r[variant]["generated"][key], float)
            c = GEN_COLOURS[i % 6]
            ax.plot(x, y, "s" + GEN_STYLES[i % 6], color=c, mfc=fill or c, ms=5,
                    label=f"{lab} ({tag})")
            with np.errstate(divide="ignore", invalid="ignore"):
                rax.plot(x, y / y_ref, "s", color=c, mfc=fill or c, ms=5)
    ax.set_ylabel(ylabel)
    ax.legend(loc="best", fontsize=8)
    lo, hi = (0.9, 1.1) if key == "linearity" else (0.6, 1.4)
    _finish_ratio(rax, r"$E_\mathrm{inc}$ [GeV]", lo, hi)
    name = "linearity" if key == "linearity" else "resolution"
    fw.save(fig, f"reco_{name}",
            f"Reconstruction level, {name} vs incident energy: open markers without, filled "
            "with software compensation; grey band: largest relative difference between the "
            "reference halves (noise floor, compensated).")
