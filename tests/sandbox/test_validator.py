"""The response validator: the spec's example passes, and each broken response of a set made for the
purpose (one per rule) is rejected at the right JSON path, with every finding reported, not the first."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from cds_plugin.hooks.card import Action, Card, Link, Source, Suggestion
from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.sandbox.validator import (
    Finding,
    has_errors,
    validate_discovery,
    validate_http_response,
    validate_response,
)

CARD_UUID = "4e0a3a1e-3283-4575-ab82-028d55fe2719"
S1, S2 = "7b0c8d76-6f1e-4b57-8b43-4a8a1d2c0f11", "0f6b3c5e-1a2b-4c3d-9e8f-112233445566"


def good() -> dict[str, Any]:
    """A response using every element of a 2.0 card, correctly."""
    return {
        "cards": [
            {
                "uuid": CARD_UUID,
                "summary": "Consider statin therapy",
                "detail": "LDL **190 mg/dL**; see [guideline](https://example.org/g).",
                "indicator": "warning",
                "source": {
                    "label": "Example CDS",
                    "url": "https://example.org",
                    "icon": "https://example.org/icon.png",
                    "topic": {"system": "http://example.org/topics", "code": "lipids", "display": "Lipids"},
                },
                "suggestions": [
                    {
                        "label": "Order atorvastatin",
                        "uuid": S1,
                        "isRecommended": True,
                        "actions": [
                            {
                                "type": "create",
                                "description": "Create a draft order",
                                "resource": {
                                    "resourceType": "MedicationRequest",
                                    "status": "draft",
                                    "intent": "order",
                                    "subject": {"reference": "Patient/p1"},
                                },
                            },
                            {
                                "type": "delete",
                                "description": "Remove the old order",
                                "resourceId": "MedicationRequest/m0",
                            },
                        ],
                    },
                    {
                        "label": "Update the order",
                        "uuid": S2,
                        "actions": [
                            {
                                "type": "update",
                                "description": "Raise the dose",
                                "resource": {
                                    "resourceType": "MedicationRequest",
                                    "id": "m1",
                                    "status": "draft",
                                },
                            }
                        ],
                    },
                ],
                "selectionBehavior": "at-most-one",
                "overrideReasons": [
                    {"system": "http://example.org/reasons", "code": "refused", "display": "Patient refused"}
                ],
                "links": [
                    {"label": "Guideline", "url": "https://example.org/g", "type": "absolute"},
                    {
                        "label": "App",
                        "url": "https://app.example.org/launch",
                        "type": "smart",
                        "appContext": "x=1",
                    },
                ],
                "extension": {"org.example.score": 0.7},
            }
        ],
        "systemActions": [
            {
                "type": "create",
                "description": "Log it",
                "resource": {"resourceType": "AuditEvent", "id": "a1"},
            }
        ],
    }


def test_the_well_formed_response_has_no_findings_at_all() -> None:
    assert validate_response(good()) == []


def test_the_spec_example_response_passes(schemas_dir) -> None:
    body = json.loads((schemas_dir / "examples" / "binary-CDSHooksResponse.json").read_text())
    findings = validate_response(body)
    assert not has_errors(findings), findings
    # its second card has no uuid: allowed, but feedback cannot name it
    assert [(f.severity, f.path, f.rule) for f in findings] == [("warning", "$.cards[1].uuid", "uuid")]


def test_no_cards_is_a_valid_answer() -> None:
    assert validate_response({"cards": []}) == []


def test_a_response_built_with_our_wire_models_passes() -> None:
    card = Card(
        summary="s",
        indicator="critical",
        source=Source(label="L", topic=Coding(system="http://x", code="c")),
        suggestions=[
            Suggestion(label="do", actions=[Action(type="delete", description="d", resourceId="Task/1")])
        ],
        selectionBehavior="any",
        links=[Link(label="l", url="https://x.org", type="smart", appContext="ctx")],
    )
    response = CDSResponse(cards=[card])
    response.ensure_uuids()
    assert validate_response(response.to_json()) == []


def card(body: dict[str, Any]) -> dict[str, Any]:
    return body["cards"][0]


def suggestion(body: dict[str, Any]) -> dict[str, Any]:
    return body["cards"][0]["suggestions"][0]


def action(body: dict[str, Any]) -> dict[str, Any]:
    return body["cards"][0]["suggestions"][0]["actions"][0]


def link(body: dict[str, Any]) -> dict[str, Any]:
    return body["cards"][0]["links"][0]


def second_card(body: dict[str, Any]) -> None:
    body["cards"].append({**copy.deepcopy(card(body))})


# (id, mutation, rule, path): each mutation breaks exactly one rule of the spec
C = "$.cards[0]"
SG = f"{C}.suggestions[0]"
A = f"{SG}.actions[0]"
BROKEN: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("cards missing", lambda b: b.pop("cards"), "cards", "$.cards"),
    ("cards not an array", lambda b: b.update(cards={"a": 1}), "type", "$.cards"),
    ("card not an object", lambda b: b["cards"].append("text"), "type", "$.cards[1]"),
    ("summary missing", lambda b: card(b).pop("summary"), "summary", f"{C}.summary"),
    ("summary 140 characters", lambda b: card(b).update(summary="x" * 140), "summary", f"{C}.summary"),
    ("summary not a string", lambda b: card(b).update(summary=42), "summary", f"{C}.summary"),
    ("indicator missing", lambda b: card(b).pop("indicator"), "indicator", f"{C}.indicator"),
    ("indicator unknown", lambda b: card(b).update(indicator="urgent"), "indicator", f"{C}.indicator"),
    ("source missing", lambda b: card(b).pop("source"), "source", f"{C}.source"),
    ("source not an object", lambda b: card(b).update(source="Example"), "type", f"{C}.source"),
    ("source label missing", lambda b: card(b)["source"].pop("label"), "source", f"{C}.source.label"),
    (
        "source url relative",
        lambda b: card(b)["source"].update(url="/about"),
        "absolute-url",
        f"{C}.source.url",
    ),
    (
        "source icon not http",
        lambda b: card(b)["source"].update(icon="ftp://x/i.png"),
        "absolute-url",
        f"{C}.source.icon",
    ),
    (
        "topic without system",
        lambda b: card(b)["source"]["topic"].pop("system"),
        "coding",
        f"{C}.source.topic.system",
    ),
    (
        "topic without code",
        lambda b: card(b)["source"]["topic"].pop("code"),
        "coding",
        f"{C}.source.topic.code",
    ),
    ("null element", lambda b: card(b).update(detail=None), "no-null", f"{C}.detail"),
    ("empty string", lambda b: card(b).update(detail=""), "no-empty", f"{C}.detail"),
    ("empty array", lambda b: card(b).update(links=[]), "no-empty", f"{C}.links"),
    ("empty object", lambda b: card(b).update(extension={}), "no-empty", f"{C}.extension"),
    ("empty systemActions", lambda b: b.update(systemActions=[]), "no-empty", "$.systemActions"),
    (
        "null inside a resource",
        lambda b: action(b)["resource"].update(status=None),
        "no-null",
        f"{A}.resource.status",
    ),
    (
        "null array item",
        lambda b: card(b)["overrideReasons"].append(None),
        "no-null",
        f"{C}.overrideReasons[1]",
    ),
    (
        "suggestions without selectionBehavior",
        lambda b: card(b).pop("selectionBehavior"),
        "cds-resp-6",
        f"{C}.selectionBehavior",
    ),
    (
        "selectionBehavior unknown",
        lambda b: card(b).update(selectionBehavior="all"),
        "selection-behavior",
        f"{C}.selectionBehavior",
    ),
    (
        "two recommended at-most-one",
        lambda b: card(b)["suggestions"][1].update(isRecommended=True),
        "cds-resp-1",
        f"{C}.suggestions",
    ),
    (
        "isRecommended not boolean",
        lambda b: suggestion(b).update(isRecommended="yes"),
        "type",
        f"{SG}.isRecommended",
    ),
    ("suggestion label missing", lambda b: suggestion(b).pop("label"), "suggestion", f"{SG}.label"),
    (
        "actionSelectionBehavior unknown",
        lambda b: suggestion(b).update(actionSelectionBehavior="one"),
        "cds-resp-7",
        f"{SG}.actionSelectionBehavior",
    ),
    ("card uuid duplicated", second_card, "uuid-unique", "$.cards[1].uuid"),
    (
        "suggestion uuid duplicated",
        lambda b: card(b)["suggestions"][1].update(uuid=S1),
        "uuid-unique",
        f"{C}.suggestions[1].uuid",
    ),
    ("uuid not a string", lambda b: card(b).update(uuid=7), "type", f"{C}.uuid"),
    ("action without description", lambda b: action(b).pop("description"), "cds-resp-5", f"{A}.description"),
    ("action type unknown", lambda b: action(b).update(type="replace"), "action-type", f"{A}.type"),
    ("action type missing", lambda b: action(b).pop("type"), "action-type", f"{A}.type"),
    ("create without resource", lambda b: action(b).pop("resource"), "action-resource", f"{A}.resource"),
    (
        "update without resource",
        lambda b: card(b)["suggestions"][1]["actions"][0].pop("resource"),
        "action-resource",
        f"{C}.suggestions[1].actions[0].resource",
    ),
    (
        "resource without resourceType",
        lambda b: action(b)["resource"].pop("resourceType"),
        "action-resource",
        f"{A}.resource",
    ),
    (
        "delete with an id as resource",
        lambda b: suggestion(b)["actions"][1].update(resource="m0"),
        "action-resource",
        f"{SG}.actions[1].resource",
    ),
    (
        "resourceId not a string",
        lambda b: suggestion(b)["actions"][1].update(resourceId=["MedicationRequest/m0"]),
        "type",
        f"{SG}.actions[1].resourceId",
    ),
    (
        "appContext on an absolute link",
        lambda b: link(b).update(appContext="x"),
        "cds-resp-3",
        f"{C}.links[0].appContext",
    ),
    ("link type unknown", lambda b: link(b).update(type="relative"), "link-type", f"{C}.links[0].type"),
    ("link type missing", lambda b: link(b).pop("type"), "link-type", f"{C}.links[0].type"),
    (
        "link url relative",
        lambda b: link(b).update(url="guideline.html"),
        "absolute-url",
        f"{C}.links[0].url",
    ),
    ("link url missing", lambda b: link(b).pop("url"), "absolute-url", f"{C}.links[0].url"),
    ("link label missing", lambda b: link(b).pop("label"), "link", f"{C}.links[0].label"),
    (
        "override reason without display",
        lambda b: card(b)["overrideReasons"][0].pop("display"),
        "cds-resp-4",
        f"{C}.overrideReasons[0].display",
    ),
    (
        "override reason without code",
        lambda b: card(b)["overrideReasons"][0].pop("code"),
        "coding",
        f"{C}.overrideReasons[0].code",
    ),
    ("extension not an object", lambda b: card(b).update(extension=["x"]), "extension", f"{C}.extension"),
    (
        "system action without description",
        lambda b: b["systemActions"][0].pop("description"),
        "cds-resp-5",
        "$.systemActions[0].description",
    ),
    (
        "systemActions not an array",
        lambda b: b.update(systemActions={"type": "create"}),
        "type",
        "$.systemActions",
    ),
]


@pytest.mark.parametrize(("mutate", "rule", "path"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_each_broken_response_is_rejected(mutate, rule: str, path: str) -> None:
    body = good()
    mutate(body)
    findings = validate_response(body)
    errors = [(f.rule, f.path) for f in findings if f.severity == "error"]
    assert (rule, path) in errors, findings


def test_a_body_that_is_not_an_object_is_rejected() -> None:
    for body in ([], "cards", None, 3):
        findings = validate_response(body)
        assert has_errors(findings) and findings[0].path == "$"


def test_every_finding_is_reported_not_only_the_first() -> None:
    body = good()
    card(body).update(summary="x" * 200, indicator="loud")
    link(body).update(appContext="x")
    action(body).pop("description")
    findings = validate_response(body)
    rules = {f.rule for f in findings if f.severity == "error"}
    assert {"summary", "indicator", "cds-resp-3", "cds-resp-5"} <= rules
    assert all(isinstance(f, Finding) and f.document == "response" for f in findings)


def test_findings_are_in_document_order() -> None:
    body = good()
    for _ in range(11):
        body["cards"].append({"summary": "s", "indicator": "bad", "source": {"label": "x"}})
    paths = [f.path for f in validate_response(body) if f.rule == "indicator"]
    assert paths == [f"$.cards[{i}].indicator" for i in range(1, 12)]


WARNINGS: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("card without uuid", lambda b: card(b).pop("uuid"), "uuid", f"{C}.uuid"),
    ("suggestion without uuid", lambda b: suggestion(b).pop("uuid"), "uuid", f"{SG}.uuid"),
    (
        "delete without resourceId",
        lambda b: suggestion(b)["actions"][1].pop("resourceId"),
        "cds-resp-2",
        f"{SG}.actions[1].resourceId",
    ),
    (
        "delete with a resource",
        lambda b: suggestion(b)["actions"][1].update(resource={"resourceType": "Task"}),
        "cds-resp-2",
        f"{SG}.actions[1].resource",
    ),
    (
        "resourceId not Type/id",
        lambda b: suggestion(b)["actions"][1].update(resourceId="m0"),
        "action-resource",
        f"{SG}.actions[1].resourceId",
    ),
    (
        "update without id",
        lambda b: card(b)["suggestions"][1]["actions"][0]["resource"].pop("id"),
        "action-resource",
        f"{C}.suggestions[1].actions[0].resource.id",
    ),
    ("unknown field", lambda b: card(b).update(score=0.9), "unknown-field", f"{C}.score"),
    (
        "script in detail",
        lambda b: card(b).update(detail="<script>alert(1)</script>"),
        "markdown",
        f"{C}.detail",
    ),
]


@pytest.mark.parametrize(("mutate", "rule", "path"), [w[1:] for w in WARNINGS], ids=[w[0] for w in WARNINGS])
def test_should_level_problems_are_warnings(mutate, rule: str, path: str) -> None:
    body = good()
    mutate(body)
    findings = validate_response(body)
    assert [(f.severity, f.rule, f.path) for f in findings] == [("warning", rule, path)]


def test_fhir_nulls_aligned_with_primitive_extensions_are_allowed() -> None:
    body = good()
    action(body)["resource"]["note"] = [{"text": "a"}]
    action(body)["resource"]["given"] = ["A", None]
    action(body)["resource"]["_given"] = [None, {"extension": [{"url": "http://x", "valueString": "y"}]}]
    assert validate_response(body) == []
    action(body)["resource"]["note"] = [None]
    assert [f.rule for f in validate_response(body)] == ["no-null"]


# -- HTTP level ---------------------------------------------------------------------------------------


def test_http_success_is_200_with_a_json_object() -> None:
    body, findings = validate_http_response(200, "application/json; charset=utf-8", b'{"cards": []}')
    assert body == {"cards": []} and findings == []


@pytest.mark.parametrize(
    ("status", "content_type", "raw", "rule"),
    [
        (500, "application/json", b'{"resourceType": "OperationOutcome"}', "http-status"),
        (401, None, b"", "http-status"),
        (200, "text/plain", b'{"cards": []}', "content-type"),
        (200, None, b'{"cards": []}', "content-type"),
        (200, "application/json", b"{cards: []}", "json"),
        (200, "application/json", b"", "json"),
    ],
)
def test_http_failures_are_errors(status: int, content_type: str | None, raw: bytes, rule: str) -> None:
    _, findings = validate_http_response(status, content_type, raw)
    assert rule in {f.rule for f in findings if f.severity == "error"}


def test_http_level_validates_the_body_too() -> None:
    _, findings = validate_http_response(200, "application/fhir+json", b'{"cards": [{"summary": "x"}]}')
    assert {"indicator", "source"} <= {f.rule for f in findings}


# -- discovery ----------------------------------------------------------------------------------------


def test_discovery_checks_services_and_their_prefetch_templates(schemas_dir) -> None:
    example = json.loads((schemas_dir / "examples" / "binary-CDSHookServices.json").read_text())
    assert not has_errors(validate_discovery(example))
    broken = {
        "services": [
            {
                "hook": "patient-view",
                "id": "a",
                "description": "d",
                "title": "t",
                "prefetch": {"p": "Patient/{{context.userId}}"},
            },
            {"hook": "patient-view", "description": "no id", "title": "t"},
            {
                "hook": "patient-view",
                "id": "c",
                "description": "d",
                "prefetch": {"x": "Observation?patient={{patient}}"},
            },
        ]
    }
    findings = validate_discovery(broken)
    got = {(f.severity, f.rule, f.path) for f in findings}
    assert ("error", "service", "$.services[1].id") in got
    assert ("error", "prefetch-template", "$.services[2].prefetch.x") in got
    assert ("warning", "service", "$.services[2].title") in got
    assert all(f.document == "discovery" for f in findings)
    assert has_errors(validate_discovery({"cards": []}))
