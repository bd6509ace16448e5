"""Generation helpers of :class:`~caloforge.models.l2lflows.L2LFlows`, kept apart so that
each module reads in one sitting: drawing all layers of the shared layer flow with few
operations per layer (:meth:`L2LGeneration._draw_shared`), and the log_threshold read-out
(cuts, hit-energy maps and the rescale to the sampled layer energies).  A mixin: the
methods use the model's modules and buffers."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caloforge.models import calibration as calib
from caloforge.models.flows import AffineCouplingFlow, CouplingInputs, run_mlp, sample_flow
from caloforge.models.noise import ShowerNoise, Source, randn

# Values per batched read-out (see L2LGeneration._read_out): 2^21 floats, 8 MB temporaries.
READ_OUT_ELEMENTS = 1 << 21


class L2LGeneration:
    """Drawing and read-out methods of :class:`~caloforge.models.l2lflows.L2LFlows`."""

    def _draw_shared(self, e_feat: Tensor, c: Tensor, extras: Tensor | None,
                     generator: Source) -> Tensor:
        """Flow-space images ``(B, n_mod, n_cells)`` of all modelled layers from the shared
        flow, each given those before it in the context of :meth:`_shared_layer_context`
        (the same values, with fewer operations per layer): the layers are drawn into one
        tensor behind ``context_layers`` empty ones, so that a layer's previous images,
        nearest first, are one copy (``flip``), and the parts of the context that do not depend
        on the images are built for all layers at once."""
        b, m, n, p = c.shape[0], self.n_mod, self.n_cells, self.config.context_layers
        drawn = c.new_empty(b, (p + m) * n)  # layer i at block p + i
        drawn[:, :p * n] = 0.0
        parts = [self.layer_onehot[:, None].expand(m, b, m),
                 e_feat.index_select(1, self.mod_energy_index).t()[:, :, None],
                 c.expand(m, *c.shape)]
        if extras is not None:
            parts.append(extras.transpose(0, 1))
        fixed = torch.cat(parts, 2).unbind(0)  # per layer (B, .)
        embed = self._context_embedding()
        flow = self.layer_flows["shared"]
        inputs = None  # the lean flow's net inputs, the context written straight into them
        if isinstance(flow, AffineCouplingFlow):
            inputs = CouplingInputs(flow, b, c)
        # A shower's normals are handed out in order: all layers' in one draw, the same
        # numbers (a plain generator, while training, draws per layer as before).
        noise = generator.randn(m, n) if isinstance(generator, ShowerNoise) else None
        for i in range(m):
            parts = [fixed[i]]
            if p:  # the previous layers, nearest first
                prev = drawn[:, i * n:(i + p) * n].view(b, p, n).flip(1).view(b, p * n)
                parts.insert(0, embed(prev) if embed is not None else prev)
            z = noise[:, i] if noise is not None else randn(generator, b, n, device=c.device)
            if inputs is not None:
                torch.cat(parts, 1, out=inputs.context)
                y = flow.sample_with(z, inputs)
            else:
                y = sample_flow(flow, torch.cat(parts, 1), z)
            torch.clamp(y, -20, 20, out=drawn[:, (p + i) * n:(p + i + 1) * n])
        return drawn[:, p * n:].view(b, m, n)

    def _context_embedding(self) -> Callable[[Tensor], Tensor] | None:
        """The shared context net as a function (without gradients): its linear layer
        and ELU as the functions the modules call, looked up once per generation."""
        if "shared" not in self.context_nets:
            return None
        net = self.context_nets["shared"]
        if len(net) != 2 or type(net[0]) is not nn.Linear or type(net[1]) is not nn.ELU:
            return lambda h: run_mlp(net, h)
        weight, bias, alpha = net[0].weight, net[0].bias, net[1].alpha
        return lambda h: F.elu(F.linear(h, weight, bias), alpha)

    def _log_features_of(self, drawn: Tensor, back: tuple[Tensor, Tensor] | None
                         ) -> list[Tensor]:
        """log_threshold: the raw log features (B, n_cells) of each modelled layer from
        the flow-space images ``drawn`` (B, n_mod, n_cells), moved back onto the
        detector grid along ``back`` (axis frame; cells from outside it empty).  Groups
        of layers of at most ``READ_OUT_ELEMENTS`` values (all layers at batch 1): at
        batch 1000 whole-shower temporaries cost more in page faults than they save."""
        b, m, n = drawn.shape
        std = self.voxel_std.std[self.mod_index].view(m, n)
        mean = self.voxel_std.mean[self.mod_index].view(m, n)
        step = max(1, READ_OUT_ELEMENTS // max(b * n, 1))
        out: list[Tensor] = []
        for j in range(0, m, step):
            f = drawn[:, j:j + step] * std[j:j + step] + mean[j:j + step]
            if back is not None:
                f = self.frame.take(f, (back[0][:, j:j + step], back[1][:, j:j + step]),
                                    -3.0 * self.config.zero_width)
            out += f.unbind(1)
        return out

    def _modelled_columns(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Column in the voxel vector and calibration group of every modelled cell;
        column in the layer energies of every modelled layer, and the modelled layer
        (0, 1, ...) of every modelled cell.  Built once per device."""
        dev = self.voxel_group.device
        cached = self.__dict__.get("_modelled_columns_cache")
        if cached is None or cached[0] != dev:
            with torch.inference_mode(False):  # plain tensors, usable with autograd on
                cols = torch.cat([torch.arange(self._slice(k).start, self._slice(k).stop)
                                  for k in self.modelled]).to(dev)
                energy_cols = torch.tensor([self.active.index(k) for k in self.modelled],
                                           device=dev)
                layer_of = torch.repeat_interleave(
                    torch.arange(len(self.modelled), device=dev),
                    torch.tensor([self.cells[k] for k in self.modelled], device=dev))
                groups = self.voxel_group.index_select(0, cols)
            cached = (dev, (cols, groups, energy_cols, layer_of))
            self.__dict__["_modelled_columns_cache"] = cached
        return cached[1]

    def _mapped_hits(self, f: Tensor, cut: Tensor, groups: Tensor) -> Tensor:
        """The calibrated hit features of ``f`` (B, cells) as :func:`calib.map_hits`
        computes them, as a (B, cells) view of a (cells, B) tensor (its layout).  Cells
        below their ``cut`` are not read out and their values are left at 0: when few
        cells are hit (batch 1) only the hits are mapped, with the knots of their group
        (the same operations per cell); a trace (the exporters) maps every cell."""
        h = (f - cut).clamp_min(0)
        hit = f >= cut
        if torch.jit.is_tracing() or int(hit.sum()) > f.shape[1]:
            return calib.map_hits(h, groups, self.hit_q_gen, self.hit_q_ref)
        rows, cols = hit.nonzero(as_tuple=True)
        grp = groups.index_select(0, cols)
        mapped = calib.map_cell_hits(h[rows, cols][None], self.hit_q_gen.index_select(0, grp),
                                     self.hit_q_ref.index_select(0, grp))[0]
        g = f.new_zeros(f.shape[1], f.shape[0])
        g[cols, rows] = mapped
        return g.t()

    def _read_out(self, feats: list[Tensor], el: Tensor, calibrated: bool,
                  axis_groups: Tensor | None = None,
                  axis_energy: tuple[Tensor, Tensor, Tensor] | None = None,
                  axis_distance: Tensor | None = None,
                  drawn_hits: Tensor | None = None) -> list[Tensor]:
        """:meth:`_read_out_layers` on groups of consecutive layers of at most
        ``READ_OUT_ELEMENTS`` values (one layer per group when traced for export): one
        group at batch 1, a few layers each at batch 1000, where whole-shower temporaries
        (100 MB each) cost more in page faults than the batching saves.  Every layer is
        read out with the same operations either way."""
        out: list[Tensor] = []
        first, col, batch = 0, 0, feats[0].shape[0] if feats else 0
        # A traced graph (the exporters) runs at any batch size: one layer per group,
        # whatever the batch it was traced with.
        limit = 0 if torch.jit.is_tracing() else READ_OUT_ELEMENTS
        while first < len(feats):
            n, width = 1, feats[first].shape[1]
            while first + n < len(feats) and \
                    (width + feats[first + n].shape[1]) * batch <= limit:
                width += feats[first + n].shape[1]
                n += 1
            part = None if axis_groups is None else axis_groups[:, col:col + width]
            dist = None if axis_distance is None else axis_distance[:, col:col + width]
            hits = None if drawn_hits is None else drawn_hits[:, first:first + n]
            out += self._read_out_layers(feats[first:first + n], el, calibrated, part,
                                         first, col, axis_energy, dist, hits)
            first, col = first + n, col + width
        return out

    def _read_out_layers(self, feats: list[Tensor], el: Tensor, calibrated: bool,
                         axis_groups: Tensor | None, first: int, col: int,
                         axis_energy: tuple[Tensor, Tensor, Tensor] | None = None,
                         axis_distance: Tensor | None = None,
                         drawn_hits: Tensor | None = None) -> list[Tensor]:
        """log_threshold mode: the cell energies (MeV) of modelled layers ``first``, ...
        (their cells start at column ``col`` of the modelled cells) from their
        log features (``feats``: (B, cells) per modelled layer), cut, hit-energy
        calibrated and rescaled to its sampled energy (``el``: (B, active layers));
        ``axis_groups`` (B, modelled cells): each cell's axis-calibration group, for
        direction-conditioned models (``axis_energy``: where each shower's energy falls
        between the calibration's energy bins; ``axis_distance`` (B, modelled cells): each
        cell's distance from its shower's axis in pitches, for ``rescue_axis_scale``;
        ``drawn_hits`` (B, layers): the number of hits to read out in each layer,
        ``readout_drawn_hits``).

        One layer's operations, run on all layers at once where they round exactly
        (element-wise arithmetic, comparisons, copies: the same bits in any shape); exp
        and the sums stay per layer, on tensors laid out as before, since their
        vectorised loops round by position (a model generates bit-identical showers).
        """
        thr = self.geometry.readout_threshold_mev
        cols, groups, energy_cols, layer_of = self._modelled_columns()
        end = col + sum(x.shape[1] for x in feats)
        cols, groups, layer_of = cols[col:end], groups[col:end], layer_of[col:end] - first
        energy_cols = energy_cols[first:first + len(feats)]
        cut = self.cell_cut.index_select(0, cols)
        f = torch.cat(feats, 1)
        # Below the cut (0 = the readout threshold): not read out.
        widths = [x.shape[1] for x in feats]
        if drawn_hits is not None:  # each layer's cells moved so that n are above the cut
            cells_cut = cut if axis_groups is None \
                else self.axis_cal.cuts(axis_groups, axis_energy)
            f = f - _count_shift(f - cells_cut, drawn_hits, widths).index_select(1, layer_of)
        if axis_groups is not None:  # direction-conditioned: per shower and cell
            g, cut = self.axis_cal.read_out(f, axis_groups, axis_energy)
            g_layers = g.clamp(0, 20).split(widths, 1)
        elif calibrated:  # exp per layer in the (cells, B) layout of map_hits
            g_layers = self._mapped_hits(f, cut, groups).clamp(0, 20).split(widths, 1)
        else:
            cut, g_layers = torch.zeros_like(cut), [x.clamp(0, 20) for x in feats]
        e = torch.cat([torch.exp(part) for part in g_layers], 1)
        cell = torch.where(f >= cut, thr * e, torch.zeros_like(f))
        target = el.index_select(1, energy_cols)
        if self.config.rescue_empty_layers:
            margin = f - cut
            if axis_distance is not None:  # prefer cells near the axis
                margin = margin - 0.5 * (axis_distance / self.config.rescue_axis_scale) ** 2
            cell = self._rescue_empty_layers(cell, margin, target, widths)
        if self.config.thin_starved_layers:
            cell = self._thin_starved_layers(cell, target, widths)
        # Rescale the hits to the sampled layer energy (the energy flow knows the
        # correlations between layers, which fix the resolution).  Scale only the energy
        # above threshold where the layer energy allows it, so that rescaling keeps every
        # hit (a plain factor < 1 would push the many hits near threshold below it and
        # lose them).
        hit = cell > 0
        parts = cell.split(widths, 1)
        n_hit = torch.cat([h.sum(1, keepdim=True) for h in hit.split(widths, 1)], 1)
        tot = torch.cat([p.sum(1, keepdim=True) for p in parts], 1)
        above = tot - n_hit * thr
        ok = (target > n_hit * thr) & (above > 0)
        s_above = (target - n_hit * thr) / above.clamp_min(1e-30)
        scale = target / tot.clamp_min(1e-30)
        # per-layer factors spread over each layer's cells
        s_above, scale, ok, filled = (v.index_select(1, layer_of)
                                      for v in (s_above, scale, ok, tot > 0))
        shifted = torch.where(hit, thr + (cell - thr) * s_above, cell)
        out = torch.where(ok, shifted, torch.where(filled, cell * scale, torch.zeros_like(cell)))
        return list(out.split(widths, 1))

    def _thin_starved_layers(self, cell: Tensor, target: Tensor, widths: list[int]) -> Tensor:
        """Cell energies ``cell`` (B, cells of the layers) where every layer whose sampled
        energy ``target`` (B, layers; MeV, at least the threshold) cannot give each of its
        drawn hits the readout threshold keeps only its floor(target / threshold) hottest
        hits (ties: the first cell); the rescaling that follows shares the energy among
        them.  Without it every hit is scaled down and those that fall below the threshold
        are not read out: hits near the threshold, and their energy, go missing."""
        thr = self.geometry.readout_threshold_mev
        if len(set(widths)) == 1:  # one (B * layers, cells) view
            b, n = cell.shape[0], widths[0]
            return _thin_rows(cell.reshape(-1, n), target.reshape(-1), thr).reshape(b, -1)
        return torch.cat([_thin_rows(c, target[:, i], thr)
                          for i, c in enumerate(cell.split(widths, 1))], 1)

    def _rescue_empty_layers(self, cell: Tensor, margin: Tensor, target: Tensor,
                             widths: list[int]) -> Tensor:
        """Cell energies ``cell`` (B, cells of the layers) where every layer that the
        energy flow gave at least the readout threshold (``target``: (B, layers), MeV)
        but whose drawn cells all fell below their cut gets one hit: the cell closest to
        its cut (``margin`` = feature - cut) carries the layer energy.  Without it such a
        layer is read out empty and its energy lost: the first layers of photon showers,
        where a few hits are common, came out empty in 36 % of the showers against
        24 % in the simulation."""
        thr = self.geometry.readout_threshold_mev
        if len(set(widths)) == 1:  # one (B, layers, cells) view: a few operations for all
            b, n = cell.shape[0], widths[0]
            c3, m3 = cell.view(b, -1, n), margin.view(b, -1, n)
            empty = (c3 <= 0).all(2) & (target >= thr)  # (B, layers)
            best = F.one_hot(m3.argmax(2), n).bool()
            rescued = torch.where(best & empty[..., None], target[..., None], c3)
            return rescued.reshape(b, -1)
        parts = []
        for i, (c, m) in enumerate(zip(cell.split(widths, 1), margin.split(widths, 1))):
            empty = (c <= 0).all(1, keepdim=True) & (target[:, i:i + 1] >= thr)
            best = F.one_hot(m.argmax(1), c.shape[1]).bool()
            parts.append(torch.where(best & empty, target[:, i:i + 1], c))
        return torch.cat(parts, 1)


