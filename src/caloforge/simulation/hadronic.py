"""A documented model of charged-pion showers for the builtin engine.

Full hadronic physics is out of reach; this is a generational cascade in the spirit of
Groom's model of the hadronic cascade (D. E. Groom, "Energy flow in a hadronic
cascade: application to hadron calorimetry", NIM A 572 (2007) 633; PDG review
"Calorimetry", Sec. 36.4, eq. 36.6), with every charged particle transported by the
compiled Monte Carlo:

1. The incident pion is a MIP-like track (Bethe ionisation, delta rays, multiple
   scattering in the kernel) up to its first inelastic interaction, drawn from the
   nuclear interaction length lambda_I of the materials it crosses.
2. At an interaction of a hadron of energy E a target-fragmentation energy
   ``E_nuc ~ Gamma(2, nuclear_mev / 2)`` (capped at E) goes to nuclear break-up; the
   rest is shared (flat Dirichlet) among n ~ 1 + Poisson(multiplicity - 1) secondaries,
   each a pi0 with probability ``pi0_probability`` or a charged hadron otherwise (see
   the field comment for why it is below the isospin value 1/3), emitted with
   p_T ~ exponential of mean ``pt_mev`` around the parent direction.  pi0s decay into
   two photons that are transported by the EM Monte Carlo; charged pions above
   ``e0_mev`` are transported and interact again; below it their energy goes to
   nuclear break-up at the end of a short track.  Because each generation hands a fixed
   share of its energy to pi0s, the mean EM fraction follows Groom's power law
   f_em = 1 - (E / E0)^(m - 1) and fluctuates from shower to shower with the number of
   generations and the energy sharing.  The defaults reproduce m ~ 0.83 with
   E0 = 1 GeV, the values quoted by the PDG for pion showers (checked in the tests).
3. Nuclear break-up of an energy E_nuc: a fraction ``binding_fraction`` is invisible
   (nuclear binding, target recoil), ``neutron_fraction`` goes to MeV neutrons and the
   rest to spallation / evaporation protons with exponential kinetic energies of mean
   ``proton_mev``, tracked as heavy ionising particles (short, dense tracks near the
   vertex).  Neutrons travel an exponential distance of mean ``neutron_path_mm`` in a
   random direction and, with probability ``neutron_hit_probability``, leave one
   isolated recoil-proton deposit (exponential, mean ``neutron_hit_mev``) in the
   nearest active layer; the rest of their energy is invisible (capture, escape).

Charged secondaries softer than ``soft_secondary_mev`` are treated as knock-on nucleons
(their energy joins the break-up).  Scintillator deposits are Birks-quenched in the
kernel.  The break-up shares were tuned so that the invisible energy is ~25-30 % of the
pion energy (~35-40 % of the non-EM part, Wigmans, "Calorimetry", OUP 2000, ch. 2) and
e/pi ~ 1.2 in the AHCAL at 10-40 GeV, as measured by CALICE for the steel AHCAL
(Adloff et al., JINST 7 (2012) P09017).

The invisible energy makes the calorimeter non-compensating (e/h > 1), and the wide
p_T, low-energy hadrons and neutrons give the hadronic component its wide lateral
spread and long tail, while the pi0 sub-showers form the dense EM core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caloforge.simulation import kernels as K
from caloforge.simulation import libm

PI0_MASS_MEV = 134.9768


def _isotropic(n: int, rng: np.random.Generator) -> np.ndarray:
    ct = rng.uniform(-1.0, 1.0, n)
    ph = rng.uniform(0.0, 2 * np.pi, n)
    st = np.sqrt(1.0 - ct**2)
    return np.stack([st * libm.cos(ph), st * libm.sin(ph), ct], axis=1)


def _deflect(direction: np.ndarray, theta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate unit vectors ``direction`` (n, 3) by polar angles ``theta`` (random azimuth)."""
    n = len(theta)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    d = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    # an orthonormal basis (e1, e2) perpendicular to each direction
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    e1 = np.cross(d, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(d, e1)
    st, ct = libm.sin(theta)[:, None], libm.cos(theta)[:, None]
    return ct * d + st * (libm.cos(phi)[:, None] * e1 + libm.sin(phi)[:, None] * e2)


@dataclass(frozen=True)
class PionShowerModel:
    """Parameters of the pion cascade (energies in MeV, lengths in mm); see module doc."""

    e0_mev: float = 1000.0  # Groom's E0 for pions (PDG Calorimetry review)
    # <n> per interaction; in Groom's pure model m - 1 = ln(1 - f_pi0) / ln(<n>)
    multiplicity: float = 11.0
    # 1/3 of the pions are neutral (isospin), but the nuclear share and the soft
    # (nucleon-like) secondaries below also take energy from each generation, so the
    # effective share is a tuned parameter: 0.31 with the other defaults reproduces
    # Groom's f_em(E) within ~0.03 at 10-80 GeV (tests/simulation/test_physics.py).
    pi0_probability: float = 0.31
    pt_mev: float = 450.0  # mean transverse momentum of secondaries
    nuclear_mev: float = 400.0  # mean target-fragmentation energy per interaction
    # charged secondaries softer than this (kinetic) are mostly knock-on nucleons: their
    # energy goes to the nuclear break-up instead of a pion track
    soft_secondary_mev: float = 150.0
    binding_fraction: float = 0.35
    neutron_fraction: float = 0.2
    proton_mev: float = 40.0
    neutron_mev: float = 3.0  # mean neutron kinetic energy (sets how many there are)
    neutron_path_mm: float = 250.0
    neutron_hit_probability: float = 0.12
    neutron_hit_mev: float = 0.5  # visible (Birks-quenched) recoil-proton energy
    max_generations: int = 30

    def shower(self, engine, energy_mev: float, pos: np.ndarray, direction: np.ndarray,
               state: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Simulate one pion; returns deposits (n, 5) and bookkeeping (MeV)."""
        deps: list[np.ndarray] = []
        info = {"em_mev": 0.0, "invisible_mev": 0.0, "escaped_mev": 0.0, "passive_mev": 0.0,
                "first_interaction_z_mm": float("nan")}
        # current generation of particles for the kernel: type, energy, pos, dir
        types = np.array([K.PION])
        energies = np.array([energy_mev])
        positions = np.asarray(pos, float).reshape(1, 3)
        dirs = np.asarray(direction, float).reshape(1, 3)
        for _generation in range(self.max_generations):
            if len(types) == 0:
                break
            dep, had, res = engine.transport(types, energies, positions, dirs, state)
            deps.append(dep)
            info["escaped_mev"] += float(res[K.R_ESCAPED])
            info["passive_mev"] += float(res[K.R_PASSIVE])
            if _generation == 0 and len(had):
                info["first_interaction_z_mm"] = float(had[0, 2])
            new_t, new_e, new_p, new_d = [], [], [], []
            for row in had:
                t, e, p, d = self._interaction(row, rng, info, engine, deps)
                new_t.append(t)
                new_e.append(e)
                new_p.append(p)
                new_d.append(d)
            if not new_t:
                break
            types = np.concatenate(new_t)
            energies = np.concatenate(new_e)
            positions = np.concatenate(new_p)
            dirs = np.concatenate(new_d)
        dep = np.concatenate(deps) if deps else np.zeros((0, 5))
        return dep, info

    # ---- one inelastic interaction -------------------------------------------------------
    def _interaction(self, row: np.ndarray, rng: np.random.Generator, info: dict, engine,
                     deps: list[np.ndarray]):
        vertex, d, e = row[0:3], row[3:6], float(row[6])
        out_t: list[np.ndarray] = []
        out_e: list[np.ndarray] = []
        out_d: list[np.ndarray] = []
        e_nuc = min(e, rng.gamma(2.0, 0.5 * self.nuclear_mev))
        rest = e - e_nuc
        if rest < self.e0_mev:
            e_nuc, rest = e, 0.0
        if rest > 0.0:
            n = 1 + rng.poisson(self.multiplicity - 1.0)
            n = max(2, n)
            frac = rng.dirichlet(np.ones(n))
            es = frac * rest
            is_pi0 = rng.random(n) < self.pi0_probability
            # secondaries too soft to be pions at all go to the nucleus
            soft = es < K.PION_MASS_MEV
            e_nuc += float(es[soft].sum())
            es, is_pi0 = es[~soft], is_pi0[~soft]
            if len(es):
                pt = rng.exponential(self.pt_mev, len(es))
                theta = libm.arctan2(pt, es)
                sec_dir = _deflect(np.repeat(d[None], len(es), 0), theta, rng)
                # pi0 -> 2 photons, isotropic in the pi0 frame: E1 = E/2 (1 + beta cos)
                e_pi0 = es[is_pi0]
                if len(e_pi0):
                    info["em_mev"] += float(e_pi0.sum())
                    beta = np.sqrt(np.clip(1 - (PI0_MASS_MEV / e_pi0) ** 2, 0, 1))
                    cs = rng.uniform(-1, 1, len(e_pi0))
                    e1 = 0.5 * e_pi0 * (1 + beta * cs)
                    e2 = e_pi0 - e1
                    # opening angle of order m / E around the pi0 direction
                    ang = np.minimum(PI0_MASS_MEV / np.maximum(e_pi0, PI0_MASS_MEV), np.pi)
                    pd = sec_dir[is_pi0]
                    g1 = _deflect(pd, ang * e2 / e_pi0, rng)
                    g2 = _deflect(pd, ang * e1 / e_pi0, rng)
                    out_t.append(np.full(2 * len(e_pi0), K.PHOTON))
                    out_e.append(np.concatenate([e1, e2]))
                    out_d.append(np.concatenate([g1, g2]))
                ech = es[~is_pi0]
                soft_ch = ech - K.PION_MASS_MEV < self.soft_secondary_mev
                e_nuc += float(ech[soft_ch].sum())
                ech = ech[~soft_ch]
                if len(ech):
                    out_t.append(np.full(len(ech), K.PION))
                    # kinetic energy of the charged pion
                    out_e.append(np.maximum(ech - K.PION_MASS_MEV, 0.0))
                    e_nuc += float(np.minimum(ech, K.PION_MASS_MEV).sum())
                    out_d.append(sec_dir[~is_pi0])
        if e_nuc > 0.0:
            t, en, dd = self._breakup(vertex, e_nuc, rng, info, engine, deps)
            out_t.append(t)
            out_e.append(en)
            out_d.append(dd)
        if not out_t:
            return np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3))
        t = np.concatenate(out_t)
        en = np.concatenate(out_e)
        dd = np.concatenate(out_d)
        return t, en, np.repeat(vertex[None], len(t), 0), dd

    def _breakup(self, vertex: np.ndarray, e_nuc: float, rng: np.random.Generator, info: dict,
                 engine, deps: list[np.ndarray]):
        """Nuclear break-up: invisible binding, neutrons (isolated hits), protons."""
        info["invisible_mev"] += self.binding_fraction * e_nuc
        e_n = self.neutron_fraction * e_nuc
        e_p = e_nuc - self.binding_fraction * e_nuc - e_n
        # neutrons
        n_neut = rng.poisson(e_n / self.neutron_mev) if e_n > 0 else 0
        visible_n = 0.0
        if n_neut:
            hit = rng.random(n_neut) < self.neutron_hit_probability
            k = int(hit.sum())
            if k:
                path = rng.exponential(self.neutron_path_mm, k)
                where = vertex[None] + path[:, None] * _isotropic(k, rng)
                z = where[:, 2]
                inside = (z >= engine.slabs.lo[0]) & (z <= engine.slabs.hi[-1])
                if inside.any():
                    where = where[inside]
                    sl = engine.slabs.active_slab_of(where[:, 2])
                    zc = 0.5 * (engine.slabs.lo[sl] + engine.slabs.hi[sl])
                    e_hit = rng.exponential(self.neutron_hit_mev, len(sl))
                    if e_hit.sum() > e_n:  # the hits cannot take more than the neutrons had
                        e_hit *= e_n / e_hit.sum()
                    visible_n = float(e_hit.sum())
                    deps.append(np.stack([where[:, 0], where[:, 1], zc, e_hit,
                                          engine.slabs.layer[sl].astype(float)], axis=1))
        info["invisible_mev"] += e_n - visible_n
        # protons: exponential kinetic energies until the share is used up
        es = []
        left = e_p
        while left > 1e-3:
            t = min(rng.exponential(self.proton_mev), left)
            es.append(t)
            left -= t
        es_arr = np.asarray(es)
        return (np.full(len(es_arr), K.PROTON), es_arr, _isotropic(len(es_arr), rng))
