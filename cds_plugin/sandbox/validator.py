"""Checking any CDS service's answers against CDS Hooks 2.0: every rule, every finding, with its JSON path.

Our pydantic wire models (cds_plugin.hooks) refuse a broken card at the first error, which is right
for building our own answers but useless for judging someone else's: a service author wants the whole
list. So this module walks plain JSON and never stops early. Each finding has a severity (`error`
breaks a SHALL of the spec or an invariant; `warning` is a SHOULD, or something that will hurt in
practice, such as a card without a uuid that feedback cannot name), a JSON path (`$.cards[0].summary`)
and a rule: the invariant id (`cds-resp-1`..`7`) or a short name, with the requirement numbers of the
CDS Hooks 2.0 requirements list in the message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cds_plugin.hooks.context import HOOK_CONTEXTS
from cds_plugin.hooks.prefetch import PrefetchTemplateError, check_template

Severity = Literal["error", "warning"]

SUMMARY_LIMIT = 140  # the summary must be shorter than this (req 83)
INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")
ACTION_SELECTION_BEHAVIORS = ("all", "any", "at-most-one")  # CDS Hooks 3.0 ballot (cds-resp-7)
ACTION_TYPES = ("create", "update", "delete")
LINK_TYPES = ("absolute", "smart")
RELATIVE_REFERENCE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")
# GitHub Flavored Markdown's tagfilter: these raw HTML tags are neutralised by conforming renderers.
GFM_FILTERED_TAGS = re.compile(
    r"<\s*(title|textarea|style|xmp|iframe|noembed|noframes|script|plaintext)\b", re.IGNORECASE
)

KNOWN_FIELDS = {
    "response": {"cards", "systemActions", "extension"},
    "card": {
        "uuid",
        "summary",
        "detail",
        "indicator",
        "source",
        "suggestions",
        "selectionBehavior",
        "overrideReasons",
        "links",
        "extension",
    },
    "source": {"label", "url", "icon", "topic", "extension"},
    "suggestion": {"label", "uuid", "isRecommended", "actions", "actionSelectionBehavior", "extension"},
    "action": {"type", "description", "resource", "resourceId", "extension"},
    "link": {"label", "url", "type", "appContext", "autolaunchable", "extension"},
    "coding": {"code", "system", "display", "extension"},
    "discovery": {"services", "extension"},
    "service": {"hook", "title", "description", "id", "prefetch", "usageRequirements", "extension"},
}


@dataclass(frozen=True)
class Finding:
    """One broken rule: where (`document` and a JSON path), which rule, how bad, and what is wrong."""

    severity: Severity
    path: str
    rule: str
    message: str
    document: str = "response"

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)


def _path_key(path: str) -> tuple[bool, tuple[int, ...]]:
    """Sort key: cards (or services) first, then by array indices, so `[2]` comes before `[10]` and each
    card's findings stay together; a stable sort keeps the order the checks ran in within an element."""
    first = re.match(r"\$\.([A-Za-z]+)", path)
    return (
        bool(first) and first.group(1) not in ("cards", "services"),
        tuple(int(i) for i in re.findall(r"\[(\d+)\]", path)),
    )


