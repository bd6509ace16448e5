"""The builtin engine: the numba Monte Carlo of :mod:`caloforge.simulation.kernels`
on the slab stack of a caloforge geometry, plus the pion model of
:mod:`caloforge.simulation.hadronic`.

>>> import numpy as np
>>> from caloforge.simulation.builtin import BuiltinEngine
>>> from caloforge.simulation.engine import Primary
>>> eng = BuiltinEngine("ild-ecal")
>>> dep = eng.simulate(Primary("photon", 1000.0), np.random.default_rng(1))
>>> 0 < dep.total < 1000.0
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from caloforge.errors import InputError
from caloforge.geometry import Geometry, get_geometry
from caloforge.simulation import kernels as K
from caloforge.simulation import tables as T
from caloforge.simulation.engine import Deposits, Primary

# Energy range (MeV) the builtin engine supports per particle.  EM: the cross-section
# tables cover 1 keV - 10 TeV, but the complete-screening physics is meant for showers
# from ~10 MeV; pions: the hadronic model uses Groom's f_em parametrisation, fitted
# between a few GeV and a few hundred GeV.
SUPPORTED_MEV: dict[str, tuple[float, float]] = {
    "photon": (10.0, 1.0e6),
    "electron": (10.0, 1.0e6),
    "positron": (10.0, 1.0e6),
    "pi+": (2.0e3, 5.0e5),
    "pi-": (2.0e3, 5.0e5),
}
EM_CODES = {"photon": K.PHOTON, "electron": K.ELECTRON, "positron": K.POSITRON}


@dataclass
class Slabs:
    """The geometry as a stack of homogeneous slabs along z (infinite in x, y)."""

    lo: np.ndarray  # (S,) mm
    hi: np.ndarray  # (S,) mm
    material: np.ndarray  # (S,) index into ``materials``
    layer: np.ndarray  # (S,) readout layer of active slabs, -1 for passive ones
    materials: list[str]

    @classmethod
    def from_geometry(cls, geometry: Geometry, score_all: bool = False) -> Slabs:
        """Slabs of ``geometry``; ``score_all`` makes absorber and passive slabs score
        into their readout layer too (a diagnostic: the full energy-deposition profile)."""
        names: list[str] = []
        lo, hi, mat, lay = [], [], [], []
        z = 0.0

        def add(name: str, thick: float, layer: int) -> None:
            nonlocal z
            if thick <= 0.0:
                return
            if name not in names:
                names.append(name)
            lo.append(z)
            hi.append(z + thick)
            mat.append(names.index(name))
            lay.append(layer)
            z += thick

        for k, spec in enumerate(geometry.layers):
            for _ in range(spec.repeats):
                # passive slabs scored as a diagnostic are coded -k - 2 (kernels._score)
                add(spec.absorber, spec.absorber_mm, -k - 2 if score_all else -1)
                add(spec.active, spec.active_mm, k)
                add(spec.passive, spec.passive_mm, -k - 2 if score_all else -1)
        return cls(np.array(lo), np.array(hi), np.array(mat, np.int64),
                   np.array(lay, np.int64), names)

    def active_slab_of(self, z: np.ndarray) -> np.ndarray:
        """Index of the active slab nearest to each z (for point-like hadronic hits)."""
        act = np.flatnonzero(self.layer >= 0)
        centres = 0.5 * (self.lo[act] + self.hi[act])
        pos = np.clip(np.searchsorted(centres, z), 1, len(centres) - 1)
        left = centres[pos - 1]
        right = centres[pos]
        return act[np.where(np.abs(z - left) <= np.abs(z - right), pos - 1, pos)]


class BuiltinEngine:
    """Analogue EM Monte Carlo plus pion shower model on a geometry's slab stack."""

    name = "builtin"

    def __init__(self, geometry: str | Geometry, cuts: T.Cuts | None = None,
                 hadronic=None, score_absorber: bool = False) -> None:
        """``score_absorber=True`` records deposits in every slab (with Landau
        straggling everywhere), a diagnostic for the total energy-deposition profile;
        normal use records the active media only."""
        from caloforge.simulation.hadronic import PionShowerModel

        self.geometry = geometry if isinstance(geometry, Geometry) else get_geometry(geometry)
        self.cuts = cuts or T.Cuts()
        self.slabs = Slabs.from_geometry(self.geometry, score_absorber)
        self._tab, self._mat = T.material_tables(
            T.geometry_materials(self.slabs.materials), self.cuts)
        self._cuts = self.cuts.as_array()
        self._icdf = T.landau_tables()
        self._dep_cap = 1 << 15
        self.hadronic = hadronic or PionShowerModel()

    # ---- kernel access ------------------------------------------------------------------
    def transport(self, ptype: np.ndarray, energy: np.ndarray, pos: np.ndarray,
                  direction: np.ndarray, state: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run the kernel on primaries; returns (deposits (n, 5), hadronic interactions
        (m, 8), result slots).  ``state`` (4 uint64) is advanced in place."""
        ptype = np.ascontiguousarray(ptype, np.int64)
        energy = np.ascontiguousarray(energy, np.float64)
        pos = np.ascontiguousarray(pos, np.float64).reshape(-1, 3)
        direction = np.ascontiguousarray(direction, np.float64).reshape(-1, 3)
        had_cap = 256
        while True:
            start = state.copy()
            dep = np.empty((self._dep_cap, 5))
            had = np.empty((had_cap, 8))
            s = self.slabs
            res = K.transport(ptype, energy, pos, direction, s.lo, s.hi, s.material, s.layer,
                              self._tab, self._mat, self._cuts, self._icdf,
                              state, dep, had)
            nd, nh = int(res[K.R_NDEP]), int(res[K.R_NHAD])
            if nd <= self._dep_cap and nh <= had_cap:
                break
            # Buffers too small: grow and replay the same random sequence.
            state[:] = start
            while self._dep_cap < nd:
                self._dep_cap *= 2
            while had_cap < nh:
                had_cap *= 2
        if res[K.R_STACK_OVERFLOW] > 0:  # pragma: no cover - needs > 65k live particles
            raise InputError("particle stack overflow in the builtin engine")
        return dep[:nd].copy(), had[:nh].copy(), res

    # ---- Engine protocol ------------------------------------------------------------------
    def check(self, particle: str, energy_mev: float) -> None:
        """Raise :class:`InputError` for particles/energies the engine does not support."""
        if particle not in SUPPORTED_MEV:
            raise InputError(f"unknown particle {particle!r}; known: {', '.join(SUPPORTED_MEV)}")
        lo, hi = SUPPORTED_MEV[particle]
        if not (lo <= energy_mev <= hi):
            raise InputError(
                f"{particle} energy {energy_mev / 1e3:g} GeV outside the range of the builtin "
                f"engine ({lo / 1e3:g}-{hi / 1e3:g} GeV)")

    def simulate(self, primary: Primary, rng: np.random.Generator) -> Deposits:
        """Transport one primary (deterministic given ``rng``)."""
        self.check(primary.particle, primary.energy_mev)
        state = rng.integers(0, np.iinfo(np.uint64).max, size=4, dtype=np.uint64,
                             endpoint=True)
        # math, not numpy: numpy's CPU-dispatched loops differ in the last bit (see libm)
        st, ct = math.sin(primary.theta), math.cos(primary.theta)
        direction = np.array([st * math.cos(primary.phi), st * math.sin(primary.phi), ct])
        pos = np.array([primary.x_mm, primary.y_mm, 0.0])
        if primary.particle in EM_CODES:
            dep, _, res = self.transport(np.array([EM_CODES[primary.particle]]),
                                         np.array([primary.energy_mev]), pos, direction, state)
            info = {"escaped_mev": float(res[K.R_ESCAPED]),
                    "passive_mev": float(res[K.R_PASSIVE])}
        else:
            dep, info = self.hadronic.shower(self, primary.energy_mev, pos, direction, state,
                                             rng)
        return Deposits(dep[:, 0], dep[:, 1], dep[:, 2], dep[:, 3],
                        dep[:, 4].astype(np.int64), info=info)
