"""Values, units, dates and kinds in clinical words (cds_plugin.fhir.clinical_text), over every observation
of every fixture."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cds_plugin.fhir import read_record, read_records
from cds_plugin.fhir.clinical_text import (
    clinical_date,
    clinical_number,
    clinical_unit,
    kind_of,
    observation_value,
    panel_value,
    quantity_text,
)
from cds_plugin.fhir.record import Observation
from tests.clinical_words import WORDS_FOR_KINDS, value_problems
from tests.fhir.conftest import EDGE, PATIENT_NAMES, patient_bundle


@pytest.mark.parametrize(
    ("value", "unit", "codes", "shown"),
    [
        (27.2225, "kg/m2", ["39156-5"], "27.2 kg/m²"),
        (6.94, "%", ["4548-4"], "6.9 %"),
        (6.0, "%", ["4548-4"], "6.0 %"),
        (128.4, "mm[Hg]", ["8480-6"], "128 mmHg"),
        (95.7, "mg/dL", ["2339-0"], "96 mg/dL"),
        (212.38, "mg/dL", ["2093-3"], "212 mg/dL"),
        (81.44, "kg", ["29463-7"], "81.4 kg"),
        (37.25, "Cel", ["8310-5"], "37.2 °C"),
        (4.0, "{score}", ["72514-3"], "4"),
        (180.5, "[lb_av]", [], "180.5 lb"),
        (7.21, "10*3/uL", ["6690-2"], "7.2 ×10³/µL"),
        (58.7, "mL/min/{1.73_m2}", ["33914-3"], "59 mL/min/1.73 m²"),
        (0.921, "mg/dL", ["38483-4"], "0.92 mg/dL"),
        (72.4, "{beats}/min", [], "72 /min"),
        (0.0351, "ng/mL", [], "0.0351 ng/mL"),
        (12345.6, "steps", [], "12346 steps"),
        (1.23456, "mmol/L", [], "1.2 mmol/L"),
        (3.14159, None, [], "3.14"),
    ],
)
def test_quantities(value, unit, codes, shown):
    assert quantity_text(value, unit, codes) == shown


def test_units_and_numbers():
    assert clinical_unit("{#}") == "" and clinical_unit("(score)") == "" and clinical_unit("/a") == "/year"
    assert clinical_unit("umol/L") == "µmol/L" and clinical_unit("m2") == "m²"
    assert clinical_number(-0.0004, 1) == "0.0" and clinical_number(-0.0004) == "-0.0004"
    assert clinical_number(float("nan")) == "?"
    assert quantity_text(5.0, "mg/dL", ["2339-0"], comparator="<") == "<5 mg/dL"
    assert clinical_date(datetime(2020, 3, 2, 23, 30, tzinfo=UTC)) == "2020-03-02"


def _observations():
    for name in PATIENT_NAMES:
        yield from read_record(patient_bundle(name)).observations
    for path in sorted(EDGE.glob("*.json")):
        if path.stem == "searchset-paging.page2":
            continue
        for record in read_records(path):
            yield from record.observations


def test_every_fixture_observation_in_clinical_words():
    seen = 0
    problems = []
    for fact in _observations():
        value = observation_value(fact)
        loinc = next(iter(fact.code.codes("http://loinc.org")), None) if fact.code else None
        found = value_problems(value, loinc, fact.value)
        if found:
            problems.append((fact.reference, fact.unit, fact.value, value, found))
        assert kind_of("Observation", fact) in WORDS_FOR_KINDS
        seen += 1
    assert seen > 500 and not problems, problems[:10]


def test_a_blood_pressure_panel_reads_systolic_over_diastolic():
    record = read_record(patient_bundle("heart-failure-elderly-2019"))
    panels: dict[str, list[Observation]] = {}
    for fact in record.observations:
        if fact.panel is not None:
            panels.setdefault(fact.reference, []).append(fact)
    bp = [
        facts
        for facts in panels.values()
        if {c for f in facts for c in f.code.codes()} >= {"8480-6", "8462-4"}
    ]
    assert bp
    for facts in bp:
        value = panel_value(facts)
        systolic, diastolic = value.removesuffix(" mmHg").split("/")
        assert systolic.isdigit() and diastolic.isdigit(), value
