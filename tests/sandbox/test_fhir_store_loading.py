"""Loading bundles: what is read, how references and ids are resolved, and which inputs are refused."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cds_plugin.errors import FhirInputError
from cds_plugin.sandbox.fhir_store import FhirStore, parse_reference


def test_folder_is_read_recursively_with_gzip_and_single_resources(fhir_data: Path) -> None:
    store = FhirStore.load(fhir_data)
    counts = store.counts()
    assert counts["Patient"] == 2
    assert counts["Observation"] == 15
    assert counts["Condition"] == 4
    assert counts["Procedure"] == 1  # a plain resource file
    assert store.get("Observation", "a1c-12") is not None  # from a nested folder
    assert store.duplicates == 0


def test_a_single_file_and_a_str_path(fhir_data: Path) -> None:
    store = FhirStore.load(str(fhir_data / "patient2.json.gz"))
    assert store.counts() == {"Condition": 1, "Encounter": 1, "Observation": 1, "Patient": 1}


def test_cross_bundle_and_absolute_full_urls_are_resolved() -> None:
    shared = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "urn:uuid:0000aaaa-0000-0000-0000-000000000001",
                "resource": {"resourceType": "Practitioner"},
            },
            {
                "fullUrl": "http://example.org/fhir/Organization/org1",
                "resource": {"resourceType": "Organization", "id": "org1"},
            },
        ],
    }
    patient = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0000bbbb-0000-0000-0000-000000000002",
                "resource": {
                    "resourceType": "Patient",
                    "id": "px",  # an explicit id wins over the urn:uuid
                    "generalPractitioner": [
                        {"reference": "urn:uuid:0000aaaa-0000-0000-0000-000000000001"},
                        {"reference": "http://example.org/fhir/Organization/org1"},
                    ],
                    "contained": [{"resourceType": "Practitioner", "id": "inner"}],
                    "managingOrganization": {"reference": "#inner"},
                },
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "o",
                    "subject": {"reference": "urn:uuid:0000bbbb-0000-0000-0000-000000000002"},
                    "hasMember": [{"reference": "urn:uuid:ffffffff-0000-0000-0000-00000000000f"}],
                }
            },
        ],
    }
    store = FhirStore.load([patient, shared])
    px = store.get("Patient", "px")
    assert px is not None
    assert px["generalPractitioner"] == [
        {"reference": "Practitioner/0000aaaa-0000-0000-0000-000000000001"},
        {"reference": "Organization/org1"},
    ]
    assert px["managingOrganization"] == {"reference": "#inner"}  # contained references stay
    obs = store.get("Observation", "o")
    assert obs is not None
    assert obs["subject"] == {"reference": "Patient/px"}
    assert obs["hasMember"][0]["reference"].startswith("urn:uuid:ffffffff")  # unknown urn: left alone


def test_resources_without_any_id_get_a_stable_one() -> None:
    data = [
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Device"}}]}
    ]
    first = FhirStore.load(data).all("Device")[0]["id"]
    assert first == FhirStore.load(data).all("Device")[0]["id"]
    assert len(first) == 32


def test_later_duplicates_replace_earlier_ones() -> None:
    store = FhirStore.load(
        [{"resourceType": "Patient", "id": "a", "gender": "male"}, {"resourceType": "Patient", "id": "a"}]
    )
    assert store.duplicates == 1
    assert store.get("Patient", "a") == {"resourceType": "Patient", "id": "a"}


def test_searchset_outcomes_and_deletes_are_skipped() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": "a"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": []}, "search": {"mode": "outcome"}},
            {"request": {"method": "DELETE", "url": "Patient/b"}},
        ],
    }
    assert FhirStore.load([bundle]).counts() == {"Patient": 1}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable as JSON"),
        ('{"hello": "world"}', "no resourceType"),
        ('[{"resourceType": "Patient"}]', "no resourceType"),
        ('{"resourceType": "Bundle", "entry": {"x": 1}}', "Bundle.entry is not a list"),
        ('{"resourceType": "Bundle", "entry": [{"resource": {"id": "x"}}]}', "entry[0]"),
        ('{"resourceType": "Patient", "id": "has space"}', "not a valid FHIR id"),
        ('{"resourceType": "patient", "id": "x"}', "not a FHIR type name"),
    ],
)
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "good.json").write_text('{"resourceType": "Patient", "id": "ok"}', encoding="utf-8")
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    with pytest.raises(FhirInputError) as exc:
        FhirStore.load(tmp_path)
    assert "bad.json" in exc.value.message
    assert message in exc.value.message


def test_broken_gzip_and_missing_folder(tmp_path: Path) -> None:
    (tmp_path / "x.json.gz").write_bytes(gzip.compress(b"{")[:-4])
    with pytest.raises(FhirInputError, match=r"x\.json\.gz"):
        FhirStore.load(tmp_path)
    with pytest.raises(FhirInputError, match="no such file"):
        FhirStore.load(tmp_path / "missing")
    with pytest.raises(TypeError):
        FhirStore.load(42)  # type: ignore[arg-type]


def test_empty_folder_is_an_empty_store(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("# nothing", encoding="utf-8")
    assert len(FhirStore.load(tmp_path)) == 0


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        ("Patient/1", ("Patient", "1")),
        ("http://x.org/fhir/Patient/1", ("Patient", "1")),
        ("Patient/1/_history/3", ("Patient", "1")),
        ("urn:uuid:1234", None),
        ("#contained", None),
        ("1", None),
    ],
)
def test_parse_reference(reference: str, parsed: tuple[str, str] | None) -> None:
    assert parse_reference(reference) == parsed


def test_loading_does_not_log_contents(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    resource = {"resourceType": "Patient", "id": "p", "name": [{"family": "Doe-Secret"}]}
    (tmp_path / "p.json").write_text(json.dumps(resource), encoding="utf-8")
    FhirStore.load(tmp_path)
    FhirStore.load([resource, resource])
    assert "Doe-Secret" not in caplog.text
