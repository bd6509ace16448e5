"""A trained point-cloud model (``caloclouds2-cm``, ``caloclouds2``, ``caloclouds``) as one
traceable function in Key4hep DDML's point-cloud contract (``--convention ddml-pointcloud``).

Inputs ``energy`` (GeV), ``theta`` and ``phi`` (local angles, degrees), each float32
``(B, 1)``, optionally ``noise`` ``(B, K)``.  One output ``points``, float32
``(B, 4 (L + P))``: L quadruplets ``(count_k, 0, 0, 0)`` with the number of points of
layer k, then P quadruplets ``(x [mm], y [mm], layer index, E [MeV])``; the real points
come first (their number is the sum of the counts), the rest is zero padding.  The counts
sit every 4th entry because DDML's ``CaloCloudsTwoAngleModel::convertOutput`` reads them
at ``output[4 k]`` and the points from ``output[4 L]`` on.

Everything data-dependent is expressed with fixed shapes and masks: the ShowerFlow draws
the number of points n (capped at P), the layer counts by largest-remainder rounding
(pairwise comparisons, no sort of the layers; then scaled by the model's occupancy
calibration, :meth:`~caloforge.models.pointdiffusion.PointDiffusionModel.draw_summary`),
the network runs on all P slots with the padding masked out of its set summaries (so the
real points equal those of ``caloforge generate`` for the same normals), and points are
given to layers by rank of their layer coordinate (a sort over the P slots, padding last).

P (``max_points``) is an export option; by default the 99.9 % quantile of the number of
points the ShowerFlow draws over the trained conditions (showers drawn above it are
truncated to P points, their layer counts rounded to P; the expected fraction is written
into the contract).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from caloforge import __version__
from caloforge.errors import InputError
from caloforge.export.graph import ExportError, TensorNoise
from caloforge.models.base import GenerativeModel

QUANTILE = 0.999
QUANTILE_DRAWS = 4000
FEATURES = 4  # x, y, layer, E


def _trained_conditions(model: GenerativeModel, n: int, gen: torch.Generator
                        ) -> tuple[Tensor, Tensor | None]:
    """``n`` energies (log-uniform over the trained range, MeV) and angles (uniform over
    the trained ranges, rad; None for a model that takes none)."""
    lo, hi = model.energy_range_mev
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    e = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))).float()
    if not model.takes_angles:
        return e, None
    cols = []
    space = model.condition_space
    for name in ("theta", "phi"):
        a, b = space.ranges.get(name, (space.fixed.get(name, 0.0),) * 2)
        cols.append(a + (b - a) * torch.rand(n, generator=gen))
    return e, torch.stack(cols, 1)


@torch.no_grad()
def point_budget(model: GenerativeModel, quantile: float = QUANTILE,
                 draws: int = QUANTILE_DRAWS) -> tuple[int, float]:
    """(the ``quantile`` of the number of points the model draws (ShowerFlow and occupancy
    calibration) over the trained conditions, capped at the model's own maximum; the
    fraction of draws above it)."""
    gen = torch.Generator().manual_seed(0)
    e, angles = _trained_conditions(model, draws, gen)
    cond = model.condition_features(e, angles)
    n = model.draw_summary(cond, gen, e, int(model.max_points)).n_points.double()
    cap = min(max(1, math.ceil(float(torch.quantile(n, quantile)))), int(model.max_points))
    return cap, float((n > cap).double().mean())


class _CountingNoise(TensorNoise):
    """Zeros of the requested shapes; counts the normals one shower asks for."""

    def __init__(self) -> None:
        super().__init__(torch.zeros(1, 0))

    def reserve(self, k: int) -> None:
        pass

    def randn(self, *shape: int) -> Tensor:
        self._used += math.prod(shape)
        return torch.zeros(1, *shape)


class PointSampler(nn.Module):
    """``forward(energy, theta, phi[, noise]) -> (B, 4 (L + P))`` (module docstring)."""

    def __init__(self, model: GenerativeModel, internal_noise: bool = True,
                 max_points: int | None = None) -> None:
        super().__init__()
        if model.representation != "points":
            raise ExportError(f"model {model.name!r} generates voxels; the point-cloud "
                              f"exporter handles point-cloud models")
        self.model = model.eval()
        # a submodule: the flow may be borrowed (a student's frozen teacher's), and the
        # tracers take its weights as parameters, not as constants needing no gradient
        self.showerflow = model.shower_flow()
        self.internal_noise = internal_noise
        self.angles = True
        self.truncated_fraction: float | None = None
        if max_points is None:
            max_points, self.truncated_fraction = point_budget(model)
        if isinstance(max_points, bool) or int(max_points) != max_points or max_points < 1:
            raise InputError(f"--max-points {max_points!r}: need a positive integer")
        self.max_points = int(max_points)
        self.n_layers = model.geometry.n_layers
        with torch.no_grad():
            counter = _CountingNoise()
            self.shower(torch.full((1,), float(model.energy_range_mev[0])),
                        torch.zeros(1, 2), counter)
        self.noise_dim = counter.used

    @property
    def input_names(self) -> list[str]:
        return ["energy", "theta", "phi"] + ([] if self.internal_noise else ["noise"])

    @property
    def output_width(self) -> int:
        return FEATURES * (self.n_layers + self.max_points)

    def example_inputs(self, batch: int) -> tuple[Tensor, ...]:
        lo, hi = self.model.energy_range_mev
        out = [torch.linspace(lo, hi, batch)[:, None] / 1e3, torch.zeros(batch, 1),
               torch.zeros(batch, 1)]
        if not self.internal_noise:
            out.append(torch.randn(batch, self.noise_dim,
                                   generator=torch.Generator().manual_seed(0)))
        return tuple(out)

    def forward(self, *inputs: Tensor) -> Tensor:
        energy = inputs[0]
        angles = torch.cat([inputs[1], inputs[2]], 1) * (math.pi / 180)
        normals = torch.randn_like(energy.expand(-1, self.noise_dim)) if self.internal_noise \
            else inputs[3]
        counts, points = self.shower(energy[:, 0] * 1e3, angles, TensorNoise(normals))
        head = nn.functional.pad(counts[..., None], (0, FEATURES - 1))  # (B, L, 4)
        out = torch.cat([head, points], 1).flatten(1)
        if not self.model.takes_angles:  # keep the DDML inputs in the graph (see graph.py)
            out = out + 0 * angles.sum(1, keepdim=True)
        return out

    def shower(self, e_inc: Tensor, angles: Tensor, noise: TensorNoise
               ) -> tuple[Tensor, Tensor]:
        """(layer counts (B, L) float, points (B, P, 4) x, y, layer, E, zero-padded)."""
        m = self.model
        cond = m.condition_features(e_inc, angles if m.takes_angles else None)
        s = m.draw_summary(cond, noise, e_inc, self.max_points)
        normals = m.draw_moment_noise(noise, len(e_inc), e_inc.device)
        slots = torch.arange(self.max_points, device=e_inc.device)
        mask = slots[None] < s.n_points[:, None]
        context = torch.cat([cond, m.count_feature(s.n_points)], 1)
        feats = m.sample_points(mask, context, noise)
        xy, layer, e = m.place_in_layers(feats, mask, s, e_inc,
                                         angles if m.takes_angles else None, normals)
        points = torch.cat([xy, layer.to(xy.dtype)[..., None], e.clamp_min(0)[..., None]], 2)
        return s.layer_counts.to(xy.dtype), points * mask[..., None].to(xy.dtype)


def _moment_width(model: GenerativeModel) -> str:
    """The moment flow's share of the noise layout ('' without one)."""
    flow = getattr(model.moments, "flow", None) if getattr(model, "moments", None) else None
    return "" if flow is None else f"{flow.features} for the moment flow, then "


