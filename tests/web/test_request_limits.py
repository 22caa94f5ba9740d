"""Limits on what a hook call brings in, through the HTTP layer: 413 with an OperationOutcome naming the
limit (and the element, when known), never a 500, for the body and for data fetched from a FHIR server."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cds_plugin.settings import Settings, SettingsError
from cds_plugin.web.app import create_app
from tests.web.conftest import make_registry, pv_request


def make_client(tmp_path, **overrides):
    settings = Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False, **overrides)
    return create_app(settings, make_registry()).test_client()


def issue(resp) -> dict:
    assert resp.mimetype == "application/fhir+json", resp.get_data(as_text=True)[:200]
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def raw_post(client, path: str, text: str):
    return client.post(path, data=text, content_type="application/json")


def test_nesting_over_the_limit_is_413_naming_limit_and_element(tmp_path):
    client = make_client(tmp_path, max_json_depth=20)
    body = pv_request()
    body["prefetch"]["patient"]["extension"] = json.loads(deep(30))
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 413
    found = issue(resp)
    assert found["code"] == "too-costly"
    assert "nested deeper than 20 levels" in found["diagnostics"]
    assert found["expression"][0].startswith("prefetch.patient.extension[0]")


@pytest.mark.parametrize("depth", [100, 5_000, 200_000])
def test_hostile_nesting_is_413_not_a_500(tmp_path, depth):
    client = make_client(tmp_path)
    text = '{"hook": "patient-view", "context": ' + deep(depth) + "}"
    resp = raw_post(client, "/cds-services/echo-patient", text)
    assert resp.status_code == 413
    assert "nested deeper than 64 levels" in issue(resp)["diagnostics"]


def test_feedback_bodies_are_held_to_the_same_limits(tmp_path):
    client = make_client(tmp_path)
    resp = raw_post(client, "/cds-services/echo-patient/feedback", '{"feedback": ' + deep(100) + "}")
    assert resp.status_code == 413
    long = {"feedback": [{"card": "c", "outcome": "overridden", "note": "x" * (2 * 1024 * 1024)}]}
    assert client.post("/cds-services/echo-patient/feedback", json=long).status_code == 413


def test_a_string_over_the_limit_is_413(tmp_path):
    client = make_client(tmp_path, max_string_bytes=1000)
    body = pv_request()
    body["prefetch"]["patient"]["text"] = {"div": "<div>" + "a" * 1000 + "</div>"}
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 413
    found = issue(resp)
    assert "a string is longer than 1000 bytes" in found["diagnostics"]
    assert found["expression"] == ["prefetch.patient.text.div"]
    assert "aaaa" not in found["diagnostics"]
    body = pv_request(extension={"k" * 1001: True})
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 413 and "object key" in issue(resp)["diagnostics"]


def test_the_default_string_limit_is_one_mib(tmp_path):
    client = make_client(tmp_path)
    body = pv_request(extension={"note": "a" * (1024 * 1024)})
    assert client.post("/cds-services/echo-patient", json=body).status_code == 200
    body = pv_request(extension={"note": "a" * (1024 * 1024 + 1)})
    assert client.post("/cds-services/echo-patient", json=body).status_code == 413


def observations(n: int) -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Observation", "id": f"o{i}"}} for i in range(n)],
    }


def test_too_many_resources_across_prefetch_is_413(tmp_path):
    client = make_client(tmp_path, max_entries=50)
    # patient (1) + bundle (1) + 48 observations = 50: at the limit
    body = pv_request()
    body["prefetch"]["observations"] = observations(48)
    assert client.post("/cds-services/echo-patient", json=body).status_code == 200
    body["prefetch"]["observations"] = observations(49)
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 413
    assert "more than 50 FHIR resources" in issue(resp)["diagnostics"]


def test_draft_orders_count_with_the_prefetch(tmp_path):
    client = make_client(tmp_path, max_entries=10)
    body = {
        "hook": "order-select",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2eb",
        "context": {
            "userId": "Practitioner/example",
            "patientId": "p1",
            "selections": ["MedicationRequest/m0"],
            "draftOrders": {
                "resourceType": "Bundle",
                "entry": [
                    {"resource": {"resourceType": "MedicationRequest", "id": f"m{i}"}} for i in range(6)
                ],
            },
        },
        "prefetch": {"patient": observations(2)},
    }
    assert client.post("/cds-services/orders", json=body).status_code == 200  # 7 + 3 = 10
    body["prefetch"]["patient"] = observations(3)
    assert client.post("/cds-services/orders", json=body).status_code == 413


@pytest.mark.parametrize("name", ["max_json_depth", "max_string_bytes", "max_entries"])
def test_limits_must_be_positive(tmp_path, name):
    with pytest.raises(SettingsError, match=name.upper()):
        Settings.load(environ={}, data_dir=str(tmp_path), **{name: 0})
    assert (
        Settings.load(environ={f"CDS_PLUGIN_{name.upper()}": "7"}, data_dir=str(tmp_path)).__dict__[name] == 7
    )


# --- data fetched from the client's FHIR server -------------------------------------------------------


class HostileFhirServer:
    """A loopback FHIR server whose answers break the limits: Patient/deep, Patient/long, Observation
    searches with `n` entries, Patient/p1 a plain patient."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.removeprefix("/fhir/")
                if path.startswith("Patient/deep"):
                    body = '{"resourceType": "Patient", "id": "deep", "extension": ' + deep(100) + "}"
                elif path.startswith("Patient/verydeep"):
                    body = '{"resourceType": "Patient", "id": "verydeep", "extension": ' + deep(100_000) + "}"
                elif path.startswith("Patient/long"):
                    body = json.dumps({"resourceType": "Patient", "id": "long", "text": {"div": "a" * 5000}})
                elif path.startswith("Patient/"):
                    body = json.dumps({"resourceType": "Patient", "id": path.split("/")[1].split("?")[0]})
                else:  # Observation?patient=...
                    body = json.dumps(observations(40))
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HostileFhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fhir_server():
    with HostileFhirServer() as server:
        yield server