class _Checker:
    def __init__(self, document: str) -> None:
        self.document = document
        self.findings: list[Finding] = []

    def error(self, path: str, rule: str, message: str) -> None:
        self.findings.append(Finding("error", path, rule, message, self.document))

    def warning(self, path: str, rule: str, message: str) -> None:
        self.findings.append(Finding("warning", path, rule, message, self.document))

    def sorted(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: _path_key(f.path))

    # -- generic -------------------------------------------------------------------------------------

    def empties(self, value: Any, path: str, *, keep_empty: frozenset[str] = frozenset()) -> None:
        """No element may be null or empty (req 3), except those in `keep_empty` (`$.cards`).

        Inside FHIR resources, a null inside an array is allowed where FHIR's JSON format uses it: to
        keep primitive values aligned with their `_element` array of extensions.
        """
        self._empties(value, path, keep_empty, in_resource=False, nulls_allowed=False)

    def _empties(
        self, value: Any, path: str, keep: frozenset[str], *, in_resource: bool, nulls_allowed: bool
    ) -> None:
        if value is None:
            if not nulls_allowed:
                self.error(path, "no-null", "null is not allowed; leave the element out (req 3)")
            return
        if value == "" or value == [] or value == {}:
            if path not in keep:
                kind = {str: "string", list: "array", dict: "object"}[type(value)]
                self.error(path, "no-empty", f"empty {kind} is not allowed; leave the element out (req 3)")
            return
        if isinstance(value, dict):
            resource = in_resource or isinstance(value.get("resourceType"), str)
            for key, item in value.items():
                aligned = resource and isinstance(item, list) and (key.startswith("_") or f"_{key}" in value)
                self._empties(item, f"{path}.{key}", keep, in_resource=resource, nulls_allowed=aligned)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if item is None and nulls_allowed:
                    continue
                self._empties(item, f"{path}[{i}]", keep, in_resource=in_resource, nulls_allowed=False)

    def unknown_fields(self, obj: dict[str, Any], path: str, kind: str) -> None:
        for key in obj:
            if key not in KNOWN_FIELDS[kind]:
                self.warning(
                    f"{path}.{key}",
                    "unknown-field",
                    f"{key!r} is not a field of {kind} in CDS Hooks 2.0; custom data belongs in 'extension'",
                )
        if "extension" in obj and obj["extension"] is not None and not isinstance(obj["extension"], dict):
            self.error(f"{path}.extension", "extension", "extension must be a JSON object (req 214)")

    def object(self, value: Any, path: str, what: str) -> dict[str, Any] | None:
        if isinstance(value, dict):
            return value
        if value is not None:  # null is reported by `empties`
            self.error(path, "type", f"{what} must be a JSON object, not {_json_type(value)}")
        return None

    def array(
        self, obj: dict[str, Any], key: str, path: str, *, required: bool = False, rule: str = "type"
    ) -> list[Any]:
        """The array at `obj[key]` (its items may be anything), or [] when absent or of the wrong type."""
        value = obj.get(key)
        if key not in obj:
            if required:
                self.error(f"{path}.{key}", rule, f"{key} is required (an array)")
            return []
        if isinstance(value, list):
            return value
        if value is not None:
            self.error(f"{path}.{key}", "type", f"{key} must be an array, not {_json_type(value)}")
        return []

    def string(
        self,
        obj: dict[str, Any],
        key: str,
        path: str,
        *,
        required: bool = False,
        rule: str = "type",
        req: str = "",
    ) -> str | None:
        where = f"{path}.{key}"
        note = f" ({req})" if req else ""
        if key not in obj:
            if required:
                self.error(where, rule, f"{key} is required{note}")
            return None
        value = obj[key]
        if value is None:
            return None  # reported by `empties`
        if not isinstance(value, str):
            self.error(where, rule, f"{key} must be a string, not {_json_type(value)}{note}")
            return None
        if required and not value.strip() and value:
            self.error(where, rule, f"{key} is blank{note}")
        return value

    def boolean(self, obj: dict[str, Any], key: str, path: str, req: str) -> bool | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.error(
                f"{path}.{key}", "type", f"{key} must be true or false, not {_json_type(value)} ({req})"
            )
            return None
        return value

    def absolute_url(self, obj: dict[str, Any], key: str, path: str, *, required: bool, req: str) -> None:
        value = self.string(obj, key, path, required=required, rule="absolute-url", req=req)
        if not value:
            return
        parts = urlsplit(value)
        if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            self.error(f"{path}.{key}", "absolute-url", f"{key} must be an absolute http(s) URL ({req})")

    def coding(self, value: Any, path: str, *, display_required: bool, rule: str = "coding") -> None:
        coding = self.object(value, path, "a Coding")
        if coding is None:
            return
        self.unknown_fields(coding, path, "coding")
        self.string(coding, "code", path, required=True, rule="coding", req="req 216")
        self.string(coding, "system", path, required=True, rule="coding", req="req 217")
        display = self.string(coding, "display", path)
        if display_required and "display" not in coding:
            self.error(
                f"{path}.display", rule, "every override reason needs a display (cds-resp-4, req 100, 136)"
            )
        elif display is not None and not display.strip() and display:
            self.error(f"{path}.display", rule, "display is blank")

    # -- response ------------------------------------------------------------------------------------

    def response(self, body: Any) -> None:
        root = self.object(body, "$", "the response body")
        if root is None:
            if body is None:
                self.error("$", "type", "the response body must be a JSON object with a cards array")
            return
        self.unknown_fields(root, "$", "response")
        self.empties(root, "$", keep_empty=frozenset({"$.cards"}))
        cards = self.array(root, "cards", "$", required=True, rule="cards")
        card_uuids: dict[str, str] = {}
        suggestion_uuids: dict[str, str] = {}
        for i, card in enumerate(cards):
            self.card(card, f"$.cards[{i}]", card_uuids, suggestion_uuids)
        for i, action in enumerate(self.array(root, "systemActions", "$")):
            self.action(action, f"$.systemActions[{i}]")

    def card(
        self, value: Any, path: str, card_uuids: dict[str, str], suggestion_uuids: dict[str, str]
    ) -> None:
        card = self.object(value, path, "a card")
        if card is None:
            return
        self.unknown_fields(card, path, "card")
        self._uuid(card, path, "card", card_uuids, "feedback cannot name this card (req 79, 163)")
        summary = self.string(card, "summary", path, required=True, rule="summary", req="req 83")
        if summary is not None and len(summary) >= SUMMARY_LIMIT:
            self.error(
                f"{path}.summary",
                "summary",
                f"summary has {len(summary)} characters; it must be shorter than {SUMMARY_LIMIT} (req 83)",
            )
        detail = self.string(card, "detail", path, req="req 85")
        if detail and GFM_FILTERED_TAGS.search(detail):
            self.warning(
                f"{path}.detail",
                "markdown",
                "detail holds raw HTML that GitHub Flavored Markdown filters out (script, iframe, ...)",
            )
        indicator = self.string(card, "indicator", path, required=True, rule="indicator", req="req 87")
        if indicator is not None and indicator and indicator not in INDICATORS:
            self.error(
                f"{path}.indicator",
                "indicator",
                f"indicator {indicator!r} is not one of {', '.join(INDICATORS)} (req 88)",
            )
        if "source" not in card:
            self.error(f"{path}.source", "source", "source is required (req 90)")
        else:
            self.source(card["source"], f"{path}.source")
        suggestions = self.array(card, "suggestions", path)
        for j, suggestion in enumerate(suggestions):
            self.suggestion(suggestion, f"{path}.suggestions[{j}]", suggestion_uuids)
        behavior = self.string(card, "selectionBehavior", path, req="req 96")
        if suggestions and "selectionBehavior" not in card:
            self.error(
                f"{path}.selectionBehavior",
                "cds-resp-6",
                "cards with suggestions need a selectionBehavior (cds-resp-6, req 93, 96)",
            )
        if behavior and behavior not in SELECTION_BEHAVIORS:
            self.error(
                f"{path}.selectionBehavior",
                "selection-behavior",
                f"selectionBehavior {behavior!r} is not one of {', '.join(SELECTION_BEHAVIORS)} (req 95)",
            )
        if behavior == "at-most-one":
            recommended = sum(
                1 for s in suggestions if isinstance(s, dict) and s.get("isRecommended") is True
            )
            if recommended > 1:
                self.error(
                    f"{path}.suggestions",
                    "cds-resp-1",
                    f"{recommended} suggestions are recommended; selectionBehavior at-most-one allows one "
                    "(cds-resp-1, req 122)",
                )
        for j, reason in enumerate(self.array(card, "overrideReasons", path)):
            self.coding(reason, f"{path}.overrideReasons[{j}]", display_required=True, rule="cds-resp-4")
        for j, link in enumerate(self.array(card, "links", path)):
            self.link(link, f"{path}.links[{j}]")

    def _uuid(self, obj: dict[str, Any], path: str, what: str, seen: dict[str, str], why: str) -> None:
        value = self.string(obj, "uuid", path, req="req 80, 119")
        if "uuid" not in obj:
            self.warning(f"{path}.uuid", "uuid", f"{what} has no uuid: {why}")
            return
        if not value:
            return
        if value in seen:
            self.error(
                f"{path}.uuid", "uuid-unique", f"{what} uuid {value!r} is also used at {seen[value]} (req 80)"
            )
        else:
            seen[value] = f"{path}.uuid"

    def source(self, value: Any, path: str) -> None:
        source = self.object(value, path, "source")
        if source is None:
            return
        self.unknown_fields(source, path, "source")
        self.string(source, "label", path, required=True, rule="source", req="req 105")
        self.absolute_url(source, "url", path, required=False, req="req 107")
        self.absolute_url(source, "icon", path, required=False, req="req 111")
        if "topic" in source:
            self.coding(source["topic"], f"{path}.topic", display_required=False)

    def suggestion(self, value: Any, path: str, seen: dict[str, str]) -> None:
        suggestion = self.object(value, path, "a suggestion")
        if suggestion is None:
            return
        self.unknown_fields(suggestion, path, "suggestion")
        self.string(suggestion, "label", path, required=True, rule="suggestion", req="req 117")
        self._uuid(
            suggestion, path, "suggestion", seen, "feedback cannot report it as accepted (req 162, 163)"
        )
        self.boolean(suggestion, "isRecommended", path, "req 121")
        behavior = self.string(suggestion, "actionSelectionBehavior", path)
        if behavior and behavior not in ACTION_SELECTION_BEHAVIORS:
            self.error(
                f"{path}.actionSelectionBehavior",
                "cds-resp-7",
                f"actionSelectionBehavior {behavior!r} is not one of {', '.join(ACTION_SELECTION_BEHAVIORS)} "
                "(cds-resp-7)",
            )
        for k, action in enumerate(self.array(suggestion, "actions", path)):
            self.action(action, f"{path}.actions[{k}]")

    def action(self, value: Any, path: str) -> None:
        action = self.object(value, path, "an action")
        if action is None:
            return
        self.unknown_fields(action, path, "action")
        kind = self.string(action, "type", path, required=True, rule="action-type", req="req 127")
        if kind and kind not in ACTION_TYPES:
            self.error(
                f"{path}.type",
                "action-type",
                f"type {kind!r} is not one of {', '.join(ACTION_TYPES)} (req 127)",
            )
        if "description" not in action:
            self.error(
                f"{path}.description", "cds-resp-5", "every action needs a description (cds-resp-5, req 128)"
            )
        else:
            self.string(action, "description", path, rule="cds-resp-5", req="req 128")
        resource = action.get("resource")
        resource_id = self.string(action, "resourceId", path, req="req 135")
        if resource is not None:
            if isinstance(resource, str):
                self.error(
                    f"{path}.resource",
                    "action-resource",
                    "resource must be a FHIR resource; a FHIR id for delete belongs in resourceId (req 133)",
                )
            elif not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                self.error(
                    f"{path}.resource",
                    "action-resource",
                    "resource must be a FHIR resource with a resourceType (req 130)",
                )
        if kind in ("create", "update") and "resource" not in action:
            self.error(
                f"{path}.resource",
                "action-resource",
                f"a {kind} action needs the resource to {kind} (req 131, 132)",
            )
        if (
            kind == "update"
            and isinstance(resource, dict)
            and resource.get("resourceType")
            and not resource.get("id")
        ):
            self.warning(
                f"{path}.resource.id",
                "action-resource",
                "an update needs the whole resource, id included (req 132)",
            )
        if kind == "delete":
            if not resource_id and "resourceId" not in action:
                self.warning(
                    f"{path}.resourceId",
                    "cds-resp-2",
                    "a delete action should name its target in resourceId (cds-resp-2, req 134)",
                )
            if isinstance(resource, dict):
                self.warning(
                    f"{path}.resource",
                    "cds-resp-2",
                    "a delete action should give resourceId, not a resource (cds-resp-2)",
                )
        if resource_id and not RELATIVE_REFERENCE.match(resource_id):
            self.warning(
                f"{path}.resourceId",
                "action-resource",
                f"resourceId {resource_id!r} is not a relative reference Type/id",
            )

    def link(self, value: Any, path: str) -> None:
        link = self.object(value, path, "a link")
        if link is None:
            return
        self.unknown_fields(link, path, "link")
        self.string(link, "label", path, required=True, rule="link", req="req 138")
        self.absolute_url(link, "url", path, required=True, req="req 139")
        kind = self.string(link, "type", path, required=True, rule="link-type", req="req 141")
        if kind and kind not in LINK_TYPES:
            self.error(
                f"{path}.type", "link-type", f"type {kind!r} is not one of {', '.join(LINK_TYPES)} (req 142)"
            )
        self.string(link, "appContext", path, req="req 144")
        if "appContext" in link and kind != "smart":
            self.error(
                f"{path}.appContext",
                "cds-resp-3",
                "appContext is only allowed on smart links (cds-resp-3, req 147)",
            )
        self.boolean(link, "autolaunchable", path, "link.autolaunchable")

    # -- discovery -----------------------------------------------------------------------------------

    def discovery(self, body: Any) -> None:
        root = self.object(body, "$", "the discovery response")
        if root is None:
            return
        self.unknown_fields(root, "$", "discovery")
        self.empties(root, "$", keep_empty=frozenset({"$.services"}))
        ids: dict[str, str] = {}
        for i, value in enumerate(self.array(root, "services", "$", required=True, rule="services")):
            path = f"$.services[{i}]"
            service = self.object(value, path, "a service")
            if service is None:
                continue
            self.unknown_fields(service, path, "service")
            hook = self.string(service, "hook", path, required=True, rule="service", req="req 7")
            self.string(service, "description", path, required=True, rule="service", req="req 9")
            service_id = self.string(service, "id", path, required=True, rule="service", req="req 10")
            if "title" not in service:
                self.warning(f"{path}.title", "service", "title is recommended (req 8)")
            else:
                self.string(service, "title", path)
            self.string(service, "usageRequirements", path)
            if service_id:
                if service_id in ids:
                    self.warning(
                        f"{path}.id", "service", f"id {service_id!r} is also used at {ids[service_id]}"
                    )
                ids.setdefault(service_id, f"{path}.id")
            prefetch = service.get("prefetch")
            if prefetch is not None and not isinstance(prefetch, dict):
                self.error(f"{path}.prefetch", "type", "prefetch must be an object of templates")
            for key, template in (prefetch or {}).items() if isinstance(prefetch, dict) else ():
                where = f"{path}.prefetch.{key}"
                if not isinstance(template, str):
                    if template is not None:
                        self.error(where, "prefetch-template", "a prefetch template must be a string")
                    continue
                context_model = HOOK_CONTEXTS.get(hook or "")
                if context_model is not None and template:
                    try:
                        check_template(service_id or "?", key, template, context_model)
                    except PrefetchTemplateError as exc:
                        self.error(where, "prefetch-template", str(exc).split(": ", 1)[-1])


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def validate_response(body: Any) -> list[Finding]:
    """Every finding for a decoded CDS service response body (`{"cards": [...], ...}`)."""
    checker = _Checker("response")
    checker.response(body)
    return checker.sorted()