def _count_shift(margin: Tensor, count: Tensor, widths: list[int]) -> Tensor:
    """(B, layers): per layer the shift that leaves exactly ``count`` (B, layers) of its
    cells' ``margin`` (B, cells of the layers; feature - cut) at or above 0: half way
    between the count-th and the next largest margin (so that float rounding of the
    shifted feature against the cut cannot move a cell across; count 0: above the
    largest margin, count = all cells: below the smallest).  Sorted row by row:
    independent of the batch."""
    shifts = []
    for i, m in enumerate(margin.split(widths, 1)):
        top = torch.sort(m, dim=1, descending=True)[0]
        top = torch.cat([top[:, :1] + 2.0, top, top[:, -1:] - 2.0], 1)
        k = count[:, i:i + 1].long().clamp(0, m.shape[1])
        shifts.append(0.5 * (top.gather(1, k) + top.gather(1, k + 1)))
    return torch.cat(shifts, 1)


def _thin_rows(rows: Tensor, target: Tensor, thr: float) -> Tensor:
    """Rows (R, n) of cell energies with more hits than ``target`` (R,) allows at the
    threshold ``thr`` (and target >= thr): all but their floor(target / thr) largest cells
    set to 0.  Row by row (a sort per row), so the result does not depend on the batch;
    eagerly only the starved rows are sorted, a trace (the exporters) sorts every row."""
    n_hit = (rows > 0).sum(1)
    keep_n = torch.floor(target / thr)
    starved = (n_hit > keep_n) & (keep_n >= 1)
    if not torch.jit.is_tracing():
        idx = starved.nonzero()[:, 0]
        if len(idx) == 0:
            return rows
        rows = rows.clone()
        rows[idx] = _keep_largest(rows[idx], keep_n[idx])
        return rows
    return torch.where(starved[:, None], _keep_largest(rows, keep_n), rows)


def _keep_largest(rows: Tensor, keep_n: Tensor) -> Tensor:
    """Rows (R, n) with all but their ``keep_n`` (R,) largest values set to 0."""
    # stable: of equal values (hits exactly at the threshold) the first cell is kept.
    # ONNX exports no stable sort, but its TopK puts equal values in index order (the
    # operator's specification; torch's own topk does not).
    if torch.onnx.is_in_onnx_export():
        order = torch.topk(rows, rows.shape[1], dim=1)[1]
    else:
        order = torch.sort(rows, stable=True, dim=1, descending=True)[1]
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(rows.shape[1], device=rows.device).expand_as(order))
    return torch.where(rank < keep_n[:, None], rows, torch.zeros_like(rows))
