"""Errors as FHIR OperationOutcome answers; a 401 carries nothing, and nothing internal ever leaks."""

from __future__ import annotations

import json
from typing import Any

from flask import Response
from pydantic import ValidationError

from cds_plugin.errors import CdsPluginError, RequestValidationError

FHIR_JSON = "application/fhir+json"


def operation_outcome(
    diagnostics: str, code: str = "invalid", expression: str | None = None, severity: str = "error"
) -> dict[str, Any]:
    """A one-issue OperationOutcome: our error answers, and the sandbox FHIR server's."""
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_response(
    status: int, diagnostics: str, code: str = "invalid", expression: str | None = None
) -> Response:
    if status == 401:
        return Response(status=401, headers={"WWW-Authenticate": "Bearer"})
    body = operation_outcome(diagnostics, code, expression)
    return Response(json.dumps(body), status=status, mimetype=FHIR_JSON)


def error_response(exc: CdsPluginError) -> Response:
    return outcome_response(exc.status, exc.message, exc.code, exc.expression)


def from_validation_error(exc: ValidationError, prefix: str = "") -> RequestValidationError:
    """The first pydantic error as a RequestValidationError naming the field (never echoing its value)."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0] if errors else {"loc": (), "msg": "invalid"}
    path = ".".join(str(p) for p in first["loc"] if p != "__root__")
    expression = ".".join(p for p in (prefix, path) if p) or None
    msg = first["msg"].removeprefix("Value error, ")
    if first.get("type") == "missing":
        msg = "required field is missing"
    where = expression or prefix or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return RequestValidationError(
        f"{where}: {msg}{more}",
        expression=expression,
        code="required" if first.get("type") == "missing" else "invalid",
    )
