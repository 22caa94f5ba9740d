"""Discovery (req 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 36)."""

from __future__ import annotations

import pytest

from cds_plugin.hooks.registry import ServiceConfigurationError, ServiceRegistry
from cds_plugin.web.app import create_app


def test_discovery_lists_every_service(client):
    resp = client.get("/cds-services")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    services = {s["id"]: s for s in resp.get_json()["services"]}
    assert set(services) == {"echo-patient", "quiet", "orders", "boom"}
    echo = services["echo-patient"]
    assert echo == {
        "hook": "patient-view",
        "title": "Echo patient",
        "description": "Returns one card naming where each prefetch key came from",
        "id": "echo-patient",
        "prefetch": {
            "patient": "Patient/{{context.patientId}}",
            "observations": "Observation?patient={{context.patientId}}",
        },
        "usageRequirements": "Test service",
    }
    # two services share patient-view; optional fields without value are omitted, never null (req 3)
    assert services["quiet"] == {
        "hook": "patient-view",
        "description": "Never has anything to say",
        "id": "quiet",
    }


def test_empty_registry_still_answers(settings):
    resp = create_app(settings, ServiceRegistry()).test_client().get("/cds-services")
    assert resp.status_code == 200 and resp.get_json() == {"services": []}


def test_invalid_template_stops_start_up(settings):
    registry = ServiceRegistry()
    registry.service(
        "bad",
        hook="order-sign",
        description="d",
        prefetch={"orders": "MedicationRequest/{{context.draftOrders}}"},
    )(lambda call: None)
    with pytest.raises(ServiceConfigurationError, match="'bad'.*'orders'.*draftOrders"):
        create_app(settings, registry)


def test_unknown_hook_needs_a_context_model(settings):
    registry = ServiceRegistry()
    registry.service("x", hook="my-custom-hook", description="d")(lambda call: None)
    with pytest.raises(ServiceConfigurationError, match="not a known hook"):
        create_app(settings, registry)


def test_duplicate_and_unsafe_ids_are_refused():
    registry = ServiceRegistry()
    registry.service("a", hook="patient-view", description="d")(lambda call: None)
    with pytest.raises(ServiceConfigurationError, match="twice"):
        registry.service("a", hook="patient-view", description="d")(lambda call: None)
    with pytest.raises(ServiceConfigurationError, match="URL-safe"):
        registry.service("a/b", hook="order-sign", description="d")(lambda call: None)


def test_discovery_wrong_method_is_405(client):
    resp = client.post("/cds-services")
    assert resp.status_code == 405 and resp.get_json()["resourceType"] == "OperationOutcome"


def test_one_id_serves_one_hook(settings):
    """A service id is the last segment of its URL, so it is unique: the same id on a second hook is
    refused, and a call whose hook is not the service's is a 400 naming the hook it answers."""
    from cds_plugin.hooks.card import Card, Source
    from cds_plugin.hooks.response import CDSResponse

    registry = ServiceRegistry()
    for hook in ("order-select", "order-sign"):
        registry.service(f"{hook}-check", hook=hook, description="d")(
            lambda call, hook=hook: CDSResponse(
                cards=[Card(summary=hook, indicator="info", source=Source(label="x"))]
            )
        )
    with pytest.raises(ServiceConfigurationError, match="twice.*'order-select'.*'order-sign'.*unique"):
        registry.service("order-select-check", hook="order-sign", description="d")(lambda call: None)
    client = create_app(settings, registry).test_client()
    listed = client.get("/cds-services").get_json()["services"]
    assert [(s["id"], s["hook"]) for s in listed] == [
        ("order-select-check", "order-select"),
        ("order-sign-check", "order-sign"),
    ]
    draft = {"resourceType": "Bundle", "type": "collection", "entry": []}
    body = {
        "hook": "order-sign",
        "hookInstance": "h",
        "context": {"userId": "Practitioner/x", "patientId": "p", "draftOrders": draft},
    }
    resp = client.post("/cds-services/order-sign-check", json=body)
    assert resp.get_json()["cards"][0]["summary"] == "order-sign"
    resp = client.post("/cds-services/order-select-check", json=body)
    assert resp.status_code == 400 and "answers 'order-select'" in resp.get_json()["issue"][0]["diagnostics"]
