"""What an evaluation does, as data: :class:`EvaluationConfig` <-> dict / YAML.

The configuration is saved into ``metrics.json`` (key ``config``), so a report says how
it was made and can be remade from it.

>>> cfg = EvaluationConfig(seed=3, classifier=False)
>>> EvaluationConfig.from_dict(cfg.to_dict()) == cfg
True
>>> EvaluationConfig.from_dict({"batch_size": 0})
Traceback (most recent call last):
...
caloforge.errors.ConfigError: batch_size (--batch-size) must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Self

from caloforge.errors import ConfigError
from caloforge.evaluation.classifier import ClassifierConfig
from caloforge.models.config import Config

FIGURE_FORMATS = ("png", "pdf")


def _option(name: str) -> str:
    """``threshold_mip (--threshold-mip)``: the API name and the CLI option in one."""
    return f"{name} (--{name.replace('_', '-')})"


@dataclass
class EvaluationConfig(Config):
    """Every setting of :func:`caloforge.evaluation.evaluate`.

    ``threshold_mip``: readout threshold in MIP of the geometry (None: the geometry's
    own, 0.5 MIP for the ILD calorimeters).  ``geometry`` overrides the geometry of files
    that do not carry one.  ``labels``: legend labels of the generated samples (default:
    the file names).  ``train_reference``: the generator's training file (enables the
    memorisation check).  ``lowlevel_memory_gib``: size of the float16 voxel subsample of
    the low-level classifier.  ``threads``: BLAS and torch CPU threads (1 is fastest for
    the many small linear-algebra calls on shared CPUs; None: library defaults).
    ``classifier_config``: classifier training settings (default: CaloChallenge's, with
    this config's ``device``, ``seed`` and ``threads``).

    Reconstruction level (:mod:`caloforge.evaluation.reco`): ``reco`` True/False, None =
    on for SiPM-on-tile hadron calorimeters (ild-ahcal); ``reco_calibration``: a
    calibration file to use instead of fitting one on the reference (its digitisation
    settings then apply); ``reco_light_yield`` (photo-electrons per MIP),
    ``reco_sipm_pixels``, ``reco_noise_mip``, ``reco_threshold_mip``: digitisation;
    ``reco_max_rel_error``: statistical precision of sigma90/mu90 that fixes the minimum
    number of showers per incident energy (0.10 -> 68).

    ``realistic``: point files are projected into the cells with the wafer gaps and
    staggering of the geometry (:meth:`CartesianGeometry.project`), as
    ``caloforge generate --project --realistic`` does.
    """

    geometry: str | None = None
    threshold_mip: float | None = None
    seed: int = 0
    labels: list[str] | None = None
    classifier: bool = True
    classifier_floor: bool = True
    classifier_config: ClassifierConfig | None = None
    device: str = "cpu"
    train_reference: str | None = None
    batch_size: int = 1000
    lowlevel_memory_gib: float = 0.75
    n_memo: int = 2000
    figure_formats: tuple[str, ...] = FIGURE_FORMATS
    threads: int | None = 1
    reco: bool | None = None
    reco_calibration: str | None = None
    reco_light_yield: float = 15.0
    reco_sipm_pixels: int = 2000
    reco_noise_mip: float = 0.05
    reco_threshold_mip: float = 0.5
    reco_max_rel_error: float = 0.10
    realistic: bool = False

    # -- dict / YAML: the nested classifier settings travel as a mapping ----------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str | None = None) -> Self:
        data = dict(data or {})
        nested = data.pop("classifier_config", None)
        cfg = super().from_dict(data, source)
        if nested is not None:
            cfg.classifier_config = _classifier_config(nested, source)
            cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.classifier_config is not None:
            out["classifier_config"] = {k: list(v) if isinstance(v, tuple) else v for k, v in
                                        dataclasses.asdict(self.classifier_config).items()}
        return out

    def resolved_classifier(self) -> ClassifierConfig:
        """The classifier settings actually used."""
        if self.classifier_config is not None:
            return self.classifier_config
        return ClassifierConfig(device=self.device, seed=self.seed, threads=self.threads)

    def validate(self) -> None:
        t = self.threshold_mip
        if t is not None and not (math.isfinite(t) and t >= 0):
            raise ConfigError(f"{_option('threshold_mip')} must be a finite number >= 0, "
                              f"got {t}")
        for name, low in (("batch_size", 1), ("n_memo", 0), ("seed", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"{_option(name)} must be >= {low}, got "
                                  f"{getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"{_option('threads')} must be >= 1 (or None for the library "
                              f"default), got {self.threads}")
        gib = self.lowlevel_memory_gib
        if not (math.isfinite(gib) and gib > 0):
            raise ConfigError(f"{_option('lowlevel_memory_gib')} must be a finite number "
                              f"> 0, got {gib}")
        unknown = sorted(set(self.figure_formats) - set(FIGURE_FORMATS))
        if unknown or "png" not in self.figure_formats:
            raise ConfigError(f"figure_formats must include 'png' and may add 'pdf', got "
                              f"{list(self.figure_formats)}")
        self._validate_reco()
        if self.labels is not None and not all(isinstance(x, str) and x for x in self.labels):
            raise ConfigError(f"{_option('labels')} must be non-empty strings")
        super().validate()

    def _validate_reco(self) -> None:
        for name, low, strict in (("reco_light_yield", 0, True), ("reco_sipm_pixels", 0, True),
                                  ("reco_noise_mip", 0, False),
                                  ("reco_threshold_mip", 0, False),
                                  ("reco_max_rel_error", 0, True)):
            v = getattr(self, name)
            if not (math.isfinite(v) and (v > low if strict else v >= low)):
                raise ConfigError(f"{_option(name)} must be a finite number "
                                  f"{'>' if strict else '>='} {low}, got {v}")
        if self.reco_max_rel_error >= 1:
            raise ConfigError(f"{_option('reco_max_rel_error')} must be < 1, got "
                              f"{self.reco_max_rel_error}")


def _classifier_config(data: Any, source: str | None) -> ClassifierConfig:
    if isinstance(data, ClassifierConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"classifier_config must be a mapping, got {data!r}", source)
    known = {f.name for f in dataclasses.fields(ClassifierConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown classifier_config key(s): {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})", source)
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return ClassifierConfig(**fixed)


def check_device(name: str, option: str = "--device") -> str:
    """Refuse, in one line naming ``option``, a torch device name that is unknown or absent
    on this machine (:func:`caloforge.utils.resolve_device`, the check of every command).

    >>> check_device("cpu")
    'cpu'
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    caloforge.errors.ConfigError: --device: unknown device 'gpu' (use cpu, cuda, cuda:N or mps)
    """
    if name == "cpu":  # the common case needs no torch import
        return name
    from caloforge.utils.device import resolve_device

    resolve_device(name, option)
    return name
