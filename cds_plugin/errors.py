"""The project's own error types.

Every error a caller can cause is one of these: each knows its HTTP status, the FHIR OperationOutcome
issue code, and the field it concerns, so the web layer can answer with an OperationOutcome without
guessing. The core (fhir, model, explain) raises them without knowing anything about HTTP.
"""

from __future__ import annotations


class CdsPluginError(Exception):
    """Base of every error raised on purpose by cds-plugin.

    `expression` names the offending element (FHIRPath-like, e.g. `context.patientId`), `code` is the
    OperationOutcome issue type (http://hl7.org/fhir/issue-type).
    """

    status: int = 400
    code: str = "invalid"

    def __init__(self, message: str, *, expression: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression
        if code is not None:
            self.code = code


class FhirInputError(CdsPluginError):
    """FHIR data that cannot be read, e.g. `Observation/abc: valueQuantity.value: not a number`."""

    code = "structure"


class InputLimitError(CdsPluginError):
    """Input above a configured size, count or depth limit."""

    status = 413
    code = "too-costly"


class RequestValidationError(CdsPluginError):
    """A CDS Hooks request or feedback body that breaks the specification."""

    code = "invalid"


class NotFoundError(CdsPluginError):
    status = 404
    code = "not-found"


class PreconditionFailedError(CdsPluginError):
    """Required prefetch data could not be had from the request nor from the FHIR server (spec: 412)."""

    status = 412
    code = "not-found"


class UnauthorizedError(CdsPluginError):
    """Client authentication failed. The reason is logged, never sent to the client."""

    status = 401
    code = "security"


class ServiceUnavailableError(CdsPluginError):
    status = 503
    code = "transient"
