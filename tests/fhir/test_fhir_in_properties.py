"""Property tests: any input gives a record or a project error, and provenance always round-trips."""

from __future__ import annotations

import copy
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_plugin.errors import CdsPluginError
from cds_plugin.fhir import PatientRecord, linearize, read_prefetch, read_record, read_records
from cds_plugin.fhir.as_of import as_of
from cds_plugin.fhir.resources import latest_date
from tests.fhir.conftest import EDGE, edge, input_names, patient_bundle

#: CDS_PLUGIN_HYPOTHESIS_EXAMPLES raises the example count for a deeper run (default keeps the suite fast).
SETTINGS = settings(
    max_examples=int(os.environ.get("CDS_PLUGIN_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Element names the readers look at, so random objects hit the code paths that matter.
ELEMENTS = [
    "resourceType",
    "id",
    "entry",
    "resource",
    "fullUrl",
    "type",
    "link",
    "relation",
    "url",
    "search",
    "mode",
    "subject",
    "patient",
    "reference",
    "display",
    "code",
    "coding",
    "system",
    "text",
    "status",
    "intent",
    "clinicalStatus",
    "verificationStatus",
    "category",
    "onsetDateTime",
    "onsetPeriod",
    "abatementDateTime",
    "abatementBoolean",
    "recordedDate",
    "effectiveDateTime",
    "effectivePeriod",
    "issued",
    "valueQuantity",
    "valueCodeableConcept",
    "valueString",
    "valueInteger",
    "valueRatio",
    "valueRange",
    "value",
    "unit",
    "comparator",
    "component",
    "interpretation",
    "referenceRange",
    "low",
    "high",
    "medicationCodeableConcept",
    "medicationReference",
    "contained",
    "authoredOn",
    "dispenseRequest",
    "validityPeriod",
    "dosageInstruction",
    "timing",
    "repeat",
    "boundsPeriod",
    "period",
    "start",
    "end",
    "class",
    "reasonCode",
    "performedDateTime",
    "performedPeriod",
    "occurrenceDateTime",
    "vaccineCode",
    "reaction",
    "manifestation",
    "activity",
    "detail",
    "addresses",
    "gender",
    "birthDate",
    "deceasedBoolean",
    "deceasedDateTime",
    "dataAbsentReason",
]
RESOURCE_TYPES = [
    "Bundle",
    "Patient",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Medication",
    "AllergyIntolerance",
    "Procedure",
    "Immunization",
    "Encounter",
    "CarePlan",
    "Claim",
    "OperationOutcome",
]
STRINGS = st.one_of(
    st.sampled_from(
        [
            "Patient/p",
            "#m",
            "urn:uuid:00000000-0000-4000-8000-000000000000",
            "Patient?identifier=x|1",
            "http://x.org/fhir/Patient/p/_history/2",
            "2020-02-29T12:00:00+14:00",
            "2020-13",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "p",
            "active",
            "resolved",
            "stopped",
            "",
        ]
    ),
    st.text(max_size=12),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    STRINGS,
)


def _json(children: st.SearchStrategy) -> st.SearchStrategy:
    keys = st.one_of(st.sampled_from(ELEMENTS), st.text(max_size=8))
    resource = st.builds(
        lambda rtype, body: {**body, "resourceType": rtype},
        st.sampled_from(RESOURCE_TYPES),
        st.dictionaries(keys, children, max_size=6),
    )
    return st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=6), resource)


JSON = st.recursive(SCALARS, _json, max_leaves=40)
DATES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([UTC, None])
)


def check_record(record: PatientRecord, source: Any) -> None:
    """What must hold for any record read from `source`."""
    assert record.references() <= input_names(source)
    lin = linearize(record)
    assert set(lin.references()) <= record.references()
    for (start, end), segment in zip(lin.offsets(), lin.segments, strict=True):
        assert lin.text[start:end] == segment.text


def read_any(source: Any, **kwargs: Any) -> list[PatientRecord]:
    try:
        return list(read_records(source, **kwargs))
    except CdsPluginError:
        return []


