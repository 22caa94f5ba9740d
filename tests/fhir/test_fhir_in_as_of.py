"""as_of: nothing dated after the cut survives, and statuses are read as of the cut."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from cds_plugin.fhir import PatientRecord, read_record
from cds_plugin.fhir.as_of import as_of
from cds_plugin.fhir.resources import latest_date
from tests.fhir.conftest import edge, patient_bundle


def by_id(record: PatientRecord) -> dict[str, object]:
    return {f.reference.split("/", 1)[1]: f for f in record.facts()}


def assert_nothing_after(record: PatientRecord, cut: datetime) -> None:
    for fact in record.facts():
        if fact.resource_type == "Patient":
            assert fact.deceased_at is None or fact.deceased_at <= cut
            continue
        latest = latest_date(fact)
        assert latest is None or latest <= cut, (fact.reference, fact.path)


def test_date_only_values_count_as_that_day() -> None:
    data = edge("timezones-as-of")
    # 2020-03-04 as a date: the whole day, so the date-only onset counts; the New York evening onset
    # (2020-03-05T04:30Z) does not.
    facts = by_id(read_record(data, as_of=date(2020, 3, 4)))
    assert "tz-date-only" in facts and "tz-evening-new-york" not in facts
    # The overnight encounter started that day and was still running at the end of it.
    assert facts["tz-overnight"].status == "in-progress" and facts["tz-overnight"].end is None
    # The glucose was drawn that day but only issued the next: not known yet.
    assert "tz-issued-late" not in facts


def test_aware_cut_compared_in_utc() -> None:
    data = edge("timezones-as-of")
    new_york = timezone(timedelta(hours=-5))
    just_before = datetime(2020, 3, 4, 23, 29, tzinfo=new_york)
    just_after = datetime(2020, 3, 4, 23, 30, tzinfo=new_york)
    assert "tz-evening-new-york" not in by_id(read_record(data, as_of=just_before))
    assert "tz-evening-new-york" in by_id(read_record(data, as_of=just_after))
    naive = datetime(2020, 3, 5, 4, 30)  # naive means UTC
    assert "tz-evening-new-york" in by_id(read_record(data, as_of=naive))


def test_statuses_as_of_the_cut() -> None:
    record = read_record(edge("timezones-as-of"))
    cut = datetime(2020, 3, 10, tzinfo=UTC)
    facts = by_id(as_of(record, cut))
    # Abated later: still active then, abatement not yet known.
    bronchitis = facts["tz-evening-new-york"]
    assert bronchitis.clinical_status == "active" and bronchitis.abatement is None and not bronchitis.abated
    # Resolved at a time the data does not give, with data after the cut: unknown.
    assert facts["tz-resolved-undated"].clinical_status == "unknown"
    # Stopped after the cut (validity period end): active then.
    assert facts["tz-stopped-later"].status == "active" and facts["tz-stopped-later"].end is None
    # Stopped at an unknown time: unknown.
    assert facts["tz-stopped-undated"].status == "unknown"
    # Recorded after the cut though its onset was earlier: not known at the cut.
    assert "tz-recorded-late" not in facts
    assert_nothing_after(as_of(record, cut), cut)


def test_statuses_stand_after_all_the_data() -> None:
    record = read_record(edge("timezones-as-of"))
    later = as_of(record, date(2030, 1, 1))
    facts = by_id(later)
    assert facts["tz-resolved-undated"].clinical_status == "resolved"
    assert facts["tz-stopped-undated"].status == "stopped"
    assert facts["tz-evening-new-york"].clinical_status == "resolved"
    assert len(list(later.facts())) == len(list(record.facts()))


def test_reference_time_and_age_follow_the_cut() -> None:
    record = read_record(edge("timezones-as-of"), as_of=date(2020, 3, 4))
    assert record.as_of_time == record.reference_time == datetime(2020, 3, 4, 23, 59, 59, 999999, tzinfo=UTC)
    assert 59.9 < record.age < 60.0  # born 1960-03-05
    # Cutting a cut record later changes nothing: it knows nothing after its own cut.
    again = as_of(record, date(2025, 1, 1))
    assert again.as_of_time == record.as_of_time and again == record


def test_death_after_the_cut_is_cleared() -> None:
    record = read_record(edge("contained-resources"))
    before = as_of(record, date(2024, 1, 1))
    assert before.patient.deceased is False and before.patient.deceased_at is None
    warfarin = before.medication_requests[0]
    assert warfarin.status == "active" and warfarin.end is None  # boundsPeriod ends 2024-02-20
    assert as_of(record, date(2024, 6, 1)).patient.deceased is True


def test_deceased_without_date_becomes_unknown_before_the_data_ends() -> None:
    data = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "p", "deceasedBoolean": True}},
            {"resource": {"resourceType": "Encounter", "id": "e", "period": {"start": "2020-01-01"}}},
        ],
    }
    record = read_record(data)
    assert as_of(record, date(2019, 1, 1)).patient.deceased is None
    assert as_of(record, date(2021, 1, 1)).patient.deceased is True


def test_pregnancy_active_during_and_resolved_after() -> None:
    record = read_record(patient_bundle("pregnancy-young-adult-2025"))
    pregnancy = [c for c in record.conditions if c.code.codes() == ("72892002",)]
    assert pregnancy and pregnancy[0].clinical_status == "resolved"
    during = as_of(record, date(2025, 2, 1))
    assert [c.clinical_status for c in during.conditions if c.code.codes() == ("72892002",)] == ["active"]
    before = as_of(record, date(2025, 1, 1))
    assert not [c for c in before.conditions if c.code.codes() == ("72892002",)]


@pytest.mark.parametrize("years_back", [0, 1, 3, 10, 30])
def test_no_fact_after_the_cut_in_any_fixture(patient_name: str, years_back: int) -> None:
    record = read_record(patient_bundle(patient_name))
    cut = record.data_until - timedelta(days=365.25 * years_back)
    cut_record = as_of(record, cut)
    assert_nothing_after(cut_record, cut)
    assert cut_record.reference_time == cut
    # Every surviving fact was in the full record (possibly with an earlier status).
    assert cut_record.references() <= record.references()
    # Statuses that only say "ended" are never kept when their end time is unknown and data follows.
    if years_back:
        for condition in cut_record.conditions:
            if condition.abatement is None:
                assert condition.clinical_status not in ("resolved", "inactive", "remission")
        for request in cut_record.medication_requests:
            if request.end is None:
                assert request.status not in ("stopped", "completed", "cancelled")
