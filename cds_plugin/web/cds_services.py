"""The CDS Hooks endpoints: discovery, service calls and feedback. Thin: parse, call the core, render."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from pydantic import ValidationError

from cds_plugin.errors import (
    CdsPluginError,
    InputLimitError,
    NotFoundError,
    RequestValidationError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from cds_plugin.hooks.feedback import FeedbackRequest
from cds_plugin.hooks.fhir_client import FhirFetcher, secure_enough
from cds_plugin.hooks.prefetch import resolve_prefetch
from cds_plugin.hooks.registry import HookCall, Service
from cds_plugin.hooks.request import CDSRequest
from cds_plugin.hooks.request_limits import RequestLimits, ResourceCounter, check_json
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.web import metrics
from cds_plugin.web.call_log import log_call
from cds_plugin.web.operation_outcome import error_response, from_validation_error
from cds_plugin.web.runtime import Runtime

log = logging.getLogger(__name__)

bp = Blueprint("cds_services", __name__)


def _runtime() -> Runtime:
    return current_app.extensions["cds_plugin"]


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


@bp.get("/cds-services")
def discovery() -> Response:
    return _json(_runtime().registry.discovery().to_json())


def _service(service_id: str) -> Service:
    service = _runtime().registry.get(service_id)
    if service is None:
        raise NotFoundError(f"no CDS service with id {service_id!r}", expression="id")
    return service


def _audience() -> str:
    """The URL the client called, as it sees it (public_base_url when behind a proxy)."""
    base = _runtime().settings.public_base_url
    if base:
        return base.rstrip("/") + request.path
    return request.base_url


def _authenticate() -> str | None:
    """Check the client's JWT; returns its verified issuer (None when JWT checks are off)."""
    trust = _runtime().trust
    if trust is None:
        return None
    return trust.verify(request.headers.get("Authorization"), _audience()).iss


def _limits() -> RequestLimits:
    settings = _runtime().settings
    return RequestLimits(settings.max_json_depth, settings.max_string_bytes, settings.max_entries)


def _body(counter: ResourceCounter | None = None) -> dict[str, Any]:
    """The parsed JSON object, held to the request limits (depth, string length, FHIR resources)."""
    raw = request.get_data(cache=False)
    if not raw:
        raise RequestValidationError("the request body is empty; expected a JSON object", code="required")
    limits = counter.limits if counter is not None else _limits()
    try:
        body = json.loads(raw)
    except RecursionError as exc:
        raise InputLimitError(
            f"request body: JSON nested deeper than {limits.max_depth} levels", expression="$"
        ) from exc
    except ValueError as exc:
        raise RequestValidationError("the request body is not valid JSON", code="structure") from exc
    check_json(body, limits, counter=counter)
    if not isinstance(body, dict):
        raise RequestValidationError("the request body must be a JSON object", code="structure")
    return body


def _parse_call(service_id: str, body: dict[str, Any]) -> tuple[Service, CDSRequest, Any]:
    """Validate the request, pick the service registered for its hook, validate the hook's context."""
    try:
        call = CDSRequest.model_validate(body)
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
    service = _runtime().registry.get(service_id, call.hook)
    if service is None:
        hooks = " or ".join(repr(h) for h in _runtime().registry.hooks_of(service_id))
        raise RequestValidationError(
            f"hook: service {service_id!r} answers {hooks}, not {call.hook!r}", expression="hook"
        )
    try:
        context = service.context_type.model_validate(call.context)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix="context") from exc
    if call.prefetch is not None:
        for key, value in call.prefetch.items():
            if value is not None and not isinstance(value, dict):
                raise RequestValidationError(
                    f"prefetch.{key}: must be a FHIR resource or null", expression=f"prefetch.{key}"
                )
    return service, call, context


def _fetcher(call: CDSRequest, counter: ResourceCounter | None = None) -> FhirFetcher | None:
    """A fetcher for the client's FHIR server: with its token, or without one only if allow-listed."""
    if not call.fhirServer:
        return None
    settings = _runtime().settings
    if not secure_enough(call.fhirServer, settings.fhir_allow_http):
        log.warning(
            "not fetching from a FHIR server over plain http (set CDS_PLUGIN_FHIR_ALLOW_HTTP to allow)"
        )
        return None
    token = call.fhirAuthorization.access_token if call.fhirAuthorization else None
    if token is None:
        allowed = {s.rstrip("/") for s in settings.fhir_open_servers}
        if call.fhirServer.rstrip("/") not in allowed:
            return None
    return FhirFetcher(
        call.fhirServer,
        token,
        budget_s=settings.fhir_fetch_budget_s,
        max_pages=settings.fhir_max_pages,
        max_bytes=settings.max_body_bytes,
        session=_runtime().http,
        limits=counter.limits if counter is not None else _limits(),
        counter=counter,
    )


