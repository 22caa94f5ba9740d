"""Faithfulness measures: record-level removal, ERASER scores, randomization check, the report and CLI."""

from __future__ import annotations

import json

import pytest

from cds_plugin.explain import faithfulness as F
from tests.explain.planted import RULES, visit_time


def test_metrics_declare_range_and_direction():
    for name, metric in F.METRICS.items():
        assert metric.low < metric.high and metric.description, name
    assert F.METRICS["comprehensiveness@3"].higher_is_better
    assert not F.METRICS["sufficiency@3"].higher_is_better
    assert not F.METRICS["deletion_auc"].higher_is_better
    assert F.METRICS["completeness_error"].to_json()["range"] == [0.0, None]


def test_removal_works_on_the_record(planted_engine, planted_corpus):
    path, _ = planted_corpus[0]
    record = planted_engine.record_of(path, visit_time(path))
    x = next(o.reference for o in record.observations if o.reference.endswith(RULES["metformin"][0]))
    without = F.without_resources(record, [x])
    assert x not in without.references() and len(without.observations) == len(record.observations) - 1
    only = F.only_resources(record, [x])
    assert [o.reference for o in only.observations] == [x]
    assert not only.conditions and not only.encounters and only.patient == record.patient


def test_erasure_scores_see_the_planted_fact(planted_engine, planted_corpus):
    path, planted = planted_corpus[0]
    assert planted["metformin"]
    record = planted_engine.record_of(path, visit_time(path))
    label = planted_engine.explain(record, "metformin")
    repredict = F.Repredictor(planted_engine, record)
    order = F.ranking(label)
    assert order[0].endswith(RULES["metformin"][0]) and not any(r.startswith("Patient/") for r in order)
    index = planted_engine.labels.find("metformin")
    good = F.erasure_scores(repredict, order, index)
    bad = F.erasure_scores(repredict, order[::-1], index)
    assert good["comprehensiveness@1"] > 0.3 > bad["comprehensiveness@1"]
    assert good["sufficiency@1"] < bad["sufficiency@1"]
    assert good["deletion_auc"] < bad["deletion_auc"]
    assert set(good) == {
        *(f"comprehensiveness@{k}" for k in F.KS),
        *(f"sufficiency@{k}" for k in F.KS),
        "deletion_auc",
    }


def test_randomization_changes_scores(planted_engine):
    stages = F.randomized_engines(planted_engine)
    assert stages[0][0] == "head"
    network = planted_engine.network
    assert len(stages) == 1 + min(2, len(network.layers))
    original = {k: v.clone() for k, v in network.state_dict().items()}
    for _, engine in stages:  # both heads re-initialised, the engine itself untouched
        assert not (engine.network.head.weight == network.head.weight).all()
        assert not (engine.network.code_weights.weight == network.code_weights.weight).all()
    assert all((original[k] == v).all() for k, v in network.state_dict().items())


def test_evaluate_explanations_report(planted_model, planted_corpus, tmp_path):
    report = F.evaluate_explanations(
        planted_model,
        planted_corpus[0][0].parent,
        limit=4,
        methods=("integrated_gradients", "attention", "attention_gradient"),
        targets_per_patient=2,
        sanity_cases=2,
    )
    meta = report["meta"]
    assert meta["patients"] == 4 and meta["cases"] == 8
    for method in ("integrated_gradients", "attention", "attention_gradient", F.RANDOM):
        row = report["methods"][method]
        assert row["comprehensiveness@3"]["n"] == 8
        assert -1 <= row["comprehensiveness@3"]["mean"] <= 1
    assert report["completeness"]["n"] == 8
    sanity = report["randomization"]
    assert sanity["stages"][0] == "head"
    head = {m: rows[0]["mean"] for m, rows in sanity["methods"].items()}
    assert head["attention"] == pytest.approx(1.0)  # rollout ignores the head: the check it fails
    assert head["integrated_gradients"] < 0.99
    table = F.render_markdown(report)
    assert "| integrated_gradients |" in table and "comprehensiveness@3" in table
    json.dumps(report)  # JSON-ready


def test_cli_evaluate_explanations(planted_model, planted_corpus, tmp_path, capsys):
    from cds_plugin.cli import main

    out = tmp_path / "faithfulness.json"
    args = [
        "evaluate-explanations",
        "--model",
        str(planted_model),
        "--data",
        str(planted_corpus[0][0].parent),
    ]
    assert (
        main([*args, "--limit", "2", "--methods", "integrated_gradients", "--json", str(out), "--quiet"]) == 0
    )
    assert "| random |" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["meta"]["methods"] == ["integrated_gradients"]
    assert "bar" in report and "ratio_to_random" in report["bar"]
    settings = report["meta"]["settings"]["integrated_gradients"]
    assert settings["baseline"] == "mask"

    zero = tmp_path / "zero.json"
    options = [
        "--setting",
        "integrated_gradients.baseline=zero",
        "--setting",
        "integrated_gradients.steps=16",
    ]
    common = ["--limit", "2", "--methods", "integrated_gradients", "--quiet"]
    assert main([*args, *common, *options, "--json", str(zero)]) == 0
    settings = json.loads(zero.read_text())["meta"]["settings"]["integrated_gradients"]
    assert settings["baseline"] == "zero" and settings["steps"] == 16
    with pytest.raises(SystemExit, match="METHOD.NAME=VALUE"):
        main([*args, *common, "--setting", "baseline=zero"])
