"""`cds-plugin sandbox call` end to end: our service running for real on loopback (JWT required, the
client's key pinned), the loopback FHIR server over a fixture patient, every hook served, with full,
no and partial prefetch, and feedback; the service's card log and feedback table are checked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from werkzeug.serving import make_server

from cds_plugin.cli import main
from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.keys import PRIVATE_KEY_FILE, ClientKey
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.web.conftest import make_registry

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "fhir_fixtures" / "patients" / "hypertension-adult-2019.json"
PATIENT = "ee9f8dd8-72d2-4769-8020-89e504b1504b"
OBSERVATIONS = 36  # in that bundle
ISS = "https://sandbox-client.test"
JKU = "https://sandbox-client.test/.well-known/jwks.json"
FHIR_TOKEN = "fhir-test-token-0123456789"


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("client-keys")
    ClientKey.generate(kid="sandbox-test", jku=JKU).write(directory)
    return directory / PRIVATE_KEY_FILE


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServer]:
    with FhirServer(BUNDLE, token=FHIR_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, key_file: Path) -> Iterator[SimpleNamespace]:
    """Our service with the test registry, JWT required and only the sandbox client's key trusted."""
    data_dir = tmp_path_factory.mktemp("service")
    settings = Settings.load(
        environ={},
        data_dir=str(data_dir),
        trusted_issuers=[{"iss": ISS, "jwks_file": str(key_file.parent / "jwks.json"), "jku_allow": [JKU]}],
    )
    app = create_app(settings, make_registry())
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(
            url=f"http://127.0.0.1:{server.port}/cds-services", runtime=app.extensions["cds_plugin"]
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def call(
    capsys: pytest.CaptureFixture[str], service: SimpleNamespace, key_file: Path, *args: str
) -> tuple[int, Any]:
    """Run the CLI in-process with --json; returns the exit status and the decoded output (None if none).

    Whatever went to stderr is written back there, so a test can still read it.
    """
    argv = [
        "sandbox",
        "call",
        "--service",
        service.url,
        "--key",
        str(key_file),
        "--iss",
        ISS,
        "--json",
        *args,
    ]
    code = main(argv)
    captured = capsys.readouterr()
    sys.stderr.write(captured.err)
    return code, json.loads(captured.out) if captured.out.strip() else None


def from_server(fhir: FhirServer) -> list[str]:
    return ["--fhir-server", fhir.base_url, "--fhir-token", FHIR_TOKEN, "--patient", PATIENT]


EXPECTED_SOURCES = {
    "all": "observations=prefetch, patient=prefetch",
    "none": "observations=fhir-server, patient=fhir-server",
    "partial": "observations=fhir-server, patient=prefetch",
}


@pytest.mark.parametrize("mode", ["all", "none", "partial"])
def test_patient_view_with_each_prefetch_mode(capsys, service, key_file, fhir, mode: str) -> None:
    code, out = call(capsys, service, key_file, "--hook", "patient-view", "--service-id", "echo-patient",
                     "--prefetch", mode, *from_server(fhir))  # fmt: skip
    assert code == 0, out["findings"]
    assert out["conforms"] and out["response"]["status"] == 200
    (card,) = out["response"]["body"]["cards"]
    assert card["summary"] == f"Sources: {EXPECTED_SOURCES[mode]}"
    assert card["detail"] == f"{OBSERVATIONS} observations"
    body = out["request"]["body"]
    assert body["hook"] == "patient-view" and body["context"]["patientId"] == PATIENT
    assert body["fhirServer"] == fhir.base_url
    assert body["fhirAuthorization"]["access_token"] != FHIR_TOKEN  # masked in the output
    assert ("prefetch" in body) == (mode != "none")
    assert not [
        f for f in out["findings"] if f["document"] == "discovery"
    ]  # only other services lack a title
    assert out["request"]["jwt"]["header"]["jku"] == JKU
    assert out["request"]["jwt"]["claims"]["aud"] == f"{service.url}/echo-patient"
    logged = service.runtime.card_log.get(card["uuid"])
    assert logged is not None and logged["hook_instance"] == body["hookInstance"]
    assert logged["service_id"] == "echo-patient"


@pytest.mark.parametrize("mode", ["all", "none", "partial"])
def test_order_select_with_each_prefetch_mode(capsys, service, key_file, fhir, mode: str) -> None:
    code, out = call(
        capsys, service, key_file, "--hook", "order-select", "--prefetch", mode, *from_server(fhir)
    )
    assert code == 0, out["findings"]
    (card,) = out["response"]["body"]["cards"]
    assert card["summary"] == "1 draft orders"
    assert [(f["severity"], f["path"]) for f in out["findings"]] == [("warning", "$.services[2].title")]
    context = out["request"]["body"]["context"]
    draft = context["draftOrders"]["entry"][0]["resource"]
    assert draft["status"] == "draft" and context["selections"] == [f"MedicationRequest/{draft['id']}"]
    assert draft["medicationCodeableConcept"]["coding"][0]["display"].startswith("Hydrochlorothiazide")
    assert service.runtime.card_log.get(card["uuid"])["hook"] == "order-select"


def test_a_bundle_is_served_in_process_for_the_fallback(capsys, service, key_file) -> None:
    code, out = call(capsys, service, key_file, "--hook", "patient-view", "--service-id", "echo-patient",
                     "--bundle", str(BUNDLE), "--prefetch", "none")  # fmt: skip
    assert code == 0, out["findings"]
    assert out["response"]["body"]["cards"][0]["summary"] == f"Sources: {EXPECTED_SOURCES['none']}"
    assert out["request"]["body"]["fhirServer"].startswith("http://127.0.0.1:")


def test_without_data_for_required_prefetch_the_service_answers_412(capsys, service, key_file) -> None:
    code, out = call(capsys, service, key_file, "--hook", "patient-view", "--service-id", "echo-patient",
                     "--bundle", str(BUNDLE), "--no-serve-bundle", "--prefetch", "none")  # fmt: skip
    assert code == 1
    assert "fhirServer" not in out["request"]["body"]
    assert out["response"]["status"] == 412
    assert [f["rule"] for f in out["findings"] if f["severity"] == "error"] == ["http-status"]


def test_feedback_accept_and_override_are_stored(capsys, service, key_file, fhir) -> None:
    base = ["--hook", "patient-view", "--service-id", "echo-patient", *from_server(fhir)]
    code, out = call(capsys, service, key_file, *base, "--feedback", "accept")
    assert code == 0, out["findings"]
    card = out["response"]["body"]["cards"][0]
    assert out["feedback"]["status"] == 200
    (row,) = service.runtime.feedback_store.for_card(card["uuid"])
    assert row["outcome"] == "accepted"
    assert row["accepted_suggestions"] == [card["suggestions"][0]["uuid"]]

    code, out = call(capsys, service, key_file, *base, "--feedback", "override:na")
    assert code == 0 and out["feedback"]["status"] == 200
    (row,) = service.runtime.feedback_store.for_card(out["response"]["body"]["cards"][0]["uuid"])
    assert (row["outcome"], row["override_reason_code"]) == ("overridden", "na")

    code, out = call(capsys, service, key_file, *base, "--feedback", "override:not today")
    (row,) = service.runtime.feedback_store.for_card(out["response"]["body"]["cards"][0]["uuid"])
    assert row["override_user_comment"] == "not today" and row["override_reason_code"] is None


def test_cards_are_rendered_in_the_terminal(capsys, service, key_file, fhir) -> None:
    argv = ["sandbox", "call", "--service", f"{service.url}/echo-patient", "--hook", "patient-view",
            "--key", str(key_file), "--iss", ISS, "--feedback", "accept", *from_server(fhir)]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    for expected in (
        "Sources: observations=prefetch",
        f"{OBSERVATIONS} observations",  # the Markdown detail
        "Source: Test",
        "Do it",
        "create Task",
        "https://example.org/more",
        "Not applicable",
        "conforms to CDS Hooks 2.0",
        "Feedback on the first card: accepted: HTTP 200",
    ):
        assert expected in out, expected
    assert FHIR_TOKEN not in out


def test_broken_answers_and_refused_tokens_exit_1(capsys, service, key_file, fhir) -> None:
    code, out = call(
        capsys, service, key_file, "--hook", "patient-view", "--service-id", "boom", *from_server(fhir)
    )
    assert code == 1 and out["response"]["status"] == 500
    # a throwaway key is not trusted by the service
    argv = [
        "sandbox",
        "call",
        "--service",
        service.url,
        "--hook",
        "order-select",
        "--json",
        *from_server(fhir),
    ]
    assert main(argv) == 1
    assert json.loads(capsys.readouterr().out)["response"]["status"] == 401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "args",
    [
        ["--hook", "patient-view"],  # three services answer it
        ["--hook", "patient-view", "--service-id", "echo-patient", "--feedback", "dismiss"],
        ["--hook", "order-sign"],  # not served
        ["--hook", "order-select", "--patient", "nobody"],
    ],
    ids=["ambiguous", "bad-feedback", "hook-not-served", "unknown-patient"],
)
def test_usage_errors_exit_2(capsys, service, key_file, args: list[str]) -> None:
    code, out = call(capsys, service, key_file, "--bundle", str(BUNDLE), *args)
    assert code == 2 and out is None
    assert "error:" in capsys.readouterr().err


def test_an_unreachable_service_exits_2(capsys, key_file) -> None:
    argv = ["sandbox", "call", "--service", f"http://127.0.0.1:{free_port()}", "--hook", "patient-view",
            "--bundle", str(BUNDLE), "--key", str(key_file)]  # fmt: skip
    assert main(argv) == 2
    assert "cannot reach" in capsys.readouterr().err


def test_as_a_subprocess(service, key_file, fhir) -> None:
    argv = [sys.executable, "-m", "cds_plugin.cli", "sandbox", "call", "--service", service.url,
            "--hook", "order-select", "--key", str(key_file), "--iss", ISS, "--prefetch", "partial",
            "--feedback", "override", "--json", *from_server(fhir)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["conforms"] and out["response"]["body"]["cards"][0]["summary"] == "1 draft orders"
    # the orders card has no override reasons: the override goes as a comment
    assert out["feedback"]["body"]["feedback"][0]["overrideReason"] == {
        "userComment": "Overridden in the CDS sandbox"
    }
    assert out["feedback"]["status"] == 200
    assert FHIR_TOKEN not in proc.stdout + proc.stderr