@bp.post("/cds-services/<service_id>")
def call_service(service_id: str) -> Response:
    started = time.perf_counter()
    fields: dict[str, Any] = {"event": "hook_call", "service": service_id}
    status = 500
    try:
        _service(service_id)
        issuer = _authenticate()
        counter = ResourceCounter(_limits())  # the request and fetched data share max_entries
        service, call, context = _parse_call(service_id, _body(counter))
        fields.update(hook=service.hook, hookInstance=call.hookInstance)
        resolved = resolve_prefetch(
            service.prefetch, service.required_prefetch, call.prefetch, call.context, _fetcher(call, counter)
        )
        hook_call = HookCall(
            service=service,
            request=call,
            context=context,
            prefetch=resolved.data,
            prefetch_sources=resolved.sources,
            base_url=_runtime().settings.public_base_url or request.host_url,
            patient_key=_patient_key(issuer, context),
        )
        response = service.handler(hook_call)
        if not isinstance(response, CDSResponse):
            raise TypeError(f"service {service.id!r} returned {type(response).__name__}, not CDSResponse")
        response.ensure_uuids()
        fields.update(hook_call.log_fields)
        fields.update(cards=len(response.cards), model_version=hook_call.model_version)
        _record_cards(service, call, response, hook_call.model_version, hook_call.patient_key)
        metrics.cards_issued(service, response, hook_call.model_version)
        status = 200
        return _json(response.to_json())
    except CdsPluginError as exc:
        status = exc.status
        # the issue code and the element, never the message: messages name resources and quote values
        fields["reason"] = exc.code if status != 401 else "client authentication failed"
        if exc.expression and status != 401:
            fields["expression"] = exc.expression
        if isinstance(exc, UnauthorizedError):
            log.info("refused client: %s", exc.message)
        return error_response(exc)
    finally:
        fields.update(status=status, latency_ms=round((time.perf_counter() - started) * 1000, 1))
        if status >= 500:
            fields.pop("reason", None)
        log_call(**fields)
        metrics.hook_call(fields)


def _patient_key(issuer: str | None, context: Any) -> str | None:
    patient_id = getattr(context, "patientId", None)
    return _runtime().pseudonymizer.patient_key(issuer, patient_id) if patient_id else None


def _record_cards(
    service: Service,
    call: CDSRequest,
    response: CDSResponse,
    model_version: str | None,
    patient_key: str | None,
) -> None:
    """Keep what was shown so feedback joins to it, and which patient (pseudonym) and consideration each
    card was about, so an override holds (override_store.py); a database outage must not fail the call."""
    if not response.cards:
        return
    try:
        _runtime().card_log.record(service.id, service.hook, call.hookInstance, response, model_version)
        if patient_key is not None:
            _runtime().override_store.remember(patient_key, response)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("could not record issued cards: %s", type(exc).__name__)


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    started = time.perf_counter()
    fields: dict[str, Any] = {"event": "feedback", "service": service_id}
    status = 500
    try:
        _service(service_id)
        _authenticate()
        try:
            body = FeedbackRequest.model_validate(_body())
        except ValidationError as exc:
            raise from_validation_error(exc) from exc
        try:
            added = _runtime().feedback_store.save(service_id, body.feedback)
        except sa.exc.SQLAlchemyError as exc:
            log.error("feedback not stored, database error: %s", type(exc).__name__)
            raise ServiceUnavailableError("feedback could not be stored; try again later") from exc
        fields.update(items=len(body.feedback), new=added)
        metrics.feedback_items(service_id, body.feedback, added)
        status = 200
        ack = Response(status=200)
        del ack.headers["Content-Type"]  # an empty acknowledgement, not an HTML page
        return ack
    except CdsPluginError as exc:
        status = exc.status
        if isinstance(exc, UnauthorizedError):
            log.info("refused client: %s", exc.message)
        return error_response(exc)
    finally:
        fields.update(status=status, latency_ms=round((time.perf_counter() - started) * 1000, 1))
        log_call(**fields)
        metrics.feedback_call(fields)
