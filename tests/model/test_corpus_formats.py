"""The training corpus in either format: per-patient bundles and Bulk Data NDJSON give the same records."""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cds_plugin.errors import FhirInputError
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.fhir.resources import USED_TYPES
from cds_plugin.model.dataset import load_corpus, load_corpus_with_files, ndjson_exports
from cds_plugin.model.evaluation import source_folders

PATIENTS = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "patients"
#: three fixture patients (trimmed Synthea), whose bundle file order is not their reference order
NAMES = ("heart-failure-elderly-2019", "asthma-adolescent-2019", "child-toddler-2019")
WHEN = datetime(2000, 1, 1, tzinfo=UTC)


def resources(name: str) -> list[dict]:
    """A fixture patient's resources of the types the model reads (so both formats hold the same input)."""
    bundle = json.loads((PATIENTS / f"{name}.json").read_text())
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] in USED_TYPES]


def write_bundles(folder: Path, names=NAMES) -> Path:
    folder.mkdir(parents=True)
    for name in names:
        entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources(name)]
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        (folder / f"{name}.json").write_text(json.dumps(bundle))
    return folder


def write_export(folder: Path, names=NAMES, gz: bool = False, parts: int = 1) -> Path:
    """A Bulk Data export: one file per type, or `parts` numbered files per type, lines interleaved."""
    folder.mkdir(parents=True)
    by_type: dict[str, list[dict]] = {}
    for name in reversed(names):  # export order differs from the bundles' file order
        for resource in resources(name):
            by_type.setdefault(resource["resourceType"], []).append(resource)
    suffix = ".ndjson.gz" if gz else ".ndjson"
    for rtype, items in by_type.items():
        chunks = [items] if parts == 1 else [items[i::parts] for i in range(parts)]
        for i, chunk in enumerate(chunks):
            text = "".join(json.dumps(r) + "\n" for r in chunk).encode()
            name = f"{rtype}{suffix}" if parts == 1 else f"{rtype}.{i:03d}{suffix}"
            (folder / name).write_bytes(gzip.compress(text, mtime=0) if gz else text)
    return folder


def comparable(records: list[PatientRecord]) -> dict[str, PatientRecord]:
    """Records by patient; the reference time (the time of reading when nothing is cut) set aside."""
    return {r.reference: dataclasses.replace(r, reference_time=WHEN) for r in records}


def test_bundles_and_an_ndjson_folder_give_equal_records(tmp_path):
    from_bundles = load_corpus(write_bundles(tmp_path / "bundles"), progress=False)
    export = write_export(tmp_path / "export", parts=2)  # Observation.000.ndjson, Observation.001.ndjson ...
    from_ndjson, files = load_corpus_with_files(export, progress=False)
    assert len(from_ndjson) == len(NAMES)
    assert comparable(from_ndjson) == comparable(from_bundles)
    assert all(r.conditions and r.observations and r.medication_requests for r in from_ndjson)
    # sorted by patient reference, whatever the order of the export's lines
    assert [r.reference for r in from_ndjson] == sorted(r.reference for r in from_bundles)
    assert files == [export / "Patient.000.ndjson"] * len(NAMES)


def test_gzipped_ndjson_reads_like_plain_ndjson(tmp_path):
    plain = load_corpus(write_export(tmp_path / "plain"), progress=False)
    gz_folder = write_export(tmp_path / "gz", gz=True, parts=3)
    assert sorted(p.name for p in gz_folder.glob("Observation*")) == [
        "Observation.000.ndjson.gz",
        "Observation.001.ndjson.gz",
        "Observation.002.ndjson.gz",
    ]
    gz = load_corpus(gz_folder, progress=False)
    assert [r.reference for r in gz] == [r.reference for r in plain]
    assert comparable(gz) == comparable(plain)
    # one NDJSON file (of mixed types) as the data path
    one = write_export(tmp_path / "one", names=NAMES[:1], gz=True)
    single = tmp_path / "single.ndjson"
    single.write_text("".join(json.dumps(r) + "\n" for r in resources(NAMES[0])))
    assert comparable(load_corpus(single, progress=False)) == comparable(load_corpus(one, progress=False))


def test_a_folder_with_bundles_and_exports_reads_both_in_a_fixed_order(tmp_path, caplog):
    root = tmp_path / "data"
    write_bundles(root / "bundles", names=NAMES[:1])
    write_export(root / "site-b", names=NAMES[1:])
    write_export(root / "site-a", names=NAMES[:2])  # NAMES[0] is a bundle too, NAMES[1] in site-b too
    assert [folder.name for folder, _ in ndjson_exports(root)] == ["site-a", "site-b"]
    with caplog.at_level(logging.INFO, logger="cds_plugin.model.dataset"):
        records, files = load_corpus_with_files(root, progress=False)
    assert "2 NDJSON patient(s) had already been read" in caplog.text
    assert "3 patients: 1 from 1 bundle file(s), 2 from 2 NDJSON export folder(s)" in caplog.text
    by_ref = {r.reference: f for r, f in zip(records, files, strict=True)}
    refs = [r.reference for r in records]
    assert len(refs) == len(set(refs)) == len(NAMES)
    bundle_ref = load_corpus(root / "bundles", progress=False)[0].reference
    assert refs[0] == bundle_ref and by_ref[bundle_ref] == root / "bundles" / f"{NAMES[0]}.json"
    assert [by_ref[r] for r in refs[1:]] == [
        root / "site-a" / "Patient.ndjson",
        root / "site-b" / "Patient.ndjson",
    ]
    # the same input gives the same order, and the callers' source folders are the export folders
    assert [r.reference for r in load_corpus(root, progress=False)] == refs
    assert set(source_folders(root, records, files).values()) == {"bundles", "site-a", "site-b"}
    assert [r.reference for r in load_corpus(root, limit=2, progress=False)] == refs[:2]


def test_a_folder_with_neither_format_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not FHIR")
    with pytest.raises(FhirInputError, match=r"no FHIR bundles \(.json, .json.gz\) nor Bulk Data NDJSON"):
        load_corpus(tmp_path, progress=False)
    with pytest.raises(FhirInputError, match="no such file or folder"):
        load_corpus(tmp_path / "missing", progress=False)


def test_an_unreadable_export_is_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / "data"
    write_export(root / "good", names=NAMES[:1])
    (root / "broken").mkdir()
    (root / "broken" / "Observation.ndjson").write_text("{}\n")  # no Patient file
    with caplog.at_level(logging.WARNING, logger="cds_plugin.model.dataset"):
        records = load_corpus(root, progress=False)
    assert len(records) == 1
    assert "skipping the NDJSON export in broken: FhirInputError" in caplog.text
