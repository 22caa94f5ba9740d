"""Hook calls whose prefetch is missing: data fetched from the client's FHIR server on loopback
(req 28, 34, 52, 54, 60, 61)."""

from __future__ import annotations

import time

import pytest

from cds_plugin.hooks.registry import HookCall, ServiceRegistry
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.helpers.fhir_faults import FaultyFhirServer
from tests.web.conftest import make_registry, pv_request

AUTH = {
    "access_token": "good-token",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "user/*.read",
    "subject": "cds-service",
}


@pytest.fixture
def fhir():
    with FaultyFhirServer(slow_s=3.0) as server:
        yield server


def test_missing_prefetch_is_fetched_with_the_token(client, fhir):
    body = pv_request(fhirServer=fhir.base_url, fhirAuthorization=AUTH)
    del body["prefetch"]
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 200, resp.get_json()
    card = resp.get_json()["cards"][0]
    assert card["summary"] == "Sources: observations=fhir-server, patient=fhir-server"
    assert card["detail"] == "6 observations"  # all three pages followed
    assert set(fhir.seen_auth) == {"Bearer good-token"}


def test_only_missing_keys_are_fetched_and_null_is_not_requeried(client, fhir):
    body = pv_request(
        fhirServer=fhir.base_url,
        fhirAuthorization=AUTH,
        prefetch={"patient": {"resourceType": "Patient", "id": "p1"}, "observations": None},
    )
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 200
    assert fhir.paths == []
    body["prefetch"] = {"patient": {"resourceType": "Patient", "id": "p1"}}
    assert client.post("/cds-services/echo-patient", json=body).status_code == 200
    assert all(p.startswith("/fhir/Observation") for p in fhir.paths) and fhir.paths


def test_no_token_and_server_not_allow_listed_is_412(client, fhir):
    body = pv_request(fhirServer=fhir.base_url, prefetch={})
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 412
    assert fhir.paths == []  # nothing was sent to a server we may not query without a token


def test_no_token_on_allow_listed_server(tmp_path, fhir):
    settings = Settings.load(
        environ={}, data_dir=str(tmp_path), jwt_required=False, fhir_open_servers=fhir.base_url + "/"
    )
    client = create_app(settings, make_registry()).test_client()
    resp = client.post("/cds-services/echo-patient", json=pv_request(fhirServer=fhir.base_url, prefetch={}))
    assert resp.status_code == 200
    assert set(fhir.seen_auth) == {None}


def faulty_registry() -> ServiceRegistry:
    registry = ServiceRegistry()
    for kind in ("Broken", "Unauthorized", "Malformed", "Slow", "NotFhir", "Elsewhere", "Endless"):
        registry.service(
            f"needs-{kind.lower()}",
            hook="patient-view",
            description="d",
            prefetch={"data": f"{kind}/{{{{context.patientId}}}}"},
        )(lambda call: CDSResponse())
    return registry


@pytest.mark.parametrize("kind", ["broken", "unauthorized", "malformed", "slow", "notfhir"])
def test_unusable_fhir_server_answer_is_412_within_budget(tmp_path, fhir, kind):
    settings = Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False, fhir_fetch_budget_s=1.0)
    client = create_app(settings, faulty_registry()).test_client()
    body = pv_request(
        fhirServer=fhir.base_url, fhirAuthorization={**AUTH, "access_token": "wrong"}, prefetch={}
    )
    started = time.monotonic()
    resp = client.post(f"/cds-services/needs-{kind}", json=body)
    assert time.monotonic() - started < 2.0
    assert resp.status_code == 412
    issue = resp.get_json()["issue"][0]
    assert issue["expression"] == ["prefetch.data"]
    assert "wrong" not in resp.get_data(as_text=True)


@pytest.mark.parametrize(("max_pages", "status"), [(5, 200), (100_000, 412)])
def test_endless_paging_is_cut_at_the_page_cap_or_the_budget(tmp_path, fhir, max_pages, status):
    """The documented answers (docs/operations.md, failures): pages beyond the cap are left out; a server
    still paging when the time budget runs out is a 412, within the budget."""
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path),
        jwt_required=False,
        fhir_fetch_budget_s=1.0,
        fhir_max_pages=max_pages,
    )
    client = create_app(settings, faulty_registry()).test_client()
    body = pv_request(fhirServer=fhir.base_url, fhirAuthorization=AUTH, prefetch={})
    started = time.monotonic()
    resp = client.post("/cds-services/needs-endless", json=body)
    assert time.monotonic() - started < 2.0
    assert resp.status_code == status
    if status == 412:
        assert resp.get_json()["issue"][0]["expression"] == ["prefetch.data"]


def test_fhir_server_down_is_412_at_once(tmp_path):
    from tests.helpers.live_server import free_port

    settings = Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False, fhir_fetch_budget_s=5.0)
    client = create_app(settings, faulty_registry()).test_client()
    body = pv_request(fhirServer=f"http://127.0.0.1:{free_port()}/fhir", fhirAuthorization=AUTH, prefetch={})
    started = time.monotonic()
    resp = client.post("/cds-services/needs-broken", json=body)
    assert time.monotonic() - started < 2.0  # connection refused: no need to wait for the budget
    assert resp.status_code == 412
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_missing_resource_is_no_data_not_an_error(tmp_path, fhir):
    seen = {}
    registry = ServiceRegistry()

    @registry.service(
        "p", hook="patient-view", description="d", prefetch={"patient": "Patient/{{context.patientId}}"}
    )
    def handler(call: HookCall) -> CDSResponse:
        seen.update(call.prefetch)
        return CDSResponse()

    client = create_app(
        Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False), registry
    ).test_client()
    body = pv_request(fhirServer=fhir.base_url, fhirAuthorization=AUTH, prefetch={})
    body["context"]["patientId"] = "nobody"
    assert client.post("/cds-services/p", json=body).status_code == 200
    assert seen == {"patient": None}


def test_plain_http_remote_server_is_not_queried(client):
    """Req 2, 168: no fetch (and no token sent) to a non-loopback http server: 412 instead."""
    body = pv_request(fhirServer="http://ehr.example.invalid/fhir", fhirAuthorization=AUTH, prefetch={})
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 412
