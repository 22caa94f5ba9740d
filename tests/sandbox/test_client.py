"""The sandbox client's parts, without a CDS service: service URLs, FHIR sources, context per hook,
draft orders, prefetch modes, feedback bodies and token redaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from cds_plugin.sandbox.client import (
    BundleSource,
    CallResult,
    FeedbackNotPossible,
    FhirQueryError,
    HttpExchange,
    SandboxError,
    ServerSource,
    ServiceUrl,
    build_context,
    build_prefetch,
    choose_service,
    draft_order,
    feedback_item,
    mask,
    parse_service_url,
)
from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.fhir_store import FhirStore

ROOT = Path(__file__).resolve().parents[2]
HTN = ROOT / "fhir_fixtures" / "patients" / "hypertension-adult-2019.json"
HTN_PATIENT = "ee9f8dd8-72d2-4769-8020-89e504b1504b"


@pytest.fixture(scope="module")
def p1(fhir_data: Path) -> BundleSource:
    """The hand-made data set of tests/sandbox/conftest.py (p1: 3 MedicationRequests, 1 Encounter)."""
    return BundleSource(FhirStore.load(fhir_data), "http://fhir.example/r4")


@pytest.fixture(scope="module")
def htn() -> BundleSource:
    return BundleSource(FhirStore.load(HTN))


# -- service URLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "discovery", "service_id"),
    [
        ("http://127.0.0.1:8080/cds-services", "http://127.0.0.1:8080/cds-services", None),
        ("http://127.0.0.1:8080/cds-services/", "http://127.0.0.1:8080/cds-services", None),
        ("http://127.0.0.1:8080/cds-services/echo", "http://127.0.0.1:8080/cds-services", "echo"),
        ("https://cds.example.org", "https://cds.example.org/cds-services", None),
        ("https://cds.example.org/tenant-a/", "https://cds.example.org/tenant-a/cds-services", None),
        ("https://x.org/a/cds-services/s%201?q=1", "https://x.org/a/cds-services", "s 1"),
    ],
)
def test_service_urls(url: str, discovery: str, service_id: str | None) -> None:
    parsed = parse_service_url(url)
    assert (parsed.discovery_url, parsed.service_id) == (discovery, service_id)


def test_endpoint_is_discovery_plus_id_and_bad_urls_are_usage_errors() -> None:
    assert ServiceUrl("https://x.org/cds-services").endpoint("a b") == "https://x.org/cds-services/a%20b"
    for bad in ("ftp://x.org/cds-services", "cds.example.org", "https://x.org/cds-services/a/feedback"):
        with pytest.raises(SandboxError):
            parse_service_url(bad)


def test_choosing_the_service() -> None:
    services: list[Any] = [
        {"hook": "patient-view", "id": "a", "description": "d"},
        {"hook": "patient-view", "id": "b", "description": "d"},
        {"hook": "order-select", "id": "c", "description": "d"},
        "garbage",
    ]
    assert choose_service(services, "order-select", None)["id"] == "c"
    assert choose_service(services, "patient-view", "b")["id"] == "b"
    with pytest.raises(SandboxError, match="--service-id"):
        choose_service(services, "patient-view", None)
    with pytest.raises(SandboxError, match="not 'order-select'"):
        choose_service(services, "order-select", "a")
    with pytest.raises(SandboxError, match="no service 'z'"):
        choose_service(services, "patient-view", "z")
    with pytest.raises(SandboxError, match="hooks served"):
        choose_service(services, "order-sign", None)


# -- FHIR sources -------------------------------------------------------------------------------------


def test_bundle_source_reads_and_searches_like_a_server(p1: BundleSource, facts) -> None:
    assert p1.query("Patient/p1")["birthDate"] == "1960-05-17"
    assert p1.query("Patient/nobody") is None
    bundle = p1.query("Observation?patient=p1&code=http://loinc.org%7C4548-4")
    assert bundle["type"] == "searchset" and bundle["total"] == len(facts.a1c_ids)
    first = bundle["entry"][0]
    assert first["fullUrl"] == f"http://fhir.example/r4/Observation/{first['resource']['id']}"
    assert first["search"] == {"mode": "match"}
    # the store is not changed through what a query returns
    first["resource"]["status"] = "changed"
    assert p1.query(f"Observation/{first['resource']['id']}")["status"] != "changed"


def test_bundle_source_returns_all_matches_unless_count_asks_for_a_page(p1: BundleSource) -> None:
    everything = p1.query("Observation?patient=p1")
    assert everything["total"] == len(everything["entry"]) == 14
    page = p1.query("Observation?patient=p1&_sort=-date&_count=2")
    assert len(page["entry"]) == 2 and page["total"] == 2
    assert p1.query("Condition?patient=nobody") == {"resourceType": "Bundle", "type": "searchset", "total": 0}


def test_bundle_source_reports_ignored_parameters_and_bad_values(p1: BundleSource) -> None:
    bundle = p1.query("Condition?patient=p1&_include=Condition:subject")
    outcome = bundle["entry"][-1]
    assert outcome["search"] == {"mode": "outcome"}
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    with pytest.raises(FhirQueryError, match="_count"):
        p1.query("Observation?patient=p1&_count=many")
    with pytest.raises(FhirQueryError):
        p1.query("Observation/a/b")


def test_server_source_uses_the_token_and_follows_pages(fhir_data: Path) -> None:
    with FhirServer(fhir_data, token="s3cret", page_size_default=5) as server:
        session = requests.Session()
        source = ServerSource(server.base_url, "s3cret", session, timeout_s=10)
        assert source.query("Patient/p1")["id"] == "p1"
        assert source.query("Patient/nobody") is None
        assert len(source.query("Observation?patient=p1")["entry"]) == 14  # 3 pages of 5, merged
        assert len(source.query("Observation?patient=p1&_count=2")["entry"]) == 2  # first page only
        assert "s3cret" not in repr(source)
        with pytest.raises(FhirQueryError, match="401"):
            ServerSource(server.base_url, None, session, timeout_s=10).query("Patient/p1")


# -- context and draft orders ------------------------------------------------------------------------


def test_patient_view_context_has_only_its_fields(p1: BundleSource) -> None:
    assert build_context("patient-view", p1, "p1") == {"userId": "Practitioner/example", "patientId": "p1"}
    assert build_context("patient-view", p1, "p1", "Patient/p1", encounter_id="e1") == {
        "userId": "Patient/p1",
        "patientId": "p1",
        "encounterId": "e1",
    }


def test_order_select_gets_a_draft_copy_of_the_latest_medication_request(p1: BundleSource) -> None:
    context = build_context("order-select", p1, "p1")
    (entry,) = context["draftOrders"]["entry"]
    draft = entry["resource"]
    assert draft["resourceType"] == "MedicationRequest" and draft["id"] == "draft-1"
    assert draft["status"] == "draft"
    assert draft["medicationCodeableConcept"]["coding"][0]["code"] == "617312"  # atorvastatin, 2021
    assert context["draftOrders"]["type"] == "collection"
    assert context["selections"] == ["MedicationRequest/draft-1"]
    assert "encounterId" not in context
    assert p1.query("MedicationRequest/m-atorvastatin")["status"] == "active"  # a copy, not the original


def test_an_existing_draft_is_preferred_and_a_given_order_is_used() -> None:
    mr = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/x"},
    }
    store = FhirStore(
        [
            {"resourceType": "Patient", "id": "x"},
            {**mr, "id": "old-draft", "status": "draft", "authoredOn": "2020-01-01"},
            {**mr, "id": "newer-active", "authoredOn": "2021-01-01"},
        ]
    )
    source = BundleSource(store)
    assert draft_order(source, "x")["id"] == "old-draft"
    given = draft_order(
        source, "x", {"resourceType": "ServiceRequest", "status": "active", "intent": "order"}
    )
    assert (given["id"], given["status"], given["subject"]) == (
        "draft-1",
        "draft",
        {"reference": "Patient/x"},
    )
    wrapped = {"resourceType": "Bundle", "entry": [{"resource": {**mr, "id": "mine"}}]}
    assert draft_order(source, "x", wrapped)["id"] == "mine"
    with pytest.raises(SandboxError, match="--draft-order"):
        draft_order(BundleSource(FhirStore([{"resourceType": "Patient", "id": "y"}])), "y")


def test_order_sign_has_no_selections(htn: BundleSource) -> None:
    context = build_context("order-sign", htn, HTN_PATIENT)
    assert "selections" not in context
    assert context["draftOrders"]["entry"][0]["resource"]["status"] == "draft"


def test_encounter_hooks_get_the_latest_encounter(htn: BundleSource) -> None:
    context = build_context("encounter-start", htn, HTN_PATIENT)
    assert context["encounterId"] == "e38a5fc6-a332-44cb-a6ff-ff02f1eaef2a"  # 2018-08-17, the last visit
    assert build_context("encounter-discharge", htn, HTN_PATIENT, encounter_id="E")["encounterId"] == "E"


def test_context_overrides_and_validation(p1: BundleSource) -> None:
    dispatch = build_context(
        "order-dispatch",
        p1,
        "p1",
        overrides={"dispatchedOrders": ["ServiceRequest/s1"], "performer": "Organization/o1"},
    )
    assert "userId" not in dispatch and dispatch["performer"] == "Organization/o1"
    with pytest.raises(SandboxError, match="--context"):
        build_context("order-dispatch", p1, "p1")
    with pytest.raises(SandboxError, match="userId"):
        build_context("order-sign", p1, "p1", "Patient/p1")  # order hooks need a clinician
    custom = build_context("com.example.custom-hook", p1, "p1", overrides={"extra": 1})
    assert custom == {"userId": "Practitioner/example", "patientId": "p1", "extra": 1}


# -- prefetch -----------------------------------------------------------------------------------------

TEMPLATES = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}",
    "practitioner": "Practitioner/{{userPractitionerId}}",
    "a1c": "Observation?patient={{context.patientId}}&code=4548-4",
    "related": "RelatedPerson/{{userRelatedPersonId}}",
}
CONTEXT = {"userId": "Practitioner/example", "patientId": "p1"}


def test_prefetch_all_fills_every_template(p1: BundleSource) -> None:
    prefetch = build_prefetch(TEMPLATES, CONTEXT, p1, "all")
    data = prefetch.data
    assert data is not None
    assert data["patient"]["id"] == "p1"
    assert data["conditions"]["total"] == 3
    assert data["a1c"]["total"] == 12
    assert data["practitioner"] is None  # read found nothing: null means "no data"
    assert "related" not in data  # the user is not a RelatedPerson: the key does not apply
    assert prefetch.notes["practitioner"] == "null (not found)"
    assert prefetch.notes["conditions"] == "Bundle (3 entries)"


def test_prefetch_none_and_partial_leave_keys_out(p1: BundleSource) -> None:
    none = build_prefetch(TEMPLATES, CONTEXT, p1, "none")
    assert none.data is None and set(none.notes) == set(TEMPLATES)
    partial = build_prefetch(TEMPLATES, CONTEXT, p1, "partial")
    assert partial.data is not None
    assert set(partial.data) == {"patient", "practitioner"}  # 1st, 3rd; the 5th does not apply
    assert partial.notes["conditions"] == partial.notes["a1c"] == "left out (--prefetch partial)"
    with pytest.raises(SandboxError):
        build_prefetch(TEMPLATES, CONTEXT, p1, "some")  # type: ignore[arg-type]


def test_a_failing_prefetch_query_is_sent_as_an_operation_outcome(p1: BundleSource) -> None:
    prefetch = build_prefetch(
        {"bad": "Observation?patient={{context.patientId}}&date=yesterday"}, CONTEXT, p1
    )
    assert prefetch.data is not None
    assert prefetch.data["bad"]["resourceType"] == "OperationOutcome"
    assert prefetch.notes["bad"].startswith("OperationOutcome")


# -- feedback and redaction ---------------------------------------------------------------------------

CARD = {
    "uuid": "c-1",
    "summary": "s",
    "indicator": "info",
    "source": {"label": "l"},
    "suggestions": [{"label": "a", "uuid": "s-1"}, {"label": "b", "uuid": "s-2"}],
    "selectionBehavior": "any",
    "overrideReasons": [
        {"system": "http://r", "code": "na", "display": "Not applicable"},
        {"system": "http://r", "code": "dup", "display": "Duplicate"},
    ],
}


def test_feedback_accept_names_the_first_suggestion() -> None:
    item = feedback_item(CARD, "accept")
    assert item["card"] == "c-1" and item["outcome"] == "accepted"
    assert item["acceptedSuggestions"] == [{"id": "s-1"}]
    assert item["outcomeTimestamp"].endswith("Z")


def test_feedback_override_uses_the_cards_reason_or_a_comment() -> None:
    reason = feedback_item(CARD, "override:dup")["overrideReason"]
    assert reason == {"reason": {"system": "http://r", "code": "dup", "display": "Duplicate"}}
    assert feedback_item(CARD, "override:http://r|na")["overrideReason"]["reason"]["code"] == "na"
    assert feedback_item(CARD, "override")["overrideReason"]["reason"]["code"] == "na"
    assert feedback_item(CARD, "override:already done")["overrideReason"] == {"userComment": "already done"}


def test_feedback_is_not_possible_without_uuids() -> None:
    with pytest.raises(FeedbackNotPossible, match="163"):
        feedback_item({k: v for k, v in CARD.items() if k != "uuid"}, "accept")
    with pytest.raises(FeedbackNotPossible):
        feedback_item({**CARD, "suggestions": [{"label": "a"}]}, "accept")
    with pytest.raises(FeedbackNotPossible):
        feedback_item({**CARD, "suggestions": None}, "accept")
    with pytest.raises(SandboxError):
        feedback_item(CARD, "dismiss")


def test_json_output_masks_the_fhir_token() -> None:
    token = "abcdefghijklmnopqrstuvwxyz0123456789"
    request = {
        "hook": "patient-view",
        "hookInstance": "h",
        "fhirServer": "http://127.0.0.1/fhir",
        "fhirAuthorization": {"access_token": token, "token_type": "Bearer"},
        "context": {},
    }
    exchange = HttpExchange("http://x/cds-services/a", 200, "application/json", {"cards": []}, 1.0, {})
    result = CallResult({"id": "a"}, request, exchange, {}, [])
    text = json.dumps(result.to_json(), ensure_ascii=False)
    assert token not in text and mask(token) in text
    assert request["fhirAuthorization"]["access_token"] == token  # the request itself is left alone
    assert mask("short") == "…"
