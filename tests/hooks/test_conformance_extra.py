"""Conformance tests for Service-side requirements of the CDS Hooks 2.0 requirements list
(../shared/cds-hooks-schemas/requirements/cds-hooks_2.0_requirements.csv) that no other test covered.

Each test's docstring names the requirement ids it covers ("req 1, 4"); docs/conformance.md points here,
and tests/test_conformance_doc.py checks that every id cited for this file is named in the docstring.
"""

from __future__ import annotations

import json
import statistics
import time

import pytest
from pydantic import ValidationError

from cds_plugin.hooks.card import Action, Card, Link, Source, Suggestion
from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.registry import HookCall, ServiceConfigurationError, ServiceRegistry
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.web.conftest import make_registry, pv_request

JSON_TYPES = {"application/json", "application/fhir+json"}


@pytest.fixture
def client(tmp_path):
    settings = Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False)
    return create_app(settings, make_registry()).test_client()


def extension_registry(seen: dict) -> ServiceRegistry:
    """One service that records the extension it was sent and answers with an extended card."""
    registry = ServiceRegistry()

    @registry.service("ext", hook="patient-view", description="Echoes extensions")
    def ext(call: HookCall) -> CDSResponse:
        seen["extension"] = call.request.extension
        card = Card(
            summary="s",
            indicator="info",
            source=Source(label="T"),
            extension={"org.example.cds.detail-level": {"level": 2}},
        )
        return CDSResponse(
            cards=[card],
            systemActions=[
                Action(type="update", description="Flag", resource={"resourceType": "Flag", "id": "f"})
            ],
        )

    return registry


def json_body(resp) -> object:
    """The body parsed as JSON, after checking the response says it is JSON."""
    assert resp.mimetype in JSON_TYPES, resp.mimetype
    return json.loads(resp.get_data(as_text=True))


# -- JSON on the wire, HTTP status codes --------------------------------------------------------------


def test_discovery_answers_json_with_200(client):
    """Req 1, 4, 5, 6, 13: GET {baseUrl}/cds-services answers 200 with a JSON object holding a services
    array."""
    resp = client.get("/cds-services")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body = json_body(resp)
    assert isinstance(body, dict) and isinstance(body["services"], list)


def test_discovery_needs_no_client_token(tmp_path):
    """Req 5: discovery is always available, even where service calls require a client JWT."""
    settings = Settings.load(environ={}, data_dir=str(tmp_path))
    assert settings.jwt_required
    client = create_app(settings, make_registry()).test_client()
    assert client.get("/cds-services").status_code == 200
    assert client.post("/cds-services/quiet", json=pv_request()).status_code == 401


def test_service_calls_and_their_errors_answer_json(client):
    """Req 1, 3, 14, 76: cards and every error (400, 404, 405, 412) are JSON, without null elements."""
    ok = client.post("/cds-services/echo-patient", json=pv_request())
    assert ok.status_code == 200 and ok.mimetype == "application/json"
    errors = [
        client.post("/cds-services/echo-patient", data=b"{", content_type="application/json"),
        client.post("/cds-services/nope", json=pv_request()),
        client.get("/cds-services/echo-patient"),
        client.post("/cds-services/echo-patient", json=pv_request(prefetch={})),
    ]
    assert [r.status_code for r in errors] == [400, 404, 405, 412]
    for resp in [ok, *errors]:
        text = json.dumps(json_body(resp))
        assert "null" not in text and "[]" not in text and "{}" not in text


# -- discovery attributes -----------------------------------------------------------------------------


def test_discovery_attributes_have_spec_types(client):
    """Req 7, 8, 9, 10, 11, 12, 29, 36: hook, description and id are non-empty strings, title and
    usageRequirements strings when given, prefetch an object of key -> template strings."""
    services = client.get("/cds-services").get_json()["services"]
    assert services
    for service in services:
        for required in ("hook", "description", "id"):
            assert isinstance(service[required], str) and service[required]
        for optional in ("title", "usageRequirements"):
            assert optional not in service or isinstance(service[optional], str)
        prefetch = service.get("prefetch", {})
        assert isinstance(prefetch, dict)
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in prefetch.items())
    echo = next(s for s in services if s["id"] == "echo-patient")
    assert (
        echo["title"] and echo["usageRequirements"] and set(echo["prefetch"]) == {"patient", "observations"}
    )


