"""A model trained on planted rules (treatment Y iff Observation X): X comes first for Y."""

from __future__ import annotations

import numpy as np
import pytest

from tests.explain.planted import RULES, visit_time


@pytest.fixture(scope="module")
def planted_cases(planted_engine, planted_corpus):
    """(bundle, label, planted) for the first 12 patients and both labels, with the model's probability."""
    cases = []
    for path, planted in planted_corpus[:12]:
        a = planted_engine.assess(path, as_of=visit_time(path))
        for label in RULES:
            cases.append((path, label, planted[label], a.find(label).probability))
    return cases


def test_the_model_learned_the_rule(planted_cases):
    for label in RULES:
        pos = [p for _, lab, planted, p in planted_cases if lab == label and planted]
        neg = [p for _, lab, planted, p in planted_cases if lab == label and not planted]
        assert min(pos) > max(neg), label


@pytest.mark.parametrize("method", ["integrated_gradients", "shap"])
def test_x_comes_first(planted_engine, planted_cases, method):
    settings = {"max_evals": 200} if method == "shap" else {}
    for path, label, planted, _ in planted_cases:
        if not planted:
            continue
        e = planted_engine.explain(path, label, method=method, as_of=visit_time(path), **settings)
        top = e.evidence[0]
        assert top.reference.endswith(RULES[label][0]), (path.name, label, [ev.reference for ev in e.top(3)])
        assert top.score > 0 and top.resource_type == "Observation"
        assert top.display.startswith(RULES[label][1][1]) and "mg/dL" in top.display
        assert e.f_x - e.f_baseline == pytest.approx(sum(ev.score for ev in e.evidence), abs=0.05)


def test_shap_budget_and_removal(planted_engine, planted_corpus):
    path, _ = planted_corpus[0]
    when = visit_time(path)
    small = planted_engine.explain(path, "metformin", method="shap", max_evals=10, as_of=when)
    padded = planted_engine.explain(path, "metformin", method="shap", removal="pad", as_of=when)
    assert small.settings["evaluations_all_targets"] <= 10 + 2
    for e in (small, padded):
        assert sum(ev.score for ev in e.evidence) == pytest.approx(e.f_x - e.f_baseline, abs=1e-6)
    assert padded.evidence[0].reference.endswith(RULES["metformin"][0])
    assert np.isclose(small.f_x, padded.f_x, atol=1e-5)  # both remove nothing from the full input


def test_shap_targets_never_mix(planted_engine, planted_corpus):
    path, _ = planted_corpus[0]
    when = visit_time(path)
    together = planted_engine.explain(path, list(RULES), method="shap", max_evals=60, as_of=when)
    for label, joint in zip(RULES, together, strict=True):
        alone = planted_engine.explain(path, label, method="shap", max_evals=60, as_of=when)
        assert [(e.reference, e.score) for e in joint.evidence] == [
            (e.reference, e.score) for e in alone.evidence
        ]
