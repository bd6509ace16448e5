"""Figures of the evaluation per incidence angle (seed 000): the reconstructed polar
angle (distribution; mean and RMS versus the true angle) and the response per theta bin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from caloforge.evaluation import metrics as M
from caloforge.evaluation.report.plots import GEN_COLOURS, GEN_STYLES, REF_COLOUR, FigureWriter, plt
from caloforge.evaluation.stream import SampleSummary


def reconstructed_angle(fw: FigureWriter, ref: SampleSummary, gens: list[SampleSummary],
                        labels: list[str], metrics: list[dict[str, Any] | None]) -> None:
    """Left: distribution of the reconstructed polar angle; right: its mean (points)
    and RMS (error bars) per true-theta bin, with the diagonal."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11.0, 4.8))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.13, wspace=0.25)
    r = np.degrees(ref.angles["theta_reco"])
    r = r[np.isfinite(r)]
    edges = M.hist_edges(r, 40)
    ax.hist(np.clip(r, edges[0], edges[-1]), edges, density=True, color=REF_COLOUR,
            label="reference")
    for i, (g, lab) in enumerate(zip(gens, labels)):
        v = np.degrees(g.angles["theta_reco"])
        v = v[np.isfinite(v)]
        ax.hist(np.clip(v, edges[0], edges[-1]), edges, density=True, histtype="step",
                color=GEN_COLOURS[i % 6], ls=GEN_STYLES[i % 6], lw=1.5, label=lab)
    ax.set_xlabel(r"reconstructed $\theta$ [deg]")
    ax.set_ylabel("density")
    ax.legend(loc="best")
    m0 = next((m for m in metrics if m and "reference" in m), None)
    if m0 is not None:
        true = np.asarray(m0["true_theta_deg"], float)
        lim = [0.0, max(float(np.nanmax(true)) * 1.15, 5.0)]
        bx.plot(lim, lim, ":", color="k", lw=1, label="reconstructed = true")
        rm = m0["reference"]
        bx.errorbar(true, np.asarray(rm["mean_deg"], float), np.asarray(rm["rms_deg"], float),
                    fmt="o", color="k", capsize=3, label="reference")
        for i, (m, lab) in enumerate(zip(metrics, labels)):
            if not m or "generated" not in m:
                continue
            g = m["generated"]
            shift = 0.3 * (i + 1)  # side by side, not on top of the reference
            bx.errorbar(true + shift, np.asarray(g["mean_deg"], float),
                        np.asarray(g["rms_deg"], float), fmt="s", ms=4, capsize=3,
                        color=GEN_COLOURS[i % 6], label=lab)
        bx.set_xlabel(r"true $\theta$ [deg]")
        bx.set_ylabel(r"reconstructed $\theta$: mean $\pm$ RMS [deg]")
        bx.legend(loc="best")
    fw.save(fig, "angles_reco_theta",
            "Polar angle of the shower axis (PCA of the energy-weighted hits): "
            "distribution, and mean ± RMS per true-theta bin (seed 000).")


def response_per_theta(fw: FigureWriter, metrics: list[dict[str, Any] | None],
                       labels: list[str]) -> None:
    """mu90 and sigma90/mu90 versus E_inc, one colour per theta bin; reference: circles
    and solid lines, generated: squares and the sample's line style."""
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.8))
    fig.subplots_adjust(left=0.08, right=0.98, top=0.95, bottom=0.13, wspace=0.25)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    m0 = next(m for m in metrics if m and "theta" in m)
    for ax, key, ylab in zip(axes, ("mu90", "sigma90_over_mu90"),
                             (r"$\mu_{90}(E_\mathrm{vis}/E_\mathrm{inc})$",
                              r"$\sigma_{90}/\mu_{90}$")):
        for k, b in enumerate(m0["theta"]["bins"]):
            c = colours[k % len(colours)]
            ref = b["response"]["reference"]
            x = np.asarray(ref["e_inc"], float) / 1e3
            lo, hi = b["range_deg"]
            ax.plot(x, np.asarray(ref[key], float), "o-", color=c,
                    label=f"θ {lo:.0f}–{hi:.0f}°")
            for i, m in enumerate(metrics):
                if m and "theta" in m:
                    g = m["theta"]["bins"][k]["response"]["generated"]
                    ax.plot(x, np.asarray(g[key], float), "s" + GEN_STYLES[(i + 1) % 6],
                            color=c, ms=4, mfc="none")
        ax.set_xlabel(r"$E_\mathrm{inc}$ [GeV]")
        ax.set_ylabel(ylab)
    axes[0].legend(loc="best", title="reference (circles); " + ", ".join(labels) + " (squares)",
                   fontsize=8, title_fontsize=8)
    fw.save(fig, "angles_response",
            "Response and resolution per incident-energy bin, one colour per theta bin.")
