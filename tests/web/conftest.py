from __future__ import annotations

import pytest

from cds_plugin.hooks.card import Action, Card, Link, Source, Suggestion
from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.registry import HookCall, ServiceRegistry
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app

PATIENT_TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "observations": "Observation?patient={{context.patientId}}",
}


def make_registry() -> ServiceRegistry:
    """Two small services on one hook, one on order-select; they echo what they were given."""
    registry = ServiceRegistry()

    @registry.service(
        "echo-patient",
        hook="patient-view",
        title="Echo patient",
        description="Returns one card naming where each prefetch key came from",
        prefetch=PATIENT_TEMPLATES,
        usage_requirements="Test service",
    )
    def echo_patient(call: HookCall) -> CDSResponse:
        call.model_version = "test-1"
        sources = ", ".join(f"{k}={v}" for k, v in sorted(call.prefetch_sources.items()))
        observations = call.prefetch.get("observations") or {}
        detail = f"{len(observations.get('entry', []))} observations"
        card = Card(
            summary=f"Sources: {sources}"[:139],
            detail=detail,
            indicator="info",
            source=Source(label="Test", topic=Coding(system="http://example.org", code="t", display="Test")),
            suggestions=[
                Suggestion(
                    label="Do it",
                    actions=[Action(type="create", description="Create", resource={"resourceType": "Task"})],
                )
            ],
            selectionBehavior="at-most-one",
            overrideReasons=[Coding(system="http://example.org/r", code="na", display="Not applicable")],
            links=[Link(label="More", url="https://example.org/more", type="absolute")],
        )
        return CDSResponse(cards=[card])

    @registry.service("quiet", hook="patient-view", description="Never has anything to say")
    def quiet(call: HookCall) -> CDSResponse:
        return CDSResponse()

    @registry.service(
        "orders",
        hook="order-select",
        description="Counts draft orders",
        prefetch={"patient": "Patient/{{context.patientId}}"},
        optional_prefetch={"patient"},
    )
    def orders(call: HookCall) -> CDSResponse:
        n = len(call.context.draftOrders.get("entry", []))
        return CDSResponse(
            cards=[Card(summary=f"{n} draft orders", indicator="info", source=Source(label="T"))]
        )

    @registry.service("boom", hook="patient-view", description="Fails inside")
    def boom(call: HookCall) -> CDSResponse:
        raise RuntimeError("secret patient detail Jane Doe")

    return registry


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False)


@pytest.fixture
def app(settings):
    return create_app(settings, make_registry())


@pytest.fixture
def client(app):
    return app.test_client()


def pv_request(**overrides):
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": "p1"},
        "prefetch": {
            "patient": {"resourceType": "Patient", "id": "p1"},
            "observations": {"resourceType": "Bundle", "type": "searchset", "entry": []},
        },
    }
    body.update(overrides)
    return body
