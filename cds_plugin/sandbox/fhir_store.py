"""In-memory FHIR resources for the loopback FHIR server, loaded from bundles on disk or in memory.

Test data usually comes as Synthea-style transaction bundles whose references are `urn:uuid:...`;
a REST server must answer with `Type/id` references, so loading rewrites them once, up front. The
store is read-only after loading, which lets the threaded server share it without locks (except the
lazily built reference indexes).
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import logging
import re
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from cds_plugin.errors import FhirInputError

log = logging.getLogger(__name__)

#: http://hl7.org/fhir/R4/datatypes.html#id
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
TYPE_RE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
#: `Type/id`, possibly absolute (`http://x/fhir/Type/id`) or versioned (`Type/id/_history/2`).
_REFERENCE_RE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")

DataSource = str | Path | list[dict[str, Any]]


def parse_reference(reference: str) -> tuple[str, str] | None:
    """`(type, id)` of a literal reference (relative, absolute or versioned); None for anything else."""
    match = _REFERENCE_RE.search(reference)
    return (match.group(1), match.group(2)) if match else None


def values_at(resource: Any, path: str) -> list[Any]:
    """Every value at a dotted path (`effectivePeriod.start`), flattening lists on the way."""
    current = [resource]
    for step in path.split("."):
        found: list[Any] = []
        for item in current:
            value = item.get(step) if isinstance(item, dict) else None
            if isinstance(value, list):
                found.extend(value)
            elif value is not None:
                found.append(value)
        current = found
    return current


class FhirStore:
    """Resources keyed by type and id, with `urn:uuid:` references already made relative.

    Build it with `FhirStore.load(...)`. Duplicate type/id pairs keep the last one read (files are
    read in sorted path order, so the outcome is deterministic).
    """

    def __init__(self, resources: Iterable[dict[str, Any]] = ()) -> None:
        self._by_type: dict[str, dict[str, dict[str, Any]]] = {}
        self.duplicates = 0
        for resource in resources:
            self._add(resource)
        self._indexes: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = {}
        self._index_lock = threading.Lock()

    @classmethod
    def load(cls, data: DataSource) -> FhirStore:
        """Read a folder (or one file) of bundles, or a list of bundles/resources, and resolve references.

        Raises FhirInputError naming the file and entry that cannot be used, so a broken fixture is
        found at startup rather than as a confusing empty search later.
        """
        if isinstance(data, str | Path):
            documents = list(_read_documents(Path(data)))
        elif isinstance(data, list):
            # deep copy: rewriting references must not change the caller's objects
            documents = [(f"data[{i}]", copy.deepcopy(item)) for i, item in enumerate(data)]
        else:
            raise TypeError(f"data must be a path or a list of dicts, not {type(data).__name__}")
        entries: list[tuple[str | None, dict[str, Any]]] = []
        for origin, document in documents:
            entries.extend(_flatten(origin, document))
        resources = _resolve_urls(entries)
        store = cls(resources)
        if store.duplicates:
            log.warning(
                "FHIR store: %d resources replaced later ones with the same type/id", store.duplicates
            )
        log.info("FHIR store: loaded %d resources of %d types", len(store), len(store.types()))
        return store

    def _add(self, resource: dict[str, Any]) -> None:
        by_id = self._by_type.setdefault(resource["resourceType"], {})
        if resource["id"] in by_id:
            self.duplicates += 1
        by_id[resource["id"]] = resource

    def __len__(self) -> int:
        return sum(len(by_id) for by_id in self._by_type.values())

    def types(self) -> list[str]:
        """Resource types present, sorted."""
        return sorted(self._by_type)

    def counts(self) -> dict[str, int]:
        """How many resources of each type (safe to print: no contents)."""
        return {rtype: len(self._by_type[rtype]) for rtype in self.types()}

    def get(self, rtype: str, rid: str) -> dict[str, Any] | None:
        return self._by_type.get(rtype, {}).get(rid)

    def all(self, rtype: str) -> list[dict[str, Any]]:
        """Every resource of a type, sorted by id."""
        by_id = self._by_type.get(rtype, {})
        return [by_id[rid] for rid in sorted(by_id)]

    def referencing(self, rtype: str, path: str, target: tuple[str, str]) -> list[dict[str, Any]]:
        """Resources of `rtype` whose Reference at `path` points to `target` (type, id); indexed on first use.

        Patient-scoped searches are the common case (CDS prefetch), and scanning every Observation of
        a large Synthea folder for each of them would be slow.
        """
        key = (rtype, path)
        index = self._indexes.get(key)
        if index is None:
            with self._index_lock:
                index = self._indexes.get(key)
                if index is None:
                    index = {}
                    for resource in self.all(rtype):
                        for ref in values_at(resource, path):
                            parsed = (
                                parse_reference(ref.get("reference", "")) if isinstance(ref, dict) else None
                            )
                            if parsed is None:
                                continue
                            bucket = index.setdefault(parsed, [])
                            if not bucket or bucket[-1] is not resource:  # two refs to the same target
                                bucket.append(resource)
                    self._indexes[key] = index
        return index.get(target, [])


def _read_documents(root: Path) -> Iterator[tuple[str, Any]]:
    if root.is_file():
        paths = [root]
    elif root.is_dir():
        paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz")))
    else:
        raise FhirInputError(f"{root}: no such file or folder", expression="data")
    for path in paths:
        try:
            if path.name.endswith(".gz"):
                with gzip.open(path, "rt", encoding="utf-8") as fh:
                    document = json.load(fh)
            else:
                document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, EOFError) as exc:
            # the exception text names a position, never the content
            raise FhirInputError(f"{path}: not readable as JSON: {exc}", expression="data") from exc
        yield str(path), document


def _flatten(origin: str, document: Any) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """(fullUrl, resource) for a bundle's entries, or the document itself when it is a plain resource."""
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise FhirInputError(f"{origin}: not a FHIR resource (no resourceType)", expression="resourceType")
    if document["resourceType"] != "Bundle":
        yield None, _checked(origin, document)
        return
    entries = document.get("entry") or []
    if not isinstance(entries, list):
        raise FhirInputError(f"{origin}: Bundle.entry is not a list", expression="Bundle.entry")
    for i, entry in enumerate(entries):
        where = f"{origin}: Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            raise FhirInputError(f"{where}: not an object", expression=f"Bundle.entry[{i}]")
        resource = entry.get("resource")
        if resource is None:  # e.g. a DELETE in a transaction
            continue
        if (entry.get("search") or {}).get("mode") == "outcome":
            continue  # a searchset's OperationOutcome describes the search, it is not data
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise FhirInputError(f"{where}: resource has no resourceType", expression=f"Bundle.entry[{i}]")
        full_url = entry.get("fullUrl")
        yield (full_url if isinstance(full_url, str) else None), _checked(where, resource)


