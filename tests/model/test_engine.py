"""The Engine's public API: load, assess, assess_many, documented flags, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date

import pytest

from cds_plugin.errors import FhirInputError
from cds_plugin.fhir.reader import read_record
from cds_plugin.model.dataset import bundle_files
from cds_plugin.model.task import documented_concepts


def test_assess_rates_every_label_ranked(engine, corpus):
    bundle = bundle_files(corpus)[0]
    a = engine.assess(bundle)
    assert len(a.diagnoses) + len(a.treatments) == len(engine.labels)
    for group in (a.diagnoses, a.treatments):
        probs = [c.probability for c in group]
        assert probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs)
    assert a.model_version == engine.version
    assert {c.kind for c in a.diagnoses} <= {"diagnosis"} and {c.kind for c in a.treatments} <= {"treatment"}


def test_documented_flags_match_the_record(engine, corpus):
    bundle = bundle_files(corpus)[1]
    record = read_record(bundle)
    a = engine.assess(record)
    documented = documented_concepts(record, engine.labels)
    for c in a.considerations:
        assert c.documented == (c.label_index in documented)
        assert c.codes == engine.labels[c.label_index].codes


def test_as_of_changes_the_input(engine, corpus):
    bundle = bundle_files(corpus)[2]
    now = engine.assess(bundle)
    early = engine.assess(bundle, as_of=date(1990, 1, 1))
    assert early.reference_time.year == 1990
    assert len(early.encoded) <= len(now.encoded)


def test_assess_many_matches_assess(engine, corpus):
    files = bundle_files(corpus)[:5]
    many = engine.assess_many(files, batch_size=2)
    for f, a in zip(files, many, strict=True):
        single = {c.code: c.probability for c in engine.assess(f).considerations}
        batched = {c.code: c.probability for c in a.considerations}
        assert single.keys() == batched.keys()
        assert all(abs(single[k] - batched[k]) < 1e-4 for k in single)  # padding changes float sums only


def test_bad_input_is_the_projects_error(engine):
    with pytest.raises(FhirInputError):
        engine.assess({"resourceType": "Bundle", "type": "collection", "entry": []})


def test_default_engine_import():
    """`cds_plugin.Engine` is the model's Engine with explanations (the model never imports explain)."""
    from cds_plugin import Engine
    from cds_plugin.explain.engine import Engine as Explaining
    from cds_plugin.model.engine import Engine as Predicting

    assert Engine is Explaining and issubclass(Engine, Predicting)
    assert not hasattr(Predicting, "explain")


def test_model_package_never_imports_explain():
    code = (
        "import sys, cds_plugin.model.engine, cds_plugin.model.training, cds_plugin.model.evaluation; "
        "print(any(m.startswith('cds_plugin.explain') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


def test_labels_expose_codes_and_plausibility(engine):
    for label in engine.labels:
        assert label.code and label.codes and label.system and label.display
        assert label.kind in ("diagnosis", "treatment")


def test_implausible_considerations_are_never_suggested(engine, corpus):
    """A consideration outside its sexes or ages is rated but never suggested (issue: plausibility)."""
    import dataclasses

    from cds_plugin.model.label_space import LabelSpace

    record = read_record(bundle_files(corpus)[0])
    labels = engine.labels
    narrowed = LabelSpace(
        [
            dataclasses.replace(label, sexes=("female",) if record.patient.sex == "male" else ("male",))
            for label in labels
        ],
        labels.excluded,
    )
    engine.model.labels = engine.labels = narrowed
    try:
        a = engine.assess(record)
    finally:
        engine.model.labels = engine.labels = labels
    assert a.considerations and not any(c.plausible or c.suggested for c in a.considerations)


def test_cli_assess_json(tiny_model, corpus):
    bundle = bundle_files(corpus)[0]
    out = subprocess.run(
        [sys.executable, "-m", "cds_plugin.cli", "assess", str(bundle), "--model", str(tiny_model), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body = json.loads(out.stdout)
    assert body["diagnoses"] and {
        "code",
        "system",
        "display",
        "probability",
        "threshold",
        "documented",
    } <= set(body["diagnoses"][0])


def test_cli_assess_bad_date(tiny_model, corpus):
    bundle = bundle_files(corpus)[0]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cds_plugin.cli",
            "assess",
            str(bundle),
            "--model",
            str(tiny_model),
            "--as-of",
            "x",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--as-of" in out.stderr