def fetching_request(server: HostileFhirServer, patient_id: str) -> dict:
    return pv_request(
        context={"userId": "Practitioner/example", "patientId": patient_id},
        prefetch=None,
        fhirServer=server.base_url,
        fhirAuthorization={
            "access_token": "secret-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-plugin",
        },
    )


@pytest.mark.parametrize(
    ("patient_id", "limit_text"),
    [
        ("deep", "nested deeper than 64 levels"),
        ("verydeep", "nested deeper than 64 levels"),
        ("long", "a string is longer than 1000 bytes"),
    ],
)
def test_fetched_data_over_a_limit_fails_that_query_412(tmp_path, fhir_server, patient_id, limit_text):
    """Required data that breaks a limit cannot be had: 412 naming the key and the limit."""
    client = make_client(tmp_path, max_string_bytes=1000)
    resp = client.post("/cds-services/echo-patient", json=fetching_request(fhir_server, patient_id))
    assert resp.status_code == 412
    found = issue(resp)
    assert found["expression"] == ["prefetch.patient"]
    assert limit_text in found["diagnostics"]
    assert "secret-token" not in found["diagnostics"]


def test_fetched_resources_count_with_the_request(tmp_path, fhir_server):
    # the 40 observations (+ their Bundle) fit in 100, not in 30
    client = make_client(tmp_path, max_entries=100)
    assert (
        client.post("/cds-services/echo-patient", json=fetching_request(fhir_server, "p1")).status_code == 200
    )
    client = make_client(tmp_path / "b", max_entries=30)
    resp = client.post("/cds-services/echo-patient", json=fetching_request(fhir_server, "p1"))
    assert resp.status_code == 412
    found = issue(resp)
    # fetched in parallel: whichever answer comes in past the shared budget fails
    assert found["expression"][0] in ("prefetch.observations", "prefetch.patient")
    assert "more than 30 FHIR resources" in found["diagnostics"]
