"""A CDS Hooks 2.0 client for testing services: it calls them the way an EHR does, and judges the answer.

One call goes: read the service's discovery; build the hook's context (patient, user, draft orders,
encounter) from a FHIR bundle or a FHIR server; fill the service's prefetch by running each of its
templates against the same data (or leave keys out on purpose, to exercise the service's FHIR
fallback); sign a client JWT; POST; check the answer against every response rule of the spec; and
optionally send feedback on the first card. It speaks only the spec, so it works against any CDS
service, not only ours.

Data sources: with `--bundle`, queries run in-process over a FhirStore (the loopback FHIR server's
search code), and by default that bundle is also served on a loopback FhirServer with a random token,
sent as `fhirServer` + `fhirAuthorization` so a service on this machine can fall back to it. With
`--fhir-server`, queries go to that server (with `--fhir-token` when it needs one).
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import requests
from pydantic import ValidationError

from cds_plugin.errors import CdsPluginError
from cds_plugin.hooks.context import HOOK_CONTEXTS
from cds_plugin.hooks.fhir_client import FetchError, FhirFetcher, secure_enough
from cds_plugin.hooks.prefetch import render_template
from cds_plugin.sandbox.fhir_search import MAX_COUNT, search
from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.fhir_store import FhirStore
from cds_plugin.sandbox.keys import ClientKey, describe_token
from cds_plugin.sandbox.validator import (
    Finding,
    has_errors,
    validate_http_response,
)

log = logging.getLogger(__name__)

PrefetchMode = Literal["all", "none", "partial"]
PREFETCH_MODES: tuple[str, ...] = ("all", "none", "partial")
DEFAULT_ISSUER = "urn:cds-plugin:sandbox"
DEFAULT_USER = "Practitioner/example"
#: Scope sent with fhirAuthorization: read access to the patient's data, what prefetch needs.
FHIR_SCOPE = "patient/*.read"
ORDER_HOOKS = frozenset({"order-select", "order-sign"})
MAX_SEARCH_PAGES = 10  # the same cap as the service's own FHIR fallback


class SandboxError(Exception):
    """A usage or connection problem (exit status 2): the call could not be made or judged."""


class FhirQueryError(Exception):
    """One FHIR query failed; the message is safe to show (no token)."""


class FeedbackNotPossible(Exception):
    """The spec forbids or the card does not allow the feedback asked for; reported, not fatal."""


# -- the service URL --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceUrl:
    """Where discovery is (`{base}/cds-services`) and, when the URL named one, which service."""

    discovery_url: str
    service_id: str | None = None

    def endpoint(self, service_id: str) -> str:
        """`{base}/cds-services/{id}` (req 16): the URL POSTed to, and the JWT's `aud`."""
        return f"{self.discovery_url}/{quote(service_id, safe='')}"


