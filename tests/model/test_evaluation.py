"""Evaluation: metrics, baselines in the same run, subgroups, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from cds_plugin.model.dataset import NEG, POS_NEW, POS_UNDOC
from cds_plugin.model.evaluation import (
    average_precision,
    evaluate_model,
    expected_calibration_error,
    question_targets,
    recall_at_k,
    render_gaps,
    subgroup_gaps,
)


def test_question_targets_separate_a_and_b():
    t = np.array([[POS_UNDOC, POS_NEW, NEG, -1]], dtype=np.int8)
    assert question_targets(t, "undocumented").tolist() == [[1, -1, 0, -1]]
    assert question_targets(t, "new").tolist() == [[-1, 1, 0, -1]]


def test_recall_at_k():
    scores = np.array([[0.9, 0.8, 0.1, 0.7]])
    y = np.array([[1, 0, 1, -1]])
    assert recall_at_k(scores, y, k=2) == 0.5
    assert recall_at_k(scores, y, k=3) == 1.0


def test_calibration_error_zero_when_perfect():
    probs = np.array([[0.0, 1.0, 0.0, 1.0]])
    y = np.array([[0, 1, 0, 1]])
    assert expected_calibration_error(probs, y) == 0.0
    assert expected_calibration_error(np.array([[0.9]]), np.array([[0]])) > 0.8


def test_average_precision_matches_sklearn_with_ties():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    for _ in range(50):
        y = rng.integers(0, 2, 40)
        y[0] = 1
        s = rng.integers(0, 6, 40) / 5  # many ties
        assert abs(average_precision(y, s) - average_precision_score(y, s)) < 1e-12


def _group(examples: int, auprc: dict[str, float]) -> dict:
    """One subgroup's entry of a report, for one scorer, with the undocumented-diagnosis AUPRCs given."""
    summary = {
        f"{q}/{g}": {"macro_auprc": None} for q in ("undocumented", "new") for g in ("diagnosis", "treatment")
    }
    summary["undocumented/diagnosis"]["macro_auprc"] = float(np.mean(list(auprc.values())))
    summary["label_auprc"] = {"undocumented": auprc, "new": {}}
    return {"examples": examples, "model": summary}


def test_subgroup_gaps_compare_groups_over_the_same_labels():
    # the women's macro includes a label rated for women only; the gap over shared labels leaves it out
    report = {
        "overall": {"model": {}},
        "subgroups": {
            "sex=female": _group(40, {"diagnosis:1": 0.5, "diagnosis:2": 0.7, "diagnosis:9": 1.0}),
            "sex=male": _group(40, {"diagnosis:1": 0.4, "diagnosis:2": 0.6}),
            "sex=other": _group(5, {"diagnosis:1": 0.0, "diagnosis:2": 0.0}),  # too few examples
        },
    }
    row = subgroup_gaps(report)["sex"]["undocumented/diagnosis"]
    assert row["labels"] == 2
    assert abs(row["model"] - 0.1) < 1e-9
    assert abs(row["all_labels_model"] - (np.mean([0.5, 0.7, 1.0]) - 0.5)) < 1e-9
    assert subgroup_gaps(report)["sex"]["new/treatment"]["model"] is None
    assert "0.100" in render_gaps({**report, "gaps": subgroup_gaps(report)})


def test_report_has_model_and_baselines_by_subgroup(tiny_model, corpus):
    report = evaluate_model(tiny_model, corpus, progress=False)
    assert set(report["overall"]) == {"model", "prevalence", "logistic_regression"}
    for name in report["overall"]:
        assert {"undocumented/diagnosis", "new/treatment"} <= set(report["overall"][name])
    assert any(k.startswith("sex=") for k in report["subgroups"])
    assert report["meta"]["examples"] > 0
    assert set(report["gaps"]) == {"sex", "age", "race"}
    for rows in report["gap_intervals"].values():
        for v in rows.values():
            assert v["low"] <= v["high"] and 0 <= v["model_gap_larger"] <= 1


def test_cli_evaluate_writes_json(tiny_model, corpus, tmp_path):
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds_plugin.cli",
            "evaluate",
            "--model",
            str(tiny_model),
            "--data",
            str(corpus),
            "--json",
            str(out),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "logistic_regression" in result.stdout
    assert json.loads(out.read_text())["meta"]["model_version"]


def test_folds_partition_the_patients_and_fold_0_is_the_shipped_split():
    import hashlib

    from cds_plugin.model.dataset import SPLIT_SALT, is_validation

    refs = [f"Patient/{i}" for i in range(500)]
    for ref in refs:
        assert sum(is_validation(ref, 0.2, fold=k) for k in range(5)) == 1
        u = int.from_bytes(hashlib.sha256(f"{SPLIT_SALT}:{ref}".encode()).digest()[:8], "big") / 2**64
        assert is_validation(ref, 0.2) == (u < 0.2) == is_validation(ref, 0.2, fold=0)


def test_cross_validation_pools_each_fold_s_own_validation_patients(tiny_model, corpus, tmp_path):
    from cds_plugin.model.evaluation import evaluate_folds, render_folds
    from cds_plugin.model.training import TrainConfig, train

    folds = [tiny_model]
    for k in (1, 2):
        train(corpus, tmp_path / f"fold{k}", TrainConfig.tiny(fold=k), progress=False)
        folds.append(tmp_path / f"fold{k}")
    alone = [evaluate_model(m, corpus, progress=False, gap_resamples=0)["meta"] for m in folds]
    pooled = evaluate_folds(folds, corpus, progress=False, gap_resamples=20)
    assert pooled["meta"]["patients_per_fold"] == [m["patients"] for m in alone]
    assert pooled["meta"]["examples"] == sum(m["examples"] for m in alone)
    assert set(pooled["overall"]) == {"model", "prevalence", "logistic_regression"}
    assert set(pooled["gaps"]) == {"sex", "age", "race"}
    assert [f["patients"] for f in pooled["folds"]] == pooled["meta"]["patients_per_fold"]
    assert set(pooled["folds"][0]) >= {"model", "logistic_regression"}
    assert "mean margin" in render_folds(pooled)
    with pytest.raises(ValueError, match="shares validation patients"):
        evaluate_folds([tiny_model, tiny_model], corpus, progress=False, gap_resamples=0)


def test_a_fold_outside_the_split_is_refused(corpus, tmp_path):
    from cds_plugin.model.training import TrainConfig, train

    with pytest.raises(ValueError, match="fold must be 0 to 4"):
        train(corpus, tmp_path / "m", TrainConfig.tiny(fold=5), progress=False)
