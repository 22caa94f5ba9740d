"""FHIR Bulk Data NDJSON: one file per type, grouped by patient."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from cds_plugin.errors import FhirInputError, InputLimitError
from cds_plugin.fhir import read_ndjson, read_record, read_records
from tests.fhir.conftest import BULK


def test_bulk_folder_grouped_by_patient() -> None:
    records = list(read_ndjson(BULK))
    assert [r.patient.reference for r in records] == ["Patient/bulk-a", "Patient/bulk-b"]
    a, b = records
    assert [c.reference for c in a.conditions] == ["Condition/bulk-a-htn"]
    assert [o.reference for o in a.observations] == ["Observation/bulk-a-sbp"]
    assert [c.reference for c in b.conditions] == ["Condition/bulk-b-otitis"]
    # A Medication shared by the export resolves a patient's medicationReference.
    assert a.medication_requests[0].code.codes() == ("316049",)
    assert a.medication_requests[0].medication == "Medication/bulk-hctz"
    # The orphan Condition (patient not exported) is counted, and Claim.ndjson (not JSON) never opened.
    assert "1 resource(s) name no patient of the export; skipped" in a.issues


def test_bulk_through_read_records_and_read_record() -> None:
    assert [r.patient.id for r in read_records(BULK)] == ["bulk-a", "bulk-b"]
    assert read_record(BULK, patient_id="bulk-b").patient.sex == "male"
    with pytest.raises(FhirInputError, match="holds 2 patients"):
        read_record(BULK)


def test_gzipped_ndjson_files_and_file_list(tmp_path: Path) -> None:
    for path in BULK.glob("*.ndjson"):
        (tmp_path / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
    assert [r.patient.id for r in read_ndjson(tmp_path)] == ["bulk-a", "bulk-b"]
    files = [tmp_path / "Patient.ndjson.gz", tmp_path / "Condition.ndjson.gz"]
    assert [len(r.conditions) for r in read_ndjson(files)] == [1, 1]
    assert read_record(tmp_path / "Patient.ndjson.gz", patient_id="bulk-a").patient.id == "bulk-a"


def test_malformed_lines(tmp_path: Path) -> None:
    shutil.copy(BULK / "Patient.ndjson", tmp_path)
    (tmp_path / "Condition.ndjson").write_text('[1, 2]\n{"resourceType": "Condition", "id": 5}\n')
    record = next(read_ndjson(tmp_path))
    assert record.issues[0] == "Condition.ndjson[0]: not a FHIR resource; skipped"
    with pytest.raises(FhirInputError, match=r"Condition.ndjson\[0\]: not a FHIR resource"):
        list(read_ndjson(tmp_path, strict=True))
    (tmp_path / "Condition.ndjson").write_text("{not json\n")
    with pytest.raises(FhirInputError, match=r"Condition.ndjson\[0\]: not valid JSON"):
        list(read_ndjson(tmp_path))


def test_line_and_entry_limits(tmp_path: Path) -> None:
    with pytest.raises(InputLimitError, match=r"Patient.ndjson\[0\]: line longer than 50 bytes"):
        list(read_ndjson(BULK / "Patient.ndjson", max_bytes=50))
    shutil.copy(BULK / "Patient.ndjson", tmp_path)
    lines = "".join(
        f'{{"resourceType":"Observation","id":"o{i}","subject":{{"reference":"Patient/bulk-a"}}}}\n'
        for i in range(5)
    )
    (tmp_path / "Observation.ndjson").write_text(lines)
    assert len(next(read_ndjson(tmp_path, max_entries=6)).observations) == 5
    with pytest.raises(InputLimitError, match="more than 5 entries"):
        list(read_ndjson(tmp_path, max_entries=5))


def test_no_patient_and_unreadable(tmp_path: Path) -> None:
    shutil.copy(BULK / "Condition.ndjson", tmp_path)
    with pytest.raises(FhirInputError, match="no Patient resource"):
        list(read_ndjson(tmp_path))
    (tmp_path / "Patient.ndjson.gz").write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(FhirInputError, match="Patient.ndjson.gz: cannot be read"):
        list(read_ndjson(tmp_path))
    with pytest.raises(FhirInputError, match="cannot be read"):
        list(read_ndjson(tmp_path / "missing.ndjson"))