def parse_service_url(url: str) -> ServiceUrl:
    """Accept the discovery URL, a service endpoint, or the bare base URL of a CDS service.

    `.../cds-services` is discovery; `.../cds-services/{id}` names the service; a URL without a
    `cds-services` segment is a base URL and gets `/cds-services` appended (the spec fixes that path).
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SandboxError(f"--service: {url!r} is not an http(s) URL")
    segments = [s for s in parts.path.split("/") if s]
    if "cds-services" in segments:
        at = len(segments) - 1 - segments[::-1].index("cds-services")
        rest = segments[at + 1 :]
        if len(rest) > 1:
            raise SandboxError(f"--service: {url!r}: expected .../cds-services or .../cds-services/ID")
        service_id = unquote(rest[0]) if rest else None
        segments = segments[: at + 1]
    else:
        service_id = None
        segments = [*segments, "cds-services"]
    path = "/" + "/".join(segments)
    return ServiceUrl(urlunsplit((parts.scheme, parts.netloc, path, "", "")), service_id)


def choose_service(services: list[Any], hook: str, service_id: str | None) -> dict[str, Any]:
    """The discovery entry to call: by id when given (one id may be listed once per hook it serves,
    CDS Hooks 2.0 requirement 211), else the only one on `hook`."""
    usable = [s for s in services if isinstance(s, dict) and isinstance(s.get("id"), str)]
    if service_id is not None:
        same_id = [s for s in usable if s["id"] == service_id]
        for service in same_id:
            if service.get("hook") == hook:
                return service
        if same_id:
            hooks = " or ".join(repr(s.get("hook")) for s in same_id)
            raise SandboxError(f"service {service_id!r} answers hook {hooks}, not {hook!r}")
        known = ", ".join(f"{s['id']} ({s.get('hook')})" for s in usable) or "none"
        raise SandboxError(f"discovery lists no service {service_id!r}; services: {known}")
    on_hook = [s for s in usable if s.get("hook") == hook]
    if not on_hook:
        hooks = ", ".join(sorted({str(s.get("hook")) for s in usable})) or "none"
        raise SandboxError(f"no service answers hook {hook!r} (hooks served: {hooks})")
    if len(on_hook) > 1:
        ids = ", ".join(s["id"] for s in on_hook)
        raise SandboxError(f"several services answer {hook!r} ({ids}); pick one with --service-id")
    return on_hook[0]


# -- FHIR data: a bundle in memory, or a FHIR server --------------------------------------------------


class FhirSource(Protocol):
    """Runs relative FHIR queries (`Type/id` reads, `Type?params` searches) for context and prefetch."""

    description: str

    def query(self, relative: str) -> dict[str, Any] | None:
        """A resource or a searchset Bundle; None when a read finds nothing. Raises FhirQueryError."""
        ...


def _searchset(resources: list[dict[str, Any]], base_url: str | None, warnings: list[str]) -> dict[str, Any]:
    """A searchset Bundle shaped like a FHIR server's (fullUrl when a base is known, search.mode)."""
    entries: list[dict[str, Any]] = []
    for resource in resources:
        entry: dict[str, Any] = {"resource": copy.deepcopy(resource), "search": {"mode": "match"}}
        if base_url:
            entry = {"fullUrl": f"{base_url}/{resource['resourceType']}/{resource['id']}", **entry}
        entries.append(entry)
    if warnings:
        issues = [{"severity": "warning", "code": "not-supported", "diagnostics": w} for w in warnings]
        entries.append(
            {"resource": {"resourceType": "OperationOutcome", "issue": issues}, "search": {"mode": "outcome"}}
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": len(resources)}
    if entries:
        bundle["entry"] = entries
    return bundle


class BundleSource:
    """Queries answered in-process from a FhirStore, with the loopback FHIR server's search semantics.

    A search with `_count` gives its first page, as a server would answer it; any other search gives
    every match, so the prefetch holds what the template asks for and not an arbitrary first page.
    """

    def __init__(self, store: FhirStore, base_url: str | None = None, description: str = "bundle") -> None:
        self.store = store
        self.base_url = base_url
        self.description = description

    def query(self, relative: str) -> dict[str, Any] | None:
        path, _, query = relative.partition("?")
        segments = path.strip("/").split("/")
        try:
            if len(segments) == 2 and segments[1]:
                found = self.store.get(segments[0], unquote(segments[1]))
                return copy.deepcopy(found) if found is not None else None
            if len(segments) != 1 or not segments[0]:
                raise FhirQueryError(f"not a FHIR read or type-level search: {relative!r}")
            rtype = segments[0]
            params = parse_qsl(query, keep_blank_values=True)
            if any(name == "_count" for name, _ in params):
                page = search(self.store, rtype, params)
                return _searchset(page.resources, self.base_url, page.warnings)
            resources: list[dict[str, Any]] = []
            warnings: list[str] = []
            offset = 0
            while True:
                page = search(
                    self.store, rtype, [*params, ("_count", str(MAX_COUNT)), ("_offset", str(offset))]
                )
                resources.extend(page.resources)
                warnings = page.warnings
                offset += MAX_COUNT
                if offset >= page.total:
                    return _searchset(resources, self.base_url, warnings)
        except CdsPluginError as exc:
            raise FhirQueryError(exc.message) from exc


class ServerSource:
    """Queries sent to a FHIR server (with a bearer token when given), paged like the service's fallback."""

    def __init__(
        self, base_url: str, token: str | None, session: requests.Session, timeout_s: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.session = session
        self.timeout_s = timeout_s
        self.description = self.base_url

    def __repr__(self) -> str:  # no token
        return f"ServerSource({self.base_url!r})"

    def query(self, relative: str) -> dict[str, Any] | None:
        pages = 1 if "_count=" in relative else MAX_SEARCH_PAGES
        fetcher = FhirFetcher(
            self.base_url, self._token, budget_s=self.timeout_s, max_pages=pages, session=self.session
        )
        try:
            return fetcher.fetch(relative)
        except FetchError as exc:
            raise FhirQueryError(str(exc)) from exc


def _matches(bundle: dict[str, Any] | None, rtype: str) -> list[dict[str, Any]]:
    """The resources of a searchset that are matches of type `rtype` (not outcomes, not includes)."""
    if not bundle or bundle.get("resourceType") != "Bundle":
        return []
    found = []
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == rtype and mode == "match":
            found.append(resource)
    return found


def latest(source: FhirSource, rtype: str, patient_id: str, **params: str) -> dict[str, Any] | None:
    """The patient's most recent resource of a type (by its main date), or None."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in {"patient": patient_id, **params}.items())
    try:
        found = _matches(source.query(f"{rtype}?{query}&_sort=-date&_count=1"), rtype)
    except FhirQueryError as exc:
        raise SandboxError(f"cannot search {rtype} in {source.description}: {exc}") from exc
    return found[0] if found else None


# -- context, draft orders, prefetch ------------------------------------------------------------------


def draft_order(source: FhirSource, patient_id: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The draft order for order-select/order-sign: `given` (a resource or a Bundle holding one), else
    the patient's latest draft MedicationRequest, else a draft copy (id `draft-1`) of the latest one.

    The result always has status `draft` (draftOrders holds orders not yet signed), an id, and a
    subject pointing at the patient.
    """
    if given is not None:
        order = copy.deepcopy(given)
        if order.get("resourceType") == "Bundle":
            inner = [e.get("resource") for e in order.get("entry") or [] if isinstance(e, dict)]
            order = next((r for r in inner if isinstance(r, dict)), None)
            if order is None:
                raise SandboxError("--draft-order: the Bundle holds no resource")
        if not isinstance(order.get("resourceType"), str):
            raise SandboxError("--draft-order: not a FHIR resource (no resourceType)")
        order.setdefault("id", "draft-1")
    else:
        order = latest(source, "MedicationRequest", patient_id, status="draft")
        if order is None:
            order = latest(source, "MedicationRequest", patient_id)
            if order is None:
                raise SandboxError(
                    f"the patient has no MedicationRequest in {source.description} to base a draft order on; "
                    "give one with --draft-order FILE"
                )
            order = {**order, "id": "draft-1"}
            order.pop("meta", None)
    order["status"] = "draft"
    order.setdefault("subject", {"reference": f"Patient/{patient_id}"})
    return order


def build_context(
    hook: str,
    source: FhirSource,
    patient_id: str,
    user_id: str = DEFAULT_USER,
    *,
    encounter_id: str | None = None,
    order: dict[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The hook's `context`: only the fields its context model declares (any for an unknown hook).

    Draft orders for order-select/order-sign (with `selections` for order-select), the latest
    Encounter where the hook requires `encounterId`; `overrides` (from --context) win, and the result
    is checked against the hook's context model so a bad context is caught before the call.
    """
    model = HOOK_CONTEXTS.get(hook)
    fields = model.model_fields if model is not None else {}
    context: dict[str, Any] = {}
    if model is None or "userId" in fields:
        context["userId"] = user_id
    if model is None or "patientId" in fields:
        context["patientId"] = patient_id
    if hook in ORDER_HOOKS and not (overrides and "draftOrders" in overrides):
        draft = draft_order(source, patient_id, order)
        context["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": draft}],
        }
        if hook == "order-select":
            context["selections"] = [f"{draft['resourceType']}/{draft['id']}"]
    encounter_required = "encounterId" in fields and fields["encounterId"].is_required()
    if encounter_id:
        context["encounterId"] = encounter_id
    elif encounter_required and not (overrides and "encounterId" in overrides):
        encounter = latest(source, "Encounter", patient_id)
        if encounter is None:
            raise SandboxError(
                f"hook {hook} needs an encounterId and the patient has no Encounter; give --encounter"
            )
        context["encounterId"] = encounter["id"]
    context.update(overrides or {})
    if model is not None:
        try:
            model.model_validate(context)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'context'}: {err['msg']}" for err in exc.errors()
            )
            raise SandboxError(
                f"the {hook} context is not valid ({problems}); complete it with --context FILE"
            ) from exc
    return context


@dataclass
class Prefetch:
    """What goes in the request's `prefetch` (None: no prefetch member) and what happened to each key."""

    data: dict[str, Any] | None
    notes: dict[str, str] = field(default_factory=dict)


def _operation_outcome(message: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "exception", "diagnostics": message}],
    }


def build_prefetch(
    templates: Mapping[str, str], context: Mapping[str, Any], source: FhirSource, mode: PrefetchMode = "all"
) -> Prefetch:
    """Run each template against `source`, leaving keys out as `mode` says.

    `none` leaves every key out and `partial` every other one (the 2nd, 4th, ... in discovery order),
    so the service must fetch them itself. A read that finds nothing is sent as null ("no data"); a
    query that fails is sent as an OperationOutcome, as the spec advises, so the service knows why.
    A template whose tokens do not apply (a user token for another kind of user) is left out.
    """
    if mode not in PREFETCH_MODES:
        raise SandboxError(f"--prefetch must be one of {', '.join(PREFETCH_MODES)}")
    notes: dict[str, str] = {}
    data: dict[str, Any] = {}
    for i, (key, template) in enumerate(templates.items()):
        if mode == "none" or (mode == "partial" and i % 2 == 1):
            notes[key] = f"left out (--prefetch {mode})"
            continue
        query = render_template(template, context) if isinstance(template, str) else None
        if query is None:
            notes[key] = "left out (its tokens do not apply to this context)"
            continue
        try:
            value = source.query(query)
        except FhirQueryError as exc:
            data[key] = _operation_outcome(f"prefetch query failed: {exc}")
            notes[key] = f"OperationOutcome ({exc})"
            continue
        data[key] = value
        if value is None:
            notes[key] = "null (not found)"
        elif value.get("resourceType") == "Bundle":
            matches = [
                e for e in value.get("entry") or [] if (e.get("search") or {}).get("mode") != "outcome"
            ]
            notes[key] = f"Bundle ({len(matches)} entries)"
        else:
            notes[key] = f"{value.get('resourceType')}/{value.get('id', '')}".rstrip("/")
    return Prefetch(data if mode != "none" else None, notes)


# -- the call ----------------------------------------------------------------------------------------


@dataclass
class CallOptions:
    """Everything one `sandbox call` needs; see `cds-plugin sandbox call --help`."""

    service: str
    hook: str
    service_id: str | None = None
    bundle: Path | None = None
    fhir_server: str | None = None
    patient: str | None = None
    fhir_token: str | None = None
    serve_bundle: bool = True
    prefetch: PrefetchMode = "all"
    key: ClientKey | None = None
    issuer: str = DEFAULT_ISSUER
    user: str = DEFAULT_USER
    encounter: str | None = None
    draft_order: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    feedback: str | None = None
    timeout_s: float = 30.0


@dataclass
class HttpExchange:
    url: str
    status: int
    content_type: str | None
    body: Any
    elapsed_ms: float
    token: dict[str, Any]
    raw: bytes = field(default=b"", repr=False)


@dataclass
class FeedbackOutcome:
    """The feedback sent (None when none could be) and how the service answered."""

    note: str
    body: dict[str, Any] | None = None
    exchange: HttpExchange | None = None


@dataclass
class CallResult:
    """One call and its verdict: `exit_code` 0 when everything conforms, 1 when something breaks the spec."""

    service: dict[str, Any]
    request: dict[str, Any]
    response: HttpExchange
    prefetch_notes: dict[str, str]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    feedback: FeedbackOutcome | None = None

    @property
    def conforms(self) -> bool:
        return not has_errors(self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.conforms else 1

    @property
    def cards(self) -> list[Any]:
        body = self.response.body
        cards = body.get("cards") if isinstance(body, dict) else None
        return cards if isinstance(cards, list) else []

    def to_json(self) -> dict[str, Any]:
        """Request, response, findings and feedback; the FHIR token masked, the JWT without signature."""
        out: dict[str, Any] = {
            "service": self.service,
            "request": {
                "url": self.response.url,
                "jwt": self.response.token,
                "body": redact_request(self.request),
                "prefetch": self.prefetch_notes,
            },
            "response": {
                "status": self.response.status,
                "contentType": self.response.content_type,
                "elapsedMs": self.response.elapsed_ms,
                "body": self.response.body,
            },
            "findings": [f.to_json() for f in self.findings],
            "conforms": self.conforms,
            "notes": self.notes,
        }
        if self.feedback is not None:
            exchange = self.feedback.exchange
            out["feedback"] = {
                "note": self.feedback.note,
                "body": self.feedback.body,
                "status": exchange.status if exchange else None,
            }
        return out


def mask(secret: str) -> str:
    """Enough of a token to recognise it, never enough to use it."""
    return f"{secret[:4]}…({len(secret)} chars)" if len(secret) > 12 else "…"


def redact_request(request: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(request)
    auth = out.get("fhirAuthorization")
    if isinstance(auth, dict) and isinstance(auth.get("access_token"), str):
        out["fhirAuthorization"] = {**auth, "access_token": mask(auth["access_token"])}
    return out


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_feedback_spec(spec: str) -> str:
    """`accept`, `override` or `override:REASON`; raises SandboxError (a usage error) otherwise."""
    if spec != "accept" and spec.partition(":")[0] != "override":
        raise SandboxError(f"--feedback: expected 'accept' or 'override:REASON', got {spec!r}")
    return spec


def feedback_item(card: Mapping[str, Any], spec: str) -> dict[str, Any]:
    """The feedback on `card` for `accept` (its first suggestion) or `override[:REASON]`.

    REASON is a code (or `system|code`) of the card's overrideReasons, sent as the reason Coding;
    any other text is sent as userComment; a bare `override` picks the first reason. Raises
    FeedbackNotPossible when the card does not allow it (no uuid: req 163; nothing to accept).
    """
    check_feedback_spec(spec)
    card_uuid = card.get("uuid")
    if not isinstance(card_uuid, str) or not card_uuid:
        raise FeedbackNotPossible("the card has no uuid, so no feedback can name it (req 163)")
    item: dict[str, Any] = {"card": card_uuid, "outcomeTimestamp": _timestamp()}
    if spec == "accept":
        suggestions = [s for s in card.get("suggestions") or [] if isinstance(s, dict)]
        if not suggestions:
            raise FeedbackNotPossible("the card has no suggestion to accept")
        suggestion_uuid = suggestions[0].get("uuid")
        if not isinstance(suggestion_uuid, str) or not suggestion_uuid:
            raise FeedbackNotPossible(
                "the card's first suggestion has no uuid, so it cannot be reported (req 163)"
            )
        return {**item, "outcome": "accepted", "acceptedSuggestions": [{"id": suggestion_uuid}]}
    reason = spec.partition(":")[2]
    reasons = [r for r in card.get("overrideReasons") or [] if isinstance(r, dict)]
    override: dict[str, Any] = {}
    for coding in reasons:
        if not reason or reason in (coding.get("code"), f"{coding.get('system')}|{coding.get('code')}"):
            override["reason"] = {k: coding[k] for k in ("system", "code", "display") if coding.get(k)}
            break
    if "reason" not in override:
        override["userComment"] = reason or "Overridden in the CDS sandbox"
    return {**item, "outcome": "overridden", "overrideReason": override}


class SandboxClient:
    """Makes the HTTP calls of one sandbox run: discovery, the hook call and feedback, each signed."""

    def __init__(
        self,
        key: ClientKey,
        issuer: str = DEFAULT_ISSUER,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.key = key
        self.issuer = issuer
        self.session = session or requests.Session()
        self.timeout_s = timeout_s

    def discover(self, url: ServiceUrl) -> tuple[list[Any], list[Finding]]:
        """The services of discovery, and the findings about the discovery answer itself."""
        try:
            resp = self.session.get(
                url.discovery_url,
                headers={"Accept": "application/json"},
                timeout=self.timeout_s,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise SandboxError(f"cannot reach {url.discovery_url}: {type(exc).__name__}") from exc
        body, findings = validate_http_response(
            resp.status_code, resp.headers.get("Content-Type"), resp.content, document="discovery"
        )
        if (
            resp.status_code != 200
            or not isinstance(body, dict)
            or not isinstance(body.get("services"), list)
        ):
            raise SandboxError(
                f"discovery at {url.discovery_url} answered HTTP {resp.status_code} without a services list"
            )
        return body["services"], findings

    def post(self, url: str, body: Mapping[str, Any]) -> HttpExchange:
        """POST JSON with a fresh client JWT whose `aud` is exactly `url`."""
        token = self.key.sign(url, self.issuer)
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "Authorization": f"Bearer {token}",
        }
        started = time.perf_counter()
        try:
            resp = self.session.post(
                url, data=json.dumps(body), headers=headers, timeout=self.timeout_s, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise SandboxError(f"cannot reach {url}: {type(exc).__name__}") from exc
        elapsed = round((time.perf_counter() - started) * 1000, 1)
        try:
            decoded: Any = resp.json() if resp.content else None
        except ValueError:
            decoded = resp.text[:2000]
        return HttpExchange(
            url,
            resp.status_code,
            resp.headers.get("Content-Type"),
            decoded,
            elapsed,
            describe_token(token),
            resp.content,
        )

    def call(self, options: CallOptions) -> CallResult:
        """Discover, build, sign, send, validate, and give feedback when asked. Raises SandboxError."""
        service_url = parse_service_url(options.service)
        if options.feedback:
            check_feedback_spec(options.feedback)
        services, findings = self.discover(service_url)
        service = choose_service(services, options.hook, options.service_id or service_url.service_id)
        endpoint = service_url.endpoint(service["id"])
        notes: list[str] = []
        own = f"$.services[{next(i for i, s in enumerate(services) if s is service)}]"
        findings = [  # only what concerns the service called, and discovery as a whole
            f
            for f in findings
            if not f.path.startswith("$.services[")
            or f.path.startswith((f"{own}.", f"{own}["))
            or f.path == own
        ]
        if not secure_enough(endpoint):
            findings.append(
                Finding(
                    "warning",
                    "$",
                    "https",
                    f"{endpoint} is plain http: production needs TLS (req 2, 168)",
                    "request",
                )
            )
        with _DataSource(options, self.session, self.timeout_s) as (source, fhir_server, fhir_token, note):
            notes.append(note)
            patient_id = _patient_id(options, source)
            context = build_context(
                options.hook,
                source,
                patient_id,
                options.user,
                encounter_id=options.encounter,
                order=options.draft_order,
                overrides=options.context,
            )
            templates = service.get("prefetch") if isinstance(service.get("prefetch"), dict) else {}
            prefetch = build_prefetch(templates, context, source, options.prefetch)
            request: dict[str, Any] = {"hook": options.hook, "hookInstance": str(uuid.uuid4())}
            if fhir_server:
                request["fhirServer"] = fhir_server
                if fhir_token:
                    request["fhirAuthorization"] = {
                        "access_token": fhir_token,
                        "token_type": "Bearer",
                        "expires_in": 300,
                        "scope": FHIR_SCOPE,
                        "subject": service["id"],
                        "patient": patient_id,
                    }
            request["context"] = context
            if prefetch.data:
                request["prefetch"] = prefetch.data
            exchange = self.post(endpoint, request)
            _, response_findings = validate_http_response(
                exchange.status, exchange.content_type, exchange.raw
            )
            findings.extend(response_findings)
            result = CallResult(service, request, exchange, prefetch.notes, findings, notes)
            if options.feedback:
                result.feedback = self._feedback(endpoint, result, options.feedback)
                if result.feedback.exchange is not None and result.feedback.exchange.status != 200:
                    findings.append(
                        Finding(
                            "warning",
                            "$",
                            "feedback-status",
                            f"the feedback endpoint answered HTTP {result.feedback.exchange.status}",
                            "feedback",
                        )
                    )
        return result

    def _feedback(self, endpoint: str, result: CallResult, spec: str) -> FeedbackOutcome:
        cards = [c for c in result.cards if isinstance(c, dict)]
        if not cards:
            return FeedbackOutcome("not sent: the response has no card")
        try:
            item = feedback_item(cards[0], spec)
        except FeedbackNotPossible as exc:
            return FeedbackOutcome(f"not sent: {exc}")
        body = {"feedback": [item]}
        exchange = self.post(f"{endpoint}/feedback", body)
        return FeedbackOutcome(f"{item['outcome']}: HTTP {exchange.status}", body, exchange)


def _patient_id(options: CallOptions, source: FhirSource) -> str:
    if options.patient:
        try:
            found = source.query(f"Patient/{quote(options.patient, safe='')}")
        except FhirQueryError as exc:
            raise SandboxError(
                f"cannot read Patient/{options.patient} from {source.description}: {exc}"
            ) from exc
        if found is None:
            raise SandboxError(f"no Patient/{options.patient} in {source.description}")
        return options.patient
    if isinstance(source, BundleSource):
        patients = source.store.all("Patient")
        if len(patients) == 1:
            return str(patients[0]["id"])
        raise SandboxError(f"the bundle holds {len(patients)} patients; choose one with --patient")
    raise SandboxError("--patient is required with --fhir-server")


class _DataSource:
    """The FHIR source for one call, and what to send as fhirServer/fhirAuthorization; stops the
    in-process FHIR server when the call is done."""

    def __init__(self, options: CallOptions, session: requests.Session, timeout_s: float) -> None:
        self.options = options
        self.session = session
        self.timeout_s = timeout_s
        self.server: FhirServer | None = None

    def __enter__(self) -> tuple[FhirSource, str | None, str | None, str]:
        o = self.options
        if (o.bundle is None) == (o.fhir_server is None):
            raise SandboxError("give exactly one of --bundle FILE and --fhir-server URL")
        if o.fhir_server is not None:
            if o.fhir_token and not secure_enough(o.fhir_server):
                raise SandboxError("refusing to send the FHIR token over plain http to a non-loopback server")
            source = ServerSource(o.fhir_server, o.fhir_token, self.session, self.timeout_s)
            note = f"data from FHIR server {source.base_url}" + (" (with token)" if o.fhir_token else "")
            return source, source.base_url, o.fhir_token, note
        try:
            if o.serve_bundle:
                token = secrets.token_urlsafe(24)
                self.server = FhirServer(o.bundle, token=token).start()  # type: ignore[arg-type]
                base = self.server.base_url
                source = BundleSource(self.server.store, base, f"bundle {o.bundle}")
                note = f"data from bundle {o.bundle}, also served at {base} for the service's fallback"
                return source, base, token, note
            store = FhirStore.load(o.bundle)  # type: ignore[arg-type]
        except CdsPluginError as exc:
            raise SandboxError(f"--bundle: {exc.message}") from exc
        except OSError as exc:
            raise SandboxError(f"--bundle: {exc.strerror or exc}") from exc
        return BundleSource(store, None, f"bundle {o.bundle}"), None, None, f"data from bundle {o.bundle}"

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.stop()
