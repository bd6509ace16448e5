"""The evaluation report: figures (PNG + PDF), a self-contained index.html, metrics.json.

The HTML page embeds every figure as a base64 PNG, so it can be mailed or opened offline.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from caloforge.evaluation.derived import is_cylindrical, profile_table
from caloforge.evaluation.observables import (
    CALOGAN_OBSERVABLES,
    INTEGER_OBSERVABLES,
    LAYER_FEATURES,
    SCALAR_OBSERVABLES,
    GeometryFeatures,
)
from caloforge.evaluation.points import POINT_LAYER_FEATURES, POINT_SCALARS
from caloforge.evaluation.result import Evaluation

COLOURS = {"green": "#b7e4b0", "yellow": "#ffe9a8", "red": "#f6b3b3", "grey": "#dddddd"}


def write_report(ev: Evaluation, gf: GeometryFeatures, folder: Path,
                 formats: tuple[str, ...] = ("png", "pdf")) -> tuple[list[str], list[str]]:
    """Write all figures and index.html into ``folder`` (the staging folder of
    :func:`caloforge.evaluation.report.folder.staged_report_dir`).

    Returns the figure names and the figures that failed (with the reason).

    Figures that fail to draw are listed on the page instead of aborting the report.
    """
    from caloforge.evaluation.report import plots as P

    tmp = Path(folder)
    P.style()
    fw = P.FigureWriter(tmp / "figures", formats)
    m = ev.metrics
    ok = [(s, g) for s, g in zip(ev.generated, m["generated"]) if s is not None
          and g.get("status") == "ok"]
    gens = [s for s, _ in ok]
    gm = [g for _, g in ok]
    labels = [g["label"] for g in gm]
    ref = ev.reference
    failed: list[str] = []

    def attempt(title: str, fn, *args) -> None:
        try:
            fn(*args)
        except OSError:
            raise  # a full disk or a read-only folder fails the report, not one figure
        except Exception as exc:  # noqa: BLE001 - a broken figure must not kill the report
            failed.append(f"{title}: {type(exc).__name__}: {exc}")

    if gens:
        from caloforge.evaluation.metrics import hist_edges

        for name in SCALAR_OBSERVABLES:
            edges = hist_edges(ref.scalars[name], integer=name in INTEGER_OBSERVABLES)
            attempt(name, P.scalar_histogram, fw, name, SCALAR_OBSERVABLES, ref.scalars[name],
                    [(lab, s.scalars[name], g["observables"].get(name))
                     for lab, s, g in zip(labels, gens, gm)], edges)
        if ref.calogan:
            for name in CALOGAN_OBSERVABLES:
                edges = hist_edges(ref.calogan[name], integer=name in INTEGER_OBSERVABLES)
                attempt(name, P.scalar_histogram, fw, name, CALOGAN_OBSERVABLES,
                        ref.calogan[name], [(lab, s.calogan[name], g["calogan"].get(name))
                                            for lab, s, g in zip(labels, gens, gm)],
                        edges, "calogan")
        point_gens = [(lab, s, g) for lab, s, g in zip(labels, gens, gm)
                      if s.points is not None]
        if ref.points is not None and point_gens:
            for name in POINT_SCALARS:
                edges = hist_edges(ref.points.scalars[name], integer=name == "n_points")
                attempt(name, P.scalar_histogram, fw, name, POINT_SCALARS,
                        ref.points.scalars[name],
                        [(lab, s.points.scalars[name], g.get("points", {}).get(name))
                         for lab, s, g in point_gens], edges, "points")
        attempt("cell spectrum", P.cell_spectrum, fw, ref, gens, labels,
                np.asarray(m["cell_spectrum_edges_mip"]), m["mip_mev"], m["threshold_mip"])
        tables = [profile_table(ref)] + [profile_table(s) for s in gens]
        attempt("profiles", P.profiles, fw, tables, labels, gf, [g["profiles"] for g in gm])
        attempt("response", P.response, fw, [g["response"] for g in gm], labels)
        e_edges = np.asarray(m["energy_bins_mev"])
        for name in ("e_vis", "e_ratio", "n_hits"):
            attempt(f"energy-binned {name}", P.energy_binned, fw, ref, gens, labels, e_edges,
                    name, SCALAR_OBSERVABLES)
        attempt("correlations", P.correlations, fw, [g["correlations"] for g in gm], labels)
        if any("reco" in g for g in gm):
            from caloforge.evaluation.report.reco_plots import reco_figures

            attempt("reconstruction level", reco_figures, fw, [g.get("reco") for g in gm],
                    labels)
        attempt("layer features", P.layer_feature_summary, fw, ref, gens, labels, gf,
                [g.get("layer_features") for g in gm])
        if is_cylindrical(gf.geometry.name):
            for name in ("e_layer", "cx_layer", "cy_layer", "wx_layer", "wy_layer",
                         "sparsity_layer"):
                attempt(f"layer grid {name}", P.layer_grid, fw, ref, gens, labels, gf, name)
        attempt("memorisation", P.memorisation, fw, [g.get("memorisation") for g in gm],
                labels)
        _angle_figures(fw, ref, gens, labels, gm, attempt)
    attempt("images", P.images, fw, [ref] + gens, ["reference"] + labels, gf)
    page = render_html(m, fw.figures, fw.captions, failed)
    (tmp / "index.html").write_text(page, encoding="utf-8")
    return list(fw.figures), failed


def _angle_figures(fw, ref, gens, labels, gm, attempt) -> None:
    from caloforge.evaluation.report import angle_plots as AP

    reco = [g.get("reconstructed_angle") for g in gm]
    if any(isinstance(m, dict) and "reference" in m for m in reco):
        attempt("reconstructed angle", AP.reconstructed_angle, fw, ref, gens, labels, reco)
    binned = [g.get("angle_bins") for g in gm]
    if any(isinstance(m, dict) and "theta" in m for m in binned):
        attempt("response per theta", AP.response_per_theta, fw, binned, labels)


# ---------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.{digits}g}"
    return html.escape(str(v))


def _cell(metric: dict | None, key: str, floor_key: str | None = None) -> str:
    if not isinstance(metric, dict) or "status" in metric and metric["status"] != "ok":
        reason = metric.get("reason", "") if isinstance(metric, dict) else ""
        return f'<td class="grey" title="{html.escape(reason)}">n/a</td>'
    v = metric.get(key)
    fl = metric.get(floor_key) if floor_key else None
    colour = metric.get("verdict", "grey")
    text = _fmt(v) + (f' <span class="fl">({_fmt(fl, 2)})</span>' if floor_key else "")
    return f'<td class="{colour}">{text}</td>'


def _summary_rows(gm: list[dict]) -> list[str]:
    rows = []
    heads = "".join(f"<th colspan=3>{html.escape(g['label'])}</th>" for g in gm)
    rows.append(f"<tr><th rowspan=2>observable</th>{heads}</tr>")
    sub = "".join("<th>W1/σ (floor)</th><th>sep. power (floor)</th><th>χ²/ndf (floor)</th>"
                  for _ in gm)
    rows.append(f"<tr>{sub}</tr>")

    def add(section: str, names: dict[str, tuple], title: str = "") -> None:
        if not any(section in g for g in gm):
            return
        if title:
            rows.append(f'<tr><td colspan="{1 + 3 * len(gm)}" class="sec">{title}</td></tr>')
        for name in names:
            cells = []
            for g in gm:
                mt = g.get(section, {}).get(name)
                cells += [_cell(mt, "wasserstein", "wasserstein_floor"),
                          _cell(mt, "separation_power", "separation_power_floor"),
                          _cell(mt, "chi2_ndf", "chi2_ndf_floor")]
            rows.append(f"<tr><td>{html.escape(name)}</td>{''.join(cells)}</tr>")

    add("observables", SCALAR_OBSERVABLES, "per-shower observables")
    add("calogan", CALOGAN_OBSERVABLES, "CaloGAN shower shapes (seed 004)")
    add("layer_features", LAYER_FEATURES, "per-layer features (mean over layers)")
    add("points", {**POINT_SCALARS, **POINT_LAYER_FEATURES},
        "point-level observables (point files; per-layer: mean over layers)")
    rows.append(f'<tr><td colspan="{1 + 3 * len(gm)}" class="sec">distributions '
                "(separation power and χ²/ndf only)</td></tr>")
    sections = [("cell_spectrum", ("all_cells", "above_threshold")),
                ("profiles", ("longitudinal", "r", "x", "y"))]
    if any("points" in g for g in gm):
        sections.append(("points", ("point_spectrum", "radial_profile",
                                    "longitudinal_profile")))
    for section, names in sections:
        for name in names:
            cells = []
            for g in gm:
                mt = g.get(section, {}).get(name)
                cells += ['<td class="grey">–</td>',
                          _cell(mt, "separation_power", "separation_power_floor"),
                          _cell(mt, "chi2_ndf", "chi2_ndf_floor")]
            rows.append(f"<tr><td>{section}: {name}</td>{''.join(cells)}</tr>")
    return rows


def _global_rows(gm: list[dict]) -> list[str]:
    heads = "".join(f"<th>{html.escape(g['label'])}</th>" for g in gm)
    rows = [f"<tr><th>metric</th>{heads}</tr>"]

    def row(title: str, get) -> None:
        cells = []
        for g in gm:
            try:
                text, colour = get(g)
            except (KeyError, TypeError):
                text, colour = "n/a", "grey"
            cells.append(f'<td class="{colour}">{text}</td>')
        rows.append(f"<tr><td>{title}</td>{''.join(cells)}</tr>")

    def dist(key):
        def get(g):
            d = g[key]
            if d.get("status") == "not computed":
                return html.escape(d["reason"]), "grey"
            return (f"{_fmt(d['value'])} ± {_fmt(d['error'], 2)} "
                    f"<span class=fl>(floor {_fmt(d['floor'], 2)})</span>", d["verdict"])
        return get

    def clf(kind):
        def get(g):
            c = g["classifier"][kind]
            if c.get("status") == "not computed":
                return html.escape(c["reason"]), "grey"
            fl = (f" <span class=fl>(floor AUC {_fmt(c.get('auc_floor'))}, "
                  f"null σ {_fmt(c['auc_null_std'], 2)})</span>")
            power = ""
            if "power_verdict" in c:
                power = (f"<br><b>{html.escape(c['power_verdict'])}</b>: "
                         f"{html.escape(c['power_reason'])}; smallest detectable AUC "
                         f"{_fmt(c['min_detectable_auc'])}")
            return (f"AUC {_fmt(c['auc'])}, JSD {_fmt(c['jsd'], 2)}{fl}{power}"
                    f"<br><span class=fl>{c['n_train']} train / {c['n_test']} test, "
                    f"{c['epochs']} epochs, {c['seconds']:.0f} s</span>", c["verdict"])
        return get

    row("FPD (×10³)", lambda g: _scaled(g["fpd"], 1e3))
    row("KPD (×10³)", lambda g: _scaled(g["kpd"], 1e3))
    if any("classifier" in g for g in gm):
        row("classifier, high level", clf("high_level"))
        row("classifier, low level", clf("low_level"))
    row("response μ90: max rel. dev.", lambda g: (
        f"{_fmt(g['response']['mu90_max_rel_dev'])} <span class=fl>(floor "
        f"{_fmt(g['response']['mu90_max_rel_dev_floor'], 2)})</span>",
        g["response"]["verdict"]))
    row("resolution σ90/μ90: max rel. dev.", lambda g: (
        f"{_fmt(g['response']['sigma90_over_mu90_max_rel_dev'])} <span class=fl>(floor "
        f"{_fmt(g['response']['sigma90_over_mu90_max_rel_dev_floor'], 2)})</span>",
        g["response"]["verdict"]))
    row("correlations: mean |Δρ| (max)", lambda g: (
        f"{_fmt(g['correlations']['mean_abs_diff'])} ({_fmt(g['correlations']['max_abs_diff'])})"
        f" <span class=fl>(floor {_fmt(g['correlations']['mean_abs_diff_floor'], 2)})</span>",
        g["correlations"]["verdict"]))
    if any("reconstructed_angle" in g for g in gm):
        row("reconstructed θ: max |Δ mean| per θ bin", lambda g: _reco_cell(
            g["reconstructed_angle"]))
    if any("reco" in g for g in gm):
        for v in ("uncompensated", "compensated"):
            row(f"reco {v}: μ90 / σ90/μ90 max rel. dev.", lambda g, v=v: _reco_level(
                g["reco"], v))
    if any("memorisation" in g for g in gm):
        row("memorisation", lambda g: _memo_cell(g["memorisation"]))
    row("generator time per shower", lambda g: (
        f"{_fmt(g['time_per_shower_ms'])} ms" if g.get("time_per_shower_ms") is not None
        else "not recorded in the file", "grey"))
    row("showers used / skipped", lambda g: (
        f"{g.get('n_used')} / {g.get('skipped', {}).get('count', 0)}", "grey"))
    return rows


def _scaled(d: dict, f: float) -> tuple[str, str]:
    if d.get("status") == "not computed":
        return html.escape(d["reason"]), "grey"
    return (f"{_fmt(d['value'] * f)} ± {_fmt(d['error'] * f, 2)} "
            f"<span class=fl>(floor {_fmt(d['floor'] * f, 2)})</span>", d["verdict"])


def _reco_cell(d: dict) -> tuple[str, str]:
    if d.get("status") == "not computed":
        return html.escape(d["reason"]), "grey"
    return (f"{_fmt(d['max_abs_mean_diff_deg'])}° <span class=fl>(floor "
            f"{_fmt(d['max_abs_mean_diff_floor_deg'], 2)}°)</span>", d["verdict"])


def _reco_level(d: dict, variant: str) -> tuple[str, str]:
    if d.get("status") == "not computed":
        return html.escape(d["reason"]), "grey"
    v = d[variant]
    fit = v["resolution_fit_reference"]
    return (f"{_fmt(v['mu90_max_rel_dev'])} / {_fmt(v['sigma90_over_mu90_max_rel_dev'])} "
            f"<span class=fl>(floor {_fmt(v['mu90_max_rel_dev_floor'], 2)} / "
            f"{_fmt(v['sigma90_over_mu90_max_rel_dev_floor'], 2)}; reference "
            f"{_fmt(100 * fit['stochastic'], 2)}%/√E ⊕ {_fmt(100 * fit['constant'], 2)}%)"
            "</span>", v["verdict"])


def _lookup(result: Any, path: str) -> Any:
    """The value at dotted ``path`` in a metric's result (None if absent)."""
    for part in path.split("."):
        if not isinstance(result, dict) or part not in result:
            return None
        result = result[part]
    return result