@SETTINGS
@given(JSON, st.booleans(), st.sampled_from(["fast", "full"]))
def test_arbitrary_json_gives_a_record_or_a_project_error(data: Any, strict: bool, validation: str) -> None:
    if isinstance(data, str):
        data = [data]  # a bare str is a file name; never let random text name a folder
    for record in read_any(data, strict=strict, validation=validation):
        check_record(record, data)
    try:
        read_record(data, strict=strict)
    except CdsPluginError:
        pass
    if isinstance(data, dict) and "resourceType" not in data:
        try:
            check_record(read_prefetch(data), data)
        except CdsPluginError:
            pass


@SETTINGS
@given(JSON)
def test_arbitrary_json_text_gives_a_record_or_a_project_error(data: Any) -> None:
    text = json.dumps(data, allow_nan=True)  # NaN/Infinity are not JSON: must be refused cleanly
    for record in read_any(text.encode()):
        check_record(record, json.loads(text))
    read_any(text.encode("utf-16"))


@SETTINGS
@given(st.binary(max_size=64))
def test_arbitrary_bytes(data: bytes) -> None:
    read_any(data)
    read_any(b"\x1f\x8b" + data)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*prefix, i)))
    return out


BASES = {
    "hypertension-adult-2019": patient_bundle("hypertension-adult-2019"),
    "medication-reference": edge("medication-reference"),
    "reference-styles": edge("reference-styles"),
    "searchset-paging": edge("searchset-paging"),
    "batch-response-nested": edge("batch-response-nested"),
    "contained-resources": edge("contained-resources"),
    "timezones-as-of": edge("timezones-as-of"),
}
BASE_PATHS = {name: [p for p in _paths(data) if p] for name, data in BASES.items()}

MUTATION = st.tuples(
    st.sampled_from(["delete", "replace", "stringify", "empty", "duplicate"]),
    st.integers(min_value=0, max_value=10**9),
    JSON,
)


def mutate(data: Any, paths: list[tuple], mutation: tuple) -> None:
    kind, pick, value = mutation
    path = paths[pick % len(paths)]
    parent = data
    for step in path[:-1]:
        try:
            parent = parent[step]
        except (KeyError, IndexError, TypeError):
            return  # an earlier mutation removed this path
    last = path[-1]
    if isinstance(parent, dict) and last not in parent:
        return
    if isinstance(parent, list) and (not isinstance(last, int) or last >= len(parent)):
        return
    if not isinstance(parent, dict | list):
        return
    if kind == "delete":
        del parent[last]
    elif kind == "replace":
        parent[last] = value
    elif kind == "stringify":
        parent[last] = json.dumps(parent[last])
    elif kind == "empty":
        parent[last] = type(parent[last])() if isinstance(parent[last], dict | list | str) else None
    elif isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))


@SETTINGS
@given(st.sampled_from(sorted(BASES)), st.lists(MUTATION, min_size=1, max_size=4), st.booleans())
def test_mutated_real_inputs(name: str, mutations: list[tuple], strict: bool) -> None:
    data = copy.deepcopy(BASES[name])
    for mutation in mutations:
        mutate(data, BASE_PATHS[name], mutation)
    for record in read_any(data, strict=strict):
        check_record(record, data)
        cut = record.data_until or datetime(2000, 1, 1, tzinfo=UTC)
        check_record(as_of(record, cut - timedelta(days=400)), data)


@SETTINGS
@given(st.sampled_from(sorted(BASES)), DATES)
def test_as_of_never_keeps_a_later_fact(name: str, when: datetime) -> None:
    record = as_of(read_record(BASES[name]), when)
    cut = when if when.tzinfo else when.replace(tzinfo=UTC)
    assert record.reference_time == cut
    for fact in record.facts():
        if fact.resource_type != "Patient":
            latest = latest_date(fact)
            assert latest is None or latest <= cut
    assert record.patient.deceased_at is None or record.patient.deceased_at <= cut
    assert linearize(record).reference_time == cut


@pytest.mark.parametrize("name", sorted(p.stem for p in EDGE.glob("*.json") if "page2" not in p.stem))
def test_edge_fixtures_round_trip(name: str) -> None:
    data = edge(name)
    for record in read_records(data):
        check_record(record, data)
