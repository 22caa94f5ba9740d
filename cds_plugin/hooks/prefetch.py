"""Prefetch templates: checking them against the spec's token rules, rendering them, and resolving a
call's prefetch (data sent by the client, else fetched from its FHIR server).

Resolution rules (CDS Hooks 2.0 "Prefetch"): a key present with data is used; present with `null` means
the client has no data, and is not queried again; an OperationOutcome under a key (or a missing key)
counts as missing and is fetched from `fhirServer`. Required data that still cannot be had gives 412.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from cds_plugin.errors import PreconditionFailedError
from cds_plugin.hooks.context import HookContext

TOKEN = re.compile(r"\{\{(.*?)\}\}")
USER_TOKENS = {
    "userPractitionerId": "Practitioner",
    "userPractitionerRoleId": "PractitionerRole",
    "userPatientId": "Patient",
    "userRelatedPersonId": "RelatedPerson",
}
# A relative FHIR read (`Type/id`) or search (`Type?params`); no scheme, host or path traversal.
RELATIVE_QUERY = re.compile(r"^[A-Z][A-Za-z]{1,63}(/[^/?#\s]+)?(\?[^#\s]*)?$")


class PrefetchTemplateError(ValueError):
    """A service declared a prefetch template the spec does not allow; stops the app from starting."""


def check_template(service_id: str, key: str, template: str, context_model: type[HookContext]) -> None:
    """Raise PrefetchTemplateError unless the template obeys the spec's token rules for its hook."""
    where = f"service {service_id!r}, prefetch key {key!r}"
    if not key or not isinstance(template, str) or not template:
        raise PrefetchTemplateError(f"{where}: the template must be a non-empty string")
    if template.count("{{") != template.count("}}") or len(TOKEN.findall(template)) != template.count("{{"):
        raise PrefetchTemplateError(f"{where}: unbalanced '{{{{' / '}}}}' in {template!r}")
    for token in TOKEN.findall(template):
        name = token.strip()
        if name in USER_TOKENS:
            continue
        if name.startswith("context."):
            field = name.removeprefix("context.")
            if field in context_model.PRIMITIVE_FIELDS:
                continue
            allowed = ", ".join(sorted(context_model.PRIMITIVE_FIELDS)) or "none"
            raise PrefetchTemplateError(
                f"{where}: token {{{{{name}}}}} is not a root-level primitive context field of this hook "
                f"(allowed: {allowed})"
            )
        raise PrefetchTemplateError(
            f"{where}: token {{{{{name}}}}} is not allowed; use {{{{context.FIELD}}}} or one of "
            f"{', '.join(sorted(USER_TOKENS))}"
        )
    if not RELATIVE_QUERY.match(TOKEN.sub("x", template)) or ".." in template:
        raise PrefetchTemplateError(
            f"{where}: {template!r} is not a relative FHIR read or search "
            "(e.g. 'Patient/{{context.patientId}}' or 'Condition?patient={{context.patientId}}')"
        )


def render_template(template: str, context: Mapping[str, Any]) -> str | None:
    """Fill the tokens from the context; None when a user token does not apply (user of another type)."""
    user_type, _, user_id = str(context.get("userId") or "").partition("/")
    missing = False

    def value(match: re.Match[str]) -> str:
        nonlocal missing
        name = match.group(1).strip()
        if name in USER_TOKENS:
            if user_type != USER_TOKENS[name] or not user_id:
                missing = True
                return ""
            raw = user_id
        else:
            raw = context.get(name.removeprefix("context."))
            if raw is None or isinstance(raw, dict | list):
                missing = True
                return ""
        return quote(str(raw), safe="")

    rendered = TOKEN.sub(value, template)
    return None if missing else rendered


def is_operation_outcome(value: Any) -> bool:
    return isinstance(value, dict) and value.get("resourceType") == "OperationOutcome"


@dataclass(frozen=True)
class PrefetchResult:
    """The resolved prefetch of one call: data per key (None = no data) and where each key came from."""

    data: dict[str, Any]
    sources: dict[str, str]  # key -> "prefetch" | "fhir-server" | "absent"
    failures: dict[str, str]  # key -> reason it could not be had (no PHI, no token)


def resolve_prefetch(
    templates: Mapping[str, str],
    required: frozenset[str] | set[str],
    sent: Mapping[str, Any] | None,
    context: Mapping[str, Any],
    fetcher: Any | None,
) -> PrefetchResult:
    """Combine what the client sent with what `fetcher` (a FhirFetcher, or None) can get.

    Raises PreconditionFailedError naming the first required key that could not be had.
    """
    sent = sent or {}
    data: dict[str, Any] = {}
    sources: dict[str, str] = {}
    failures: dict[str, str] = {}
    to_fetch: dict[str, str] = {}
    for key, template in templates.items():
        if key in sent and not is_operation_outcome(sent[key]):
            data[key] = sent[key]
            sources[key] = "prefetch" if sent[key] is not None else "absent"
            continue
        query = render_template(template, context)
        if query is None:
            data[key] = None
            sources[key] = "absent"
            continue
        to_fetch[key] = query
    if to_fetch:
        if fetcher is None:
            failures.update({k: "no FHIR server access for this call" for k in to_fetch})
        else:
            fetched, errors = fetcher.fetch_many(to_fetch)
            for key, value in fetched.items():
                data[key] = value
                sources[key] = "fhir-server"
            failures.update(errors)
    for key in templates:
        if key in failures:
            data.setdefault(key, None)
            sources.setdefault(key, "absent")
    missing_required = [k for k in templates if k in failures and k in required]
    if missing_required:
        key = missing_required[0]
        raise PreconditionFailedError(
            f"prefetch key {key!r}: required data missing from the request and not obtainable from the "
            f"FHIR server ({failures[key]})",
            expression=f"prefetch.{key}",
        )
    return PrefetchResult(data=data, sources=sources, failures=failures)
