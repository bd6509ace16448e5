"""``caloforge geometry [NAME]``: list the detector geometries or describe one."""

from __future__ import annotations

import argparse

from caloforge.geometry import get_geometry, list_geometries


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("geometry", help="list detector geometries or describe one",
                       description="Without NAME: one line per known geometry. With NAME: "
                                   "its layers, materials, cells and readout constants.")
    p.add_argument("name", nargs="?", help="geometry name")
    p.set_defaults(func=run)


def describe(name: str) -> str:
    """Multi-line description of one geometry (units: mm, MeV)."""
    g = get_geometry(name)
    lines = [g.summary(), g.description, f"source: {g.source}",
             f"readout threshold {g.readout_threshold_mev:.4g} MeV, MIP {g.mip_mev:.4g} MeV",
             "layer  cells       absorber          active            z_active[mm]  depth[X0]"]
    for k, spec in enumerate(g.layers):
        shape = "x".join(map(str, g.layer_shape(k)))
        rep = f"{spec.repeats}x" if spec.repeats > 1 else ""
        lines.append(
            f"{k:>5}  {shape:<10}  {rep}{spec.absorber_mm:.3g} mm {spec.absorber:<5}"
            f"  {spec.active_mm:.3g} mm {spec.active:<11}  {g.layer_z_mm[k]:>10.2f}"
            f"  {g.layer_depth_x0[k]:>8.2f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.name:
        print(describe(args.name))
    else:
        for name in list_geometries():
            print(get_geometry(name).summary())
    return 0
