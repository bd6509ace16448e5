"""The shipped CaloChallenge dataset-1 models (CaloFlow teachers, photons and pions): they
load from the package, are not too large, follow their energy condition and have no faint
cells."""

import numpy as np
import pytest

from caloforge import zoo
from caloforge.data.batch import Conditions
from caloforge.errors import CaloforgeError
from caloforge.models import list_zoo, load
from caloforge.models.base import WEIGHTS_FILE

NAME = "calochallenge-1-photons"


def test_shipped_with_a_card():
    assert NAME in list_zoo()
    card = zoo.model_card(NAME)
    assert "caloforge simulate --detector calochallenge-1-photons --particle photon" in card
    assert "caloforge train --model caloflow" in card
    assert (zoo.path(NAME) / WEIGHTS_FILE).stat().st_size < 40 * 2**20


def sample_low_and_high(model, geometry: str, n_voxels: int, trained: tuple[float, float],
                        e_low: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Checks what every shipped dataset-1 model shares, and returns ``n`` showers at
    ``e_low`` and ``n`` at 65.536 GeV."""
    assert model.name == "caloflow" and model.geometry.name == geometry
    assert model.geometry.n_voxels == n_voxels
    lo, hi = model.energy_range_mev
    assert lo <= trained[0] * 1.01 and hi >= trained[1] * 0.99
    low = model.sample(np.full(n, e_low), 1, batch_size=n).energies
    high = model.sample(np.full(n, 65_536.0), 2, batch_size=n).energies
    for x in (low, high):
        assert np.isfinite(x).all() and (x >= 0).all()
        # no faint cells: nothing below the fitted floor (0.5 % of the training cells)
        assert ((x > 0) & (x < model.cell_floor_mev)).sum() == 0
    return low, high


@pytest.fixture(scope="module")
def model():
    return load(NAME)


def test_follows_its_energy_condition(model):
    low, high = sample_low_and_high(model, "calochallenge-1-photons", 368, (256.0, 524_288),
                                    4096.0, 200)
    assert 0.005 < model.cell_floor_mev < 0.05
    # The reference's visible fraction (LAr sampling) is 0.130 at 4 GeV and 0.128 at 65 GeV
    # with a spread of 0.5 % and 0.2 %; a model that ignored the energy would fail the ratio.
    r_low, r_high = low.sum(1) / 4096.0, high.sum(1) / 65_536.0
    assert 0.12 < np.median(r_low) < 0.14 and 0.12 < np.median(r_high) < 0.135
    assert 14.0 < high.sum(1).mean() / low.sum(1).mean() < 17.5
    # hit cells: the reference has ~219 at 4 GeV and ~317 at 65 GeV
    assert 180 < (low > 0).sum(1).mean() < 260 < (high > 0).sum(1).mean() < 360


def test_refuses_what_it_was_not_trained_on(model):
    with pytest.raises(CaloforgeError, match="outside"):
        model.sample(np.array([2.0e6]), 1)
    with pytest.raises(CaloforgeError, match="theta"):
        model.sample(Conditions(np.array([4096.0]), theta=np.array([0.3])), 1)


PIONS = "calochallenge-1-pions"


@pytest.fixture(scope="module")
def pion_model():
    return load(PIONS)


def test_pions_shipped_with_a_card():
    assert PIONS in list_zoo()
    card = zoo.model_card(PIONS)
    assert "caloforge simulate --detector calochallenge-1-pions --particle pi+" in card
    assert "caloforge train --model caloflow" in card
    assert (zoo.path(PIONS) / WEIGHTS_FILE).stat().st_size < 48 * 2**20


def test_pions_follow_their_energy_condition(pion_model):
    model = pion_model
    low, high = sample_low_and_high(model, "calochallenge-1-pions", 533, (2048.0, 262_144),
                                    8192.0, 300)
    # The reference's visible fraction: median 0.068 at 8 GeV and 0.041 at 65 GeV (the
    # electromagnetic fraction grows with energy, the hadronic part is barely seen), with
    # spreads (10-90 %) of 0.03-0.11; hits 113 +- 23 and 280 +- 54.  A model that ignored
    # the energy would fail every line.
    r_low, r_high = low.sum(1) / 8192.0, high.sum(1) / 65_536.0
    assert 0.055 < np.median(r_low) < 0.085 and 0.03 < np.median(r_high) < 0.056
    assert 4.5 < high.sum(1).mean() / low.sum(1).mean() < 8.0
    assert 95 < (low > 0).sum(1).mean() < 135 < 245 < (high > 0).sum(1).mean() < 315


STUDENT = "calochallenge-1-photons-student"


def test_the_photon_student_is_shipped_with_a_card_and_references_the_shipped_teacher():
    assert STUDENT in list_zoo()
    card = zoo.model_card(STUDENT)
    assert "caloforge train --model caloflow-student --teacher calochallenge-1-photons" in card
    assert (zoo.path(STUDENT) / WEIGHTS_FILE).stat().st_size < 40 * 2**20
    student = load(STUDENT)
    assert student.name == "caloflow-student" and student.teacher_reference["path"] == NAME
    assert student.layer_blocks is not None  # one pass per block for both flows


def test_the_photon_student_follows_its_energy_condition_like_its_teacher():
    student = load(STUDENT)
    low = student.sample(np.full(200, 4096.0), 1, batch_size=200).energies
    high = student.sample(np.full(200, 65_536.0), 2, batch_size=200).energies
    floor = student.teacher.cell_floor_mev
    for x in (low, high):
        assert np.isfinite(x).all() and (x >= 0).all()
        assert ((x > 0) & (x < floor)).sum() == 0
    # the teacher's windows (test_follows_its_energy_condition)
    r_low, r_high = low.sum(1) / 4096.0, high.sum(1) / 65_536.0
    assert 0.12 < np.median(r_low) < 0.14 and 0.12 < np.median(r_high) < 0.135
    assert 180 < (low > 0).sum(1).mean() < 260 < (high > 0).sum(1).mean() < 360


def test_the_photon_student_samples_through_a_trace_of_its_eager_path(monkeypatch):
    """The shipped student's blocks (output layers split by mask structure) run as one
    trace at sampling time: the same showers, bit for bit, as the eager path."""
    from caloforge.models import made

    student = load(STUDENT)
    e = np.array([512.0, 4096.0, 65_536.0])
    traced = [student.sample(e, 9, batch_size=bs).energies for bs in (1, 3)]
    assert student.blocks.__dict__["_traced_sampler"][1] is not None
    monkeypatch.setattr(made, "_traced_sampler", lambda *_: None)
    eager = [student.sample(e, 9, batch_size=bs).energies for bs in (1, 3)]
    assert all(np.array_equal(x, y) for x, y in zip(traced, eager))
