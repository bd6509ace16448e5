"""The CaloChallenge 2022 evaluation protocol (features, binning, classifier, FPD/KPD)."""

from caloforge.evaluation.calochallenge.protocol import (
    METRICS_FILE,
    format_summary,
    run_calochallenge_protocol,
)

__all__ = ["METRICS_FILE", "format_summary", "run_calochallenge_protocol"]
