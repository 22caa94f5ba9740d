"""The explanation API: completeness, targets that never mix, JSON, references, methods, errors, CLI."""

from __future__ import annotations

import dataclasses
import json
import statistics

import numpy as np
import pytest

from cds_plugin import explain as X
from cds_plugin.explain.explanation import ExplanationError
from cds_plugin.explain.inputs import UnknownTargetError
from tests.explain.planted import visit_time


@pytest.fixture(scope="module")
def synthea_engine(engine):
    """The session's tiny model trained on a few Synthea patients (tests/conftest.py)."""
    return engine


def test_methods_are_listed():
    assert {"integrated_gradients", "attention", "attention_gradient", "shap"} <= set(X.methods())


def test_completeness_under_one_percent_with_default_steps(synthea_engine, synthea_assessments):
    errors = []
    for a in synthea_assessments:
        for e in synthea_engine.explain(a, a.considerations[:3]):
            assert e.settings["quadrature"] == "gausslegendre"
            total = sum(ev.score for ev in e.evidence)
            assert abs(total - sum(f.score for f in e.facts)) < 1e-9  # nothing lost on the way to resources
            delta = e.f_x - e.f_baseline
            measured = abs(total - delta) / max(abs(delta), 1e-3)
            assert e.completeness_error == pytest.approx(measured, abs=1e-6)
            assert e.probability == pytest.approx(e.f_x, abs=1e-5)
            errors.append(e.completeness_error)
            if e.completeness_error > 0.05:
                assert e.warnings  # flagged when still high after recomputing
    assert statistics.median(errors) < 0.01


def test_completeness_on_the_planted_model(planted_engine, planted_corpus):
    errors = []
    for path, _ in planted_corpus[:8]:
        for e in planted_engine.explain(path, ["metformin", "atorvastatin"], as_of=visit_time(path)):
            errors.append(e.completeness_error)
            assert e.completeness_error <= 0.05 or e.warnings
    assert statistics.median(errors) < 0.01


def test_refines_the_path_when_the_error_is_high(synthea_engine, synthea_assessments):
    a = synthea_assessments[0]
    c = a.considerations[0]
    coarse = synthea_engine.explain(a, c, steps=1, intervals=1, max_steps=1)
    refined = synthea_engine.explain(a, c, steps=1, intervals=1, max_steps=64, tolerance=1e-6)
    assert refined.settings["steps_used"] > 1
    assert refined.completeness_error <= coarse.completeness_error
    if coarse.completeness_error > 0.05:
        assert coarse.warnings and "completeness error" in coarse.warnings[0]