def describe_points(sampler: PointSampler, fmt: str, batch: str) -> dict:
    """The contract of an exported point sampler (metadata and ``.export.md``)."""
    m = sampler.model
    b = 1 if batch == "1" else "batch"
    k, n_l, p = sampler.noise_dim, sampler.n_layers, sampler.max_points
    inputs = [{"name": "energy", "shape": [b, 1], "dtype": "float32", "unit": "GeV"}]
    inputs += [{"name": n, "shape": [b, 1], "dtype": "float32", "unit": "degree"}
               for n in ("theta", "phi")]
    if not sampler.internal_noise:
        inputs.append({"name": "noise", "shape": [b, k], "dtype": "float32",
                       "unit": "standard normal",
                       "layout": f"{m.shower_flow().features} for the ShowerFlow, then "
                                 f"{_moment_width(m)}"
                                 f"{FEATURES} per point slot ({p} slots) for each noise "
                                 f"draw of the point sampler, slot-major"})
    lo, hi = m.energy_range_mev
    how = (f"the {100 * QUANTILE:g} % quantile of the points the ShowerFlow draws over the "
           f"trained conditions; expected fraction of truncated showers "
           f"{sampler.truncated_fraction:.2g}" if sampler.truncated_fraction is not None
           else "set at export (--max-points)")
    layout = (f"{n_l} quadruplets (count of points in layer k, 0, 0, 0) for k = 0..{n_l - 1}, "
              f"then {p} quadruplets (x [mm], y [mm], layer index, E [MeV]); the first "
              f"sum(counts) of them are the shower's points, the rest zeros. x, y in the "
              f"caloforge frame of geometry {m.geometry.name!r}. Maximum points P = {p} "
              f"({how}); DDML's maxNumElements = {sampler.output_width}.")
    return {
        "producer": f"caloforge {__version__}", "model": m.name, "geometry": m.geometry.name,
        "format": fmt, "convention": "ddml-pointcloud", "batch": batch,
        "noise": "internal" if sampler.internal_noise else "input", "noise_width": k,
        "inputs": inputs,
        "outputs": [{"name": "points", "shape": [b, sampler.output_width], "dtype": "float32",
                     "unit": "count / mm / layer index / MeV", "order": layout}],
        "n_layers": n_l, "max_points": p, "truncated_fraction": sampler.truncated_fraction,
        "sampler": m.sampler_settings(),
        "trained_energy_range_mev": [float(lo), float(hi)],
        "conditions_taken": list(m.condition_space.ranges),
        "fixed_conditions": m.condition_space.fixed,
        "readout_threshold_mev": 0.0,
    }
