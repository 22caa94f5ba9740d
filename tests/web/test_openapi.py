"""`/openapi.json`: a valid OpenAPI 3.1 document that describes exactly the routes the app serves."""

from __future__ import annotations

import re

import pytest
import schemathesis
from openapi_spec_validator import validate

from cds_plugin.hooks.context import HOOK_CONTEXTS
from cds_plugin.hooks.registry import ServiceRegistry
from cds_plugin.services import considerations
from cds_plugin.web.openapi import build_openapi


@pytest.fixture
def document(client) -> dict:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    return resp.get_json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    validate(document)
    schema = schemathesis.openapi.from_dict(document)
    assert len(list(schema.get_all_operations())) == sum(len(item) for item in document["paths"].values())


def _flask_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def test_every_documented_operation_is_served_and_every_route_documented(app, document):
    served = {
        (_flask_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static" and not rule.endpoint.endswith(".static")
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    generic = {("/cds-services/{service_id}", "post"), ("/cds-services/{service_id}/feedback", "post")}
    # the generic hook routes are documented once per registered service id
    expanded = {
        (p.replace("{service_id}", s.id), m)
        for p, m in generic
        for s in app.extensions["cds_plugin"].registry
    }
    assert documented == (served - generic) | expanded


def test_each_service_gets_its_hooks_request_schema():
    registry = ServiceRegistry()
    considerations.register(registry)
    doc = build_openapi(registry)
    schemas = doc["components"]["schemas"]
    for hook, context in (("order-select", "OrderSelectContext"), ("order-sign", "OrderSignContext")):
        body = doc["paths"][f"/cds-services/{hook}-review"]["post"]["requestBody"]["content"][
            "application/json"
        ]
        variant = schemas[body["schema"]["$ref"].rsplit("/", 1)[1]]
        assert variant["properties"]["hook"]["const"] == hook
        assert variant["properties"]["context"]["$ref"].rsplit("/", 1)[1] == context
        prefetch = variant["properties"]["prefetch"]["anyOf"][0]["properties"]
        assert set(prefetch) == set(considerations.PREFETCH)
        assert body["example"]["hook"] == hook
    single = doc["paths"]["/cds-services/diagnosis-considerations"]["post"]["requestBody"]
    assert single["content"]["application/json"]["schema"]["$ref"].endswith(
        "diagnosis-considerations.patient-view"
    )
    for hook, model in HOOK_CONTEXTS.items():
        assert model.__name__ in schemas, hook


def test_errors_are_operation_outcomes_and_401_is_empty(document):
    call = document["paths"]["/cds-services/echo-patient"]["post"]
    assert call["security"] == [{"cdsHooksJwt": []}]
    assert document["components"]["securitySchemes"]["cdsHooksJwt"]["scheme"] == "bearer"
    assert "content" not in call["responses"]["401"]
    for status in ("400", "412", "413", "500"):
        assert call["responses"][status]["content"]["application/fhir+json"]["schema"]["$ref"].endswith(
            "/OperationOutcome"
        )
    assert document["paths"]["/cds-services"]["get"].get("security") is None


def test_the_documented_examples_are_valid_requests(client, document):
    """Valid: answered, or 412 where a test service requires more prefetch than the example carries."""
    for path, item in document["paths"].items():
        example = item.get("post", {}).get("requestBody", {}).get("content", {}).get("application/json", {})
        if "example" in example and not path.endswith("/boom"):
            resp = client.post(path, json=example["example"])
            assert resp.status_code in (200, 412), (path, resp.get_json())
