"""Post-training calibration of :class:`~caloforge.models.l2lflows.L2LFlows`
(``finalize``), kept apart so that each module reads in one sitting: the per-cell
tables of :mod:`caloforge.models.calibration` or the ring tables of
:mod:`caloforge.models.axis_calibration`, with their optional second passes on showers
read out with every table (occupancy cuts, response).  A mixin: the methods use the
model's modules, buffers and generation."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from caloforge.models import calibration as calib
from caloforge.models.axis_calibration_fit import readout_occupancy_scale, refine_hit_maps


class L2LCalibration:
    """``finalize`` of :class:`~caloforge.models.l2lflows.L2LFlows`."""

    @torch.no_grad()
    def finalize(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                 angles: Tensor | None = None) -> None:
        """The tables below (:meth:`_fit_tables`), then, where the config asks for them,
        the per-shower maps of the layers' centres and widths
        (:mod:`caloforge.models.layer_moments`) on showers generated with every table."""
        if self.moments is not None:  # identity while the other tables are fitted
            self.moments.reset()
        self._fit_tables(x, e_inc, generator, angles)
        n = min(self.config.calibration_showers, len(x))
        if self.moments is not None and n > 0:
            self.fit_layer_moments(x[:n], e_inc[:n], generator, angles)

    @torch.no_grad()
    def fit_layer_moments(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                          angles: Tensor | None = None) -> None:
        """Fit the layer-moment maps on training showers ``x`` against showers generated
        at their conditions with every other table (the maps off meanwhile)."""
        self.moments.reset()
        self.moments.impact = self._impact()
        if angles is None:
            angles = torch.zeros(len(x), 2)
        n, step = len(x), 500

        def reference() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            for i in range(0, n, step):
                yield x[i:i + step], e_inc[i:i + step], angles[i:i + step]

        def generated() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
            chunks = self._calibrated_chunks(e_inc, angles, n, generator)
            for i, showers in zip(range(0, n, step), chunks):
                yield showers, e_inc[i:i + step], angles[i:i + step]

        self.moments.fit(reference(), generated())

    def _fit_tables(self, x: Tensor, e_inc: Tensor, generator: torch.Generator,
                    angles: Tensor | None = None) -> None:
        """log_threshold: calibrate the per-cell cuts so that each cell's occupancy in
        generated showers equals that of the training showers ``x`` (same energies), then
        the hit-energy maps and the response (:mod:`caloforge.models.calibration`).
        Models conditioned on the direction fit the same tables per theta bin and per ring
        around each shower's axis (:mod:`caloforge.models.axis_calibration`)."""
        n = min(self.config.calibration_showers, len(x))
        if not self._log_thr or n == 0:
            return
        thr = self.geometry.readout_threshold_mev
        was_training = self.training
        self.eval()
        # Generate at the training energies, with the current cuts switched off.
        # chunks of 500 that end at n (x may hold more showers than the calibration uses)
        parts = [self._generate(e_inc[i:min(i + 500, n)].to(self.device), generator,
                                calibrated=False, angles=None if angles is None
                                else angles[i:min(i + 500, n)].to(self.device))
                 for i in range(0, n, 500)]
        feats = torch.cat([p[1].cpu() for p in parts])
        gen_r = torch.cat([p[0].sum(1).double().cpu() for p in parts]) / e_inc[:n].double().cpu()
        gen_le = None
        if self.axis_cal is not None and self.axis_cal.n_le > 1:
            # the sampled layer energies (every cell: the raw read-out is rescaled to
            # them), which generation bins; read out above the threshold, a layer with
            # more drawn hits than its energy carries would look empty
            gen_le = torch.cat([self.axis_cal.layer_energies(p[0], 0.0).cpu() for p in parts])
        del parts
        self.train(was_training)
        if self.axis_cal is not None and (angles is not None or not self.takes_angles):
            if angles is None:  # a model without angles: every shower at normal incidence
                angles = torch.zeros(len(x), 2)
            self.axis_cal.impact = self._impact()
            hit_maps = bool(self.config.calibration_quantiles)
            self.axis_cal.fit(x, e_inc, angles, feats, gen_r, thr, self.config.zero_width,
                              hit_maps=hit_maps, gen_layer_energy=gen_le)
            if self.config.calibration_occupancy_refine:
                scale = readout_occupancy_scale(
                    self.axis_cal, x, angles, self._calibrated_chunks(e_inc, angles, n, generator),
                    thr)
                self.axis_cal.fit(x, e_inc, angles, feats, gen_r, thr, self.config.zero_width,
                                  hit_maps=hit_maps, occupancy_scale=scale,
                                  gen_layer_energy=gen_le)
            refine_resp = bool(self.config.calibration_response_refine
                               and self.config.calibration_energy_bins)
            hit_passes = self.config.calibration_hit_refine if hit_maps else 0
            # each hit pass moves the read-out response a little: the response table is
            # refitted after each
            for k in range(max(hit_passes, int(refine_resp))):
                if k < hit_passes:
                    refine_hit_maps(self.axis_cal, x, e_inc, angles,
                                    self._calibrated_chunks(e_inc, angles, n, generator), thr)
                if refine_resp:
                    read_out = torch.cat([c.sum(1).double() for c in self._calibrated_chunks(
                        e_inc, angles, n, generator)]) / e_inc[:n].double().cpu()
                    self.axis_cal.refine_response(x, e_inc, angles, read_out, thr)
            return
        occ = calib.occupancy(x, thr)
        cut = calib.occupancy_cuts(occ, feats, self.config.zero_width)
        self.cell_cut.copy_(cut.to(self.cell_cut))
        if self.config.calibration_quantiles:
            q_gen, q_ref = calib.hit_quantile_maps(x, feats, cut, self.voxel_group.cpu(), thr,
                                                   self.hit_q_gen.cpu())
            self.hit_q_gen.copy_(q_gen.to(self.hit_q_gen))
            self.hit_q_ref.copy_(q_ref.to(self.hit_q_ref))
        if self.config.calibration_energy_bins:
            real_r = calib.read_out_ratio(x, e_inc, thr)
            table = calib.response_table(e_inc.cpu(), real_r, e_inc[:n].cpu(), gen_r,
                                         len(self.resp_log_e))
            if table is not None:
                for buf, val in zip((self.resp_log_e, self.resp_mu_ref, self.resp_mu_gen,
                                     self.resp_k), table):
                    buf.copy_(val.to(buf))

    def _calibrated_chunks(self, e_inc: Tensor, angles: Tensor, n: int,
                           generator: torch.Generator) -> Iterator[Tensor]:
        """Showers (on the CPU) generated with every table at the first ``n`` conditions,
        500 at a time: what the calibration's second passes compare with the training."""
        was_training = self.training
        self.eval()
        try:
            for i in range(0, n, 500):
                j = min(i + 500, n)
                a = angles[i:j].to(self.device) if self.takes_angles else None
                with torch.no_grad():  # also when called outside finalize
                    showers = self._generate(e_inc[i:j].to(self.device), generator,
                                             angles=a)[0].cpu()
                yield showers
        finally:
            self.train(was_training)

