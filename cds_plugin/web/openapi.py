"""`/openapi.json`: the service's OpenAPI 3.1 document, built from the wire models and the registry.

`build_openapi(registry)` is a pure function: one path per registered service id (its request schema is
the hook's: `hook` fixed, `context` the hook's context model, `prefetch` the service's keys), feedback,
discovery, the probes, the model card and the explanation pages, with every documented answer: the
FHIR OperationOutcome of a 4xx or 5xx, the empty 401, and the bearer JWT of CDS Hooks client trust.
The fuzz tests (tests/web/test_fuzz.py) drive the app from this document, so it is kept exact.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, Response, current_app, json
from pydantic.json_schema import models_json_schema

from cds_plugin import __version__
from cds_plugin.hooks.context import HOOK_CONTEXTS
from cds_plugin.hooks.discovery import DiscoveryResponse
from cds_plugin.hooks.feedback import FeedbackRequest
from cds_plugin.hooks.registry import Service, ServiceRegistry
from cds_plugin.hooks.request import CDSRequest
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.web.operation_outcome import FHIR_JSON

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
JSON = "application/json"
HTML = "text/html"

OPERATION_OUTCOME = {
    "type": "object",
    "description": "A FHIR OperationOutcome naming the problem; never echoes patient data.",
    "required": ["resourceType", "issue"],
    "properties": {
        "resourceType": {"const": "OperationOutcome"},
        "issue": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["severity", "code"],
                "properties": {
                    "severity": {"enum": ["fatal", "error", "warning", "information"]},
                    "code": {"type": "string"},
                    "diagnostics": {"type": "string"},
                    "expression": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
FHIR_RESOURCE = {
    "type": "object",
    "description": "A FHIR R4 resource (a searchset Bundle for searches)",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string", "pattern": "^[A-Z][A-Za-z]{1,63}$"}},
    "additionalProperties": True,
}
HEALTH = {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}}
READINESS = {
    "type": "object",
    "required": ["status", "database", "services"],
    "properties": {
        "status": {"enum": ["ready", "not ready"]},
        "database": {"type": "boolean"},
        "services": {"type": "object", "additionalProperties": {"type": "boolean"}},
    },
}
#: The HTTP errors any route may give (wrong method, body over max_body_bytes, internal error).
_STATUS_TEXT = {
    400: "Invalid request: the OperationOutcome names the field (`expression`)",
    404: "No such service",
    405: "Method not allowed",
    412: "Required prefetch data missing and not obtainable from the FHIR server",
    413: "A request limit was passed: body size, JSON depth, string length or FHIR resource count",
    500: "Internal error (details are logged, never sent)",
    503: "Temporarily unavailable (database)",
}

#: Minimal valid requests, shown as examples and run first by the fuzz tests.
_PATIENT = {"resourceType": "Patient", "id": "example", "gender": "female", "birthDate": "1970-01-01"}
_DRAFT = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [
        {
            "resource": {
                "resourceType": "MedicationRequest",
                "id": "draft-1",
                "status": "draft",
                "intent": "proposal",
                "subject": {"reference": "Patient/example"},
                "medicationCodeableConcept": {"text": "metformin"},
            }
        }
    ],
}
_EXAMPLE_CONTEXTS: dict[str, dict[str, Any]] = {
    "patient-view": {"userId": "Practitioner/example", "patientId": "example"},
    "order-select": {
        "userId": "Practitioner/example",
        "patientId": "example",
        "selections": ["MedicationRequest/draft-1"],
        "draftOrders": _DRAFT,
    },
    "order-sign": {"userId": "Practitioner/example", "patientId": "example", "draftOrders": _DRAFT},
}


def _outcome(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {FHIR_JSON: {"schema": {"$ref": REF.format(model="OperationOutcome")}}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _outcome(_STATUS_TEXT[s]) for s in statuses}


UNAUTHORIZED = {
    "description": "Client authentication failed (no, or an invalid, JWT); the body is empty",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
}


def _request_schema(name: str, service: Service, components: dict[str, Any]) -> dict[str, Any]:
    """CDSRequest for one service: `hook` fixed and `context` the hook's context model."""
    schema = copy.deepcopy(components["CDSRequest"])
    props = schema["properties"]
    props["hook"] = {"const": service.hook}
    props["context"] = {"$ref": REF.format(model=service.context_type.__name__)}
    if service.prefetch:
        props["prefetch"] = {
            "anyOf": [
                {
                    "type": "object",
                    "properties": {
                        key: {"anyOf": [{"$ref": REF.format(model="FhirResource")}, {"type": "null"}]}
                        for key in service.prefetch
                    },
                    "additionalProperties": True,
                },
                {"type": "null"},
            ]
        }
    schema["title"] = f"{service.id} ({service.hook})"
    variant = f"{name}.{service.hook}"
    components[variant] = schema
    return {"$ref": REF.format(model=variant)}


