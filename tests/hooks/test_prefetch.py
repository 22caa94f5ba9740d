"""Prefetch templates (req 35, 36, 52, 54, 55, 56, 57, 59) and resolution."""

from __future__ import annotations

import pytest

from cds_plugin.errors import PreconditionFailedError
from cds_plugin.hooks.context import OrderDispatchContext, OrderSelectContext, PatientViewContext
from cds_plugin.hooks.prefetch import PrefetchTemplateError, check_template, render_template, resolve_prefetch
from tests.helpers.fhir_faults import FaultyFhirServer


@pytest.mark.parametrize(
    "template",
    [
        "Patient/{{context.patientId}}",
        "Condition?patient={{context.patientId}}&clinical-status=active",
        "Observation?subject={{context.patientId}}&category=laboratory&_sort=-date&_count=100",
        "Practitioner/{{userPractitionerId}}",
        "PractitionerRole/{{userPractitionerRoleId}}",
        "Patient/{{userPatientId}}",
        "RelatedPerson/{{userRelatedPersonId}}",
        "Encounter/{{ context.encounterId }}",
        "Medication?_count=5",
    ],
)
def test_valid_templates(template):
    check_template("svc", "k", template, PatientViewContext)


@pytest.mark.parametrize(
    ("template", "context_model", "message"),
    [
        ("Patient/{{context.draftOrders}}", OrderSelectContext, "not a root-level primitive"),
        ("Patient/{{context.selections}}", OrderSelectContext, "not a root-level primitive"),
        ("Patient/{{context.nope}}", PatientViewContext, "not a root-level primitive"),
        ("Patient/{{patientId}}", PatientViewContext, "not allowed"),
        ("Patient/{{Patient.id}}", PatientViewContext, "not allowed"),
        ("Patient/{{context.patientId}", PatientViewContext, "unbalanced"),
        ("https://evil.example/Patient/{{context.patientId}}", PatientViewContext, "relative FHIR"),
        ("../admin", PatientViewContext, "relative FHIR"),
        ("Patient/../../x", PatientViewContext, "relative FHIR"),
        ("", PatientViewContext, "non-empty"),
        ("Practitioner/{{context.userId}}", OrderDispatchContext, "not a root-level primitive"),
    ],
)
def test_invalid_templates_name_service_key_and_reason(template, context_model, message):
    with pytest.raises(PrefetchTemplateError, match=message) as info:
        check_template("my-svc", "the-key", template, context_model)
    assert "my-svc" in str(info.value) and "the-key" in str(info.value)


def test_render_fills_context_and_user_tokens():
    ctx = {"userId": "Practitioner/dr 1", "patientId": "p1"}
    assert render_template("Condition?patient={{context.patientId}}", ctx) == "Condition?patient=p1"
    assert render_template("Practitioner/{{userPractitionerId}}", ctx) == "Practitioner/dr%201"
    # a token for a user of another type does not apply
    assert render_template("PractitionerRole/{{userPractitionerRoleId}}", ctx) is None
    assert render_template("Encounter/{{context.encounterId}}", ctx) is None


TEMPLATES = {"patient": "Patient/{{context.patientId}}", "obs": "Observation?patient={{context.patientId}}"}
CTX = {"userId": "Practitioner/x", "patientId": "p1"}


def test_sent_data_is_used_and_null_is_not_requeried():
    """Req 28: prefetched data is used; null means no data, not 'go and fetch'."""
    sent = {"patient": {"resourceType": "Patient", "id": "p1"}, "obs": None}
    result = resolve_prefetch(TEMPLATES, set(TEMPLATES), sent, CTX, fetcher=None)
    assert result.data == sent
    assert result.sources == {"patient": "prefetch", "obs": "absent"}


def test_missing_keys_without_server_give_412_naming_the_key():
    """Req 54: 412 when required data cannot be had."""
    with pytest.raises(PreconditionFailedError) as info:
        resolve_prefetch(TEMPLATES, set(TEMPLATES), {"patient": {"resourceType": "Patient"}}, CTX, None)
    assert info.value.expression == "prefetch.obs" and "'obs'" in info.value.message


def test_optional_keys_may_stay_missing():
    result = resolve_prefetch(TEMPLATES, {"patient"}, {"patient": {"resourceType": "Patient"}}, CTX, None)
    assert result.data["obs"] is None and "obs" in result.failures


def test_operation_outcome_counts_as_missing_and_is_fetched():
    """Req 52: prefetched OperationOutcomes are checked for."""
    from cds_plugin.hooks.fhir_client import FhirFetcher

    with FaultyFhirServer() as server:
        fetcher = FhirFetcher(server.base_url, "good-token", budget_s=3)
        sent = {"patient": {"resourceType": "OperationOutcome", "issue": []}}
        result = resolve_prefetch(TEMPLATES, set(TEMPLATES), sent, CTX, fetcher)
    assert result.data["patient"]["id"] == "p1"
    assert len(result.data["obs"]["entry"]) == 6
    assert result.sources == {"patient": "fhir-server", "obs": "fhir-server"}
