"""CDS Hooks 2.0 service request (what the CDS client POSTs to /cds-services/{id})."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from cds_plugin.hooks.wire import WireModel


class FhirAuthorization(WireModel):
    access_token: str = Field(min_length=1, repr=False)
    token_type: str = Field(pattern="^[Bb]earer$")
    expires_in: int = Field(ge=0)
    scope: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    patient: str | None = None

    def __repr__(self) -> str:  # never show the token, even in a traceback or debugger
        return f"FhirAuthorization(subject={self.subject!r}, scope={self.scope!r})"

    __str__ = __repr__


class CDSRequest(WireModel):
    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None
    extension: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _auth_needs_server(self) -> CDSRequest:
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization requires fhirServer (cds-r-1)")
        return self