def test_description_is_required_to_register():
    """Req 9: a service without a description cannot be registered, so discovery never lacks one."""
    registry = ServiceRegistry()
    with pytest.raises(ServiceConfigurationError, match="description"):
        registry.service("no-description", hook="patient-view", description="")(lambda call: None)


def test_every_discovered_service_answers_at_its_id(client):
    """Req 10, 16: each service's endpoint is {baseUrl}/cds-services/{id}."""
    for service in client.get("/cds-services").get_json()["services"]:
        resp = client.post(f"/cds-services/{service['id']}", json=pv_request(hook=service["hook"]))
        assert resp.status_code not in (404, 405), service["id"]
    assert client.post("/cds-services/quiet", json=pv_request()).status_code == 200


# -- service response ---------------------------------------------------------------------------------


def test_system_actions_are_sent_when_given(tmp_path):
    """Req 74, 75: a successful response is 200 with a cards array, and may carry a systemActions array."""
    app = create_app(
        Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False), extension_registry({})
    )
    body = app.test_client().post("/cds-services/ext", json=pv_request(prefetch=None)).get_json()
    assert isinstance(body["cards"], list) and len(body["cards"]) == 1
    assert body["systemActions"] == [
        {"type": "update", "description": "Flag", "resource": {"resourceType": "Flag", "id": "f"}}
    ]


def test_protocol_overhead_is_well_under_500_ms(client):
    """Req 27 (partial): with prefetch supplied, the protocol layer (parsing, validation, card log) answers
    far within 500 ms; the clinical services' own latency is measured with them."""
    client.post("/cds-services/echo-patient", json=pv_request())  # warm-up
    times = []
    for _ in range(5):
        started = time.perf_counter()
        assert client.post("/cds-services/echo-patient", json=pv_request()).status_code == 200
        times.append(time.perf_counter() - started)
    assert statistics.median(times) < 0.5


def test_prefetched_operation_outcome_without_fhir_server_is_412(client):
    """Req 52, 54: an OperationOutcome sent under a prefetch key is not taken as data; with no FHIR server
    to fetch from, the call gets 412 naming the key."""
    prefetch = pv_request()["prefetch"]
    prefetch["patient"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    resp = client.post("/cds-services/echo-patient", json=pv_request(prefetch=prefetch))
    assert resp.status_code == 412
    assert resp.get_json()["issue"][0]["expression"] == ["prefetch.patient"]


# -- extensions ---------------------------------------------------------------------------------------


def test_extension_objects_are_accepted_and_sent(tmp_path):
    """Req 214, 215: an extension whose value is a JSON object reaches the service; the service's own
    extension on a card (reverse-domain name) is sent unchanged."""
    seen: dict = {}
    app = create_app(
        Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False), extension_registry(seen)
    )
    extension = {"com.example.ehr.session": {"tab": "summary", "flags": [1, 2]}}
    resp = app.test_client().post("/cds-services/ext", json=pv_request(prefetch=None, extension=extension))
    assert resp.status_code == 200
    assert seen["extension"] == extension
    assert resp.get_json()["cards"][0]["extension"] == {"org.example.cds.detail-level": {"level": 2}}


@pytest.mark.parametrize("extension", ["text", ["a"], 3])
def test_extension_that_is_not_an_object_is_400(client, extension):
    """Req 214: the value of an extension element must be a JSON object; anything else is refused."""
    resp = client.post("/cds-services/echo-patient", json=pv_request(extension=extension))
    assert resp.status_code == 400
    assert resp.get_json()["issue"][0]["expression"] == ["extension"]


def test_feedback_tolerates_extensions(client):
    """Req 214: feedback bodies and items may carry extension objects."""
    item = {
        "card": "c1",
        "outcome": "overridden",
        "overrideReason": {"userComment": "not now"},
        "outcomeTimestamp": "2026-11-29T10:00:00Z",
        "extension": {"com.example.ehr.ui": {"panel": "right"}},
    }
    body = {"feedback": [item], "extension": {"com.example.ehr.batch": {"n": 1}}}
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 200


