"""A frame that follows the shower axis, for direction-conditioned layer models.

The data put every layer on the detector's fixed cell grid: a shower entering at polar
angle theta and azimuth phi crosses layer k at ``impact + z_k tan(theta) (cos phi, sin phi)``,
so at theta = 40 deg an ILD photon's axis moves 16 cells across the 30 x 30 window between
the first and the last layer.  A layer model conditioned on (theta, phi) would have to
learn that displacement from the conditions, cell by cell, and with a few thousand CPU
steps it learns only part of it (the reconstructed incidence angle of the showers then
comes out too small).

:class:`AxisFrame` moves each layer by the whole number of cells nearest to that
crossing point, so that the layer model sees (and draws) every layer with its axis within
half a cell of the window centre, as the Geant4 fast-simulation hooks (Par04, DDML) place
their readout grid along the particle direction.  The displacement is applied exactly
and for free; the model learns the rest: the sub-cell remainder (given to it as context,
in cells), the elongation of oblique showers and their longitudinal profile.  The line
the frame follows is the axis with a fitted depth per layer (:meth:`AxisFrame.fit_depths`):
where the energy centroid of oblique training showers crosses each layer, which is not
quite the geometric axis.

Cells moved in from outside the window are empty (``fill``); cells moved out are dropped.
At generation the layer is moved back onto the detector grid, so what a model draws
outside the window it was trained on never reaches the detector: on ILD ECAL only cells
more than 15 cells (76 mm, ~4 Moliere radii) from the axis are lost that way.

>>> from caloforge.models.toy import toy_geometry
>>> frame = AxisFrame(toy_geometry(), [0, 1, 2])
>>> frame.grid
(6, 6)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from caloforge.errors import GeometryError
from caloforge.geometry import Geometry


class AxisFrame(nn.Module):
    """Whole-cell shifts of the layers ``layers`` of a geometry whose layers are full
    regular grids of one shape, following the shower axis of each shower."""

    def __init__(self, geometry: Geometry, layers: list[int]) -> None:
        super().__init__()
        centres = np.array(geometry.cell_centres, dtype=np.float64)  # a writable copy
        offsets = geometry.layer_offsets
        first = centres[int(offsets[layers[0]]):int(offsets[layers[0] + 1])]
        ux, uy = np.unique(np.round(first[:, 0], 4)), np.unique(np.round(first[:, 1], 4))
        pitch = tuple(float(np.min(np.diff(u))) if len(u) > 1 else 1.0 for u in (ux, uy))
        ix = np.rint((first[:, 0] - ux[0]) / pitch[0]).astype(np.int64)
        iy = np.rint((first[:, 1] - uy[0]) / pitch[1]).astype(np.int64)
        nx, ny = int(ix.max()) + 1, int(iy.max()) + 1
        z = []
        for k in layers:
            cells = centres[int(offsets[k]):int(offsets[k + 1])]
            if len(cells) != nx * ny or not np.allclose(cells[:, :2], first[:, :2], atol=1e-3):
                raise GeometryError(
                    f"the axis frame needs layers that are full grids of one placement; "
                    f"layer {k} of geometry {geometry.name!r} differs from layer {layers[0]}")
            z.append(float(cells[:, 2].mean()))
        self.grid = (nx, ny)
        self.pitch = pitch  # (x, y) in mm
        self.centre = (float((ux[0] + ux[-1]) / 2), float((uy[0] + uy[-1]) / 2))
        self.register_buffer("cell_ix", torch.as_tensor(ix), persistent=False)
        self.register_buffer("cell_iy", torch.as_tensor(iy), persistent=False)
        self.register_buffer("layer_z", torch.tensor(z, dtype=torch.float32), persistent=False)
        # depth (mm) at which the frame crosses each layer: the layer's own z until
        # fit_depths() measures where the showers' energy actually lies (saved)
        self.register_buffer("depth", torch.tensor(z, dtype=torch.float32))
        self.register_buffer("cell_x", torch.as_tensor(first[:, 0], dtype=torch.float32),
                             persistent=False)
        self.register_buffer("cell_y", torch.as_tensor(first[:, 1], dtype=torch.float32),
                             persistent=False)
        # the cell at each grid position (ix * ny + iy), unless the cells are stored so
        cell_at = np.empty(nx * ny, dtype=np.int64)
        cell_at[ix * ny + iy] = np.arange(len(ix))
        self.row_major = bool(np.array_equal(cell_at, np.arange(nx * ny)))
        self.register_buffer("cell_at", torch.as_tensor(cell_at), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        """Folders saved before the depths were fitted load with the layers' own z."""
        if prefix + "depth" not in state_dict:
            state_dict = {**state_dict, prefix + "depth": self.layer_z.clone()}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def depth_sums(self, images: Tensor, angles: Tensor,
                   impact: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """Sums over showers ``images`` (B, L, cells; MeV) for :meth:`fit_depths`: per layer,
        sum of tan(theta) E u and of tan(theta)^2 E, with E the layer energy and u its
        energy-weighted position along the direction (cos phi, sin phi), from the impact
        point."""
        angles = angles.to(images)
        tan, phi = torch.tan(angles[:, 0]), angles[:, 1]
        along = (self.cell_x - impact[0]) * torch.cos(phi)[:, None] \
            + (self.cell_y - impact[1]) * torch.sin(phi)[:, None]  # (B, cells)
        moment = (images * along[:, None, :]).sum(2)  # (B, L): E u
        energy = images.sum(2)
        return ((tan[:, None] * moment).sum(0).double(),
                (tan[:, None] ** 2 * energy).sum(0).double())

    @torch.no_grad()
    def fit_depths(self, moment: Tensor, weight: Tensor, min_weight: float = 1e-6) -> None:
        """Set each layer's depth to where the showers' energy centroid crosses it on
        average: the least-squares ``d_k`` of ``u = d_k tan(theta)`` over the showers,
        energy-weighted (``depth_sums`` summed over the training showers).  Halo particles
        leave the shower core at wide angles: in the first layers of an oblique shower the
        energy lies ahead of the axis, in the last layers behind it, so the centroid
        crosses the layers along a flatter line than the axis.  Layers with too little
        oblique energy keep their own z."""
        ok = weight > min_weight * weight.max().clamp_min(1e-30)
        fitted = torch.where(ok, moment / weight.clamp_min(1e-30), self.layer_z.double())
        self.depth.copy_(fitted.to(self.depth))

    def offsets(self, angles: Tensor, impact: tuple[float, float]) -> tuple[Tensor, Tensor]:
        """Where each shower's frame crosses each layer (the axis, at the fitted depths),
        relative to the window centre, in cells: ``(shift, remainder)``, both
        ``(B, layers, 2)``; ``shift`` is the nearest whole number of cells (long),
        ``remainder`` the rest, in [-0.5, 0.5]."""
        tan = torch.tan(angles[:, 0])
        direction = torch.stack([tan * torch.cos(angles[:, 1]), tan * torch.sin(angles[:, 1])], 1)
        start = angles.new_tensor([impact[0] - self.centre[0], impact[1] - self.centre[1]])
        scale = angles.new_tensor([1.0 / self.pitch[0], 1.0 / self.pitch[1]])
        o = (start + self.depth[None, :, None] * direction[:, None, :]) * scale
        shift = torch.round(o)
        return shift.long(), o - shift

    def index(self, shift: Tensor) -> tuple[Tensor, Tensor]:
        """What :meth:`move` by ``shift`` (B, L, 2) takes for each output cell: the input
        cell (B, L, cells; clamped into the grid) and whether it lies inside the grid."""
        nx, ny = self.grid
        px = self.cell_ix + shift[..., :1]  # (B, L, cells)
        py = self.cell_iy + shift[..., 1:]
        inside = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
        position = px.clamp(0, nx - 1) * ny + py.clamp(0, ny - 1)
        if not self.row_major:
            position = self.cell_at[position]
        return position, inside

    @staticmethod
    def take(images: Tensor, index: tuple[Tensor, Tensor], fill: float) -> Tensor:
        """``images`` (B, L, cells) moved as :meth:`index` says."""
        position, inside = index
        return torch.where(inside, torch.gather(images, -1, position),
                           torch.full_like(images, fill))

    def move(self, images: Tensor, shift: Tensor, fill: float) -> Tensor:
        """``images`` (B, L, cells) moved by ``shift`` (B, L, 2) cells: the output cell at
        grid position p takes the input cell at p + shift (``fill`` where that is outside
        the grid).  Into the axis frame is ``move(x, shift)``, back ``move(y, -shift)``."""
        return self.take(images, self.index(shift), fill)
