"""Service calls: request parsing, per-hook context, errors as OperationOutcome (req 3, 16, 74, 76, 77)."""

from __future__ import annotations

import json
import logging

import pytest

from tests.web.conftest import pv_request


def outcome(resp):
    body = resp.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"][0]


def test_call_returns_cards_without_empties(client):
    """Req 74: 200 with a cards array; req 3: no null or empty elements."""
    resp = client.post("/cds-services/echo-patient", json=pv_request())
    assert resp.status_code == 200
    body = resp.get_json()
    card = body["cards"][0]
    assert card["summary"] == "Sources: observations=prefetch, patient=prefetch"
    assert card["uuid"] and card["suggestions"][0]["uuid"]
    text = json.dumps(body)
    assert "null" not in text and "[]" not in text and "{}" not in text
    assert "systemActions" not in body


def test_no_guidance_is_an_empty_cards_array(client):
    """Req 77: no decision support -> 200 with an empty array of cards."""
    resp = client.post("/cds-services/quiet", json=pv_request())
    assert resp.status_code == 200 and resp.get_json() == {"cards": []}


def test_unknown_fields_are_tolerated(client):
    body = pv_request(somethingNew={"a": 1})
    body["context"]["extraField"] = "x"
    body["extension"] = {"org.example.thing": {"x": 1}}
    assert client.post("/cds-services/echo-patient", json=body).status_code == 200


def test_unknown_service_is_404(client):
    resp = client.post("/cds-services/nope", json=pv_request())
    assert resp.status_code == 404 and outcome(resp)["code"] == "not-found"


def test_wrong_method_is_405(client):
    resp = client.get("/cds-services/echo-patient")
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"]
    outcome(resp)


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b"", None),
    ],
)
def test_malformed_body_is_400(client, body, expression):
    resp = client.post("/cds-services/echo-patient", data=body, content_type="application/json")
    assert resp.status_code == 400
    issue = outcome(resp)
    assert issue["severity"] == "error" and issue["diagnostics"]


@pytest.mark.parametrize("field", ["hook", "hookInstance", "context"])
def test_missing_required_field_is_400_naming_it(client, field):
    body = pv_request()
    del body[field]
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 400
    issue = outcome(resp)
    assert issue["expression"] == [field] and issue["code"] == "required"


def test_hook_mismatch_is_400(client):
    resp = client.post("/cds-services/echo-patient", json=pv_request(hook="order-sign"))
    assert resp.status_code == 400 and outcome(resp)["expression"] == ["hook"]


def test_fhir_authorization_requires_fhir_server(client):
    auth = {
        "access_token": "t",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/*.read",
        "subject": "c",
    }
    resp = client.post("/cds-services/echo-patient", json=pv_request(fhirAuthorization=auth))
    assert resp.status_code == 400 and "cds-r-1" in outcome(resp)["diagnostics"]


@pytest.mark.parametrize(
    ("context", "expression"),
    [
        ({"patientId": "p1"}, "context.userId"),
        ({"userId": "Practitioner/x"}, "context.patientId"),
        ({"userId": "not-a-reference", "patientId": "p1"}, "context.userId"),
        ({"userId": "Organization/x", "patientId": "p1"}, "context.userId"),
        ({"userId": "Practitioner/x", "patientId": "has space"}, "context.patientId"),
        ({"userId": "Practitioner/x", "patientId": "p1", "encounterId": 5}, "context.encounterId"),
    ],
)
def test_invalid_patient_view_context_is_400_naming_the_field(client, context, expression):
    resp = client.post("/cds-services/echo-patient", json=pv_request(context=context))
    assert resp.status_code == 400
    assert outcome(resp)["expression"] == [expression]


DRAFT = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [{"resource": {"resourceType": "MedicationRequest", "id": "m1", "status": "draft"}}],
}


def test_order_select_context(client):
    body = {
        "hook": "order-select",
        "hookInstance": "h1",
        "context": {
            "userId": "Practitioner/x",
            "patientId": "p1",
            "selections": ["MedicationRequest/m1"],
            "draftOrders": DRAFT,
        },
    }
    resp = client.post("/cds-services/orders", json=body)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["cards"][0]["summary"] == "1 draft orders"


@pytest.mark.parametrize(
    ("change", "expression"),
    [
        ({"selections": []}, "context.selections"),
        ({"draftOrders": {"resourceType": "Patient"}}, "context.draftOrders"),
        ({"userId": "Patient/p1"}, "context.userId"),  # order-select users are clinicians
    ],
)
def test_invalid_order_select_context(client, change, expression):
    context = {
        "userId": "Practitioner/x",
        "patientId": "p1",
        "selections": ["MedicationRequest/m1"],
        "draftOrders": DRAFT,
        **change,
    }
    resp = client.post(
        "/cds-services/orders", json={"hook": "order-select", "hookInstance": "h", "context": context}
    )
    assert resp.status_code == 400 and outcome(resp)["expression"] == [expression]


def test_prefetch_value_must_be_resource_or_null(client):
    resp = client.post("/cds-services/echo-patient", json=pv_request(prefetch={"patient": "Patient/p1"}))
    assert resp.status_code == 400 and outcome(resp)["expression"] == ["prefetch.patient"]


def test_missing_prefetch_without_server_is_412(client):
    resp = client.post("/cds-services/echo-patient", json=pv_request(prefetch={}))
    assert resp.status_code == 412
    assert outcome(resp)["expression"] == ["prefetch.patient"]


def test_internal_error_is_500_without_details(client, caplog):
    caplog.set_level(logging.INFO)
    resp = client.post("/cds-services/boom", json=pv_request())
    assert resp.status_code == 500
    issue = outcome(resp)
    assert "Jane" not in resp.get_data(as_text=True) and "Traceback" not in resp.get_data(as_text=True)
    assert issue["code"] == "exception"
    assert "Jane" not in caplog.text  # the exception message may hold patient data: never logged


def test_body_size_limit_is_413(tmp_path):
    from cds_plugin.settings import Settings
    from cds_plugin.web.app import create_app
    from tests.web.conftest import make_registry

    app = create_app(
        Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False, max_body_bytes=1000),
        make_registry(),
    )
    resp = app.test_client().post("/cds-services/echo-patient", json=pv_request(padding="x" * 2000))
    assert resp.status_code == 413 and outcome(resp)["code"] == "too-costly"


def test_one_structured_log_line_per_call(client, caplog):
    caplog.set_level(logging.INFO, logger="cds_plugin.calls")
    client.post("/cds-services/echo-patient", json=pv_request())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "cds_plugin.calls"]
    assert len(lines) == 1
    line = lines[0]
    assert line["service"] == "echo-patient" and line["hook"] == "patient-view" and line["status"] == 200
    assert line["cards"] == 1 and line["model_version"] == "test-1" and line["latency_ms"] >= 0
    assert line["hookInstance"] == "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea"
    assert "p1" not in caplog.text  # the patient id is not logged
