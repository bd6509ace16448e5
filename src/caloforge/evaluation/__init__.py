"""Evaluation: physics observables, two-sample metrics with noise floors, and a report.

>>> from caloforge.evaluation import evaluate          # doctest: +SKIP
>>> res = evaluate("ref.h5", ["gen.h5"], report_dir="report")  # doctest: +SKIP
>>> res.metrics["generated"][0]["observables"]["e_vis"]["verdict"]  # doctest: +SKIP
'green'

``res.metrics`` is exactly the content of ``report/metrics.json``.
"""

from caloforge.evaluation.api import Evaluation, evaluate
from caloforge.evaluation.classifier import ClassifierConfig, classifier_test
from caloforge.evaluation.config import EvaluationConfig
from caloforge.evaluation.metrics import (
    chi2_ndf,
    fpd,
    kpd,
    separation_power,
    wasserstein_normalised,
)

__all__ = [
    "ClassifierConfig",
    "Evaluation",
    "EvaluationConfig",
    "chi2_ndf",
    "classifier_test",
    "evaluate",
    "fpd",
    "kpd",
    "separation_power",
    "wasserstein_normalised",
]
