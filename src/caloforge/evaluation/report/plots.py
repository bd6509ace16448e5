"""Figures of the evaluation report (matplotlib Agg backend, mplhep HEP style).

Every figure is saved as PNG and PDF; the PNG is also returned base64-encoded so the
HTML page embeds it and stays readable offline.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mplhep  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from caloforge.evaluation import metrics as M  # noqa: E402
from caloforge.evaluation.observables import (  # noqa: E402
    CALOGAN_OBSERVABLES,
    CORRELATION_OBSERVABLES,
    LAYER_FEATURES,
    SCALAR_OBSERVABLES,
    GeometryFeatures,
)
from caloforge.evaluation.stream import SampleSummary  # noqa: E402

REF_COLOUR = "0.6"
GEN_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
GEN_STYLES = ["-", "--", "-.", ":", "-", "--"]


class FigureWriter:
    """Saves figures as PNG + PDF into a folder and keeps the base64 PNGs."""

    def __init__(self, folder: Path, formats: tuple[str, ...] = ("png", "pdf")) -> None:
        self.folder = folder
        self.formats = formats
        self.folder.mkdir(parents=True, exist_ok=True)
        self.figures: dict[str, str] = {}  # name -> base64 PNG
        self.captions: dict[str, str] = {}

    def save(self, fig: plt.Figure, name: str, caption: str = "") -> None:
        # No bbox_inches="tight": it redraws the figure and doubles the plotting time.
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        (self.folder / f"{name}.png").write_bytes(buf.getvalue())
        if "pdf" in self.formats:
            fig.savefig(self.folder / f"{name}.pdf")
        plt.close(fig)
        self.figures[name] = base64.b64encode(buf.getvalue()).decode("ascii")
        self.captions[name] = caption


def style() -> None:
    plt.style.use(mplhep.style.ROOT)
    plt.rcParams.update({"figure.figsize": (6.4, 5.6), "font.size": 12,
                         "xtick.minor.visible": False, "ytick.minor.visible": False,
                         "axes.labelsize": 12, "legend.fontsize": 9,
                         "xtick.labelsize": 10, "ytick.labelsize": 10})


def _ratio_axes(figsize: tuple[float, float] = (6.4, 5.6)):
    fig, (ax, rax) = plt.subplots(2, 1, figsize=figsize, sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1], "hspace": 0.05})
    fig.subplots_adjust(left=0.15, right=0.97, top=0.96, bottom=0.11)
    return fig, ax, rax


def _ratio(rax, x_edges_or_x, num: np.ndarray, den: np.ndarray, colour: str, ls: str,
           err: np.ndarray | None = None, step: bool = True) -> None:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den > 0, num / den, np.nan)
    if step:
        mplhep.histplot(r, x_edges_or_x, ax=rax, color=colour, ls=ls, yerr=False)
    else:
        rax.errorbar(x_edges_or_x, r, yerr=None if err is None else err, color=colour, ls=ls,
                     marker="o", ms=3)


def _finish_ratio(rax, xlabel: str, lo: float = 0.5, hi: float = 1.5) -> None:
    rax.axhline(1.0, color=REF_COLOUR, lw=1)
    rax.set_ylim(lo, hi)
    rax.set_ylabel("gen / ref", fontsize=10)
    rax.set_xlabel(xlabel)


def _label(name: str, table: dict[str, tuple[str, str]]) -> str:
    lab, unit = table.get(name, (name, ""))
    return f"{lab} [{unit}]" if unit else lab


def _g(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _metric_note(m: dict[str, Any] | None) -> str:
    if not m or "wasserstein" not in m:
        return ""
    return (f"W1/σ {_g(m['wasserstein'])} (floor {_g(m['wasserstein_floor'])}), "
            f"SP {_g(m['separation_power'])} (floor {_g(m['separation_power_floor'])})")


def scalar_histogram(fw: FigureWriter, name: str, table: dict[str, tuple[str, str]],
                     ref: np.ndarray, gens: list[tuple[str, np.ndarray, dict | None]],
                     edges: np.ndarray, prefix: str = "obs") -> None:
    """Normalised histogram of one per-shower observable with a ratio panel."""
    fig, ax, rax = _ratio_axes()
    h_ref = M.histogram(ref, edges).astype(float)
    n_ref = max(h_ref.sum(), 1)
    mplhep.histplot(h_ref / n_ref, edges, ax=ax, histtype="fill", color=REF_COLOUR,
                    alpha=0.5, label="reference")
    notes = []
    for i, (label, vals, m) in enumerate(gens):
        h = M.histogram(vals, edges).astype(float)
        n = max(h.sum(), 1)
        c, ls = GEN_COLOURS[i % 6], GEN_STYLES[i % 6]
        verdict = f" [{m['verdict']}]" if m and "verdict" in m else ""
        mplhep.histplot(h / n, edges, ax=ax, color=c, ls=ls, label=f"{label}{verdict}",
                        yerr=np.sqrt(h) / n)
        _ratio(rax, edges, h / n, h_ref / n_ref, c, ls)
        if m:
            notes.append(f"{label}: {_metric_note(m)}")
    ax.set_ylabel("fraction of showers")
    if np.any(h_ref > 0) and h_ref.max() / max(h_ref[h_ref > 0].min(), 1) > 1e3:
        ax.set_yscale("log")
    ax.legend(loc="best")
    _finish_ratio(rax, _label(name, table))
    fw.save(fig, f"{prefix}_{name}", "; ".join(notes))


def cell_spectrum(fw: FigureWriter, ref: SampleSummary, gens: list[SampleSummary],
                  labels: list[str], edges_mip: np.ndarray, mip_mev: float,
                  threshold_mip: float) -> None:
    """Cell energy spectrum (all cells before the cut) on MIP and MeV axes; the region
    below the readout threshold is hatched."""
    for axis, scale, unit in (("mip", 1.0, "MIP"), ("mev", mip_mev, "MeV")):
        fig, ax, rax = _ratio_axes()
        edges = edges_mip * scale
        width = np.diff(edges)
        h_ref = ref.spectrum.sum(0)[1:-1].astype(float)
        n_ref = max(ref.n_used, 1)
        mplhep.histplot(h_ref / n_ref / width, edges, ax=ax, histtype="fill", color=REF_COLOUR,
                        alpha=0.5, label="reference")
        for i, (g, lab) in enumerate(zip(gens, labels)):
            h = g.spectrum.sum(0)[1:-1].astype(float)
            c, ls = GEN_COLOURS[i % 6], GEN_STYLES[i % 6]
            mplhep.histplot(h / max(g.n_used, 1) / width, edges, ax=ax, color=c, ls=ls,
                            label=lab)
            _ratio(rax, edges, h / max(g.n_used, 1), h_ref / n_ref, c, ls)
        for a in (ax, rax):
            a.set_xscale("log")
            if threshold_mip > 0:
                a.axvspan(edges[0], threshold_mip * scale, facecolor="none", hatch="//",
                          edgecolor="0.4", lw=0)
        ax.set_yscale("log")
        ax.set_ylabel(f"cells per shower / {unit}")
        ax.legend(loc="best", title=f"cut {threshold_mip:.3g} MIP = "
                                    f"{threshold_mip * mip_mev:.3g} MeV (hatched)")
        _finish_ratio(rax, f"cell energy [{unit}]")
        fw.save(fig, f"cell_spectrum_{axis}",
                "Visible cell energy of all cells before the readout cut; hatched: removed "
                "by the threshold (seed 001, Fig. 4).")


def profiles(fw: FigureWriter, tables: list[dict[str, tuple]], labels: list[str],
             gf: GeometryFeatures, metrics: list[dict | None]) -> None:
    """Mean x, y, radial and longitudinal energy profiles with ratio panels."""
    axes_def = {
        "longitudinal": (np.arange(gf.n_layers + 1) - 0.5, "layer"),
        "r": (gf.r_edges, "radius r [mm]"),
        "x": (gf.x_edges, "x [mm]"),
        "y": (gf.y_edges, "y [mm]"),
    }
    for key, (edges, xlabel) in axes_def.items():
        fig, ax, rax = _ratio_axes()
        ref_mean, ref_err = tables[0][key]
        mplhep.histplot(ref_mean, edges, ax=ax, histtype="fill", color=REF_COLOUR, alpha=0.5,
                        label="reference")
        for i, (t, lab) in enumerate(zip(tables[1:], labels)):
            mean, err = t[key]
            c, ls = GEN_COLOURS[i % 6], GEN_STYLES[i % 6]
            m = metrics[i].get(key) if metrics[i] else None
            tag = f" [{m['verdict']}]" if m else ""
            mplhep.histplot(mean, edges, ax=ax, color=c, ls=ls, yerr=err, label=lab + tag)
            _ratio(rax, edges, mean, ref_mean, c, ls)
        ax.set_yscale("log" if ref_mean.max() > 0 else "linear")
        ax.set_ylabel("mean energy per shower [MeV]")
        ax.legend(loc="best")
        _finish_ratio(rax, xlabel)
        fw.save(fig, f"profile_{key}", f"Mean {key} energy profile (after the cut).")


def response(fw: FigureWriter, resp: list[dict[str, Any]], labels: list[str]) -> None:
    """mu90 of E_vis/E_inc and sigma90/mu90 versus E_inc with ratio panels (seed 001,
    Fig. 7)."""
    for key, ylab in (("mu90", r"$\mu_{90}(E_\mathrm{vis}/E_\mathrm{inc})$"),
                      ("sigma90_over_mu90", r"$\sigma_{90}/\mu_{90}$")):
        fig, ax, rax = _ratio_axes()
        ref = resp[0]["reference"]
        x = np.asarray(ref["e_inc"]) / 1e3
        y_ref = np.asarray(ref[key], float)
        ax.plot(x, y_ref, "o-", color="k", label="reference")
        for i, (r, lab) in enumerate(zip(resp, labels)):
            y = np.asarray(r["generated"][key], float)
            c = GEN_COLOURS[i % 6]
            ax.plot(x, y, "s" + GEN_STYLES[i % 6], color=c, label=lab, ms=4)
            with np.errstate(divide="ignore", invalid="ignore"):
                rax.plot(x, y / y_ref, "s" + GEN_STYLES[i % 6], color=c, ms=4)
        ax.set_ylabel(ylab)
        ax.legend(loc="best")
        _finish_ratio(rax, r"$E_\mathrm{inc}$ [GeV]", 0.8, 1.2)
        fw.save(fig, f"response_{key}",
                "Mean and RMS of the 90% core of E_vis/E_inc per incident-energy bin.")


def energy_binned(fw: FigureWriter, ref: SampleSummary, gens: list[SampleSummary],
                  labels: list[str], e_edges: np.ndarray, name: str,
                  table: dict[str, tuple[str, str]]) -> None:
    """One panel per incident-energy bin for an observable."""
    nb = len(e_edges) - 1
    ncol = min(4, nb)
    nrow = math.ceil(nb / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.8 * nrow), squeeze=False)
    b_ref = np.searchsorted(e_edges, ref.scalars["e_inc"], side="right") - 1
    b_gen = [np.searchsorted(e_edges, g.scalars["e_inc"], side="right") - 1 for g in gens]
    for k in range(nb):
        ax = axes[k // ncol][k % ncol]
        r = ref.scalars[name][b_ref == k]
        if len(r) < 2:
            ax.set_visible(False)
            continue
        edges = M.hist_edges(r, 30, integer=name in ("n_hits", "shower_start"))
        h = M.histogram(r, edges).astype(float)
        mplhep.histplot(h / max(h.sum(), 1), edges, ax=ax, histtype="fill",
                        color=REF_COLOUR, alpha=0.5, label="reference")
        for i, (g, bg) in enumerate(zip(gens, b_gen)):
            v = g.scalars[name][bg == k]
            if len(v):
                hg = M.histogram(v, edges).astype(float)
                mplhep.histplot(hg / hg.sum(), edges, ax=ax, color=GEN_COLOURS[i % 6],
                                ls=GEN_STYLES[i % 6], label=labels[i])
        ax.set_title(f"{e_edges[k] / 1e3:.3g}-{e_edges[k + 1] / 1e3:.3g} GeV", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(_label(name, table), fontsize=8)
    for k in range(nb, nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fw.save(fig, f"ebinned_{name}", f"{name} in bins of incident energy.")


# The seed-001 (Fig. 5) names of the correlation observables.
SEED001_NAMES = {"cog_x": "$m_{1,x}$", "cog_y": "$m_{1,y}$", "cog_z": "$m_{1,z}$",
                 "width_x": "$m_{2,x}$", "width_y": "$m_{2,y}$", "width_z": "$m_{2,z}$",
                 "e_vis": r"$E_\mathrm{vis}$", "e_inc": r"$E_\mathrm{inc}$",
                 "n_hits": r"$n_\mathrm{hit}$", "frac_first": r"$E_1/E_\mathrm{vis}$",
                 "frac_second": r"$E_2/E_\mathrm{vis}$", "frac_last": r"$E_3/E_\mathrm{vis}$"}


def correlations(fw: FigureWriter, corr: list[dict[str, Any]], labels: list[str]) -> None:
    """Pearson correlation matrices (reference, generated) and their differences."""
    names = [SEED001_NAMES.get(k, k) for k in CORRELATION_OBSERVABLES]
    n = len(names)
    mats = [("reference", "reference", np.asarray(corr[0]["reference"]), "RdBu_r", 1.0)]
    for c, lab in zip(corr, labels):
        mats.append((lab, f"generated_{lab}", np.asarray(c["generated"]), "RdBu_r", 1.0))
    for c, lab in zip(corr, labels):
        d = np.asarray(c["difference"])
        mats.append((f"{lab} - reference", f"difference_{lab}", d, "PiYG",
                     max(0.1, float(np.abs(d).max()))))
    for title, key, m, cmap, vmax in mats:
        fig, ax = plt.subplots(figsize=(6.5, 5.8))
        fig.subplots_adjust(left=0.2, bottom=0.22, right=0.95, top=0.94)
        im = ax.imshow(m, cmap=cmap, vmin=-vmax, vmax=vmax)
        ax.set_xticks(range(n), names, rotation=90, fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=5)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(title, fontsize=11)
        safe = "".join(ch if ch.isalnum() else "_" for ch in key)
        fw.save(fig, f"correlation_{safe}", f"Pearson correlations: {title}.")


def layer_feature_summary(fw: FigureWriter, ref: SampleSummary, gens: list[SampleSummary],
                          labels: list[str], gf: GeometryFeatures,
                          metrics: list[dict | None]) -> None:
    """Per feature: mean vs layer (top) and per-layer separation power vs floor (bottom)."""
    ne = gf.nonempty_layers
    for name in LAYER_FEATURES:
        fig, ax, rax = _ratio_axes()
        r = ref.layers[name][:, ne].astype(float)
        ax.errorbar(ne, r.mean(0), yerr=r.std(0), color="k", fmt="o", ms=3, lw=0.8,
                    label="reference (mean ± std)")
        for i, (g, lab) in enumerate(zip(gens, labels)):
            v = g.layers[name][:, ne].astype(float)
            ax.plot(ne, v.mean(0), GEN_STYLES[i % 6], color=GEN_COLOURS[i % 6], label=lab)
            m = (metrics[i] or {}).get(name, {})
            pl = m.get("per_layer") if isinstance(m, dict) else None
            if pl:
                rax.plot(ne, pl["separation_power"], GEN_STYLES[i % 6],
                         color=GEN_COLOURS[i % 6])
                if i == 0:
                    rax.plot(ne, pl["separation_power_floor"], ":", color="k", label="floor")
        ax.set_ylabel(_label(name, LAYER_FEATURES))
        ax.legend(loc="best")
        # Log scale only with something positive to show (identical samples give 0).
        if any((np.asarray(line.get_ydata(), float) > 0).any() for line in rax.lines):
            rax.set_yscale("log")
        rax.set_ylabel("sep. power", fontsize=10)
        rax.set_xlabel("layer")
        fw.save(fig, f"layers_{name}", f"{name} per layer; bottom: separation power per "
                "layer (dotted: reference noise floor).")


def layer_grid(fw: FigureWriter, ref: SampleSummary, gens: list[SampleSummary],
               labels: list[str], gf: GeometryFeatures, name: str) -> None:
    """Histograms of a per-layer feature, one small panel per layer (CaloChallenge)."""
    ne = gf.nonempty_layers
    ncol = min(9, len(ne))
    nrow = math.ceil(len(ne) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.9 * ncol, 1.6 * nrow), squeeze=False)
    for j, k in enumerate(ne):
        ax = axes[j // ncol][j % ncol]
        r = ref.layers[name][:, k].astype(float)
        log = name == "e_layer"
        rv = np.log10(r[r > 0]) if log else r
        if len(rv) < 2:
            ax.set_visible(False)
            continue
        edges = M.hist_edges(rv, 25)
        h = M.histogram(rv, edges)
        ax.stairs(h / max(h.sum(), 1), edges, fill=True, color=REF_COLOUR, alpha=0.5)
        for i, g in enumerate(gens):
            v = g.layers[name][:, k].astype(float)
            v = np.log10(v[v > 0]) if log else v
            if len(v):
                hg = M.histogram(v, edges)
                ax.stairs(hg / max(hg.sum(), 1), edges, color=GEN_COLOURS[i % 6],
                          ls=GEN_STYLES[i % 6])
        ax.set_title(f"layer {k}", fontsize=7)
        ax.tick_params(labelsize=5)
    for j in range(len(ne), nrow * ncol):
        axes[j // ncol][j % ncol].set_visible(False)
    lab, unit = LAYER_FEATURES[name]
    fig.suptitle(("log10 " if name == "e_layer" else "") + lab + (f" [{unit}]" if unit else "")
                 + "  (grey: reference; " + ", ".join(
                     f"{c}: {lb}" for c, lb in zip(GEN_COLOURS, labels)) + ")", fontsize=9)
    fig.tight_layout()
    fw.save(fig, f"layergrid_{name}", f"{name} per layer.")


def images(fw: FigureWriter, summaries: list[SampleSummary], labels: list[str],
           gf: GeometryFeatures) -> None:
    """Example showers and overlays: layer-summed x-y and x-z (layer vs x) projections."""
    ext_xy = [gf.image_y_edges[0], gf.image_y_edges[-1], gf.image_x_edges[-1],
              gf.image_x_edges[0]]
    ext_xz = [gf.image_x_edges[0], gf.image_x_edges[-1], gf.n_layers - 0.5, -0.5]
    n = len(summaries)
    for kind in ("overlay", "example"):
        fig, axes = plt.subplots(2, n, figsize=(3.3 * n, 6.2), squeeze=False)
        for j, (s, lab) in enumerate(zip(summaries, labels)):
            if kind == "overlay":
                xy, xz, title = s.overlay_xy, s.overlay_xz, f"{lab}: {s.n_overlay} showers"
            elif s.examples:
                xy, xz, e = s.examples[0]
                title = f"{lab}: one shower, {e / 1e3:.3g} GeV"
            else:
                continue
            for row, (img, ext, ylab, xlab) in enumerate(
                    ((xy, ext_xy, "x [mm]", "y [mm]"), (xz, ext_xz, "layer", "x [mm]"))):
                ax = axes[row][j]
                pos = img[img > 0]
                if len(pos):
                    ax.imshow(np.where(img > 0, img, np.nan), extent=ext, aspect="auto",
                              norm=LogNorm(vmin=pos.min(), vmax=pos.max()), cmap="viridis",
                              interpolation="nearest")
                ax.set_xlabel(xlab, fontsize=8)
                ax.set_ylabel(ylab, fontsize=8)
                ax.tick_params(labelsize=7)
                if row == 0:
                    ax.set_title(title, fontsize=8)
        fig.tight_layout()
        cap = ("Sum of the first showers of each sample (seed 002 overlays), log colour "
               "scale." if kind == "overlay" else "A single shower of each sample.")
        fw.save(fig, f"images_{kind}", cap)


def memorisation(fw: FigureWriter, mem: list[dict | None], labels: list[str]) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.5))
    fig.subplots_adjust(left=0.14, bottom=0.15, right=0.96, top=0.95)
    drawn = False
    for i, (m, lab) in enumerate(zip(mem, labels)):
        if not m or "distances_generated" not in m:
            continue
        d_ref, d_gen = np.asarray(m["distances_reference"]), np.asarray(m["distances_generated"])
        edges = np.linspace(0, max(d_ref.max(), d_gen.max()) * 1.05, 50)
        if not drawn:
            ax.hist(d_ref, edges, density=True, color=REF_COLOUR, alpha=0.5,
                    label="held-out reference")
        ax.hist(d_gen, edges, density=True, histtype="step", color=GEN_COLOURS[i % 6],
                label=lab)
        drawn = True
    if not drawn:
        plt.close(fig)
        return
    ax.set_xlabel("distance to nearest training shower (E/E_vis shape)")
    ax.set_ylabel("density")
    ax.legend()
    fw.save(fig, "memorisation", "Nearest-training-shower distances: a memorising "
            "generator sits left of the held-out reference.")


__all__ = ["CALOGAN_OBSERVABLES", "SCALAR_OBSERVABLES", "FigureWriter", "style"]
