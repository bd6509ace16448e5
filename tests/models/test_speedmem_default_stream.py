"""The shipped default generates the same showers, up to float rounding, as when it was
shipped.

Speed-ups of the generation path (issue 9 item 8) must not change what a given seed
generates.  The reference figures below were computed when the direction-conditioned
default was last refitted, at five directions (theta 0-39.5 deg, several phi), so the axis
frame, the calibration around each shower's axis and the read-out are all covered.  Bit
patterns are not portable: torch and MKL choose their kernels by CPU, and even with the
portable kernels pinned (``ATEN_CPU_CAPABILITY=default``, ``MKL_CBWR=COMPATIBLE``) an AMD
EPYC host hashed other showers than the host that computed the first checksums, with the
same code and model.  So each shower is compared through figures that a change of the
generation moves: its visible energy (relative tolerance 1e-4: every layer is rescaled to
its sampled energy), number of hits (within 2) and energy-weighted mean layer and mean
distance from the window's centre axis (within 0.3 %): a soft cell within rounding of its
cut may flip on another machine, which moves these by up to ~0.1 % in a 10 GeV shower.
Bit-identity across batch sizes on one machine is tested with every model
(``test_models.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import caloforge

SCRIPT = """
import json
import numpy as np, torch
torch.set_num_threads(1)
from caloforge.data import Conditions
from caloforge.models import load
model = load("ild-ecal-photons")
g = model.geometry
layer = np.asarray(g.layer_of_voxel, dtype=np.float64)
xy = np.asarray(g.cell_centres, dtype=np.float64)[:, :2]
radius = np.hypot(xy[:, 0], xy[:, 1])
e = np.array([10.5e3, 23.0e3, 50.0e3, 77.7e3, 99.0e3])
c = Conditions(e, theta=np.radians([0.0, 12.0, 25.0, 33.0, 39.5]),
               phi=np.radians([0.0, 80.0, 190.0, 275.0, 359.0]))
out = []
for seed, bs in ((2026, 5), (2026, 1), (7, 2)):
    x = model.sample(c, seed=seed, batch_size=bs).energies
    assert x.dtype == np.float32 and x.shape == (5, 27000)
    x = x.astype(np.float64)
    s = x.sum(1)
    out += [[float(v) for v in row] for row in
            zip(s, (x > 0).sum(1), x @ layer / s, x @ radius / s)]
print(json.dumps(out))
"""

PORTABLE = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE",
            "OMP_NUM_THREADS": "1", "CALOFORGE_NO_PROGRESS": "1"}
# Per shower of (seed 2026, batch 5), (seed 2026, batch 1), (seed 7, batch 2): visible
# energy (MeV), hits, mean layer, mean distance from the axis (mm); computed with the
# model and code of the commit that added the layer-moment maps (the visible energies,
# hits and mean layers are those of the two-layer-energy-bin tables before them).
SHIPPED = [
    (269.8262, 277, 14.83456, 7.074709),
    (497.5113, 358, 16.63567, 12.46091),
    (1329.647, 628, 12.8243, 18.35103),
    (2029.159, 889, 13.20296, 25.73684),
    (2619.589, 1053, 12.15279, 29.89145),
    (269.8262, 277, 14.83456, 7.074709),
    (497.5112, 358, 16.63567, 12.46091),
    (1329.646, 628, 12.8243, 18.35103),
    (2029.159, 889, 13.20296, 25.73684),
    (2619.589, 1053, 12.15279, 29.89145),
    (278.8196, 276, 12.65037, 6.384695),
    (596.6094, 394, 13.36139, 10.38645),
    (1254.086, 501, 12.72736, 17.7085),
    (1777.448, 810, 15.56295, 29.69849),
    (2630.355, 981, 11.92934, 29.33355),
]


def test_default_showers_match_the_shipped_stream(tmp_path):
    src = str(Path(caloforge.__file__).resolve().parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, **PORTABLE, PYTHONPATH=path)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    got = np.array(json.loads(out.stdout), dtype=np.float64)
    want = np.array(SHIPPED, dtype=np.float64)
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, 0], want[:, 0], rtol=1e-4)
    np.testing.assert_allclose(got[:, 2:], want[:, 2:], rtol=3e-3)
    assert np.abs(got[:, 1] - want[:, 1]).max() <= 2, (got[:, 1], want[:, 1])
