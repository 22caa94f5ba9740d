"""The clinical task: concept keys, labels at T, masking without leakage."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from cds_plugin.fhir.as_of import as_of
from cds_plugin.fhir.reader import read_record
from cds_plugin.model.concepts import ingredient_name
from cds_plugin.model.dataset import bundle_files
from cds_plugin.model.label_space import LabelSpace
from cds_plugin.model.task import (
    KNOWN,
    NEGATIVE,
    POSITIVE_NEW,
    POSITIVE_UNDOCUMENTED,
    YEAR,
    concept_references,
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


LABELS = LabelSpace.from_file()


def test_codes_of_both_generations_are_one_consideration():
    """Hypertension and prediabetes are coded differently in the 2019 and 2025 Synthea sets."""
    from cds_plugin.fhir.record import Coding, Concept, Condition

    def condition(code: str) -> Condition:
        concept = Concept((Coding("http://snomed.info/sct", code),))
        return Condition(reference="Condition/x", path="Condition", date=None, code=concept)

    assert LABELS.of_condition(condition("38341003")) == LABELS.of_condition(condition("59621000"))
    assert LABELS.of_condition(condition("15777000")) == LABELS.of_condition(condition("714628002"))
    assert LABELS.of_condition(condition("444814009")) is None  # viral sinusitis: excluded


@pytest.fixture(scope="module")
def records(corpus):
    return [read_record(p) for p in bundle_files(corpus)]


def examples_of(records, mask_rate=0.5):
    out = []
    for record in records:
        rng = random.Random(record.reference)
        for t in reference_times(record, 3, rng):
            out.append((record, make_example(record, t, rng, LABELS, mask_rate)))
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
    checked = 0
    for record, ex in examples_of(records):
        masked = {c for c, s in ex.states.items() if s == POSITIVE_UNDOCUMENTED}
        own = {ref for ref, i in concept_references(record, LABELS).items() if i in masked}
        present = {f.reference for f in ex.record.facts()}
        assert not own & present
        codes = {code for i in masked if LABELS[i].kind == "diagnosis" for code in LABELS[i].codes}
        for fact in (*ex.record.encounters, *ex.record.procedures, *ex.record.medication_requests):
            for reason in getattr(fact, "reasons", ()):
                assert not set(reason.codes()) & codes
        checked += len(masked)
    assert checked > 0


def test_states_follow_the_definition(records):
    for record, ex in examples_of(records):
        t = ex.reference_time
        documented_at_t = documented_concepts(as_of(record, t), LABELS)
        first = first_occurrences(record, LABELS)
        for i, state in ex.states.items():
            if state in (KNOWN, POSITIVE_UNDOCUMENTED):
                assert i in documented_at_t
            if state == POSITIVE_NEW:
                assert t < first[i] <= t + YEAR
        visible = documented_concepts(ex.record, LABELS)
        for i, state in ex.states.items():
            assert (i in visible) == (state == KNOWN)
        assert ex.state(len(LABELS) + 5) == NEGATIVE


def test_without_rng_nothing_is_masked(records):
    record = next(r for r in records if reference_times(r, 1, random.Random(0)))
    t = reference_times(record, 1, random.Random(0))[0]
    ex = make_example(record, t, None, LABELS)
    assert POSITIVE_UNDOCUMENTED not in ex.states.values()


def test_example_time_is_utc():
    from cds_plugin.model.task import utc

    assert utc(datetime(2020, 1, 1)).tzinfo == UTC
    assert utc(datetime(2020, 1, 1, tzinfo=UTC) + timedelta(hours=1)).hour == 1


@pytest.mark.parametrize("options", [{}, {"activities": True, "reasons": True}])
def test_masking_positions_equals_encoding_the_masked_record(records, options):
    """Training drops the masked considerations' positions; that is the encoding of the masked record,
    with a masked diagnosis's mentions as coded reasons gone too when reasons are positions."""
    from cds_plugin.fhir.linearize import linearize
    from cds_plugin.model.dataset import prepare
    from cds_plugin.model.facts import FactVocabulary
    from cds_plugin.model.task import remove_concepts, situation_at

    checked = reasons_hidden = 0
    for record in records:
        for t in reference_times(record, 2, random.Random(1)):
            situation = situation_at(record, t, LABELS)
            if not situation.documented:
                continue
            lin = linearize(situation.record, **options)
            vocab = FactVocabulary.fit([(record.reference, lin)], min_count=1)
            prepared = prepare(situation, vocab, LABELS, lin)
            for hidden in (frozenset(sorted(situation.documented)[:2]), frozenset(situation.documented)):
                masked = remove_concepts(situation.record, LABELS, hidden)
                direct = vocab.encode(linearize(masked, **options))
                dropped = prepared.masked(hidden)
                assert dropped.codes.tolist() == direct.codes.tolist()
                assert dropped.values.tolist() == direct.values.tolist()
                assert dropped.kinds.tolist() == direct.kinds.tolist()
                reasons_hidden += sum(len(e.reasons) for e in situation.record.encounters) - sum(
                    len(e.reasons) for e in masked.encounters
                )
                checked += 1
    assert checked
    assert reasons_hidden  # the corpus has masked diagnoses named as encounter reasons
