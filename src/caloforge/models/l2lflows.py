"""Layer-to-layer normalizing flows (L2LFlows; seed 000, "Flow-based generation").

Two stages, as CaloFlow's layer flow + shower flow:

1. An *energy flow* learns the distribution of the layer energies given the incident
   energy (features: ``log(E_k / E_inc + eps)``, standardised).
2. One *layer flow* per layer learns the shape of that layer — its cell energies divided
   by the layer energy, logit-transformed and standardised — conditioned on the incident
   energy, the layer energy and the images of the previous five layers (seed 000 table:
   context ``[I_{i-1}..I_{i-5}, E_i, E_inc]``).  A small context network compresses the
   previous images to ``context_embedding`` numbers (0 keeps the raw context).

Generation samples the layer energies, then the layers in order, each conditioned on the
ones generated before; every layer is rescaled to its sampled energy.  The flows are
rational-quadratic spline *coupling* flows built from :mod:`zuko`, so each one samples in a
single network pass (the seed's MAF needed one pass per dimension, hence its 2 s/shower).
Layers may differ in shape, so any geometry works (layers with fewer than two cells are
fixed by their energy alone).

The ``compact`` preset (the shipped CPU default) shares one lean affine layer flow across
layers (layer one-hot in the context), models log(cell / readout threshold) with the
cells below threshold dequantised under 0, and in :meth:`L2LFlows.finalize` calibrates
per-cell occupancy cuts, hit-energy quantile maps and the mu90/sigma90 response on the
training showers.  Models conditioned on the direction draw each layer in a frame that
follows the shower axis (``axis_frame``, :mod:`caloforge.models.axis_frame`).

>>> model = L2LFlows.from_config(None, "calogan", preset="tiny")
>>> len(model.layer_flows)
3
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from zuko.flows import Flow

from caloforge.data.batch import Conditions
from caloforge.geometry import Geometry
from caloforge.models import calibration as calib
from caloforge.models.axis_calibration import AxisCalibration
from caloforge.models.axis_frame import AxisFrame
from caloforge.models.base import GenerativeModel, StepContext, TrainBatch, register
from caloforge.models.config import ModelConfig, positive
from caloforge.models.flows import (
    AffineCouplingFlow,
    run_mlp,
    sample_flow,
    spline_coupling_flow,
)
from caloforge.models.l2lflows_calibration import L2LCalibration
from caloforge.models.l2lflows_generation import L2LGeneration
from caloforge.models.layer_moments import LayerMoments
from caloforge.models.noise import ShowerNoise, Source, randn
from caloforge.models.transforms import Standardize


@dataclass
class L2LFlowsConfig(ModelConfig):
    context_layers: int = 5  # previous layers in a layer flow's context (seed 000)
    context_embedding: int = 64  # 0 = feed the raw previous images
    transforms: int = 4
    bins: int = 4  # spline bins; 0 = affine coupling (RealNVP), cheaper to sample
    hidden: tuple[int, ...] = (96, 96)
    energy_transforms: int = 6
    energy_bins: int = 8
    energy_hidden: tuple[int, ...] = (128, 128)
    alpha: float = 1e-6  # logit(alpha + (1 - 2 alpha) u) keeps u = 0 finite
    dequantize: float = 1e-5  # uniform noise on cell fractions while training
    energy_eps: float = 1e-6
    lr: float = 1e-3
    lr_decay: float = 0.1  # learning rate falls by this factor over the run
    threshold_output: bool = True
    # One layer flow shared by all layers (a layer one-hot joins its context): the size no
    # longer grows with the number of layers.  Needs layers of equal cell count.
    shared_layer_flow: bool = False
    # Cell features: "logit_fraction" (logit of cell / layer energy) or "log_threshold"
    # (log of cell / readout threshold, >= 0 for read-out cells; cells below threshold are
    # dequantised as a normal N(-zero_width, (zero_width / 4)^2) cut below 0, which an
    # affine flow fits exactly for cells that are always empty).
    cell_feature: str = "logit_fraction"
    zero_width: float = 2.0
    # log_threshold only: after training, calibrate one cut per cell on this many
    # generated showers so that every cell's occupancy matches the training data (the
    # flow's leak across the gap between empty and hit cells is otherwise what sets the
    # number of hits).  0 = cut at the threshold.
    calibration_showers: int = 4000
    # ... and map the hit energies of each (layer, ring of one cell pitch) group onto the
    # training spectrum with this many quantiles (monotone, so a shower's ordering of
    # hits is the flow's).  0 = no hit-energy calibration.
    calibration_quantiles: int = 65
    calibration_cell_rings: int = 3  # cells closer to the axis than this: one group each
    # ... and calibrate the visible-energy response (median and width of E_vis / E_inc)
    # in this many log-energy bins: r -> mu_ref + k (r - mu_gen), interpolated in log E.
    calibration_energy_bins: int = 8
    # Models conditioned on the direction: every table above is fitted per theta bin
    # (equal numbers of calibration showers) and per ring around each shower's own axis
    # instead of per fixed cell (:mod:`caloforge.models.axis_calibration`).
    calibration_theta_bins: int = 4
    # ... and the occupancy cuts and hit-energy maps also per bin of the incident energy
    # (equal counts in log E), interpolated in log E between the bins: the energy
    # dependence of the number of hits and of the shower width is then the training
    # data's, not the flow's.  1 = pooled over energies.
    calibration_hit_energy_bins: int = 1
    # ... and weigh each (layer, ring) group's hit energies so that its mean share of the
    # layer energy is the training showers' (the layers' widths).
    calibration_layer_shares: bool = False
    # ... and the cuts, hit maps and shares also per bin of the shower's calibrated
    # visible energy (equal training counts within each energy bin): the hit spectrum
    # follows the shower's response as in the training showers (hadron showers: denser
    # hits where the electromagnetic fraction, and with it the response, is high; what
    # software compensation uses).  Needs the response table (calibration_energy_bins).
    calibration_response_bins: int = 1
    # ... and per bin of each layer's own sampled energy (equal training counts per
    # layer): the hits of a layer follow training layers of like energy.  A pion's
    # layers before its interaction hold one MIP in the cell on the beam line, and a
    # late layer of a few MeV holds isolated hits far apart; tables pooled over layer
    # energies split the first and bunch the second.  1 = pooled.
    calibration_layer_energy_bins: int = 1
    # ... and the rings go around each shower's own core in each layer (the centroid of
    # layers k - w .. k + w, w this value, weighted by log(E / threshold); generation:
    # of the flow's drawn features) instead of around the direction's axis: a hadron
    # shower's core wanders off the beam line, and rings around the fixed line cut it
    # away layer by layer, decorrelating the layers' centroids.  -1 = around the axis.
    calibration_core_window: int = -1
    # ... and, last, map each layer's centre and width (in the frame of the shower's
    # direction) shower by shower onto the training showers' distribution by sharing the
    # layer's energy differently among its hits (:mod:`caloforge.models.layer_moments`;
    # the high-level classifier's features): this many quantile knots per map, 0 = off;
    # maps per theta bin (models conditioned on the direction) and incident-energy bin.
    calibration_layer_moments: int = 0
    calibration_moment_theta_bins: int = 8
    calibration_moment_energy_bins: int = 3
    calibration_moment_layer_bins: int = 1  # ... and bins of each layer's own energy
    # ... with the training showers' correlations between layers and moments
    # (a Gaussian copula, :mod:`caloforge.models.moment_copula`)
    calibration_moment_copula: bool = False
    # ... solved this many times per layer, each pass with the hits that reached a bound
    # of their weight held (one pass stops a layer where its first hit meets a bound) ...
    calibration_moment_passes: int = 1
    # ... with each hit's weight at least this (of its energy above the threshold when
    # passes > 1, so that hits do not pile up at the threshold, where digitisation loses
    # half of them)
    calibration_moment_min_weight: float = 0.3
    # ... and refit the response table on showers read out with every table (a second
    # generation pass): the read-out moves E_vis by a few per cent against the raw
    # response the table is first fitted on.
    calibration_response_refine: bool = False
    # ... and refit the occupancy cuts so that the hits *read out* (not those drawn) match
    # the training showers' per (layer, ring): layers whose sampled energy cannot carry
    # every drawn hit lose some at the read-out (a second generation pass and table fit).
    calibration_occupancy_refine: bool = False
    # ... and N passes (one generation each) that compose the hit maps with the map from
    # the read-out hit spectrum per table row onto the training one: the rescale of
    # every hit to the sampled layer energy smears the spectrum the maps were fitted
    # to.  With calibration_response_refine the response table is refitted after each.
    calibration_hit_refine: int = 0
    # Models without angles: fit the tables per ring around the (fixed) shower axis like
    # direction-conditioned models do (one theta bin), which is what the options above
    # need, instead of per cell.  Direction-conditioned models always do.
    calibration_axis_tables: bool = False
    # Rings of the axis tables inside calibration_cell_rings pitches: 1/N of a pitch wide.
    calibration_core_divisions: int = 2
    # Read-out: a layer given at least the readout threshold by the energy flow whose
    # drawn cells all fall below their cuts gets its energy in the cell closest to its
    # cut instead of being read out empty (see L2LGeneration._rescue_empty_layers).
    rescue_empty_layers: bool = False
    # ... and, for models with axis tables, that cell is the one that maximises
    # (feature - cut) - (d / rescue_axis_scale)^2 / 2, d its distance from the shower's
    # axis in cell pitches: the rescued hit lies near the axis, as the few hits of the
    # first layers do, instead of wherever noise put the cell closest to its cut.
    # 0 = the cell closest to its cut.
    rescue_axis_scale: float = 0.0
    # Read-out: a layer whose sampled energy E is below (drawn hits) x threshold keeps its
    # floor(E / threshold) hottest hits, which share E, instead of every hit being scaled
    # down and those pushed below the threshold lost with their energy
    # (see L2LGeneration._thin_starved_layers).
    thin_starved_layers: bool = False
    # Shared layer flow only: use AffineCouplingFlow (needs bins = 0), the fast sampler.
    lean_affine: bool = False
    # Models conditioned on the direction (shared flow, log_threshold): the layer flow
    # models every layer moved by whole cells so that the shower axis sits at the window
    # centre, and is moved back onto the detector grid when generated
    # (:mod:`caloforge.models.axis_frame`).  Off: the fixed detector grid.
    axis_frame: bool = False
    # Shared layer flow only: each layer's context also holds the shower's age there, the
    # log energy fractions deposited before and after the layer (from the sampled layer
    # energies).  A layer's width follows how far the shower has developed, which its own
    # energy and the embedding of the previous images do not tell the flow.
    context_age: bool = False
    # Shared layer flow on log_threshold features only: the energy flow also draws each
    # layer's number of hits (log(1 + n + u), u uniform: dequantised counts), jointly with
    # the layer energies, and each layer's context holds its drawn count.  Without it the
    # flow sets the number of hits only through its leak across the gap between empty and
    # hit cells (pions: 234 drawn per shower against 332 simulated), and the occupancy
    # cuts make up the rest with empty-mode cells anywhere in the layer.
    context_hits: bool = False
    # ... and read out in each layer exactly the number of hits that the energy flow drew
    # (the cells furthest above their cuts; the calibration tables are fitted the same
    # way): the layer flow follows the drawn count (correlation ~0.9) but draws too few.
    readout_drawn_hits: bool = False
    # ... with each count scaled by s ** this (rounded), s the factor by which the
    # response table rescales the shower's layer energies: 1 keeps each layer's mean hit
    # energy (energy / count) the energy flow's, which software compensation reads (the
    # response table otherwise moves the energies of showers with a high or low
    # response and not their counts).  0 = the drawn counts as they are.
    readout_count_exponent: float = 0.0

    def validate(self) -> None:
        super().validate()
        positive(self, "transforms", "energy_transforms", "energy_bins", "alpha", "lr",
                 "energy_eps", "lr_decay")
        if self.bins < 0 or self.bins == 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'bins' must be 0 (affine) or >= 2")
        if self.context_layers < 0 or self.context_embedding < 0 or self.dequantize < 0:
            from caloforge.errors import ConfigError
            raise ConfigError("context_layers, context_embedding and dequantize must be >= 0")
        if self.rescue_axis_scale < 0:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'rescue_axis_scale' must be >= 0")
        if self.context_age and not self.shared_layer_flow:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'context_age' needs shared_layer_flow = true")
        if self.context_hits and not (self.shared_layer_flow
                                      and self.cell_feature == "log_threshold"):
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'context_hits' needs shared_layer_flow = true and "
                              "cell_feature = log_threshold (e.g. preset 'compact')")
        if self.readout_drawn_hits and not self.context_hits:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'readout_drawn_hits' needs the drawn hit counts: "
                              "set 'context_hits: true'")
        if self.readout_count_exponent < 0 or (self.readout_count_exponent
                                               and not self.readout_drawn_hits):
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'readout_count_exponent' must be >= 0 and needs "
                              "'readout_drawn_hits: true'")
        if self.lean_affine and (self.bins or not self.shared_layer_flow):
            from caloforge.errors import ConfigError
            raise ConfigError("lean_affine needs bins = 0 and shared_layer_flow = true")
        if self.cell_feature not in ("logit_fraction", "log_threshold"):
            from caloforge.errors import ConfigError
            raise ConfigError(f"config key 'cell_feature' must be logit_fraction or "
                              f"log_threshold, got {self.cell_feature!r}")
        positive(self, "zero_width")
        if self.calibration_quantiles < 0 or self.calibration_quantiles == 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_quantiles' must be 0 or >= 2")
        if self.calibration_showers < 0:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_showers' must be >= 0")
        if self.calibration_core_divisions < 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_core_divisions' must be >= 1")
        if self.calibration_hit_energy_bins < 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_hit_energy_bins' must be >= 1")
        if self.calibration_response_bins < 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_response_bins' must be >= 1")
        if self.calibration_core_window < -1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_core_window' must be -1 (rings around "
                              "the axis) or a number of layers >= 0")
        if self.calibration_layer_energy_bins < 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_layer_energy_bins' must be >= 1")
        if self.calibration_hit_refine < 0:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_hit_refine' must be >= 0 (passes)")
        if self.calibration_response_bins > 1 and not self.calibration_energy_bins:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_response_bins' > 1 needs the "
                              "response table (calibration_energy_bins > 0)")
        if self.calibration_theta_bins < 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_theta_bins' must be >= 1")
        if self.calibration_layer_moments < 0 or self.calibration_layer_moments == 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_layer_moments' must be 0 (off) or "
                              ">= 2 quantile knots")
        if self.calibration_moment_copula and not self.calibration_layer_moments:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_moment_copula' needs the maps it "
                              "acts in: set 'calibration_layer_moments' (e.g. 33)")
        if min(self.calibration_moment_theta_bins, self.calibration_moment_energy_bins,
               self.calibration_moment_layer_bins, self.calibration_moment_passes) < 1:
            from caloforge.errors import ConfigError
            raise ConfigError("config keys 'calibration_moment_theta_bins', "
                              "'calibration_moment_energy_bins', "
                              "'calibration_moment_layer_bins' and "
                              "'calibration_moment_passes' must be >= 1")
        if not 0.0 < self.calibration_moment_min_weight < 1.0:
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'calibration_moment_min_weight' must be in (0, 1), "
                              f"got {self.calibration_moment_min_weight}")
        if self.axis_frame and not (self.shared_layer_flow
                                    and self.cell_feature == "log_threshold"):
            from caloforge.errors import ConfigError
            raise ConfigError("config key 'axis_frame' needs shared_layer_flow = true and "
                              "cell_feature = log_threshold (e.g. preset 'compact')")


@register("l2lflows")
class L2LFlows(L2LCalibration, L2LGeneration, GenerativeModel):
    """Per-layer conditional spline flows plus a layer-energy flow."""

    Config = L2LFlowsConfig
    condition_inputs = ("theta", "phi")
    presets = {
        # Affine couplings: about 10x faster sampling than splines on ILD ECAL, but their
        # per-cell densities are too simple for the bimodal empty/hit cell spectrum.
        "fast": {"bins": 0, "hidden": [64], "context_embedding": 32},
        "tiny": {"context_embedding": 16, "transforms": 2, "bins": 4, "hidden": [32],
                 "energy_transforms": 2, "energy_bins": 4, "energy_hidden": [32],
                 "lr": 3e-3},
        # The shipped CPU default: one shared affine layer flow on threshold-relative log
        # energies (a few hundred thousand weights, a few ms per 30x30x30 shower on CPU).
        # Trained on several directions it draws its layers in the axis frame, and its ring
        # tables follow the energy and the layer shares.
        "compact": {"shared_layer_flow": True, "cell_feature": "log_threshold", "bins": 0,
                    "lean_affine": True, "axis_frame": True,
                    "calibration_hit_energy_bins": 4, "calibration_layer_shares": True,
                    "rescue_empty_layers": True, "rescue_axis_scale": 2.5, "hidden": [96],
                    "context_embedding": 32,
                    "transforms": 6, "lr": 1e-3, "lr_decay": 0.05},
    }

    def __init__(self, config: L2LFlowsConfig, geometry: Geometry) -> None:
        super().__init__(config, geometry)
        c = config
        cells = list(geometry.cells_per_layer)
        self.cells = cells
        self.active = [k for k, n in enumerate(cells) if n > 0]
        self.modelled = [k for k in self.active if cells[k] >= 2]
        n_e = len(self.active)
        if n_e < 2:
            from caloforge.errors import GeometryError
            raise GeometryError(f"l2lflows needs at least two non-empty layers; "
                                f"{geometry.name!r} has {n_e}")
        self.energy_std = Standardize(n_e)
        # Largest fraction of the incident energy that each layer carries in the training
        # showers (fit_preprocessing): a sampled layer energy is capped there.  The energy
        # flow's tails otherwise gave 0.2 % of pion showers a layer with up to 130 times
        # that (one layer above the incident energy).  inf: no cap (folders saved before).
        self.register_buffer("layer_cap", torch.full((n_e,), math.inf))
        # context_hits: the layers' hit counts, drawn by the energy flow after the energies
        self.hits_std = Standardize(n_e) if c.context_hits else None
        n_c = self.n_conditions  # energy (+ direction): in the context of every flow
        self.energy_flow = spline_coupling_flow(n_e * (2 if c.context_hits else 1), n_c,
                                                c.energy_transforms, c.energy_bins,
                                                c.energy_hidden)
        self.voxel_std = Standardize(geometry.n_voxels, min_std=1e-2)  # logit units
        self.axis_cal: AxisCalibration | None = None  # direction-conditioned log_threshold
        self.layer_flows = nn.ModuleDict()
        self.context_nets = nn.ModuleDict()
        if c.cell_feature == "log_threshold":
            # per-cell cut on the log feature (finalize() calibrates it; 0 = threshold)
            self.register_buffer("cell_cut", torch.zeros(geometry.n_voxels))
            groups = calib.voxel_groups(geometry, c.calibration_cell_rings)
            self.register_buffer("voxel_group", groups, persistent=False)
            n_g, k = int(groups.max()) + 1, max(c.calibration_quantiles, 2)
            # identity maps until calibrated (equal knots in and out)
            knots = torch.linspace(0.0, 10.0, k).expand(n_g, k).clone()
            self.register_buffer("hit_q_gen", knots.clone())
            self.register_buffer("hit_q_ref", knots.clone())
            nb = max(c.calibration_energy_bins, 1)
            self.register_buffer("resp_log_e", torch.linspace(0.0, 1.0, nb))
            self.register_buffer("resp_mu_gen", torch.ones(nb))
            self.register_buffer("resp_mu_ref", torch.ones(nb))
            self.register_buffer("resp_k", torch.ones(nb))
            for key, on in (("calibration_layer_energy_bins > 1",
                             c.calibration_layer_energy_bins > 1),
                            ("calibration_core_window >= 0", c.calibration_core_window >= 0)):
                if on and not (self.takes_angles or c.calibration_axis_tables):
                    from caloforge.errors import ConfigError
                    raise ConfigError(f"config key '{key}' needs the axis tables "
                                      "(calibration_axis_tables: true, or a model "
                                      "conditioned on the direction)")
            if self.takes_angles or c.calibration_axis_tables:
                self.axis_cal = AxisCalibration(geometry, c.calibration_theta_bins
                                                if self.takes_angles else 1,
                                                c.calibration_cell_rings, k, nb,
                                                c.calibration_hit_energy_bins,
                                                c.calibration_layer_shares,
                                                c.calibration_core_divisions,
                                                c.calibration_response_bins,
                                                c.calibration_layer_energy_bins,
                                                c.calibration_core_window)
        # per-shower centre and width of every layer (fitted last in finalize)
        self.moments: LayerMoments | None = None
        if c.calibration_layer_moments:
            self.moments = LayerMoments(geometry, c.calibration_moment_theta_bins
                                        if self.takes_angles else 1,
                                        c.calibration_moment_energy_bins,
                                        c.calibration_layer_moments,
                                        n_layer_bins=c.calibration_moment_layer_bins,
                                        copula=c.calibration_moment_copula,
                                        passes=c.calibration_moment_passes,
                                        w_min=c.calibration_moment_min_weight)
        self.shared = bool(c.shared_layer_flow)
        self.frame: AxisFrame | None = None  # the axis frame, where the config asks for it
        if self.shared:
            self._build_shared(geometry)
            return
        for k in self.modelled:
            prev = self._previous(k)
            raw = sum(cells[j] for j in prev)
            if c.context_embedding and raw:
                self.context_nets[str(k)] = nn.Sequential(
                    nn.Linear(raw, c.context_embedding), nn.ELU())
                ctx = c.context_embedding + 1 + n_c
            else:
                ctx = raw + 1 + n_c
            self.layer_flows[str(k)] = spline_coupling_flow(cells[k], ctx, c.transforms, c.bins,
                                                            c.hidden)

    def _build_shared(self, geometry: Geometry) -> None:
        """One flow for all modelled layers; context = embedding of the previous
        ``context_layers`` layers (zero-padded in front), layer one-hot, layer energy,
        incident energy."""
        c = self.config
        sizes = {self.cells[k] for k in self.modelled}
        if len(sizes) != 1:
            from caloforge.errors import ConfigError
            raise ConfigError(f"shared_layer_flow needs layers of one cell count; geometry "
                              f"{geometry.name!r} has {sorted(sizes)}")
        self.n_cells = sizes.pop()
        self.n_mod = len(self.modelled)
        raw = c.context_layers * self.n_cells
        if raw and c.context_embedding:
            self.context_nets["shared"] = nn.Sequential(nn.Linear(raw, c.context_embedding),
                                                        nn.ELU())
            emb = c.context_embedding
        else:
            emb = raw
        self.register_buffer("layer_onehot", torch.eye(self.n_mod), persistent=False)
        ctx = emb + self.n_mod + 1 + self.n_conditions
        if c.axis_frame and self.takes_angles:
            self.frame = AxisFrame(geometry, self.modelled)
            ctx += 2  # where the axis crosses the layer within the central cell
        if c.context_age:
            ctx += 2  # energy fractions before and after the layer (_layer_extras)
        if c.context_hits:
            ctx += 1  # the layer's drawn hit count (_layer_extras)
        if c.lean_affine:
            self.layer_flows["shared"] = AffineCouplingFlow(
                self.n_cells, ctx, c.transforms, tuple(c.hidden))
        else:
            self.layer_flows["shared"] = spline_coupling_flow(
                self.n_cells, ctx, c.transforms, c.bins, c.hidden)
        # Column index of every modelled layer's cells in the voxel vector.
        idx = torch.cat([torch.arange(self._slice(k).start, self._slice(k).stop)
                         for k in self.modelled])
        self.register_buffer("mod_index", idx, persistent=False)
        self.register_buffer("mod_energy_index",
                             torch.tensor([self.active.index(k) for k in self.modelled]),
                             persistent=False)

    def _previous(self, k: int) -> list[int]:
        """Up to ``context_layers`` previous non-empty layers, nearest first."""
        prev = [j for j in self.active if j < k]
        return prev[::-1][:self.config.context_layers]

    def _slice(self, k: int) -> slice:
        off = self.geometry.layer_offsets
        return slice(int(off[k]), int(off[k + 1]))

    # ---- preprocessing ----------------------------------------------------------------------
    def _layer_energies(self, x: Tensor) -> Tensor:
        return torch.stack([x[:, self._slice(k)].sum(1) for k in self.active], 1)

    def _energy_features(self, el: Tensor, e_inc: Tensor) -> Tensor:
        return torch.log(el / e_inc[:, None] + self.config.energy_eps)

    def _hit_features(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        """log(1 + n + u) per active layer, n its read-out hits (``x``: thresholded), u
        uniform: a continuous feature that the energy flow can model."""
        n = torch.stack([(x[:, self._slice(k)] > 0).sum(1) for k in self.active], 1)
        return torch.log1p(n + torch.rand(n.shape, generator=gen, device=x.device))

    def _fractions(self, x: Tensor, el: Tensor, noise: Tensor | None = None) -> Tensor:
        """Cell energy / layer energy per layer, logit-transformed (B, n_voxels)."""
        a = self.config.alpha
        u = torch.zeros_like(x)
        for i, k in enumerate(self.active):
            s = self._slice(k)
            denom = el[:, i:i + 1]
            part = torch.where(denom > 0, x[:, s] / denom.clamp_min(1e-30),
                               torch.full_like(x[:, s], 1.0 / self.cells[k]))
            u[:, s] = part
        if noise is not None:
            u = u + noise
        u = u.clamp(0, 1)
        v = a + (1 - 2 * a) * u
        return torch.log(v) - torch.log1p(-v)

    @property
    def _log_thr(self) -> bool:
        return self.config.cell_feature == "log_threshold"

    def _threshold(self, x: Tensor) -> Tensor:
        """Cells below the readout threshold set to 0 (log_threshold mode only): the model
        learns what the detector reads out, and its layer energies are read-out sums."""
        if not self._log_thr:
            return x
        thr = self.geometry.readout_threshold_mev
        return torch.where(x >= thr, x, torch.zeros_like(x))

    def _log_features(self, x: Tensor, noise: Tensor) -> Tensor:
        """log(cell / threshold) for hits (>= 0); cells below threshold get
        ``zero_width * (noise / 4 - 1)`` (``noise`` standard normal), kept below 0."""
        thr = self.geometry.readout_threshold_mev
        hit = x >= thr
        w = self.config.zero_width
        return torch.where(hit, torch.log(x.clamp_min(thr) / thr),
                           (w * (0.25 * noise - 1.0)).clamp_max(-1e-3))

    def _cell_features(self, x: Tensor, el: Tensor, gen: torch.Generator | None) -> Tensor:
        if self._log_thr:
            noise = torch.randn(x.shape, generator=gen, device=x.device)
            return self._log_features(x, noise)
        noise = None
        if self.config.dequantize:
            noise = torch.rand(x.shape, generator=gen, device=x.device) * self.config.dequantize
        return self._fractions(x, el, noise)

    def fit_preprocessing(self, x: Tensor, e_inc: Tensor, angles: Tensor | None = None) -> None:
        super().fit_preprocessing(x, e_inc)
        if self._log_thr:
            x = torch.cat([self._threshold(x[i:i + 1000].float())
                           for i in range(0, len(x), 1000)])
        el = self._layer_energies(x.double()).float()
        self.energy_std.fit(self._energy_features(el, e_inc), e_inc)
        self.layer_cap.copy_((el / e_inc[:, None].to(el)).amax(0))
        if self.hits_std is not None:  # own stream: the cell features' fit below unchanged
            hit_gen = torch.Generator().manual_seed(1)
            self.hits_std.fit_chunks(self._hit_features(x[i:i + 1000], hit_gen)
                                     for i in range(0, len(x), 1000))
        # Fit on the same dequantised fractions that training sees: a cell that is always
        # empty would otherwise get a zero width and blow its noise up to huge values.
        gen = torch.Generator().manual_seed(0)
        if self.frame is not None and angles is not None:
            self._fit_frame_depths(x, angles)

        def chunks():  # bounded memory: 1000 showers at a time
            for i in range(0, len(x), 1000):
                xi = x[i:i + 1000].float()
                if self.frame is not None:
                    a = None if angles is None else angles[i:i + 1000]
                    xi = self._to_axis_frame(xi, self._axis_offsets(a, len(xi))[0])
                yield self._cell_features(xi, el[i:i + 1000], gen)

        self.voxel_std.fit_chunks(chunks())

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"flows": torch.optim.Adam(self.parameters(), self.config.lr)}

    def configure_schedulers(self, optimizers, total_steps):  # noqa: ANN001, ANN201
        gamma = self.config.lr_decay ** (1.0 / max(total_steps, 1))
        return {"flows": torch.optim.lr_scheduler.ExponentialLR(optimizers["flows"], gamma)}

    def _layer_images(self, y: Tensor) -> dict[int, Tensor]:
        """Each active layer's columns of ``y`` (views), by layer number."""
        return {k: y[:, self._slice(k)] for k in self.active}

    def _context(self, k: int, images: dict[int, Tensor], e_feat: Tensor, c: Tensor) -> Tensor:
        """Context of layer ``k``'s flow; ``images``: the (flow-space) image of every
        active layer before ``k`` by layer number."""
        i = self.active.index(k)
        prev = self._previous(k)
        parts = [images[j] for j in prev]
        ctx = [e_feat[:, i:i + 1], c]
        if parts:
            img = torch.cat(parts, 1)
            net = self.context_nets[str(k)] if str(k) in self.context_nets else None
            ctx.insert(0, net(img) if net is not None else img)
        return torch.cat(ctx, 1)

    # ---- training ---------------------------------------------------------------------------
    def training_step(self, batch: TrainBatch, phase: str, ctx: StepContext) -> dict[str, float]:
        x, e_inc = self._threshold(batch.x), batch.e_inc
        c = self.condition_features(e_inc, batch.angles)
        el = self._layer_energies(x)
        e_feat = self.energy_std(self._energy_features(el, e_inc), e_inc)
        h_feat = None if self.hits_std is None \
            else self.hits_std(self._hit_features(x, ctx.generator), e_inc)
        remainder = None
        if self.frame is not None:
            shift, remainder = self._axis_offsets(batch.angles, len(x))
            x = self._to_axis_frame(x, shift)
        extras = self._layer_extras(el, e_inc, remainder, h_feat)
        y = self.voxel_std(self._cell_features(x, el, ctx.generator), e_inc)
        # No autocast: spline log-densities and their Jacobians overflow in bf16/fp16, so
        # the flows train in float32 even when the loop enables mixed precision.
        drawn = e_feat if h_feat is None else torch.cat([e_feat, h_feat], 1)
        nll_e = -self.energy_flow(c).log_prob(drawn).mean() / drawn.shape[1]
        if self.shared:
            nll_l = self._shared_nll(y, el, e_feat, c, extras)
            loss = nll_e + nll_l
            ctx.step("flows", loss)
            return {"nll_energy": nll_e.item(), "nll_layers": nll_l.item()}
        nll_layers = []
        images = self._layer_images(y)
        for k in self.modelled:
            i = self.active.index(k)
            mask = (el[:, i] > 0).float()  # empty layers have no shape to learn
            lp = self.layer_flows[str(k)](self._context(k, images, e_feat, c)).log_prob(
                y[:, self._slice(k)])
            nll_layers.append(-(lp * mask).sum() / mask.sum().clamp_min(1) / self.cells[k])
        nll_l = torch.stack(nll_layers).mean() if nll_layers else torch.zeros((), device=x.device)
        loss = nll_e + nll_l
        ctx.step("flows", loss)
        return {"nll_energy": nll_e.item(), "nll_layers": nll_l.item()}

    def _layer_extras(self, el: Tensor, e_inc: Tensor, remainder: Tensor | None,
                      hits: Tensor | None = None) -> Tensor | None:
        """The per-layer end of the shared flow's context, ``(B, n_mod, .)``: the axis
        frame's sub-cell axis position (``remainder``), with ``context_age`` the log
        fractions of the incident energy deposited before and after each layer (``el``: the
        active layers' energies) and with ``context_hits`` the layer's standardised hit
        count feature (``hits``, per active layer)."""
        parts = [] if remainder is None else [remainder]
        if self.config.context_age:
            upto = el.cumsum(1)
            before = (upto - el).index_select(1, self.mod_energy_index)
            after = (upto[:, -1:] - upto).index_select(1, self.mod_energy_index)
            frac = torch.stack([before, after], 2) / e_inc[:, None, None]
            # log(1e-4) .. log(1) mapped to about -2 .. 2
            parts.append((torch.log(frac.clamp_min(0) + 1e-4) + 4.6) / 2.3)
        if hits is not None:
            parts.append(hits.index_select(1, self.mod_energy_index)[:, :, None])
        if len(parts) < 2:  # no copy on the batch-1 path
            return parts[0] if parts else None
        return torch.cat(parts, 2)

    def _shared_context_all(self, y: Tensor, e_feat: Tensor, c: Tensor,
                            extras: Tensor | None = None) -> Tensor:
        """Context of every modelled layer at once, ``(B * n_mod, ctx)`` (``extras``:
        the per-layer extras of :meth:`_layer_extras`, (B, n_mod, .))."""
        b, m, n, p = len(y), self.n_mod, self.n_cells, self.config.context_layers
        img = y[:, self.mod_index].view(b, m, n)
        parts = []
        if p:
            pad = torch.cat([img.new_zeros(b, p, n), img], 1)  # layer k sits at p + k
            # previous layers nearest first, as in the per-layer flows
            prev = torch.cat([pad[:, p - j:p - j + m] for j in range(1, p + 1)], 2)
            prev = prev.reshape(b * m, p * n)
            net = self.context_nets["shared"] if "shared" in self.context_nets else None
            parts.append(net(prev) if net is not None else prev)
        parts.append(self.layer_onehot.expand(b, m, m).reshape(b * m, m))
        parts.append(e_feat[:, self.mod_energy_index].reshape(b * m, 1))
        parts.append(c.repeat_interleave(m, 0))
        if extras is not None:
            parts.append(extras.reshape(b * m, -1))
        return torch.cat(parts, 1)

    def _shared_nll(self, y: Tensor, el: Tensor, e_feat: Tensor, c: Tensor,
                    extras: Tensor | None = None) -> Tensor:
        b, m, n = len(y), self.n_mod, self.n_cells
        ctx = self._shared_context_all(y, e_feat, c, extras)
        target = y[:, self.mod_index].view(b * m, n)
        flow = self.layer_flows["shared"]
        lp = flow.log_prob(target, ctx) if isinstance(flow, AffineCouplingFlow) \
            else flow(ctx).log_prob(target)
        mask = (el[:, self.mod_energy_index] > 0).float().reshape(-1)  # empty layers: no shape
        return -(lp * mask).sum() / mask.sum().clamp_min(1) / n

    def _shared_layer_context(self, i: int, images: dict[int, Tensor], e_feat: Tensor,
                              c: Tensor, extras: Tensor | None = None) -> Tensor:
        """Context of modelled layer number ``i`` during generation (``images``: the
        layers generated so far, by layer number; ``extras``: as in
        :meth:`_shared_context_all`)."""
        b, n, p = c.shape[0], self.n_cells, self.config.context_layers
        parts = []
        if p:
            prev = []
            for j in range(1, p + 1):
                if i - j >= 0:
                    prev.append(images[self.modelled[i - j]])
                else:
                    prev.append(c.new_zeros(b, n))
            prev = torch.cat(prev, 1)
            net = self.context_nets["shared"] if "shared" in self.context_nets else None
            parts.append(run_mlp(net, prev) if net is not None else prev)
        parts.append(self.layer_onehot[i].expand(b, self.n_mod))
        parts.append(e_feat[:, self.active.index(self.modelled[i])].unsqueeze(1))
        parts.append(c)
        if extras is not None:
            parts.append(extras[:, i])
        return torch.cat(parts, 1)

    def _axis_offsets(self, angles: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        """Axis frame: whole-cell shift and remainder of every modelled layer (B, m, 2)."""
        if angles is None:
            angles = self.layer_onehot.new_zeros(n, 2)
        return self.frame.offsets(angles, self._impact())

    def _fit_frame_depths(self, x: Tensor, angles: Tensor) -> None:
        """Where the axis frame crosses each layer, from the read-out showers ``x``."""
        sums = None
        for i in range(0, len(x), 1000):
            xi = x[i:i + 1000].float()
            part = self.frame.depth_sums(
                xi[:, self.mod_index].view(len(xi), self.n_mod, self.n_cells),
                angles[i:i + 1000], self._impact())
            sums = part if sums is None else (sums[0] + part[0], sums[1] + part[1])
        self.frame.fit_depths(*sums)
        self._sync_axis_depths()

    def _sync_axis_depths(self) -> None:
        """The axis calibration's rings go around the frame's line too: each modelled
        cell at its layer's fitted depth."""
        if self.frame is not None and self.moments is not None:
            self.moments.depth[torch.as_tensor(self.modelled)] = self.frame.depth.to(
                self.moments.depth)
        if self.frame is None or self.axis_cal is None:
            return
        z = self.axis_cal.cell_z
        z[self.mod_index] = self.frame.depth.repeat_interleave(self.n_cells).to(z)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001, ANN201
        if "layer_cap" not in state_dict:  # saved before the cap: none
            state_dict = {**state_dict, "layer_cap": self.layer_cap.clone()}
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._sync_axis_depths()
        return result

    def _to_axis_frame(self, x: Tensor, shift: Tensor) -> Tensor:
        """Showers ``x`` (B, n_voxels) with every modelled layer moved into the axis frame
        (cells from outside the window empty)."""
        b = len(x)
        moved = self.frame.move(x[:, self.mod_index].view(b, self.n_mod, self.n_cells), shift, 0.0)
        if len(self.mod_index) == x.shape[1]:
            return moved.reshape(b, -1)
        out = x.clone()
        out[:, self.mod_index] = moved.reshape(b, -1)
        return out

    # ---- generation ------------------------------------------------------------------------
    def _sample_flow(self, flow: Flow, context: Tensor, features: int,
                     generator: Source) -> Tensor:
        z = randn(generator, len(context), features, device=context.device)
        return sample_flow(flow, context, z)

    def generate(self, e_inc: Tensor, noise: ShowerNoise,
                 conditions: Conditions | None = None) -> Tensor:
        # inference_mode costs less per operation than no_grad (same numbers); a trace
        # (the exporters) records the plain operations
        mode = contextlib.nullcontext() if torch.jit.is_tracing() else torch.inference_mode()
        with mode:
            return self._generate(e_inc, noise,
                                  angles=self.angle_tensor(conditions, len(e_inc)))[0]

    def _core_weights(self, layer_feats: list[Tensor], cols: Tensor, b: int) -> Tensor:
        """(B, voxels) centroid weights of the drawn features of the modelled layers
        (:meth:`AxisCalibration.core_weights`; 0 elsewhere)."""
        f = torch.cat([f for k, f in zip(self.active, layer_feats) if k in self.modelled], 1)
        w = self.axis_cal.core_weights(f)
        if len(cols) == self.geometry.n_voxels:
            return w
        return w.new_zeros(b, self.geometry.n_voxels).index_copy(1, cols, w)

    def _geometry_layers(self, el: Tensor) -> Tensor:
        """(B, layers of the geometry) from per-active-layer values ``el`` (0 elsewhere)."""
        if len(self.active) == self.geometry.n_layers:
            return el
        out = el.new_zeros(el.shape[0], self.geometry.n_layers)
        return out.index_copy(1, torch.as_tensor(self.active, device=el.device), el)

    def _generate(self, e_inc: Tensor, generator: Source, calibrated: bool = True,
                  angles: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Voxel energies (MeV) and, in log_threshold mode, the raw log features."""
        c = self.condition_features(e_inc, angles)
        n_e = len(self.active)
        n_draw = n_e * (1 if self.hits_std is None else 2)  # context_hits: + hit counts
        if isinstance(generator, ShowerNoise):  # all normals of a shower in one draw
            generator.reserve(n_draw + sum(self.cells[k] for k in self.modelled))
        e_feat = self._sample_flow(self.energy_flow, c, n_draw, generator)
        e_feat = e_feat.clamp(-10, 10)  # guard against rare outliers of the flow's tails
        h_feat = None
        if self.hits_std is not None:
            e_feat, h_feat = e_feat[:, :n_e], e_feat[:, n_e:]
        el = (torch.exp(self.energy_std.inverse(e_feat, e_inc)) - self.config.energy_eps) \
            .clamp_min(0) * e_inc[:, None]
        el = torch.minimum(el, self.layer_cap * e_inc[:, None])
        scale_counts = calibrated and bool(self.config.readout_count_exponent)
        drawn_sum = el.sum(1, keepdim=True) if scale_counts else None  # before the table
        axis = self.axis_cal if calibrated and self.axis_cal is not None \
            and self.axis_cal.is_fitted else None
        if axis is not None:
            axis.impact = self._impact()
            if angles is None:
                angles = c.new_zeros(len(e_inc), 2)
            if self.config.calibration_energy_bins:
                el = axis.calibrate_response(el, e_inc, angles[:, 0])
        elif calibrated and self._log_thr and self.config.calibration_energy_bins:
            el = calib.calibrate_response(el, e_inc, self.resp_log_e, self.resp_mu_gen,
                                          self.resp_mu_ref, self.resp_k)
        response_factor = None  # readout_count_exponent: what the response table did
        if scale_counts:
            response_factor = el.sum(1, keepdim=True) / drawn_sum.clamp_min(1e-30)
        # Each layer is generated into its own tensor and the voxel vector is one
        # concatenation at the end: writing layers into slices of a preallocated tensor
        # would export as one ONNX ScatterND per layer (issue 12), copying the whole vector.
        b = c.shape[0]
        back = remainder = None
        if self.frame is not None:  # where each layer's cells go back on the detector grid
            shift, remainder = self._axis_offsets(angles, b)
            back = self.frame.index(-shift)
        images: dict[int, Tensor] = {}  # flow-space image of each layer generated so far
        layers: list[Tensor] = []  # cell energies (MeV) of each active layer, in order
        layer_feats: list[Tensor] = []  # log_threshold: raw log features of each layer
        a = self.config.alpha
        drawn = mod_feats = None
        # without gradients, not traced (the exporters: the plain loop below)
        extras = self._layer_extras(el, e_inc, remainder, h_feat) if self.shared else None
        drawn_hits = None  # readout_drawn_hits: each modelled layer's number of hits
        if calibrated and self.config.readout_drawn_hits:
            n = (torch.exp(self.hits_std.inverse(h_feat, e_inc)) - 1.0).floor()  # ONNX: no expm1
            if response_factor is not None:
                n = torch.floor(n * response_factor ** self.config.readout_count_exponent
                                + 0.5)
            drawn_hits = n.index_select(1, self.mod_energy_index).clamp(0, self.n_cells)
        if self.shared and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            drawn = self._draw_shared(e_feat, c, extras, generator)
            if self._log_thr:  # element-wise: many layers at once, the same values
                mod_feats = self._log_features_of(drawn, back)
        for i, k in enumerate(self.active):
            s = self._slice(k)
            if k in self.modelled:
                j = self.modelled.index(k)
                if mod_feats is not None:
                    layer_feats.append(mod_feats[j])
                    layers.append(None)  # read out below, all modelled layers at once
                    continue
                if drawn is not None:
                    y_k = drawn[:, j]
                else:
                    if self.shared:
                        ctx = self._shared_layer_context(j, images, e_feat, c, extras)
                        flow = self.layer_flows["shared"]
                    else:
                        ctx = self._context(k, images, e_feat, c)
                        flow = self.layer_flows[str(k)]
                    y_k = self._sample_flow(flow, ctx, self.cells[k], generator).clamp(-20, 20)
                    images[k] = y_k
                if self._log_thr:
                    f_k = y_k * self.voxel_std.std[s] + self.voxel_std.mean[s]
                    if back is not None:  # back onto the detector grid; outside: empty
                        f_k = self.frame.take(f_k[:, None], (back[0][:, j:j + 1],
                                                             back[1][:, j:j + 1]),
                                              -3.0 * self.config.zero_width)[:, 0]
                    layer_feats.append(f_k)
                    layers.append(None)  # read out below, all modelled layers at once
                    continue
                logit = y_k * self.voxel_std.std[s] + self.voxel_std.mean[s]
                u = ((torch.sigmoid(logit) - a) / (1 - 2 * a)).clamp_min(0)
                # Drop the dequantisation floor, then rescale to the sampled layer energy.
                u = torch.where(u > self.config.dequantize, u, torch.zeros_like(u))
                u = u / u.sum(1, keepdim=True).clamp_min(1e-30)
            else:
                images[k] = c.new_zeros(b, self.cells[k])
                if self._log_thr:
                    layer_feats.append(c.new_zeros(b, self.cells[k]))
                u = torch.ones(b, self.cells[k], device=c.device)
            layers.append(u * el[:, i:i + 1])
        if self._log_thr:
            axis_groups = axis_distance = None
            if axis is not None:  # one call for all cells (element-wise: the same values)
                cols = self._modelled_columns()[0]
                centre = None
                if axis.core_window >= 0:  # rings around the drawn core
                    centre = axis.core_centres(self._core_weights(layer_feats, cols, b),
                                               angles)
                axis_groups = axis.groups(angles, slice(None), self._geometry_layers(el)
                                          if axis.n_le > 1 else None, centre)
                if self.config.rescue_empty_layers and self.config.rescue_axis_scale > 0:
                    axis_distance = axis.axis_distance(angles, slice(None))
                    if len(cols) != axis_distance.shape[1]:
                        axis_distance = axis_distance.index_select(1, cols)
                if len(cols) != axis_groups.shape[1]:
                    axis_groups = axis_groups.index_select(1, cols)
            read = iter(self._read_out([f for k, f in zip(self.active, layer_feats)
                                        if k in self.modelled], el, calibrated, axis_groups,
                                       None if axis is None else axis.energy_offsets(
                                           e_inc, el.sum(1) / e_inc if axis.n_r > 1 else None,
                                           angles[:, 0]),
                                       axis_distance, drawn_hits))
            layers = [next(read) if t is None else t for t in layers]
        x = torch.cat(layers, 1)
        if calibrated and self.moments is not None and self.moments.is_fitted:
            self.moments.impact = self._impact()
            x = self.moments(x, e_inc, angles if angles is not None else c.new_zeros(b, 2))
        feats = torch.cat(layer_feats, 1) if self._log_thr else None
        return x, feats
