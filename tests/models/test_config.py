from dataclasses import dataclass

import pytest

from caloforge.errors import ConfigError
from caloforge.models import build, get_model_class, list_models
from caloforge.models.config import Config


@dataclass
class _C(Config):
    width: int = 8
    lr: float = 1e-3
    channels: tuple[int, ...] = (4, 8)
    name: str | None = None


def test_from_dict_types_and_roundtrip(tmp_path):
    c = _C.from_dict({"width": 16, "lr": "1e-4", "channels": [1, 2, 3]})
    assert c.width == 16 and c.lr == 1e-4 and c.channels == (1, 2, 3)
    p = tmp_path / "c.yaml"
    p.write_text(c.to_yaml())
    assert _C.from_yaml(p) == c


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="widht") as err:
        _C.from_dict({"widht": 3, "lr": 1.0})
    assert "width" in str(err.value)  # lists the known keys


@pytest.mark.parametrize("bad", [{"width": "x"}, {"width": True}, {"channels": 3},
                                 {"lr": [1]}])
def test_bad_values(bad):
    with pytest.raises(ConfigError):
        _C.from_dict(bad)


def test_registry_and_presets():
    assert {"wgan", "bibae", "l2lflows"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get_model_class("nope")
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        build("wgan", "ild-ecal", preset="huge")
    with pytest.raises(ConfigError, match="latent_dimm"):
        build("wgan", "ild-ecal", {"latent_dimm": 3})
    with pytest.raises(ConfigError, match="constrainer_fraction"):
        build("wgan", "ild-ecal", {"constrainer_fraction": 1.5})


def test_model_yaml_config_is_validated(tmp_path):
    from caloforge.training.loop import load_run_config
    p = tmp_path / "run.yaml"
    p.write_text("model:\n  preset: tiny\n  latent_dim: 8\ntraining:\n  steps: 3\nmodle: {}\n")
    with pytest.raises(ConfigError, match="modle"):
        load_run_config(p)
    p.write_text("model:\n  preset: tiny\n  latent_dim: 8\ntraining:\n  steps: 3\n")
    model, training, preset = load_run_config(p)
    assert preset == "tiny" and model == {"latent_dim": 8} and training == {"steps": 3}


def test_zoo_loader(tmp_path, monkeypatch):
    """A model folder dropped into the zoo loads by name."""
    import numpy as np

    from caloforge import zoo
    from caloforge.errors import InputError
    from caloforge.models import folder, load
    from caloforge.models.toy import toy_geometry, toy_showers
    from caloforge.training import TrainConfig, train

    geo = toy_geometry()
    rng = np.random.default_rng(0)
    data = toy_showers(geo, rng.uniform(1e3, 1e4, 40), rng)
    train("l2lflows", data, tmp_path / "run", preset="tiny",
          train_config=TrainConfig(steps=2, batch_size=16, validate_every=0), progress=False)
    fake_zoo = tmp_path / "zoo"
    (fake_zoo / "toy-flows").mkdir(parents=True)
    for f in (tmp_path / "run" / "model").iterdir():
        (fake_zoo / "toy-flows" / f.name).write_bytes(f.read_bytes())
    (fake_zoo / "toy-flows" / "MODEL_CARD.md").write_text("# toy\n")
    monkeypatch.setattr(folder, "zoo_dir", lambda: fake_zoo)
    assert zoo.available() == ["toy-flows"]
    assert zoo.model_card("toy-flows") == "# toy\n"
    m = zoo.load("toy-flows")
    assert m.name == "l2lflows" and load("toy-flows").name == "l2lflows"
    with pytest.raises(InputError, match="no shipped model 'other'"):
        zoo.path("other")