def _checked(where: str, resource: dict[str, Any]) -> dict[str, Any]:
    if not TYPE_RE.match(resource["resourceType"]):
        raise FhirInputError(f"{where}: resourceType is not a FHIR type name", expression="resourceType")
    rid = resource.get("id")
    if rid is not None and not (isinstance(rid, str) and ID_RE.match(rid)):
        raise FhirInputError(
            f"{where}: id is not a valid FHIR id", expression=f"{resource['resourceType']}.id"
        )
    return resource


def _resolve_urls(entries: list[tuple[str | None, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Give every resource an id and rewrite references to any entry's fullUrl into `Type/id`.

    The map spans all bundles, because generators put shared Practitioners and Organizations in a
    bundle of their own and reference them from each patient's bundle.
    """
    url_map: dict[str, str] = {}
    for full_url, resource in entries:
        if resource.get("id") is None:
            candidate = full_url.rsplit(":", 1)[-1] if full_url and full_url.startswith("urn:uuid:") else None
            if candidate is None or not ID_RE.match(candidate):
                # no usable id anywhere: derive one from the content, so reloading gives the same id
                canonical = json.dumps(resource, sort_keys=True, separators=(",", ":")).encode()
                candidate = hashlib.sha256(canonical).hexdigest()[:32]
            resource["id"] = candidate
        if full_url:
            url_map[full_url] = f"{resource['resourceType']}/{resource['id']}"
    if url_map:
        for _, resource in entries:
            _rewrite_references(resource, url_map)
    return [resource for _, resource in entries]


def _rewrite_references(node: Any, url_map: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in url_map:
            node["reference"] = url_map[ref]
        for value in node.values():
            if isinstance(value, dict | list):
                _rewrite_references(value, url_map)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, dict | list):
                _rewrite_references(item, url_map)
