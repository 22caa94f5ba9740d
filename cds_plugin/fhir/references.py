"""FHIR references of every style, and the index that resolves them within one input.

Styles: relative (`Patient/123`), versioned (`Patient/123/_history/2`), absolute with any base
(`https://ehr.example/fhir/Patient/123`, the request's `fhirServer` or another server), `urn:uuid:` /
`urn:oid:` (matched against entry fullUrls, else against resource ids: `urn:uuid:123` names the resource
whose id is `123`, as transaction Bundles and some servers write it), contained (`#med1`, looked up in
the referring resource), and conditional (`Patient?identifier=...`), which need a server to resolve:
they stay unresolved and the record notes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_ID = r"[A-Za-z0-9\-.]{1,64}"
ID_RE = re.compile(_ID)
_LITERAL = re.compile(
    rf"(?:(?P<base>[A-Za-z][A-Za-z0-9+.\-]*://.+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>{_ID})"
    rf"(?:/_history/(?P<version>{_ID}))?"
)
_CONDITIONAL = re.compile(r"[A-Z][A-Za-z]+\?.*", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ParsedReference:
    """`kind` is one of: literal, urn, contained, conditional, other. A urn's `id` is what follows
    `urn:uuid:` / `urn:oid:` when it is a valid FHIR id (the id of the resource it may name)."""

    kind: str
    type: str | None = None
    id: str | None = None
    version: str | None = None
    base: str | None = None

    @property
    def relative(self) -> str | None:
        """`Type/id` for a literal reference."""
        return f"{self.type}/{self.id}" if self.type and self.id else None


def parse_reference(ref: str) -> ParsedReference:
    """Classify a Reference.reference string."""
    if ref.startswith("#"):
        return ParsedReference("contained", id=ref[1:])
    if ref.startswith(("urn:uuid:", "urn:oid:")):
        tail = ref[9:] if ref.startswith("urn:uuid:") else ref[8:]
        return ParsedReference("urn", id=tail if ID_RE.fullmatch(tail) else None)
    if _CONDITIONAL.fullmatch(ref):
        return ParsedReference("conditional", type=ref.split("?", 1)[0])
    match = _LITERAL.fullmatch(ref)
    if match:
        return ParsedReference(
            "literal", type=match["type"], id=match["id"], version=match["version"], base=match["base"]
        )
    return ParsedReference("other")


def resource_key(resource: dict) -> str | None:
    """`Type/id` of a resource with a valid id."""
    rid = resource.get("id")
    if type(rid) is str and ID_RE.fullmatch(rid):
        return f"{resource['resourceType']}/{rid}"
    return None


class ResourceIndex:
    """Resources of one input, findable by fullUrl, by `Type/id` and by id alone (for `urn:uuid:<id>`);
    the first occurrence wins.

    Each resource is stored with its provenance name: `Type/id`, else its fullUrl.
    """

    __slots__ = ("_by_id", "_by_key", "_by_url", "fallback")

    def __init__(self, fallback: ResourceIndex | None = None) -> None:
        self._by_url: dict[str, tuple[dict, str]] = {}
        self._by_key: dict[str, tuple[dict, str]] = {}
        self._by_id: dict[str, dict[str, tuple[dict, str]]] = {}  # id -> type -> item
        self.fallback = fallback  # e.g. the Medications shared by all patients of a bulk export

    def add(self, resource: dict, full_url: str | None, key: str | None) -> str | None:
        """Index a resource; returns its provenance name (None when it has neither id nor fullUrl)."""
        rtype = resource.get("resourceType")
        if key is None and full_url:
            # An absolute fullUrl names the resource even without an id in the body.
            parsed = _LITERAL.fullmatch(full_url)
            if parsed and parsed["base"] and parsed["type"] == rtype:
                key = f"{parsed['type']}/{parsed['id']}"
        name = key or full_url
        if name is None:
            return None
        item = (resource, name)
        if full_url:
            self._by_url.setdefault(full_url, item)
        rid = key.split("/", 1)[1] if key else None
        if rid is None and full_url:
            rid = parse_reference(full_url).id  # `urn:uuid:<id>` stands for the id the server assigns
        if key:
            self._by_key.setdefault(key, item)
        if rid is not None and type(rtype) is str:
            self._by_id.setdefault(rid, {}).setdefault(rtype, item)
        return name

    def resolve(
        self, ref: str, container: dict | None = None, want: str | None = None
    ) -> tuple[str, dict | None, str | None]:
        """(kind, resource or None, provenance name or None); `#id` looks inside `container`.

        `want` is the resource type the element may name (e.g. Patient for a subject): it picks among
        resources of different types that share the id a `urn:uuid:<id>` names.
        """
        parsed = parse_reference(ref)
        kind = parsed.kind
        if kind == "contained":
            found = find_contained(container, parsed.id) if container is not None else None
            return kind, found, (ref if found is not None else None)
        item = None
        if kind == "urn":
            item = self._by_url.get(ref)
            if item is None and parsed.id is not None:
                item = self._one_by_id(parsed.id, want)
        elif kind == "literal":
            item = self._by_url.get(ref)
            if item is None and parsed.version is not None:
                item = self._by_url.get(ref.split("/_history/", 1)[0])
            if item is None:
                item = self._by_key.get(f"{parsed.type}/{parsed.id}")
            if item is None and parsed.id is not None:
                # `Type/id` of a resource the input names only by the fullUrl `urn:uuid:<id>`
                item = self._by_id.get(parsed.id, {}).get(parsed.type or "")
        if item is None:
            if self.fallback is not None:
                return self.fallback.resolve(ref, container, want)
            return kind, None, None
        return kind, item[0], item[1]

    def _one_by_id(self, rid: str, want: str | None) -> tuple[dict, str] | None:
        """The resource with this id: of type `want` when given, else the only one (ambiguous: None)."""
        by_type = self._by_id.get(rid)
        if not by_type:
            return None
        if want is not None:
            return by_type.get(want)
        return next(iter(by_type.values())) if len(by_type) == 1 else None


def find_contained(container: dict, local_id: str | None) -> dict | None:
    """The contained resource `#local_id` of `container` (None if absent or malformed)."""
    contained = container.get("contained")
    if type(contained) is not list or not local_id:
        return None
    for item in contained:
        if type(item) is dict and item.get("id") == local_id:
            return item
    return None


def contained_index(container: dict, local_id: str | None) -> int | None:
    contained = container.get("contained")
    if type(contained) is not list:
        return None
    for i, item in enumerate(contained):
        if type(item) is dict and item.get("id") == local_id:
            return i
    return None


def is_resource(value: Any) -> bool:
    return type(value) is dict and type(value.get("resourceType")) is str
