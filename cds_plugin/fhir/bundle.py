"""Bundles of every type, flattened to the resources they carry.

transaction, batch, collection, searchset, history, document, message and their -response forms all
carry resources in `entry[].resource`; a batch-response may carry whole Bundles (e.g. one searchset per
request), which are flattened recursively within the depth limit. A searchset with a `next` link is
incomplete: the record notes it (following links is the caller's job, see `next_page_url`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cds_plugin.errors import FhirInputError, InputLimitError
from cds_plugin.fhir.limits import Limits
from cds_plugin.fhir.unread import NOT_CLINICAL, UNPARSEABLE


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource found in the input, with its fullUrl and JSON location (for messages)."""

    resource: dict
    full_url: str | None
    where: str


class EntryCounter:
    """Counts resources across one input against `max_entries`."""

    __slots__ = ("count", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.count = 0

    def add(self, n: int, where: str) -> None:
        self.count += n
        if self.count > self.limits.max_entries:
            raise InputLimitError(f"{where}: more than {self.limits.max_entries} entries", expression=where)


def next_page_url(bundle: Mapping[str, Any]) -> str | None:
    """The `next` link of a (searchset) Bundle, if any."""
    links = bundle.get("link")
    if type(links) is not list:
        return None
    for link in links:
        if type(link) is dict and link.get("relation") == "next" and type(link.get("url")) is str:
            return link["url"]
    return None


def iter_bundle(
    bundle: dict,
    where: str,
    *,
    limits: Limits,
    counter: EntryCounter,
    notes: list[str],
    depth: int = 1,
    strict: bool = False,
    unread: Counter[str] | None = None,
) -> Iterator[Entry]:
    """Yield the resources of a Bundle (and of Bundles nested in it); entries that are not readable
    resources, and search outcomes, are counted in `unread` by reason (unread.py)."""
    unread = Counter() if unread is None else unread
    if depth > limits.max_depth:
        raise InputLimitError(f"{where}: Bundles nested deeper than {limits.max_depth}", expression=where)
    btype = bundle.get("type")
    if btype is not None and type(btype) is not str:
        raise FhirInputError("Bundle: type: not a code", expression=f"{where}.type")
    entries = bundle.get("entry")
    if entries is None:
        entries = []
    elif type(entries) is not list:
        raise FhirInputError("Bundle: entry: not an array", expression=f"{where}.entry")
    counter.add(len(entries), where)
    if btype == "searchset" and next_page_url(bundle) is not None:
        notes.append(f"{where}: searchset has a next page that was not included; results may be incomplete")
    for i, entry in enumerate(entries):
        at = f"{where}.entry[{i}]"
        if type(entry) is not dict:
            _problem(f"Bundle: entry[{i}]: not an object", at, notes, strict)
            unread[UNPARSEABLE] += 1
            continue
        resource = entry.get("resource")
        if resource is None:
            continue  # e.g. a DELETE in a history Bundle, or a response without a body
        full_url = entry.get("fullUrl")
        if full_url is not None and (type(full_url) is not str or not full_url):
            _problem(f"Bundle: entry[{i}].fullUrl: not a uri", at + ".fullUrl", notes, strict)
            full_url = None
        if type(resource) is not dict:
            _problem(f"Bundle: entry[{i}].resource: not an object", at + ".resource", notes, strict)
            unread[UNPARSEABLE] += 1
            continue
        rtype = resource.get("resourceType")
        if type(rtype) is not str or not rtype:
            _problem(
                f"Bundle: entry[{i}].resource.resourceType: missing or not a string",
                at + ".resource.resourceType",
                notes,
                strict,
            )
            unread[UNPARSEABLE] += 1
            continue
        search = entry.get("search")
        if type(search) is dict and search.get("mode") == "outcome":
            unread[NOT_CLINICAL] += 1  # an OperationOutcome about the search
            continue
        if rtype == "Bundle":
            yield from iter_bundle(
                resource,
                at + ".resource",
                limits=limits,
                counter=counter,
                notes=notes,
                depth=depth + 1,
                strict=strict,
                unread=unread,
            )
            continue
        yield Entry(resource, full_url, at + ".resource")


def _problem(message: str, expression: str, notes: list[str], strict: bool) -> None:
    if strict:
        raise FhirInputError(message, expression=expression)
    notes.append(message + "; skipped")