def named_figures(specs: list[str], figures: Any) -> list[str]:
    """The report's figures of a named observable: each spec names a figure, or figures
    named by it followed by "_" and a generated sample's label."""
    return [f for s in specs for f in figures if f == s or f.startswith(s + "_")]


def _named_rows(m: dict[str, Any], gm: list[dict], figures: Any) -> list[str]:
    """One row per observable of the metric table that a paper names: its name, where
    the paper shows it, its place in metrics.json, its figures and each verdict."""
    heads = "".join(f"<th>{html.escape(g['label'])}</th>" for g in gm)
    rows = []
    for row in m.get("metric_table", []):
        for path, named in row.get("names", {}).items():
            cells = []
            for g in gm:
                value = _lookup(g.get(row["metric"]), path)
                if value is None:
                    cells.append('<td class="grey">not computed</td>')
                    continue
                verdict = value.get("verdict") if isinstance(value, dict) else None
                verdict = verdict or g.get("verdict", {}).get(row["metric"], "grey")
                cells.append(f'<td class="{verdict}">{verdict}</td>')
            figs = named_figures(named["figures"], figures)
            rows.append(f"<tr><td>{html.escape(named['name'])}</td>"
                        f"<td>{html.escape(named['source'])}</td>"
                        f"<td>{html.escape(row['metric'])}.{html.escape(path)}</td>"
                        f"<td>{html.escape(', '.join(figs) or 'no figure')}</td>"
                        f"{''.join(cells)}</tr>")
    if not rows:
        return []
    return [f"<tr><th>observable (as the paper names it)</th><th>paper</th>"
            f"<th>metrics.json</th><th>figures</th>{heads}</tr>", *rows]


