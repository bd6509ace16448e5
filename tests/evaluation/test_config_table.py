"""EvaluationConfig <-> dict/YAML, the table of metrics as the one place that lists
the metrics, and the report importing nothing from the API module."""

import ast
import json
from pathlib import Path

import pytest

import caloforge.evaluation.report as report_pkg
from caloforge.cli import main
from caloforge.errors import ConfigError
from caloforge.evaluation import ClassifierConfig, EvaluationConfig, evaluate
from caloforge.evaluation import table as T
from caloforge.evaluation.toy import toy_showers


def test_config_round_trip_through_yaml(tmp_path):
    cfg = EvaluationConfig(seed=4, labels=["a", "b"], threshold_mip=0.25, classifier=False,
                           classifier_config=ClassifierConfig(hidden=(8, 8), max_epochs=2),
                           figure_formats=("png",), threads=None)
    path = tmp_path / "eval.yaml"
    path.write_text(cfg.to_yaml())
    back = EvaluationConfig.from_yaml(path)
    assert back == cfg and back.classifier_config.hidden == (8, 8)
    assert EvaluationConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("data,words", [
    ({"sede": 1}, "unknown EvaluationConfig key(s): sede"),
    ({"classifier_config": {"hiden": [3]}}, "unknown classifier_config key(s): hiden"),
    ({"threshold_mip": float("nan")}, "--threshold-mip"),
    ({"threshold_mip": -0.1}, "--threshold-mip"),
    ({"figure_formats": ["svg"]}, "figure_formats"),
    ({"n_memo": -1}, "--n-memo"),
])
def test_config_refuses_bad_values(data, words):
    with pytest.raises(ConfigError) as info:
        EvaluationConfig.from_dict(data)
    assert words in str(info.value)


def test_table_drives_results_and_verdicts(monkeypatch):
    """A metric added to the table appears in every sample's metrics and verdicts, and
    one that fails is reported as not computed; nothing else changes."""
    def spread(base, gen):
        return {"value": float(gen.scalars["e_vis"].std()), "verdict": "green"}

    def broken(base, gen):
        from caloforge.errors import InputError
        raise InputError("needs what this sample lacks")

    extra = (T.Metric("spread", spread, "E_vis spread", "none", "always green"),
             T.Metric("broken", broken, "nothing", "none", "never"))
    monkeypatch.setattr(T, "METRICS", T.METRICS + extra)
    ref, gen = toy_showers(300, "calogan", seed=1), toy_showers(300, "calogan", seed=2)
    m = evaluate(ref, [gen], classifier=False, progress_bar=False).metrics
    g = m["generated"][0]
    assert g["spread"]["value"] > 0 and g["verdict"]["spread"] == "green"
    assert g["verdict"]["broken"] == "grey"
    assert "generated 1: broken: needs what this sample lacks" in m["not_computed"]
    assert [row["metric"] for row in m["metric_table"]][-2:] == ["spread", "broken"]
    # no classifier, no training file, no angle conditions, no reco, no points in the toys
    applicable = [t.key for t in T.METRICS if t.key not in (
        "classifier", "memorisation", "reconstructed_angle", "angle_bins", "reco", "points")]
    assert list(g["verdict"]) == applicable
    assert EvaluationConfig.from_dict(m["config"]).classifier is False


def test_report_does_not_import_the_api():
    for path in Path(report_pkg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                assert not any(n.endswith("evaluation.api") for n in names), path


def test_cli_config_file_with_override(tmp_path, capsys):
    from caloforge.data.io import write_showers

    for name, seed in (("ref.h5", 1), ("gen.h5", 2)):
        with write_showers(tmp_path / name, geometry="calogan") as w:
            w.append(toy_showers(100, "calogan", seed=seed))
    (tmp_path / "bad.yaml").write_text("seed: 3\nthreshold: 0.5\n")
    rc = main(["evaluate", str(tmp_path / "ref.h5"), str(tmp_path / "gen.h5"), "--config",
               str(tmp_path / "bad.yaml"), "--report", str(tmp_path / "rep")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and "bad.yaml" in err[0] and "threshold" in err[0]
    assert not (tmp_path / "rep").exists()
