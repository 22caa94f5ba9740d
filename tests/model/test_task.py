"""The clinical task: concept keys, labels at T, masking without leakage."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from cds_plugin.fhir.reader import read_record
from cds_plugin.model.concepts import ingredient_name, is_clinical_condition
from cds_plugin.model.dataset import bundle_files
from cds_plugin.model.task import (
    KNOWN,
    NEGATIVE,
    POSITIVE_NEW,
    POSITIVE_UNDOCUMENTED,
    YEAR,
    documented_concepts,
    first_occurrences,
    make_example,
    reference_times,
)


@pytest.mark.parametrize(
    ("display", "ingredient"),
    [
        ("Simvastatin 20 MG Oral Tablet", "simvastatin"),
        ("24 HR metoprolol succinate 100 MG Extended Release Oral Tablet [Toprol]", "metoprolol"),
        ("Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet", "amoxicillin / clavulanate"),
        ("Naproxen sodium 220 MG Oral Tablet", "naproxen"),
        ("ferrous sulfate 325 MG Oral Tablet", "ferrous sulfate"),
        ("Camila 28 Day Pack", "norethindrone"),
        ("{28 (Norethindrone 0.35 MG Oral Tablet) } Pack [Camila]", "norethindrone"),
        ("Diazepam [Valium]", "diazepam"),
        ("NDA020800 0.3 ML Epinephrine 1 MG/ML Auto-Injector", "epinephrine"),
        ("Vitamin B 12 5 MG/ML Injectable Solution", "vitamin b12"),
    ],
)
def test_ingredients(display, ingredient):
    assert ingredient_name(display) == ingredient


@pytest.mark.parametrize(
    ("display", "clinical"),
    [
        ("Hypertension", True),
        ("Essential hypertension (disorder)", True),
        ("Full-time employment (finding)", False),
        ("Medication review due (situation)", False),
        ("Stress (finding)", False),
        ("Received higher education (finding)", False),
        ("Housing unsatisfactory (finding)", False),
        ("History of appendectomy", False),
        ("Body mass index 30+ - obesity (finding)", True),
    ],
)
def test_social_and_administrative_findings_are_never_labels(display, clinical):
    assert is_clinical_condition(display) is clinical


@pytest.fixture(scope="module")
def records(corpus):
    return [read_record(p) for p in bundle_files(corpus)]


def examples_of(records, mask_rate=0.5):
    out = []
    for record in records:
        rng = random.Random(record.reference)
        for t in reference_times(record, 3, rng):
            out.append((record, make_example(record, t, rng, mask_rate)))
    return out


def test_reference_times_have_a_year_of_follow_up_while_alive(records):
    for record in records:
        for t in reference_times(record, 4, random.Random(0)):
            assert t + YEAR <= record.data_until
            assert record.patient.deceased_at is None or t + YEAR < record.patient.deceased_at


def test_no_fact_dated_after_t_reaches_the_input(records):
    """Leakage: the input is the record as of T."""
    pairs = examples_of(records)
    assert pairs
    for _, ex in pairs:
        for fact in ex.record.facts():
            if fact.date is not None and fact.resource_type != "Patient":
                assert fact.date <= ex.reference_time, (fact.reference, fact.date, ex.reference_time)


def test_masked_concepts_leave_no_trace(records):
    """Leakage: every resource of a masked concept is gone, and so are its mentions as reasons."""
    from cds_plugin.model.concepts import diagnosis_key, treatment_key

    checked = 0
    for record, ex in examples_of(records):
        masked = {c for c, s in ex.states.items() if s == POSITIVE_UNDOCUMENTED}
        own = {c.reference for c in record.conditions if (k := diagnosis_key(c)) and k.id in masked}
        own |= {m.reference for m in record.medication_requests if (k := treatment_key(m)) and k.id in masked}
        present = {f.reference for f in ex.record.facts()}
        assert not own & present
        codes = {c.split(":", 1)[1] for c in masked if c.startswith("diagnosis:")}
        for fact in (*ex.record.encounters, *ex.record.procedures, *ex.record.medication_requests):
            for reason in getattr(fact, "reasons", ()):
                assert not set(reason.codes()) & codes
        checked += len(masked)
    assert checked > 0


def test_states_follow_the_definition(records):
    for record, ex in examples_of(records):
        t = ex.reference_time
        documented_at_t = documented_concepts(record.as_of(t))
        first = first_occurrences(record)
        for cid, state in ex.states.items():
            if state in (KNOWN, POSITIVE_UNDOCUMENTED):
                assert cid in documented_at_t
            if state == POSITIVE_NEW:
                assert t < first[cid][0] <= t + YEAR
        visible = documented_concepts(ex.record)
        for cid, state in ex.states.items():
            assert (cid in visible) == (state == KNOWN)
        assert ex.state("diagnosis:0-not-a-code") == NEGATIVE


def test_without_rng_nothing_is_masked(records):
    record = next(r for r in records if reference_times(r, 1, random.Random(0)))
    t = reference_times(record, 1, random.Random(0))[0]
    ex = make_example(record, t, None)
    assert POSITIVE_UNDOCUMENTED not in ex.states.values()


def test_example_time_is_utc():
    from cds_plugin.model.task import _utc

    assert _utc(datetime(2020, 1, 1)).tzinfo == UTC
    assert _utc(datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=1)).hour == 1
