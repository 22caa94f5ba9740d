"""Search semantics without HTTP: date ranges and prefixes, token escapes, ordering of undated resources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cds_plugin.errors import CdsPluginError, NotFoundError
from cds_plugin.sandbox.fhir_search import parse_date_range, search, split_unescaped
from cds_plugin.sandbox.fhir_store import FhirStore


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2020", utc(2020, 1, 1), utc(2021, 1, 1)),
        ("2020-02", utc(2020, 2, 1), utc(2020, 3, 1)),
        ("2020-12", utc(2020, 12, 1), utc(2021, 1, 1)),
        ("2020-02-29", utc(2020, 2, 29), utc(2020, 3, 1)),
        ("2020-02-29T10:15", utc(2020, 2, 29, 10, 15), utc(2020, 2, 29, 10, 16)),
        ("2020-02-29T10:15:30Z", utc(2020, 2, 29, 10, 15, 30), utc(2020, 2, 29, 10, 15, 31)),
        ("2020-02-29T10:15:30+02:00", utc(2020, 2, 29, 8, 15, 30), utc(2020, 2, 29, 8, 15, 31)),
        ("2020-01-01T00:30:00-01:00", utc(2020, 1, 1, 1, 30), utc(2020, 1, 1, 1, 30, 1)),
        (
            "2020-02-29T10:15:30.5Z",
            utc(2020, 2, 29, 10, 15, 30, 500000),
            utc(2020, 2, 29, 10, 15, 30, 600000),
        ),
    ],
)
def test_date_ranges_follow_precision(text: str, start: datetime, end: datetime) -> None:
    assert parse_date_range(text) == (start, end)


@pytest.mark.parametrize(
    "text", ["2021-02-29", "2020-13", "20", "2020-1", "2020-01-01T25:00:00Z", "soon", ""]
)
def test_invalid_dates(text: str) -> None:
    assert parse_date_range(text) is None


def test_millisecond_precision() -> None:
    start, end = parse_date_range("2020-01-01T00:00:00.123Z") or (None, None)
    assert start == utc(2020, 1, 1, 0, 0, 0, 123000)
    assert end - start == timedelta(milliseconds=1)


def obs(oid: str, **fields: object) -> dict:
    return {"resourceType": "Observation", "id": oid, "subject": {"reference": "Patient/p"}, **fields}


@pytest.fixture(scope="module")
def store() -> FhirStore:
    return FhirStore.load(
        [
            obs("y2019", effectiveDateTime="2019"),
            obs("d0315", effectiveDateTime="2020-03-15"),
            obs("m03", effectiveDateTime="2020-03"),
            obs("t0315", effectiveDateTime="2020-03-15T23:59:59Z"),
            obs("period", effectivePeriod={"start": "2020-03-20", "end": "2020-04-01"}),
            obs("undated-b"),
            obs("undated-a"),
            obs("escaped", code={"coding": [{"system": "urn:a|b", "code": "x,y"}]}),
        ]
    )


def ids(store: FhirStore, *params: tuple[str, str]) -> list[str]:
    return [r["id"] for r in search(store, "Observation", list(params)).resources]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2020-03-15", {"d0315", "t0315"}),
        ("2020-03", {"d0315", "m03", "t0315", "period"}),
        ("eq2020", {"d0315", "m03", "t0315", "period"}),
        ("ne2020", {"y2019"}),
        ("lt2020-03-15", {"y2019", "m03"}),  # a month that starts before the day
        ("le2020-03-15", {"y2019", "m03", "d0315", "t0315"}),
        ("gt2020-03-15", {"m03", "period"}),  # a month that ends after the day
        ("ge2020-03-15", {"m03", "d0315", "t0315", "period"}),
        ("sa2020-03-15", {"period"}),
        ("eb2020-03", {"y2019"}),
        ("gt2020-03-15T23:59:58Z", {"m03", "d0315", "t0315", "period"}),
    ],
)
def test_date_prefix_semantics_on_ranges(store: FhirStore, value: str, expected: set[str]) -> None:
    assert set(ids(store, ("date", value))) == expected


def test_undated_resources_sort_last_either_way(store: FhirStore) -> None:
    ascending = ids(store)
    descending = ids(store, ("_sort", "-date"))
    assert ascending[-3:] == ["escaped", "undated-a", "undated-b"]  # by id among themselves
    assert descending[-3:] == ["escaped", "undated-a", "undated-b"]
    assert ascending[0] == "y2019"
    assert descending[0] == "period"
    # equal start dates keep id order: d0315 and t0315 differ, m03 starts on the 1st
    assert ascending[:4] == ["y2019", "m03", "d0315", "t0315"]


def test_sort_by_id(store: FhirStore) -> None:
    assert ids(store, ("_sort", "_id"))[:2] == ["d0315", "escaped"]


def test_token_escapes(store: FhirStore) -> None:
    assert split_unescaped(r"a\,b,c", ",") == [r"a\,b", "c"]
    assert ids(store, ("code", r"urn:a\|b|x\,y")) == ["escaped"]
    assert ids(store, ("code", r"x\,y")) == ["escaped"]
    assert ids(store, ("code", "x")) == []


def test_count_is_capped_and_errors_are_typed(store: FhirStore) -> None:
    assert search(store, "Observation", [("_count", "100000")]).count == 1000
    with pytest.raises(CdsPluginError) as exc:
        search(store, "Observation", [("date", "gt-soon")])
    assert exc.value.status == 400
    assert exc.value.expression == "date"
    with pytest.raises(NotFoundError):
        search(store, "lowercase", [])
