"""Grouping an export by patient: every resource lands with its patient, problems are counted with file
and line, and the records read back from the partitions are the records read from the whole export."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from cds_plugin.fhir.ndjson import read_ndjson
from cds_plugin.population.grouping import (
    MEDICATIONS_FILE,
    SplitResult,
    medication_map,
    partition_of,
    piece_name,
    pieces_of,
    split_file,
)
from cds_plugin.population.scoring import build_records, read_partition
from cds_plugin.population.source import list_source

PARTITIONS = 5


def group(folder: Path, groups: Path, partitions: int = PARTITIONS, **kwargs) -> list[SplitResult]:
    """Both stages, in this process (the pipeline runs the same calls as Dask tasks)."""
    source = list_source(folder)
    stage1 = [
        split_file(f.path, f.name, f"src-{i:05d}", str(groups), partitions, **kwargs)
        for i, f in enumerate(source.files)
    ]
    mapping = medication_map(str(groups), stage1)
    stage2 = [
        split_file(
            str(groups / r.folder / MEDICATIONS_FILE), r.key, f"med-{r.key[4:]}", str(groups), partitions,
            medication_map=mapping,
        )
        for r in stage1
        if r.set_aside
    ]  # fmt: skip
    return stage1 + stage2


def test_partition_of_is_stable_and_in_range() -> None:
    assert partition_of("Patient/abc", 7) == partition_of("Patient/abc", 7)
    assert {partition_of(f"Patient/{i}", 7) for i in range(200)} == set(range(7))
    assert partition_of("Patient/abc", 1) == 0


def test_source_lists_files_and_skips_types_the_model_does_not_use(export_dir: Path) -> None:
    source = list_source(export_dir)
    assert [f.name for f in source.not_read] == ["Claim.000.ndjson"]
    assert {f.type for f in source.files} >= {"Patient", "Observation", "Medication"}
    assert sum(1 for f in source.files if f.type == "Observation") > 1  # several files per type
    assert source.estimated_bytes() == sum(f.size for f in source.files)
    assert source.fingerprint() == list_source(export_dir).fingerprint()


def test_records_from_partitions_equal_records_from_the_whole_export(
    export_dir: Path, tmp_path: Path
) -> None:
    results = group(export_dir, tmp_path)
    expected = {r.reference: r for r in read_ndjson(export_dir)}
    seen: dict[str, int] = {}
    for p in range(PARTITIONS):
        records, unreadable = build_records(read_partition(pieces_of(p, str(tmp_path), results)))
        assert unreadable == []
        for record in records:
            assert record.reference not in seen, "a patient in two partitions"
            seen[record.reference] = p
            assert partition_of(record.reference, PARTITIONS) == p
            whole = expected[record.reference]
            assert [f.reference for f in record.facts()] == [f.reference for f in whole.facts()]
            assert record.medication_requests == whole.medication_requests  # Medications routed along
    assert set(seen) == set(expected)
    assert len(set(seen.values())) > 1


def test_medications_go_to_the_partitions_that_reference_them(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    patients = [{"resourceType": "Patient", "id": f"p{i}"} for i in range(12)]
    requests_ = [
        {
            "resourceType": "MedicationRequest",
            "id": f"mr{i}",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/p{i}"},
            "medicationReference": {"reference": "Medication/shared" if i % 2 else f"Medication/own-{i}"},
        }
        for i in range(12)
    ]
    meds = [{"resourceType": "Medication", "id": "shared"}, {"resourceType": "Medication", "id": "nobody"}]
    meds += [{"resourceType": "Medication", "id": f"own-{i}"} for i in range(0, 12, 2)]
    # one mixed file (no type in its name) holding Medications too
    (src / "export.ndjson").write_text("".join(json.dumps(r) + "\n" for r in [*patients, *meds[:1]]))
    (src / "MedicationRequest.ndjson").write_text("".join(json.dumps(r) + "\n" for r in requests_))
    (src / "Medication.ndjson").write_text("".join(json.dumps(r) + "\n" for r in meds[1:]))
    groups = tmp_path / "groups"
    results = group(src, groups)
    assert sum(r.unreferenced for r in results) == 1  # Medication/nobody
    shared_partitions = {partition_of(f"Patient/p{i}", PARTITIONS) for i in range(1, 12, 2)}
    for p in range(PARTITIONS):
        data = read_partition(pieces_of(p, str(groups), results))

        def has(mid: str, data=data) -> bool:
            return data.medications.resolve(f"Medication/{mid}")[1] is not None

        assert has("shared") == (p in shared_partitions)
        assert not has("nobody")
        for i in range(0, 12, 2):
            assert has(f"own-{i}") == (partition_of(f"Patient/p{i}", PARTITIONS) == p)


def test_malformed_lines_are_counted_with_file_and_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = {"resourceType": "Patient", "id": "p1"}
    lines = [
        json.dumps(good),
        "{not json",
        "",  # blank lines are fine
        "[1, 2]",
        json.dumps({"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}),
        json.dumps({"resourceType": "Condition", "id": "c2"}),  # no patient
        json.dumps({"resourceType": "Condition", "id": "c3", "subject": {"reference": "urn:uuid:1234"}}),
        json.dumps({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Group/g"}}),
        json.dumps({"resourceType": "Condition", "id": "long", "note": "x" * 500}),
        json.dumps({"resourceType": "Claim", "id": "cl"}),
        '{"resourceType": 5}',
    ]
    (src / "mixed.ndjson.gz").write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    [result] = group(src, tmp_path / "groups", max_bytes=300)
    assert result.malformed == 4
    assert [(name, line) for name, line, _ in result.examples] == [
        ("mixed.ndjson.gz", 2),
        ("mixed.ndjson.gz", 4),
        ("mixed.ndjson.gz", 9),
        ("mixed.ndjson.gz", 11),
    ]
    reasons = [reason for _, _, reason in result.examples]
    assert reasons[0].startswith("not valid JSON")
    assert reasons[1] == "not a FHIR resource (no resourceType)"
    assert reasons[2] == "line longer than 300 bytes"
    assert dict(result.no_patient) == {"Condition": 2, "Observation": 1}
    assert dict(result.not_used) == {"Claim": 1}
    assert sum(result.pieces.values()) == 2  # the Patient and its Condition
    [piece] = (tmp_path / "groups").glob(f"src-00000/{piece_name(partition_of('Patient/p1', PARTITIONS))}")
    assert [json.loads(line)["id"] for line in piece.read_text().splitlines()] == ["p1", "c1"]


def test_a_task_leaves_a_whole_piece_set_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "Patient.ndjson").write_text(json.dumps({"resourceType": "Patient", "id": "p"}) + "\n")
    groups = tmp_path / "groups"

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("cds_plugin.population.grouping.os.rename", broken)
    with pytest.raises(KeyboardInterrupt):
        group(src, groups)
    # only a temporary folder, which no reader looks at and the next run removes
    assert [p.name.startswith(".tmp-") for p in groups.iterdir()] == [True]
    monkeypatch.undo()
    shutil.rmtree(groups)
    [result] = group(src, groups)
    assert (groups / result.folder / piece_name(partition_of("Patient/p", PARTITIONS))).exists()
