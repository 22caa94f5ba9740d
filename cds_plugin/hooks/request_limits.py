"""Limits on the JSON a hook call brings in: nesting depth, string length and FHIR resource count.

The body's size is capped before it is read (Flask's MAX_CONTENT_LENGTH, `max_body_bytes`); what a body
of that size may still hold (a string of megabytes, objects nested a thousand deep, a hundred thousand
tiny resources) is checked here, once, right after parsing and before any model sees the data. The walk
is iterative, so a hostile body cannot exhaust the interpreter stack, and it visits each value once.

The same limits hold for what is fetched from the client's FHIR server (`fhir_client.FhirFetcher`): the
resource count is shared by the request and every answer of one call.

A breach is an `InputLimitError` (HTTP 413, OperationOutcome `too-costly`) naming the limit; the path of
the offending element goes to `expression` only (never into the message, which is logged).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from cds_plugin.errors import InputLimitError

MiB = 1024 * 1024

#: Defaults: a Synthea bundle of a long, multi-morbid life is about 1,300 entries and 12 levels deep
#: once wrapped in a hook request; FHIR text fields are short, attachments are not read by this service.
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_STRING_BYTES = 1 * MiB
DEFAULT_MAX_ENTRIES = 20_000

#: Path segments kept in an `expression` (the rest is elided), and characters kept of each key.
_PATH_SEGMENTS = 12
_KEY_CHARS = 64


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """`max_depth`: nesting of JSON objects and arrays (the body itself is level 1); `max_string_bytes`:
    UTF-8 bytes of any one string, object keys included; `max_entries`: FHIR resources (JSON objects
    with a string `resourceType`, Bundles and their entries alike) in one call."""

    max_depth: int = DEFAULT_MAX_DEPTH
    max_string_bytes: int = DEFAULT_MAX_STRING_BYTES
    max_entries: int = DEFAULT_MAX_ENTRIES

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_string_bytes", "max_entries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer")


class ResourceCounter:
    """Counts FHIR resources across the parts of one call (the request, then each FHIR-server answer).

    Thread-safe: the FHIR-server answers of one call are read in parallel.
    """

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.count = 0
        self._lock = threading.Lock()

    def add(self, n: int, label: str, expression: str | None) -> None:
        with self._lock:
            self.count += n
            over = self.count > self.limits.max_entries
        if over:
            raise InputLimitError(
                f"{label}: more than {self.limits.max_entries} FHIR resources in one call",
                expression=expression,
            )


def _too_long(text: str, limit: int) -> bool:
    # UTF-8 takes 1 to 4 bytes a character: only encode when the character count cannot decide.
    n = len(text)
    if n > limit:
        return True
    if n * 4 <= limit:
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def _expression(path: tuple[Any, Any] | None, base: str) -> str:
    """`prefetch.conditions.entry[3].resource`: a FHIRPath-like name, shortened when very deep."""
    steps: list[Any] = []
    while path is not None:
        path, step = path
        steps.append(step)
    steps.reverse()
    out = base
    for i, step in enumerate(steps):
        if i == _PATH_SEGMENTS:
            return out + ".…"
        if isinstance(step, int):
            out += f"[{step}]"
        else:
            key = step if len(step) <= _KEY_CHARS else step[:_KEY_CHARS] + "…"
            out = f"{out}.{key}" if out else key
    return out or "$"


def check_json(
    value: Any,
    limits: RequestLimits,
    *,
    label: str = "request body",
    base: str = "",
    counter: ResourceCounter | None = None,
) -> int:
    """Raise InputLimitError when `value` (parsed JSON) breaks a limit; return its FHIR resource count.

    `base` prefixes the expressions (e.g. `prefetch.patient` for a fetched answer); `counter`, when given,
    also receives the resource count so several parts of one call share the `max_entries` budget.
    """
    max_depth = limits.max_depth
    max_string = limits.max_string_bytes
    max_entries = limits.max_entries if counter is None else None
    resources = 0

    def too_long(where: tuple[Any, Any] | None, what: str = "a string") -> InputLimitError:
        return InputLimitError(
            f"{label}: {what} is longer than {max_string} bytes", expression=_expression(where, base)
        )

    if type(value) is str and _too_long(value, max_string):
        raise too_long(None)
    # (container, depth, path) where a path is a linked list (parent path, key or index), so each push
    # costs the same however deep the node lies.
    stack: list[tuple[Any, int, tuple[Any, Any] | None]] = []
    if type(value) is dict or type(value) is list:
        stack.append((value, 1, None))
    pop = stack.pop
    push = stack.append
    while stack:
        node, depth, path = pop()
        if depth > max_depth:
            raise InputLimitError(
                f"{label}: JSON nested deeper than {max_depth} levels", expression=_expression(path, base)
            )
        if type(node) is dict:
            if type(node.get("resourceType")) is str:
                resources += 1
                if max_entries is not None and resources > max_entries:
                    raise InputLimitError(
                        f"{label}: more than {max_entries} FHIR resources in one call",
                        expression=_expression(path, base),
                    )
            for key, child in node.items():
                if _too_long(key, max_string):
                    raise too_long(path, "an object key")
                kind = type(child)
                if kind is str:
                    if _too_long(child, max_string):
                        raise too_long((path, key))
                elif kind is dict or kind is list:
                    push((child, depth + 1, (path, key)))
        else:
            for i, child in enumerate(node):
                kind = type(child)
                if kind is str:
                    if _too_long(child, max_string):
                        raise too_long((path, i))
                elif kind is dict or kind is list:
                    push((child, depth + 1, (path, i)))
    if counter is not None:
        counter.add(resources, label, base or None)
    return resources
