"""The loopback FHIR server's Bulk Data export over real HTTP: kick-off, status, manifest, files, DELETE."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_plugin.sandbox.bulk_export import ExportRequest, write_export
from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.fhir_store import FhirStore

TIMEOUT = 5
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
TOKEN = "bulk-secret"


def resources() -> list[dict[str, Any]]:
    """Two patients, a Group of one, a shared Medication and one that nobody references."""
    out: list[dict[str, Any]] = []
    for pid, updated in (("a", "2020-01-01T00:00:00Z"), ("b", "2024-06-01T00:00:00Z")):
        out.append(
            {"resourceType": "Patient", "id": pid, "meta": {"lastUpdated": updated}, "gender": "female"}
        )
        for n in range(3):
            out.append(
                {
                    "resourceType": "Observation",
                    "id": f"{pid}-obs-{n}",
                    "meta": {"lastUpdated": updated},
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": f"Patient/{pid}"},
                }
            )
        out.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"{pid}-mr",
                "status": "active",
                "intent": "order",
                "medicationReference": {"reference": "Medication/med-1"},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
        out.append(
            {"resourceType": "Immunization", "id": f"{pid}-imm", "patient": {"reference": f"Patient/{pid}"}}
        )
    out.append({"resourceType": "Medication", "id": "med-1", "code": {"text": "metformin"}})
    out.append({"resourceType": "Medication", "id": "med-unused", "code": {"text": "other"}})
    out.append({"resourceType": "Practitioner", "id": "dr"})
    out.append(
        {
            "resourceType": "Group",
            "id": "g1",
            "type": "person",
            "actual": True,
            "member": [{"entity": {"reference": "Patient/b"}}],
        }
    )
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[FhirServer]:
    with FhirServer(resources(), token=TOKEN, export_delay_s=0.3, export_file_lines=2) as srv:
        yield srv


def auth(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", **(extra or {})}


def kick_off(url: str, **params: str) -> str:
    response = requests.get(url, params=params, headers=auth(ASYNC), timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    return response.headers["Content-Location"]


def wait(status_url: str) -> tuple[dict[str, Any], list[requests.Response]]:
    """Poll until 200, returning the manifest and every 202 seen."""
    pending = []
    for _ in range(50):
        response = requests.get(status_url, headers=auth(), timeout=TIMEOUT)
        if response.status_code == 200:
            return response.json(), pending
        assert response.status_code == 202, response.text
        pending.append(response)
        time.sleep(0.1)
    raise AssertionError("export never finished")


def download(manifest: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        response = requests.get(item["url"], headers=auth(), timeout=TIMEOUT)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("application/fhir+ndjson")
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert len(lines) == item["count"]
        assert all(r["resourceType"] == item["type"] for r in lines)
        by_type.setdefault(item["type"], []).extend(lines)
    return by_type


def test_patient_export_kick_off_progress_manifest_files_and_delete(server: FhirServer) -> None:
    status_url = kick_off(f"{server.base_url}/Patient/$export")
    assert status_url.startswith(server.base_url + "/")
    manifest, pending = wait(status_url)
    assert pending, "the job should be in progress for a while (export_delay_s)"
    assert "resource types written" in pending[0].headers["X-Progress"]
    assert int(pending[0].headers["Retry-After"]) >= 1
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"].endswith("/Patient/$export")
    assert manifest["transactionTime"].endswith("Z")
    assert manifest["error"] == []
    by_type = download(manifest)
    # the patient compartment plus the referenced Medication; no Practitioner, Group or unused Medication
    assert set(by_type) == {"Patient", "Observation", "MedicationRequest", "Immunization", "Medication"}
    assert sorted(r["id"] for r in by_type["Observation"]) == sorted(
        f"{p}-obs-{n}" for p in "ab" for n in range(3)
    )
    assert [r["id"] for r in by_type["Medication"]] == ["med-1"]
    # several files per type: at most two resources per file here
    assert sum(1 for item in manifest["output"] if item["type"] == "Observation") == 3

    assert requests.delete(status_url, headers=auth(), timeout=TIMEOUT).status_code == 202
    gone = requests.get(status_url, headers=auth(), timeout=TIMEOUT)
    assert gone.status_code == 404
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert requests.get(manifest["output"][0]["url"], headers=auth(), timeout=TIMEOUT).status_code == 404


def test_type_and_since_filter(server: FhirServer) -> None:
    manifest, _ = wait(
        kick_off(
            f"{server.base_url}/Patient/$export", _type="Patient,Observation", _since="2022-01-01T00:00:00Z"
        )
    )
    by_type = download(manifest)
    assert set(by_type) == {"Patient", "Observation"}
    assert [r["id"] for r in by_type["Patient"]] == ["b"]  # a was last updated in 2020
    assert {r["id"] for r in by_type["Observation"]} == {"b-obs-0", "b-obs-1", "b-obs-2"}


def test_group_and_system_exports(server: FhirServer) -> None:
    group = download(wait(kick_off(f"{server.base_url}/Group/g1/$export"))[0])
    assert [r["id"] for r in group["Patient"]] == ["b"]
    assert {r["subject"]["reference"] for r in group["Observation"]} == {"Patient/b"}
    system = download(wait(kick_off(f"{server.base_url}/$export"))[0])
    assert {"Practitioner", "Group"} <= set(system)
    assert {r["id"] for r in system["Medication"]} == {"med-1", "med-unused"}
    unknown = requests.get(f"{server.base_url}/Group/nope/$export", headers=auth(ASYNC), timeout=TIMEOUT)
    assert unknown.status_code == 404
    assert unknown.json()["resourceType"] == "OperationOutcome"


def test_bearer_token_is_required_everywhere(server: FhirServer) -> None:
    refused = requests.get(f"{server.base_url}/Patient/$export", headers=ASYNC, timeout=TIMEOUT)
    assert refused.status_code == 401
    assert refused.json()["resourceType"] == "OperationOutcome"
    status_url = kick_off(f"{server.base_url}/Patient/$export", _type="Patient")
    assert requests.get(status_url, timeout=TIMEOUT).status_code == 401
    manifest, _ = wait(status_url)
    assert requests.get(manifest["output"][0]["url"], timeout=TIMEOUT).status_code == 401
    assert requests.delete(status_url, timeout=TIMEOUT).status_code == 401


@pytest.mark.parametrize(
    ("params", "headers", "expression"),
    [
        ({}, {"Accept": "application/fhir+json"}, "Prefer"),
        ({"_outputFormat": "text/csv"}, ASYNC, None),
        ({"_type": "Nonsense"}, ASYNC, "_type"),
        ({"_type": "patient"}, ASYNC, "_type"),
        ({"_since": "2020-01-01"}, ASYNC, "_since"),
        ({"_typeFilter": "Observation?code=x"}, ASYNC, "_typeFilter"),
    ],
)
def test_bad_kick_offs_are_400_with_an_operation_outcome(
    server: FhirServer, params: dict[str, str], headers: dict[str, str], expression: str | None
) -> None:
    response = requests.get(
        f"{server.base_url}/Patient/$export", params=params, headers=auth(headers), timeout=TIMEOUT
    )
    assert response.status_code == 400, response.text
    issue = response.json()["issue"][0]
    if expression:
        assert issue["expression"] == [expression]


def test_lenient_handling_reports_unsupported_types_in_the_error_file(server: FhirServer) -> None:
    headers = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    response = requests.get(
        f"{server.base_url}/Patient/$export",
        params={"_type": "Patient,Nonsense"},
        headers=auth(headers),
        timeout=TIMEOUT,
    )
    assert response.status_code == 202
    manifest, _ = wait(response.headers["Content-Location"])
    assert [item["type"] for item in manifest["output"]] == ["Patient"]
    assert len(manifest["error"]) == 1
    errors = requests.get(manifest["error"][0]["url"], headers=auth(), timeout=TIMEOUT).text.splitlines()
    outcome = json.loads(errors[0])
    assert outcome["resourceType"] == "OperationOutcome"
    assert "Nonsense" in outcome["issue"][0]["diagnostics"]


def test_file_names_cannot_escape_the_job(server: FhirServer) -> None:
    manifest, _ = wait(kick_off(f"{server.base_url}/Patient/$export", _type="Patient"))
    job_url = manifest["output"][0]["url"].rsplit("/", 1)[0]
    for name in ("..%2F..%2Fetc%2Fpasswd", "Patient.999.ndjson", "x"):
        assert requests.get(f"{job_url}/{name}", headers=auth(), timeout=TIMEOUT).status_code == 404


def test_capability_statement_lists_the_export_operations(server: FhirServer) -> None:
    cap = requests.get(f"{server.base_url}/metadata", timeout=TIMEOUT).json()
    definitions = {op["definition"].rsplit("/", 1)[1] for op in cap["rest"][0]["operation"]}
    assert definitions == {"export", "patient-export", "group-export"}


def test_write_export_to_disk_from_transaction_bundles(tmp_path: Path) -> None:
    """The function scripts use to make an export of bundles: urn:uuid references are already resolved."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": {"resourceType": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
                "resource": {
                    "resourceType": "Condition",
                    "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                },
            },
        ],
    }
    files = write_export(FhirStore.load([bundle]), tmp_path, ExportRequest("patient"))
    assert [(f.type, f.name, f.count) for f in files] == [
        ("Patient", "Patient.000.ndjson", 1),
        ("Condition", "Condition.000.ndjson", 1),
    ]
    condition = json.loads((tmp_path / "Condition.000.ndjson").read_text())
    assert condition["subject"]["reference"] == "Patient/11111111-1111-1111-1111-111111111111"
