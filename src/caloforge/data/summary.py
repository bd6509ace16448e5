"""What is in a shower file: the numbers ``caloforge info`` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from caloforge.data.batch import PDG_NAMES
from caloforge.data.io import open_showers
from caloforge.utils.progress import progress


def summarize(path: str | Path, geometry: str | None = None, max_showers: int | None = 2000,
              batch_size: int = 1000, progress_bar: bool = False) -> dict[str, Any]:
    """Format, geometry, counts, condition ranges and sparsity of a shower file.

    Conditions are read for all showers (cheap); voxel statistics (sparsity, hits above
    the readout threshold, visible energy) use the first ``max_showers`` (None = all).
    """
    path = Path(path)
    with open_showers(path, geometry=geometry) as f:
        geo = f.geometry_object
        cond = f.read_conditions()
        out: dict[str, Any] = {
            "file": str(path),
            "size_bytes": path.stat().st_size,
            "format": f.format,
            "geometry": f.geometry,
            "geometry_assumed": f.geometry_assumed,
            "geometry_summary": geo.summary(),
            "n_showers": f.n_showers,
            "point_cloud": f.is_point_cloud,
            "conditions": cond.present,
            "metadata": f.metadata,
        }
        if len(cond):
            e = cond.incident_energy
            out["incident_energy_gev"] = [float(e.min()) / 1e3, float(e.max()) / 1e3]
            for name in ("theta", "phi"):
                v = getattr(cond, name)
                if v is not None:
                    out[f"{name}_rad"] = [float(v.min()), float(v.max())]
            if cond.particle is not None:
                codes, counts = np.unique(cond.particle, return_counts=True)
                out["particles"] = {PDG_NAMES.get(int(c), str(int(c))): int(n)
                                    for c, n in zip(codes, counts)}
        n_stat = f.n_showers if max_showers is None else min(f.n_showers, max_showers)
        thr = geo.readout_threshold_mev
        nonzero = above = 0
        visible = []
        points = []
        bar = progress(total=n_stat, desc="scanning", unit="shower",
                       enabled=None if progress_bar else False)
        for lo in range(0, n_stat, batch_size):
            hi = min(lo + batch_size, n_stat)
            if f.is_point_cloud:
                points.append(f.read_points(lo, hi).n_points)
            batch = f.read(lo, hi)
            nonzero += int(np.count_nonzero(batch.energies))
            above += int(np.count_nonzero(batch.energies >= thr) if thr > 0
                         else np.count_nonzero(batch.energies))
            visible.append(batch.total_energy() / batch.incident_energy)
            bar.update(hi - lo)
        bar.close()
        if n_stat:
            out["statistics_over"] = n_stat
            out["occupancy"] = nonzero / (n_stat * max(geo.n_voxels, 1))
            out["mean_hits_above_threshold"] = above / n_stat
            out["readout_threshold_mev"] = thr
            vis = np.concatenate(visible)
            out["visible_over_incident"] = [float(vis.mean()), float(vis.std())]
            if points:
                out["mean_points_per_shower"] = float(np.concatenate(points).mean())
    return out


def format_summary(info: dict[str, Any]) -> str:
    """Human-readable lines for :func:`summarize` output."""
    size = info["size_bytes"]
    unit = next((u for u, s in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)) if size >= s), "B")
    scale = {"GB": 1e9, "MB": 1e6, "kB": 1e3, "B": 1}[unit]
    geo = info["geometry"] + (" (assumed: the file names none; pass --geometry)"
                              if info["geometry_assumed"] else "")
    lines = [
        f"file        {info['file']} ({size / scale:.1f} {unit})",
        f"format      {info['format']}" + (" (point clouds)" if info["point_cloud"] else ""),
        f"geometry    {geo}",
        f"            {info['geometry_summary']}",
        f"showers     {info['n_showers']}",
        f"conditions  {', '.join(info['conditions'])}",
    ]
    if "incident_energy_gev" in info:
        lo, hi = info["incident_energy_gev"]
        lines.append(f"E_inc       {lo:.4g} .. {hi:.4g} GeV")
    for name in ("theta", "phi"):
        if f"{name}_rad" in info:
            lo, hi = info[f"{name}_rad"]
            lines.append(f"{name:<11} {lo:.4g} .. {hi:.4g} rad")
    if "particles" in info:
        lines.append("particles   " + ", ".join(f"{k}: {v}" for k, v in info["particles"].items()))
    if "occupancy" in info:
        lines += [
            f"sparsity    {100 * info['occupancy']:.3f} % of voxels non-zero "
            f"(first {info['statistics_over']} showers)",
            f"hits        {info['mean_hits_above_threshold']:.1f} per shower above "
            f"{info['readout_threshold_mev']:.4g} MeV",
            f"E_vis/E_inc {info['visible_over_incident'][0]:.4g} +- "
            f"{info['visible_over_incident'][1]:.3g}",
        ]
    if "mean_points_per_shower" in info:
        lines.append(f"points      {info['mean_points_per_shower']:.1f} per shower")
    if info["metadata"]:
        meta = ", ".join(f"{k}={v}" for k, v in info["metadata"].items() if k != "geometry")
        if meta:
            lines.append(f"metadata    {meta}")
    return "\n".join(lines)
