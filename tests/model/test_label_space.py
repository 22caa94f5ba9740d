"""The curated label file: every training code listed once, clinically bounded, editable with clear errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from functools import cache

import pytest

from cds_plugin.model.concepts import RXNORM, SNOMED
from cds_plugin.model.label_space import DEFAULT_LABELS_FILE, LabelFileError, LabelSpace
from tests.conftest import TRAIN_DATA

LABELS = LabelSpace.from_file()


@cache
def training_codes() -> tuple[frozenset[str], frozenset[str]]:
    """SNOMED codes of every Condition and codes of every MedicationRequest medication in the corpus."""
    if not TRAIN_DATA.exists():
        pytest.skip(f"training data not found at {TRAIN_DATA}")
    conditions, medications = set(), set()
    for path in sorted(TRAIN_DATA.glob("*/*.json.gz")):
        bundle = json.loads(gzip.decompress(path.read_bytes()))
        resources = [e["resource"] for e in bundle.get("entry", [])]
        by_url = {e.get("fullUrl"): e["resource"] for e in bundle.get("entry", [])}
        for r in resources:
            if r["resourceType"] == "Condition":
                conditions |= {
                    c["code"] for c in r.get("code", {}).get("coding", []) if c.get("system") == SNOMED
                }
            elif r["resourceType"] == "MedicationRequest":
                concept = r.get("medicationCodeableConcept")
                if concept is None and "medicationReference" in r:
                    concept = by_url.get(r["medicationReference"].get("reference"), {}).get("code")
                medications |= {c["code"] for c in (concept or {}).get("coding", [])}
    return frozenset(conditions), frozenset(medications)


def test_the_file_has_both_kinds_and_real_systems():
    kinds = Counter(label.kind for label in LABELS)
    assert kinds["diagnosis"] >= 10 and kinds["treatment"] >= 10
    for label in LABELS:
        assert label.system == (SNOMED if label.kind == "diagnosis" else RXNORM)
        assert label.code.isdigit(), label  # SNOMED CT concept ids and RxCUIs are numbers
        assert label.rationale.strip() and label.display.strip()
        assert label.sexes and 0 <= label.min_age <= label.max_age <= 120
        if label.kind == "treatment":
            assert label.ingredients, label.display


def test_no_code_is_in_two_places():
    seen: Counter[tuple[str, str]] = Counter()
    for label in LABELS:
        seen.update((label.kind, c) for c in label.codes)
    for exclusion in LABELS.excluded:
        seen.update((exclusion.kind, c) for c in exclusion.codes)
    assert [key for key, n in seen.items() if n > 1] == []
    ingredients = Counter(name for label in LABELS for name in label.ingredients)
    assert [name for name, n in ingredients.items() if n > 1] == []


def test_every_member_code_is_seen_in_training_and_every_training_code_is_listed():
    conditions, medications = training_codes()
    for label in LABELS:
        seen = conditions if label.kind == "diagnosis" else medications
        assert set(label.codes) <= seen, (label.display, sorted(set(label.codes) - seen))
    listed = {(label.kind, c) for label in LABELS for c in label.codes}
    listed |= {(e.kind, c) for e in LABELS.excluded for c in e.codes}
    assert {c for c in conditions if ("diagnosis", c) not in listed} == set()
    assert {c for c in medications if ("treatment", c) not in listed} == set()


def test_every_exclusion_has_a_reason():
    assert LABELS.excluded and all(e.reason.strip() for e in LABELS.excluded)


@pytest.mark.parametrize(
    "code",
    [
        "444814009",  # viral sinusitis
        "195662009",  # acute viral pharyngitis
        "10509002",  # acute bronchitis
        "72892002",  # normal pregnancy
        "19169002",  # miscarriage in first trimester
        "44465007",  # sprain of ankle
        "74400008",  # appendicitis
        "410429000",  # cardiac arrest
        "55680006",  # drug overdose
    ],
)
def test_clinically_senseless_questions_are_excluded(code):
    assert not any(code in label.codes for label in LABELS if label.kind == "diagnosis")


@pytest.mark.parametrize(
    "ingredient", ["acetaminophen", "ibuprofen", "naproxen", "amoxicillin / clavulanate", "epinephrine"]
)
def test_over_the_counter_and_one_course_drugs_are_not_treatments(ingredient):
    assert not any(ingredient in label.ingredients for label in LABELS)


def test_a_missing_reason_or_a_duplicate_code_is_a_clear_error(tmp_path):
    text = DEFAULT_LABELS_FILE.read_text()
    bad = tmp_path / "labels.toml"
    bad.write_text(text + '\n[[excluded]]\nkind = "diagnosis"\ncodes = ["1"]\ndisplay = "x"\nreason = ""\n')
    with pytest.raises(LabelFileError, match="no reason"):
        LabelSpace.from_file(bad)
    first = LABELS[0]
    entry = f'kind = "{first.kind}"\ncodes = ["{first.codes[0]}"]\ndisplay = "x"\nreason = "r"\n'
    bad.write_text(text + "\n[[excluded]]\n" + entry)
    with pytest.raises(LabelFileError, match="both"):
        LabelSpace.from_file(bad)


def test_cli_labels_prints_the_table():
    out = subprocess.run(
        [sys.executable, "-m", "cds_plugin.cli", "labels", "--excluded", "--width", "250"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "Hypertension" in out.stdout and "excluded" in out.stdout


def test_not_with_rules_name_other_considerations_and_the_shipped_model_carries_them(tmp_path):
    ruled = {label.id: label.not_with for label in LABELS if label.not_with}
    assert ruled["diagnosis:714628002"] == ("diagnosis:44054006",)  # prediabetes beside diabetes
    assert ruled["treatment:11170"] == ("diagnosis:88805009",)  # verapamil beside heart failure
    from cds_plugin.model.engine import DEFAULT_MODEL_DIR

    shipped = LabelSpace.from_json(json.loads((DEFAULT_MODEL_DIR / "labels.json").read_text()))
    assert {label.id: label.not_with for label in shipped if label.not_with} == ruled
    bad = tmp_path / "labels.toml"
    text = DEFAULT_LABELS_FILE.read_text()
    bad.write_text(text.replace('not_with = ["diagnosis:44054006"]', 'not_with = ["diagnosis:1"]', 1))
    with pytest.raises(LabelFileError, match="not_with"):
        LabelSpace.from_file(bad)


def test_a_documented_consideration_rules_out_the_ones_it_supersedes():
    """Type 2 diabetes on the problem list: prediabetes is rated but never suggested."""
    from cds_plugin import Engine
    from tests.test_fixture_manifest import FIXTURES

    engine = Engine.load()
    assessment = engine.assess(str(FIXTURES / "patients" / "diabetes-adult-2025.json"))
    diabetes, prediabetes = assessment.find("diagnosis:44054006"), assessment.find("diagnosis:714628002")
    assert diabetes.documented
    assert prediabetes.ruled_out_by == "Type 2 diabetes mellitus" and not prediabetes.suggested