def test_feedback_preflight_allows_authorization_and_content_type(client):
    """Req 208: browser clients' CORS preflight is answered for the feedback endpoint too."""
    resp = client.options(
        "/cds-services/echo-patient/feedback",
        headers={
            "Origin": "https://ehr.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status_code == 200 and resp.headers["Access-Control-Allow-Origin"] == "*"
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed


# -- cards on the wire --------------------------------------------------------------------------------


def test_card_on_the_wire_has_spec_types(client):
    """Req 80, 82, 90, 92, 98, 99, 103, 105, 115, 119, 124, 128, 135, 138, 139, 141, 144, 216, 217:
    a full card as sent has a string uuid, a source object, arrays of suggestion, action, link and
    Coding objects with string fields."""
    card = client.post("/cds-services/echo-patient", json=pv_request()).get_json()["cards"][0]
    assert isinstance(card["uuid"], str) and card["uuid"]
    assert isinstance(card["source"], dict) and isinstance(card["source"]["label"], str)
    topic = card["source"]["topic"]
    assert all(isinstance(topic[k], str) for k in ("system", "code", "display"))
    assert isinstance(card["suggestions"], list) and isinstance(card["suggestions"][0], dict)
    suggestion = card["suggestions"][0]
    assert isinstance(suggestion["uuid"], str) and isinstance(suggestion["label"], str)
    assert isinstance(suggestion["actions"], list)
    assert all(
        isinstance(a["type"], str) and isinstance(a["description"], str) for a in suggestion["actions"]
    )
    assert isinstance(card["overrideReasons"], list)
    assert all(isinstance(r["code"], str) and isinstance(r["system"], str) for r in card["overrideReasons"])
    assert isinstance(card["links"], list)
    assert all(isinstance(ln[k], str) for ln in card["links"] for k in ("label", "url", "type"))
    delete = Action(type="delete", description="Remove", resourceId="MedicationRequest/m1").to_json()
    assert delete == {"type": "delete", "description": "Remove", "resourceId": "MedicationRequest/m1"}
    smart = Link(label="App", url="https://app.example/launch", type="smart", appContext="ctx-1").to_json()
    assert smart["appContext"] == "ctx-1"


def test_optional_card_fields_may_be_left_out():
    """Req 81, 84, 94, 104, 108, 113, 116, 118, 120, 123, 145: a card needs only summary, indicator and
    source; suggestions need only a label; links need no appContext."""
    card = Card(summary="s", indicator="warning", source=Source(label="x"))
    assert card.to_json() == {"summary": "s", "indicator": "warning", "source": {"label": "x"}}
    assert Suggestion(label="a").to_json() == {"label": "a"}
    assert Link(label="l", url="https://x.example", type="absolute").to_json() == {
        "label": "l",
        "url": "https://x.example",
        "type": "absolute",
    }


@pytest.mark.parametrize("missing", ["summary", "indicator", "source"])
def test_card_required_fields(missing):
    """Req 83, 87, 90: summary, indicator and source are required."""
    fields = {"summary": "s", "indicator": "info", "source": Source(label="x")}
    del fields[missing]
    with pytest.raises(ValidationError):
        Card(**fields)


@pytest.mark.parametrize("indicator", ["info", "warning", "critical"])
def test_every_indicator_value_is_accepted(indicator):
    """Req 88: the allowed indicator values are info, warning, critical (others: test_indicator_values)."""
    assert (
        Card(summary="s", indicator=indicator, source=Source(label="x")).to_json()["indicator"] == indicator
    )


def test_source_fields():
    """Req 105, 107, 111, 115, 220: Source.label is required; url and icon are absolute; topic is a Coding
    whose display is optional."""
    with pytest.raises(ValidationError):
        Source()
    with pytest.raises(ValidationError):
        Source(label="")
    with pytest.raises(ValidationError):
        Source(label="x", topic="diabetes")
    source = Source(
        label="x",
        url="https://guideline.example/bmi",
        icon="https://guideline.example/icon.png",
        topic=Coding(system="http://example.org/topics", code="bmi"),
    )
    assert source.to_json()["topic"] == {"code": "bmi", "system": "http://example.org/topics"}


def test_suggestion_fields():
    """Req 117, 119, 121, 124: label required; uuid a string; isRecommended a JSON boolean; actions an
    array of Action objects."""
    with pytest.raises(ValidationError):
        Suggestion()
    with pytest.raises(ValidationError):
        Suggestion(label="a", uuid=5)
    with pytest.raises(ValidationError):
        Suggestion(label="a", actions={"type": "create"})
    sent = Suggestion(label="a", isRecommended=True).to_json()
    assert json.dumps(sent) == '{"label": "a", "isRecommended": true}'


def test_selection_behavior_values():
    """Req 93, 95, 96: selectionBehavior is at-most-one or any, and required with suggestions."""
    suggestions = [Suggestion(label="a")]
    for value in ("at-most-one", "any"):
        card = Card(
            summary="s",
            indicator="info",
            source=Source(label="x"),
            suggestions=suggestions,
            selectionBehavior=value,
        )
        assert card.to_json()["selectionBehavior"] == value
    with pytest.raises(ValidationError):
        Card(
            summary="s",
            indicator="info",
            source=Source(label="x"),
            suggestions=suggestions,
            selectionBehavior="all",
        )


def test_several_recommended_suggestions_with_any():
    """Req 122: with selectionBehavior any, several suggestions may be recommended."""
    card = Card(
        summary="s",
        indicator="info",
        source=Source(label="x"),
        suggestions=[Suggestion(label="a", isRecommended=True), Suggestion(label="b", isRecommended=True)],
        selectionBehavior="any",
    )
    assert [s["isRecommended"] for s in card.to_json()["suggestions"]] == [True, True]


def test_action_type_and_payload():
    """Req 127, 128, 131, 132, 133, 134: type is create, update or delete; description is required; create
    and update carry a resource; delete carries a resourceId, not a resource."""
    with pytest.raises(ValidationError):
        Action(type="patch", description="d", resource={"resourceType": "Task"})
    with pytest.raises(ValidationError):
        Action(type="create", description="", resource={"resourceType": "Task"})
    with pytest.raises(ValidationError, match="needs a resource"):
        Action(type="update", description="d")
    with pytest.raises(ValidationError):
        Action(type="delete", description="d")
    with pytest.raises(ValidationError):
        Action(type="delete", description="d", resource="Task/1", resourceId="Task/1")
    update = Action(type="update", description="d", resource={"resourceType": "Task", "id": "1"})
    assert update.to_json()["resource"] == {"resourceType": "Task", "id": "1"}


def test_link_fields():
    """Req 138, 139, 141, 142, 146, 147: label, url and type are required; type is absolute or smart;
    appContext only on smart links."""
    with pytest.raises(ValidationError):
        Link(url="https://x.example", type="absolute")
    with pytest.raises(ValidationError):
        Link(label="l", type="absolute")
    with pytest.raises(ValidationError):
        Link(label="l", url="https://x.example")
    with pytest.raises(ValidationError):
        Link(label="l", url="https://x.example", type="relative")
    with pytest.raises(ValidationError):
        Link(label="l", url="https://x.example", type="absolute", appContext="ctx")
    assert Link(label="l", url="https://x.example", type="smart").to_json()["type"] == "smart"


def test_coding_fields():
    """Req 100, 136, 216, 217, 218, 219, 220: code and system are required strings; display is optional
    except on override reasons, where it must be given."""
    with pytest.raises(ValidationError):
        Coding(system="http://example.org")
    with pytest.raises(ValidationError):
        Coding(code="c")
    with pytest.raises(ValidationError):
        Coding(code=1, system="http://example.org")
    assert Coding(code="c", system="http://example.org").to_json() == {
        "code": "c",
        "system": "http://example.org",
    }
    with pytest.raises(ValidationError, match="cds-resp-4"):
        Card(
            summary="s",
            indicator="info",
            source=Source(label="x"),
            overrideReasons=[Coding(code="c", system="http://example.org")],
        )
