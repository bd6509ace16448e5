"""The layer-moment maps of :mod:`caloforge.models.layer_moments` for point clouds.

A generated cloud's points carry continuous positions, so a layer reaches its mapped
centre and width by moving its points rather than by reweighting them: in the frame of
the shower's direction (u along the azimuth, v across it, from the direction's axis),

    u' = c_u* + (u - c_u) w_u* / w_u,    v' = c_v* + (v - c_v) w_v* / w_v

(the width ratios limited to [1 / ``max_scale``, ``max_scale``]).  Point energies, the
layers' point counts and energies are unchanged.  The maps are fitted on the training
clouds against clouds generated with every other calibration, at the training
conditions, with the axis depths fitted to the training showers' centres
(``fit_depth``): a point model places its layers at the geometry's depths, whose axis
the showers' centres do not follow.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from caloforge.geometry import Geometry
from caloforge.models.moment_maps import MomentMaps


class PointMoments(MomentMaps):
    """Maps of each layer's centre and width for point clouds (see the module
    docstring).  Clouds are given as (xy (B, P, 2) mm, layer index (B, P), energy
    (B, P) MeV, 0 for padding)."""

    def __init__(self, geometry: Geometry, n_theta_bins: int = 8, n_energy_bins: int = 3,
                 n_knots: int = 33, min_points: int = 3, max_scale: float = 3.0,
                 n_layer_bins: int = 1, copula: bool = False, flow_steps: int = 0,
                 flow_transforms: int = 8, flow_hidden: int = 256,
                 flow_temperature: float = 1.0) -> None:
        super().__init__(np.asarray(geometry.layer_z_mm, dtype=np.float64), n_theta_bins,
                         n_energy_bins, n_knots, min_points, fit_depth=True,
                         n_layer_bins=n_layer_bins, copula=copula, flow_steps=flow_steps,
                         flow_transforms=flow_transforms, flow_hidden=flow_hidden,
                         flow_temperature=flow_temperature)
        self.max_scale = float(max_scale)

    def _frame(self, xy: Tensor, layer: Tensor, e: Tensor, angles: Tensor
               ) -> tuple[Tensor, ...]:
        """Per point u, v (mm) and per layer (B, L): energy, point count, centre u, v
        and variance along u, v; and the axis at each point with cos, sin of phi."""
        ax, ay, cos, sin = self._axis(angles)
        b, n_l = xy.shape[0], self.n_layers
        axis = torch.stack([ax, ay], -1).gather(1, layer[..., None].expand(-1, -1, 2))
        d = xy - axis
        c, s = cos[:, None], sin[:, None]
        u, v = d[..., 0] * c + d[..., 1] * s, d[..., 1] * c - d[..., 0] * s
        w = e.to(u)
        # every per-layer sum in one scatter (fewer operations per call at batch 1)
        terms = torch.stack([w, w * u, w * v, w * u * u, w * v * v, (w > 0).to(w)], -1)
        sums = w.new_zeros(b, n_l, 6).scatter_add_(1, layer[..., None].expand(-1, -1, 6),
                                                   terms)
        total = sums[..., 0]
        safe = total.clamp_min(1e-30)
        cu, cv = sums[..., 1] / safe, sums[..., 2] / safe
        vu = (sums[..., 3] / safe - cu * cu).clamp_min(0)
        vv = (sums[..., 4] / safe - cv * cv).clamp_min(0)
        return u, v, total, sums[..., 5], cu, cv, vu, vv, (axis, c, s)

    def layer_moments(self, x: tuple[Tensor, Tensor, Tensor], angles: Tensor
                      ) -> tuple[Tensor, Tensor]:
        """(B, L, 4) centre u, centre v, width u, width v (mm) of every layer
        of clouds ``x`` = (xy, layer, energy) and (B, L) whether it holds
        ``min_hits`` points with energy."""
        _, _, total, count, cu, cv, vu, vv, _ = self._frame(*x, angles)
        return (torch.stack([cu, cv, vu.sqrt(), vv.sqrt()], -1), count >= self.min_hits,
                total)

    def forward(self, xy: Tensor, layer: Tensor, e: Tensor, e_inc: Tensor,
                angles: Tensor, normals: Tensor | None = None) -> Tensor:
        """The points' positions ``xy`` (B, P, 2; mm) moved so that every eligible
        layer's centre and width are the mapped ones (``e_inc`` (B,) MeV, ``angles``
        (B, 2) rad; ``normals`` (B, 4 L) the moment flow's draw, if it has one)."""
        u, v, total, count, cu, cv, vu, vv, (axis, c, s) = self._frame(xy, layer, e, angles)
        wu, wv = vu.sqrt(), vv.sqrt()
        ok = count >= self.min_hits
        tgt = self._targets(torch.stack([cu, cv, wu, wv], -1), e_inc, angles[:, 0],
                            total, ok, normals).to(u)
        lo, hi = 1.0 / self.max_scale, self.max_scale
        su = torch.where(wu > 1e-6, tgt[..., 2] / wu.clamp_min(1e-6), torch.ones_like(wu))
        sv = torch.where(wv > 1e-6, tgt[..., 3] / wv.clamp_min(1e-6), torch.ones_like(wv))
        one = torch.ones_like(su)
        per_layer = torch.stack([torch.where(ok, tgt[..., 0], cu), cu,
                                 torch.where(ok, su.clamp(lo, hi), one),
                                 torch.where(ok, tgt[..., 1], cv), cv,
                                 torch.where(ok, sv.clamp(lo, hi), one)], -1)
        at = per_layer.gather(1, layer[..., None].expand(-1, -1, 6)).unbind(-1)  # per point
        u2 = at[0] + (u - at[1]) * at[2]
        v2 = at[3] + (v - at[4]) * at[5]
        moved = torch.stack([u2 * c - v2 * s, u2 * s + v2 * c], -1)
        return (axis + moved).to(xy.dtype)
