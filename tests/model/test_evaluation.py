"""Evaluation: metrics, baselines in the same run, subgroups, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from cds_plugin.model.dataset import NEG, POS_NEW, POS_UNDOC
from cds_plugin.model.evaluation import (
    evaluate_model,
    expected_calibration_error,
    question_targets,
    recall_at_k,
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


def test_report_has_model_and_baselines_by_subgroup(tiny_model, corpus):
    report = evaluate_model(tiny_model, corpus, progress=False)
    assert set(report["overall"]) == {"model", "prevalence", "logistic_regression"}
    for name in report["overall"]:
        assert {"undocumented/diagnosis", "new/treatment"} <= set(report["overall"][name])
    assert any(k.startswith("sex=") for k in report["subgroups"])
    assert report["meta"]["examples"] > 0


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