def _angle_rows(gm: list[dict]) -> list[str]:
    """Reconstructed polar angle per true-theta bin, and the verdict of the observables
    and response in each theta bin."""
    m0 = next((g["reconstructed_angle"] for g in gm
               if "reference" in g.get("reconstructed_angle", {})), None)
    if m0 is None:
        return []
    heads = "".join(f"<th>{html.escape(g['label'])}</th>" for g in gm)
    rows = [f"<tr><th>true θ [deg]</th><th>reference: reco θ mean ± RMS</th>{heads}</tr>"]
    ref = m0["reference"]
    for k, true in enumerate(m0["true_theta_deg"]):
        cells = []
        for g in gm:
            ra, ab = g.get("reconstructed_angle", {}), g.get("angle_bins", {})
            if "generated" not in ra:
                cells.append('<td class="grey">n/a</td>')
                continue
            gen = ra["generated"]
            text = f"{_fmt(gen['mean_deg'][k])} ± {_fmt(gen['rms_deg'][k], 2)}"
            bins = ab.get("theta", {}).get("bins") if isinstance(ab, dict) else None
            if bins and k < len(bins):
                b = bins[k]
                text += (f"<br><span class=fl>observables + response in this bin: "
                         f"{b['verdict']}</span>")
            cells.append(f'<td class="{ra["verdict"]}">{text}</td>')
        rows.append(f"<tr><td>{_fmt(true)}</td><td>{_fmt(ref['mean_deg'][k])} ± "
                    f"{_fmt(ref['rms_deg'][k], 2)} (n={ref['n'][k]})</td>{''.join(cells)}</tr>")
    return rows