def validate_discovery(body: Any) -> list[Finding]:
    """Every finding for a decoded discovery response (`{"services": [...]}`), prefetch templates included."""
    checker = _Checker("discovery")
    checker.discovery(body)
    return checker.sorted()


def is_json_content_type(content_type: str | None) -> bool:
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def validate_http_response(
    status: int, content_type: str | None, body: bytes, *, document: str = "response"
) -> tuple[Any, list[Finding]]:
    """Decode a service call's HTTP answer and check it; returns (decoded body or None, findings).

    A success is 200 with a JSON object (req 74); anything else is an error finding, so the caller's
    exit status reflects it. The decoded body of an error answer is returned for display.
    """
    checker = _Checker(document)
    decoded: Any = None
    if body:
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError):
            decoded = None
            if status == 200:
                checker.error("$", "json", "the body is not valid JSON")
    if status != 200:
        hint = {
            401: "the service refused the client's JWT (is the key trusted? are iss and aud right?)",
            412: "the service could not get required prefetch data (sent, or from the FHIR server)",
        }.get(status, "")
        checker.error(
            "$", "http-status", f"HTTP {status}; a successful answer is 200 (req 74). {hint}".strip()
        )
        return decoded, checker.findings
    if not is_json_content_type(content_type):
        checker.error(
            "$", "content-type", f"Content-Type is {content_type or 'missing'!r}; expected application/json"
        )
    if not body:
        checker.error("$", "json", "the body is empty; expected a JSON object with a cards array (req 74)")
        return None, checker.findings
    if decoded is None and checker.findings:
        return None, checker.findings
    if document == "response":
        checker.response(decoded)
    elif document == "discovery":
        checker.discovery(decoded)
    return decoded, checker.sorted()
