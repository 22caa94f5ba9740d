"""`cds-plugin sandbox call` against the real clinical services (tiny model), on every hook they serve,
with full, no and partial prefetch: every answer conforms to CDS Hooks 2.0."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from werkzeug.serving import make_server

from cds_plugin.cli import main
from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.keys import PRIVATE_KEY_FILE, ClientKey
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "fhir_fixtures" / "patients" / "diabetes-adult-2025.json"
ISS = "https://sandbox-client.test"
JKU = "https://sandbox-client.test/.well-known/jwks.json"
TOKEN = "fhir-token-clinical-0123456789"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("keys")
    ClientKey.generate(kid="clinical", jku=JKU).write(directory)
    return directory / PRIVATE_KEY_FILE


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServer]:
    with FhirServer(BUNDLE, token=TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory, key_file, tiny_model) -> Iterator[SimpleNamespace]:
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path_factory.mktemp("svc")),
        model_path=str(tiny_model),
        trusted_issuers=[{"iss": ISS, "jwks_file": str(key_file.parent / "jwks.json"), "jku_allow": [JKU]}],
    )
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{server.port}/cds-services")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("service_id", "hook"),
    [
        ("diagnosis-considerations", "patient-view"),
        ("treatment-considerations", "patient-view"),
        ("order-select-review", "order-select"),
        ("order-sign-review", "order-sign"),
    ],
)
@pytest.mark.parametrize("mode", ["all", "none", "partial"])
def test_every_hook_we_serve_conforms(capsys, service, key_file, fhir, service_id, hook, mode):
    patient = json.loads(BUNDLE.read_text())
    patient_id = next(
        e["resource"]["id"] for e in patient["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    argv = ["sandbox", "call", "--service", service.url, "--service-id", service_id, "--hook", hook,
            "--key", str(key_file), "--iss", ISS, "--json", "--prefetch", mode,
            "--fhir-server", fhir.base_url, "--fhir-token", TOKEN, "--patient", patient_id]  # fmt: skip
    code = main(argv)
    captured = capsys.readouterr()
    sys.stderr.write(captured.err)
    out = json.loads(captured.out)
    assert code == 0, out["findings"]
    assert out["conforms"] and out["response"]["status"] == 200
    for card in out["response"]["body"]["cards"]:
        assert card["uuid"] and card["source"]["topic"]["code"]


def test_sandbox_call_prints_why_a_record_without_clinical_facts_gets_no_considerations(
    capsys, monkeypatch, tmp_path, service, key_file
):
    """Issue 15: a record read as 0 clinical facts is answered with a note, not with silence."""
    monkeypatch.setenv("COLUMNS", "200")
    patient = json.loads(BUNDLE.read_text())
    only = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [e for e in patient["entry"] if e["resource"]["resourceType"] == "Patient"],
    }
    path = tmp_path / "patient-only.json"
    path.write_text(json.dumps(only))
    argv = ["sandbox", "call", "--service", service.url, "--service-id", "diagnosis-considerations",
            "--hook", "patient-view", "--key", str(key_file), "--iss", ISS,
            "--bundle", str(path)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "No considerations: no clinical data about this patient was received" in out
    assert "0 clinical facts" in out