@pytest.mark.parametrize("method", ["integrated_gradients", "attention_gradient"])
def test_several_targets_never_mix(synthea_engine, synthea_assessments, method):
    a = synthea_assessments[1]
    targets = [a.considerations[0], a.considerations[-1], a.considerations[len(a.considerations) // 2]]
    together = synthea_engine.explain(a, targets, method=method)
    for target, joint in zip(targets, together, strict=True):
        alone = synthea_engine.explain(a, target, method=method)
        assert joint.target == alone.target
        got = {ev.reference: ev.score for ev in joint.evidence}
        want = {ev.reference: ev.score for ev in alone.evidence}
        assert got.keys() == want.keys()
        assert max(abs(got[r] - want[r]) for r in got) < 1e-6
    scores = [[f.score for f in e.facts] for e in together]
    assert not np.allclose(scores[0], scores[1])  # different labels, different explanations


def test_evidence_references_exist_in_the_input(synthea_engine, synthea_assessments):
    for a in synthea_assessments[:3]:
        references = a.record.references()
        for method in ("integrated_gradients", "attention", "attention_gradient"):
            e = synthea_engine.explain(a, a.considerations[0], method=method)
            assert e.evidence
            assert {ev.reference for ev in e.evidence} <= references
            assert {ev.reference for ev in e.evidence} == {s.reference for s in a.linearization.segments}
            assert len(e.facts) == len(a.encoded) == len(a.linearization.segments)  # one position per fact
            scores = [abs(ev.score) for ev in e.evidence]
            assert scores == sorted(scores, reverse=True)
            assert sum(ev.share for ev in e.evidence) == pytest.approx(1.0)
            assert all(ev.display for ev in e.evidence)


def test_json_round_trip(synthea_engine, synthea_assessments, tmp_path):
    a = synthea_assessments[2]
    e = synthea_engine.explain(a, a.considerations[0])
    path = tmp_path / "explanation.json"
    e.save(path)
    back = X.Explanation.load(path)
    assert back == e
    assert e.to_json() == dataclasses.asdict(e)  # the hand-built JSON form is exactly asdict's
    assert e.to_json()["settings"] is not e.settings  # a copy: editing the JSON leaves e alone
    data = json.loads(path.read_text())
    assert data["format_version"] == X.FORMAT_VERSION
    assert data["model_version"] == synthea_engine.version
    assert data["target"]["code"] == a.considerations[0].code
    data["format_version"] = 99
    with pytest.raises(ExplanationError):
        X.Explanation.from_json(data)
    with pytest.raises(ExplanationError):
        X.Explanation.loads("[1, 2]")


def test_attention_rollout_is_label_agnostic(synthea_engine, synthea_assessments):
    a = synthea_assessments[3]
    first, last = synthea_engine.explain(a, [a.considerations[0], a.considerations[-1]], method="attention")
    assert not first.label_specific and first.score_unit == "relevance"
    assert [ev.score for ev in first.evidence] == [ev.score for ev in last.evidence]
    assert all(ev.score >= 0 for ev in first.evidence)
    assert sum(ev.score for ev in first.evidence) == pytest.approx(1.0)
    grad_first, grad_last = synthea_engine.explain(
        a, [a.considerations[0], a.considerations[-1]], method="attention_gradient"
    )
    assert grad_first.label_specific
    assert [ev.score for ev in grad_first.evidence] != [ev.score for ev in grad_last.evidence]


def test_sources_codes_and_as_of(planted_engine, planted_corpus):
    path, _ = planted_corpus[0]
    when = visit_time(path)
    by_path = planted_engine.explain(path, "metformin", as_of=when)
    by_kind = planted_engine.explain(path, "treatment:metformin", as_of=when)
    record = planted_engine.record_of(path, when)
    by_record = planted_engine.explain(record, "metformin")
    assessment = planted_engine.assess(record)
    by_consideration = planted_engine.explain(assessment, assessment.find("metformin"))
    for other in (by_kind, by_record, by_consideration):
        assert other.evidence == by_path.evidence
    assert by_path.reference_time.startswith(when.date().isoformat())


def test_errors_are_the_projects(planted_engine, planted_corpus):
    path, _ = planted_corpus[0]
    with pytest.raises(UnknownTargetError):
        planted_engine.explain(path, "no-such-code")
    with pytest.raises(ExplanationError):
        planted_engine.explain(path, "metformin", method="no-such-method")
    with pytest.raises(ExplanationError):
        planted_engine.explain(path, "metformin", no_such_setting=1)
    with pytest.raises(ExplanationError):
        planted_engine.explain(path, "metformin", baseline="zeros")
    with pytest.raises(ExplanationError):
        planted_engine.explain(path, [])


def test_cli_explain(planted_model, planted_corpus, capsys):
    from cds_plugin.cli import main

    path, _ = planted_corpus[0]
    as_of = visit_time(path).isoformat()
    args = ["explain", str(path), "--code", "metformin", "--model", str(planted_model), "--as-of", as_of]
    assert main([*args, "--json"]) == 0
    e = X.Explanation.loads(capsys.readouterr().out)
    assert e.target.code == "6809" and e.target.display == "Metformin" and e.method == "integrated_gradients"
    assert main([*args, "--method", "attention", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "what the model looked at" in out and out.count("Observation/") + out.count("Patient/") >= 1
    assert main(["explain", str(path), "--code", "nope", "--model", str(planted_model)]) == 1
    assert "not a label" in capsys.readouterr().err


def test_concurrent_explanations_and_assessments(planted_engine, planted_corpus):
    """Explanations hook private modules only: assessments and explanations in threads are unaffected."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [(p, visit_time(p)) for p, _ in planted_corpus[:4]]
    methods = ("integrated_gradients", "attention_gradient", "attention")

    def explain(i: int):
        path, when = paths[i % len(paths)]
        e = planted_engine.explain(path, "metformin", method=methods[i % len(methods)], as_of=when)
        return {ev.reference: ev.score for ev in e.evidence}

    def assess(i: int):
        path, when = paths[i % len(paths)]
        return planted_engine.assess(path, as_of=when).find("metformin").probability

    expected = [explain(i) for i in range(6)], [assess(i) for i in range(6)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        explained = pool.map(explain, range(6))
        assessed = pool.map(assess, range(6))
        got = list(explained), list(assessed)
    for want, have in zip(expected[0], got[0], strict=True):
        assert want.keys() == have.keys()
        assert max(abs(want[r] - have[r]) for r in want) < 1e-6
    assert np.allclose(expected[1], got[1], atol=1e-6)
