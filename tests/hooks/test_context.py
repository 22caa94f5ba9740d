"""Per-hook context models of the CDS Hooks library: required fields and formats (ord-1)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cds_plugin.hooks.context import HOOK_CONTEXTS

BUNDLE = {"resourceType": "Bundle", "type": "collection", "entry": []}
USER = "Practitioner/example"

VALID = {
    "patient-view": {"userId": "Patient/p1", "patientId": "p1"},
    "order-select": {
        "userId": USER,
        "patientId": "p1",
        "selections": ["MedicationRequest/m1"],
        "draftOrders": BUNDLE,
    },
    "order-sign": {
        "userId": "PractitionerRole/r1",
        "patientId": "p1",
        "encounterId": "e1",
        "draftOrders": BUNDLE,
    },
    "order-dispatch": {
        "patientId": "p1",
        "dispatchedOrders": ["ServiceRequest/1"],
        "performer": "Organization/o",
        "fulfillmentTasks": [{"resourceType": "Task", "id": "t"}],
    },
    "encounter-start": {"userId": USER, "patientId": "p1", "encounterId": "e1"},
    "encounter-discharge": {"userId": USER, "patientId": "p1", "encounterId": "e1"},
    "appointment-book": {"userId": "RelatedPerson/r", "patientId": "p1", "appointments": BUNDLE},
}

REQUIRED = {
    "patient-view": ["userId", "patientId"],
    "order-select": ["userId", "patientId", "selections", "draftOrders"],
    "order-sign": ["userId", "patientId", "draftOrders"],
    "order-dispatch": ["patientId", "dispatchedOrders", "performer"],
    "encounter-start": ["userId", "patientId", "encounterId"],
    "encounter-discharge": ["userId", "patientId", "encounterId"],
    "appointment-book": ["userId", "patientId", "appointments"],
}


def test_every_library_hook_has_a_model():
    assert set(HOOK_CONTEXTS) == set(VALID)


@pytest.mark.parametrize("hook", sorted(VALID))
def test_valid_context(hook):
    HOOK_CONTEXTS[hook].model_validate(VALID[hook])


@pytest.mark.parametrize(("hook", "field"), [(h, f) for h, fields in REQUIRED.items() for f in fields])
def test_required_fields(hook, field):
    context = dict(VALID[hook])
    del context[field]
    with pytest.raises(ValidationError) as info:
        HOOK_CONTEXTS[hook].model_validate(context)
    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize(
    ("hook", "field", "value"),
    [
        ("encounter-start", "userId", "Patient/p1"),  # clinicians only
        ("order-sign", "draftOrders", {"resourceType": "Bundle", "entry": {}}),
        ("order-dispatch", "fulfillmentTasks", [{"resourceType": "Patient"}]),
        ("order-dispatch", "performer", "not a reference"),
        ("appointment-book", "appointments", []),
        ("patient-view", "patientId", "x" * 65),
    ],
)
def test_invalid_values(hook, field, value):
    with pytest.raises(ValidationError):
        HOOK_CONTEXTS[hook].model_validate({**VALID[hook], field: value})