def _memo_cell(d: dict) -> tuple[str, str]:
    if d.get("status") == "not computed":
        return html.escape(d["reason"]), "grey"
    return (f"median NN distance gen/held-out {_fmt(d['median_ratio'])}, "
            f"{100 * d['fraction_below_ref_p1']:.1f}% below held-out 1st percentile",
            d["verdict"])


CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:1.5em;max-width:1400px}
table{border-collapse:collapse;margin:0.5em 0;font-size:0.85em}
td,th{border:1px solid #999;padding:2px 6px;text-align:center}
td:first-child{text-align:left}
.green{background:#b7e4b0}.yellow{background:#ffe9a8}.red{background:#f6b3b3}
.grey{background:#eee}.fl{color:#555;font-size:0.85em}.sec{background:#ddd;font-weight:bold}
.warn{background:#fff3cd;padding:0.5em;border:1px solid #e0c060}
figure{display:inline-block;margin:4px;vertical-align:top;max-width:480px}
figure img{max-width:480px}figcaption{font-size:0.75em;color:#333}
"""


DEFINITIONS = """<h2>Definitions</h2><ul class=fl>
<li>All observables are computed after the readout threshold (cells below it are removed);
the cell spectrum shows all cells, the removed region hatched.</li>
<li>Moments: energy-weighted mean and standard deviation of the cell centres
(cog, second moment).  Thirds: the layers split into three equal groups.</li>
<li>Shower start layer: first layer k with E<sub>k</sub>+E<sub>k+1</sub> &gt;
(6 + 0.1 E<sub>inc</sub>/GeV) MIP and n<sub>k</sub>+n<sub>k+1</sub> &gt;
round(3.77 + 1.44 ln(E<sub>inc</sub>/GeV)) hits (CALICE two-layer criterion, Adloff et
al., JINST 6 (2011) P07005, as cited by seed 001; raw layer sums instead of the CALICE
running average); showers never satisfying it get the number of layers.</li>
<li>μ90, σ90: mean and RMS of the narrowest interval holding 90% of
E<sub>vis</sub>/E<sub>inc</sub> in an incident-energy bin (seed 001, Fig. 7).</li>
<li>W1/σ: 1-D Wasserstein distance divided by the reference standard deviation.
Separation power: ½ Σ (h<sub>1</sub>−h<sub>2</sub>)²/(h<sub>1</sub>+h<sub>2</sub>)
on unit-sum histograms (CaloChallenge, arXiv:2410.21611). χ²/ndf: two-histogram
homogeneity test.  Binning fixed from the reference (0.1–99.9% quantiles, overflow
folded into the edge bins).</li>
<li>FPD/KPD: Kansal et al., arXiv:2211.10295 (jetnet defaults): features scaled by the
reference max |x|; FPD extrapolated to N→∞ from 10 batch sizes (20k–50k, capped by
the sample size); KPD median of the unbiased cubic-polynomial-kernel MMD² over 10 batches
of 5000.</li>
<li>Classifier: MLP (2×512, LeakyReLU), classes balanced, seeded 60/20/20 split, Adam,
early stopping on the validation loss, Platt calibration on the validation split; AUC and
JSD = (ln 2 − BCE)/ln 2 on the test split.  Low level: log(1 + 1000·E/E<sub>inc</sub>)
per voxel plus log E<sub>inc</sub> on a random subsample; high level: per-layer
features.</li>
<li>Reconstructed incidence angle (seed 000): polar angle, relative to the calorimeter
normal, of the principal axis of the energy-weighted positions of the hits above threshold
(PCA).  Never negative, hence biased by a few degrees at normal incidence: generated showers
are compared with reference showers in the same true-θ bin.  With varying angles the
observables and the response are also compared per θ bin (and per φ bin among showers
at θ &gt; 5°).</li>
<li>Reconstruction level (seed 001, Sec. 2.2): cells digitised (MIP scale, Poisson
photo-electrons, SiPM pixel statistics with saturation
N<sub>pix</sub>(1−e<sup>−N<sub>pe</sub>/N<sub>pix</sub></sup>) and desaturation,
Gaussian noise, 0.5 MIP threshold), MIP sum → GeV with one factor fitted on the
reference, and software compensation: hits binned by energy density (MIP per cell),
weights w<sub>k</sub>(E) = a<sub>k</sub> + b<sub>k</sub>u + c<sub>k</sub>u² of the
uncompensated energy fitted on the reference (CALICE, JINST 7 (2012) P09017).  The
calibration is in reco_calibration.json.</li>
<li>Memorisation: Euclidean distance between shower shapes E/E<sub>vis</sub> (random
projection to 128 dimensions for large geometries) to the nearest training shower, for
generated and held-out reference showers.</li></ul>"""


def render_html(m: dict[str, Any], figures: dict[str, str], captions: dict[str, str],
                failed: list[str]) -> str:
    gm = [g for g in m["generated"] if g.get("status") == "ok"]
    bad = [g for g in m["generated"] if g.get("status") != "ok"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>caloforge evaluation"
             f"</title><style>{CSS}</style></head><body>",
             "<h1>caloforge evaluation report</h1>",
             f"<p>Geometry <b>{html.escape(m['geometry'])}</b>; readout threshold "
             f"{_fmt(m['threshold_mip'])} MIP = {_fmt(m['threshold_mev'])} MeV "
             f"(MIP {_fmt(m['mip_mev'])} MeV); seed {m['seed']}; caloforge "
             f"{html.escape(m['caloforge_version'])}.<br>Reference: "
             f"{html.escape(str(m['reference']['source']))}, {m['reference']['n_used']} "
             f"showers used (of {m['reference']['n_showers']}).<br>"
             f"Noise floor in parentheses: {html.escape(m['noise_floor'])}. Traffic light: "
             "<span class=green>green</span> within 2× the floor, <span class=yellow>"
             "yellow</span> within 5×, <span class=red>red</span> beyond; grey: not "
             "computed or informational.</p>"]
    if m.get("warnings") or bad or failed or m.get("not_computed"):
        items = [html.escape(w) for w in m.get("warnings", [])]
        items += [f"{html.escape(g['label'])}: {html.escape(g.get('reason', ''))}" for g in bad
                  if g.get("reason") not in m.get("warnings", [])]
        items += [f"not computed: {html.escape(s)}" for s in m.get("not_computed", [])]
        items += [f"figure failed: {html.escape(f)}" for f in failed]
        parts.append("<div class=warn><b>Warnings — what could not be computed</b><ul>"
                     + "".join(f"<li>{i}</li>" for i in dict.fromkeys(items)) + "</ul></div>")
    if gm:
        parts.append("<h2>Summary</h2><table>" + "".join(_global_rows(gm)) + "</table>")
        parts.append("<table>" + "".join(_summary_rows(gm)) + "</table>")
        named = _named_rows(m, gm, figures)
        if named:
            parts.append("<h2>Observables as the papers name them</h2><table>"
                         + "".join(named) + "</table>")
        angle_rows = _angle_rows(gm)
        if angle_rows:
            parts.append("<h2>Incidence angle (seed 000)</h2><p class=fl>Polar angle of "
                         "the shower axis (PCA of the energy-weighted hits) per true-θ "
                         "bin.</p><table>" + "".join(angle_rows) + "</table>")
    sections = [("Per-shower observables", "obs_"), ("CaloGAN shower shapes", "calogan_"),
                ("Cell energy spectrum", "cell_spectrum"), ("Profiles", "profile_"),
                ("Energy response and resolution", "response_"),
                ("Energy-binned panels", "ebinned_"), ("Correlations", "correlation_"),
                ("Reconstruction level (seed 001)", "reco_"),
                ("Per-layer features", "layers_"), ("Per-layer histograms", "layergrid_"),
                ("Shower images", "images_"), ("Incidence angle", "angles_"),
                ("Memorisation", "memorisation")]
    for title, prefix in sections:
        figs = [n for n in figures if n.startswith(prefix)]
        if not figs:
            continue
        parts.append(f"<h2>{title}</h2>")
        for n in figs:
            parts.append(f"<figure><img alt='{n}' src='data:image/png;base64,{figures[n]}'>"
                         f"<figcaption>{html.escape(n)}: {html.escape(captions.get(n, ''))}"
                         "</figcaption></figure>")
    parts.append(DEFINITIONS)
    parts.append("<p class=fl>All numbers are in metrics.json; every figure is also in "
                 "figures/ as PNG and PDF.</p></body></html>")
    return "\n".join(parts)