def _example(service: Service) -> dict[str, Any] | None:
    context = _EXAMPLE_CONTEXTS.get(service.hook)
    if context is None:
        return None
    body: dict[str, Any] = {
        "hook": service.hook,
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": context,
    }
    if "patient" in service.prefetch:
        body["prefetch"] = {"patient": _PATIENT}
    return body


def build_openapi(registry: ServiceRegistry, *, metrics: bool = False) -> dict[str, Any]:
    """The OpenAPI 3.1 document of an app serving `registry` (and `/metrics` when `metrics`)."""
    models = [
        (CDSRequest, "validation"),
        (FeedbackRequest, "validation"),
        (CDSResponse, "serialization"),
        (DiscoveryResponse, "serialization"),
        *[
            (model, "validation")
            for model in {s.context_type for s in registry} | set(HOOK_CONTEXTS.values())
        ],
    ]
    _, defs = models_json_schema(models, ref_template=REF)
    components: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))
    components.update(OperationOutcome=OPERATION_OUTCOME, FhirResource=FHIR_RESOURCE)
    security = [{"cdsHooksJwt": []}]

    paths: dict[str, Any] = {
        "/cds-services": {
            "get": {
                "operationId": "discovery",
                "summary": "CDS Hooks discovery: the services offered",
                "tags": ["CDS Hooks"],
                "responses": {
                    "200": {
                        "description": "The services",
                        "content": {JSON: {"schema": {"$ref": REF.format(model="DiscoveryResponse")}}},
                    },
                    **_errors(500),
                },
            }
        }
    }
    for first in registry:
        service_id = first.id
        body: dict[str, Any] = {"schema": _request_schema(f"CDSRequest.{service_id}", first, components)}
        example = _example(first)
        if example is not None:
            body["example"] = example
        paths[f"/cds-services/{service_id}"] = {
            "post": {
                "operationId": f"call.{service_id}",
                "summary": f"{first.title or service_id} ({first.hook})",
                "description": first.description,
                "tags": ["CDS Hooks"],
                "security": security,
                "requestBody": {"required": True, "content": {JSON: body}},
                "responses": {
                    "200": {
                        "description": "Cards (possibly none)",
                        "content": {JSON: {"schema": {"$ref": REF.format(model="CDSResponse")}}},
                    },
                    "401": UNAUTHORIZED,
                    **_errors(400, 404, 405, 412, 413, 500, 503),
                },
            }
        }
        paths[f"/cds-services/{service_id}/feedback"] = {
            "post": {
                "operationId": f"feedback.{service_id}",
                "summary": f"Feedback on the cards of {service_id}",
                "tags": ["CDS Hooks"],
                "security": security,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": {"$ref": REF.format(model="FeedbackRequest")}}},
                },
                "responses": {
                    "200": {"description": "Stored (an empty acknowledgement)"},
                    "401": UNAUTHORIZED,
                    **_errors(400, 404, 405, 413, 500, 503),
                },
            }
        }
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "tags": ["Operations"],
            "responses": {"200": {"description": "Alive", "content": {JSON: {"schema": HEALTH}}}},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: the database answers and every service has loaded",
            "tags": ["Operations"],
            "responses": {
                "200": {"description": "Ready", "content": {JSON: {"schema": READINESS}}},
                "503": {"description": "Not ready", "content": {JSON: {"schema": READINESS}}},
            },
        }
    }
    if metrics:
        paths["/metrics"] = {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (a bearer token when metrics_token is set)",
                "tags": ["Operations"],
                "responses": {
                    "200": {
                        "description": "Prometheus text or OpenMetrics exposition",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    "401": UNAUTHORIZED,
                },
            }
        }
    paths["/model-card"] = {
        "get": {
            "operationId": "modelCard",
            "summary": "The model card of the model this service runs (Markdown)",
            "tags": ["Model"],
            "responses": {
                "200": {
                    "description": "The model card",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "404": _outcome("This model has no model card"),
            },
        }
    }
    entry_id = {
        "name": "entry_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "The page's id, from the card's link",
    }
    token = {
        "name": "token",
        "in": "query",
        "required": True,
        "schema": {"type": "string"},
        "description": "The signed, expiring token of the card's link",
    }
    refused = {
        "description": "Invalid, expired or absent link (the same page whatever the reason)",
        "content": {HTML: {"schema": {"type": "string"}}},
    }
    html = {HTML: {"schema": {"type": "string"}}}
    error_json = {JSON: {"schema": {"type": "object", "properties": {"error": {"type": "string"}}}}}
    form_fields = {
        "type": "object",
        "properties": {
            "outcome": {"enum": ["accepted", "overridden"]},
            "reason": {"type": "string"},
            "comment": {"type": "string"},
        },
    }
    paths["/explanations/{entry_id}"] = {
        "get": {
            "operationId": "explanationPage",
            "summary": "The clinician's page behind a card's 'Why this suggestion?' link",
            "tags": ["Explanations"],
            "parameters": [entry_id, token],
            "responses": {"200": {"description": "The page", "content": html}, "403": refused},
        }
    }
    paths["/explanations/{entry_id}/shap"] = {
        "post": {
            "operationId": "explanationShap",
            "summary": "Compute SHAP for the page's suggestion (hundreds of forward passes)",
            "tags": ["Explanations"],
            "parameters": [entry_id, token],
            "responses": {
                "200": {
                    "description": "SHAP rows, for the page's script",
                    "content": {JSON: {"schema": {"type": "object"}}},
                },
                "303": {"description": "Back to the page (a form post without JavaScript)"},
                "403": refused,
                "409": {"description": "The model of this page is not loaded", "content": error_json},
                "500": {"description": "SHAP could not be computed", "content": error_json},
                "503": {"description": "Another SHAP computation is running", "content": error_json},
            },
        }
    }
    paths["/explanations/{entry_id}/feedback"] = {
        "post": {
            "operationId": "explanationFeedback",
            "summary": "Accept or Dismiss from the page, stored as CDS Hooks feedback",
            "tags": ["Explanations"],
            "parameters": [entry_id, token],
            "requestBody": {
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": form_fields}},
            },
            "responses": {
                "200": {"description": "Feedback stored", "content": html},
                "400": {"description": "The form is incomplete (shown on the page)", "content": html},
                "403": refused,
                "503": {"description": "Feedback could not be stored", "content": html},
            },
        }
    }
    paths["/openapi.json"] = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "tags": ["Operations"],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {JSON: {"schema": {"type": "object"}}}}
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cds-plugin",
            "version": __version__,
            "summary": "CDS Hooks 2.0 service: diagnosis and treatment considerations with explanations",
        },
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "cdsHooksJwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "CDS Hooks client trust: an ES384/RS384 JWT signed by a trusted issuer "
                    "(docs/security.md); not required when jwt_required is off (development)",
                }
            },
        },
    }


@bp.get("/openapi.json")
def openapi_json() -> Response:
    document = current_app.extensions.get("cds_plugin.openapi")
    if document is None:
        runtime = current_app.extensions["cds_plugin"]
        has_metrics = any(rule.rule == "/metrics" for rule in current_app.url_map.iter_rules())
        document = json.dumps(build_openapi(runtime.registry, metrics=has_metrics))
        current_app.extensions["cds_plugin.openapi"] = document
    return Response(document, mimetype=JSON)
