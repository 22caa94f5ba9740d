"""FHIR R4 search over a FhirStore: the parameters a CDS prefetch or fallback query uses, no more.

Semantics follow http://hl7.org/fhir/R4/search.html where they matter to CDS clients: comma is OR,
a repeated parameter is AND, tokens are `[system|]code`, references accept `id` and `Type/id`, and
dates compare as ranges implied by their precision. Parameters we do not support are ignored and
reported (the caller turns them into an OperationOutcome), as a lenient FHIR server does. Results are
always in a total order (sort keys, then id), so paging through them never repeats or loses one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

from cds_plugin.errors import CdsPluginError, NotFoundError
from cds_plugin.sandbox.fhir_store import TYPE_RE, FhirStore, parse_reference, values_at

#: A server may return fewer than `_count` asks for; this keeps one response bounded.
MAX_COUNT = 1000

Resource = dict[str, Any]
DateRange = tuple[datetime, datetime]  # half-open [start, end), UTC


@dataclass(frozen=True)
class SearchParam:
    """One supported search parameter: its FHIR type and where in the resource its values lie.

    For `date` parameters the first path with a readable value is the resource's date (its "main
    date"), which is also what `_sort` orders by. `target` limits a reference to one type.
    """

    name: str
    kind: Literal["token", "reference", "date"]
    paths: tuple[str, ...]
    target: str | None = None


def _token(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "token", paths)


def _date(name: str, *paths: str) -> SearchParam:
    return SearchParam(name, "date", paths)


def _patient(path: str = "subject") -> SearchParam:
    return SearchParam("patient", "reference", (path,), target="Patient")


_SUBJECT = SearchParam("subject", "reference", ("subject",))
_ENCOUNTER = SearchParam("encounter", "reference", ("encounter",), target="Encounter")
_CODE = _token("code", "code")
_CATEGORY = _token("category", "category")
_STATUS = _token("status", "status")

#: Parameters per resource type, besides `_id` which every type has.
SEARCH_PARAMS: dict[str, tuple[SearchParam, ...]] = {
    "Patient": (
        _token("identifier", "identifier"),
        _token("gender", "gender"),
        _date("birthdate", "birthDate"),
    ),
    "Observation": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _CODE,
        _CATEGORY,
        _STATUS,
        _date("date", "effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    ),
    "Condition": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _CODE,
        _CATEGORY,
        _token("clinical-status", "clinicalStatus"),
        _token("verification-status", "verificationStatus"),
        _date("date", "onsetDateTime", "onsetPeriod.start", "recordedDate"),
    ),
    "MedicationRequest": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _token("code", "medicationCodeableConcept"),
        _CATEGORY,
        _STATUS,
        _token("intent", "intent"),
        _date("date", "authoredOn"),
    ),
    "MedicationStatement": (
        _patient(),
        _SUBJECT,
        _token("code", "medicationCodeableConcept"),
        _CATEGORY,
        _STATUS,
        _date("date", "effectiveDateTime", "effectivePeriod.start", "dateAsserted"),
    ),
    "Encounter": (
        _patient(),
        _SUBJECT,
        _STATUS,
        _token("class", "class"),
        _token("type", "type"),
        _date("date", "period.start"),
    ),
    "Procedure": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _CODE,
        _CATEGORY,
        _STATUS,
        _date("date", "performedDateTime", "performedPeriod.start"),
    ),
    "Immunization": (
        _patient("patient"),
        _STATUS,
        _token("vaccine-code", "vaccineCode"),
        _date("date", "occurrenceDateTime"),
    ),
    "AllergyIntolerance": (
        _patient("patient"),
        _CODE,
        _CATEGORY,
        _token("clinical-status", "clinicalStatus"),
        _token("verification-status", "verificationStatus"),
        _date("date", "recordedDate"),
    ),
    "DiagnosticReport": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _CODE,
        _CATEGORY,
        _STATUS,
        _date("date", "effectiveDateTime", "effectivePeriod.start", "issued"),
    ),
    "ServiceRequest": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _CODE,
        _CATEGORY,
        _STATUS,
        _token("intent", "intent"),
        _date("date", "authoredOn"),
    ),
    "CarePlan": (
        _patient(),
        _SUBJECT,
        _ENCOUNTER,
        _CATEGORY,
        _STATUS,
        _token("intent", "intent"),
        _date("date", "period.start"),
    ),
    "Medication": (_CODE, _STATUS),
    "Practitioner": (_token("identifier", "identifier"),),
    "Organization": (_token("identifier", "identifier"),),
}

#: Result parameters we honour (handled in `search`, not as filters).
RESULT_PARAMS = ("_count", "_offset", "_sort", "_summary")
#: Accepted and ignored without a warning: they change nothing in a JSON-only, always-total server.
_NO_OP_PARAMS = frozenset({"_format", "_pretty", "_total"})


def supported_types(store: FhirStore) -> list[str]:
    """Types with search support: the known ones and any type found in the data (`_id` only)."""
    return sorted(set(SEARCH_PARAMS) | set(store.types()))


def params_for(rtype: str) -> dict[str, SearchParam]:
    """The parameters one type supports, `_id` included."""
    params = {p.name: p for p in SEARCH_PARAMS.get(rtype, ())}
    params["_id"] = _token("_id", "id")
    return params


@dataclass
class SearchPage:
    """One page of a search: the resources to return plus what the Bundle needs for links and total.

    `applied` lists the parameters that took effect (in request order), so `self`/`next` links
    repeat them; ignored ones are in `warnings` instead.
    """

    resources: list[Resource]
    total: int
    offset: int
    count: int
    applied: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def search(
    store: FhirStore, rtype: str, params: list[tuple[str, str]], *, page_size_default: int = 50
) -> SearchPage:
    """Run a type-level search. Raises NotFoundError for unsupported types, CdsPluginError for bad values."""
    if rtype not in supported_types(store):
        raise NotFoundError(
            f"resource type {rtype!r} is not supported", expression=rtype, code="not-supported"
        )
    specs = params_for(rtype)
    filters: list[Callable[[Resource], bool]] = []
    applied: list[tuple[str, str]] = []
    warnings: list[str] = []
    count = page_size_default
    offset = 0
    sort_keys: list[tuple[str, bool]] | None = None  # (name, descending)
    patient_ids: list[str] | None = None  # from the first `patient` parameter, to use the index
    for name, value in params:
        if value == "" or name in _NO_OP_PARAMS:
            continue  # FHIR: a parameter with an empty value is ignored
        if name == "_count":
            count = min(_non_negative_int(name, value), MAX_COUNT)
        elif name == "_offset":
            offset = _non_negative_int(name, value)
        elif name == "_summary":
            if value == "count":
                count = 0
                applied.append((name, value))
            else:
                warnings.append(f"_summary={value} is not supported and was ignored")
        elif name == "_sort":
            sort_keys = _parse_sort(value, specs, warnings)
            applied.append((name, value))
        else:
            base, _, modifier = name.partition(":")
            spec = specs.get(base)
            if spec is None:
                warnings.append(f"search parameter {name!r} is not supported for {rtype} and was ignored")
                continue
            if modifier and not (spec.kind == "reference" and TYPE_RE.match(modifier)):
                warnings.append(
                    f"modifier :{modifier} on {base!r} is not supported; the parameter was ignored"
                )
                continue
            matcher = _make_filter(spec, value, modifier or None)
            filters.append(matcher)
            applied.append((name, value))
            if base == "patient" and patient_ids is None and not modifier:
                patient_ids = [ref[1] for ref in _reference_values(spec, value, None) if ref[0] == "Patient"]

    if patient_ids is not None:
        candidates: list[Resource] = []
        path = specs["patient"].paths[0]
        for pid in dict.fromkeys(patient_ids):
            candidates.extend(store.referencing(rtype, path, ("Patient", pid)))
        candidates = list({id(r): r for r in candidates}.values())
    else:
        candidates = store.all(rtype)
    matches = [r for r in candidates if all(f(r) for f in filters)]
    if sort_keys is None:
        sort_keys = [("date", False)] if "date" in specs else []
    _sort(matches, sort_keys, specs)
    return SearchPage(
        resources=matches[offset : offset + count],
        total=len(matches),
        offset=offset,
        count=count,
        applied=applied,
        warnings=warnings,
    )


# --- parameters ---------------------------------------------------------------------------------


def _bad_value(name: str, message: str) -> CdsPluginError:
    return CdsPluginError(f"search parameter {name}: {message}", expression=name, code="value")


def _non_negative_int(name: str, value: str) -> int:
    if not value.isdigit():
        raise _bad_value(name, "expected a non-negative integer")
    return int(value)


def _parse_sort(value: str, specs: dict[str, SearchParam], warnings: list[str]) -> list[tuple[str, bool]]:
    keys: list[tuple[str, bool]] = []
    for item in value.split(","):
        descending = item.startswith("-")
        key = item[1:] if descending else item
        if key == "_id" or (key in specs and specs[key].kind == "date"):
            keys.append((key, descending))
        elif key:
            warnings.append(f"sorting by {key!r} is not supported and was ignored")
    return keys


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split on `sep` unless backslash-escaped (FHIR escapes `\\,` `\\|` `\\$` `\\\\`), keeping escapes."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            current.append(value[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def _make_filter(spec: SearchParam, value: str, modifier: str | None) -> Callable[[Resource], bool]:
    if spec.kind == "token":
        tokens = [_parse_token(part) for part in split_unescaped(value, ",")]
        return lambda r: any(_token_matches(v, tokens) for path in spec.paths for v in values_at(r, path))
    if spec.kind == "reference":
        wanted = set(_reference_values(spec, value, modifier))
        bare = {rid for rtype, rid in wanted if rtype is None}
        return lambda r: _reference_matches(r, spec.paths, wanted, bare)
    ranges = [_parse_date_criterion(spec.name, part) for part in value.split(",")]
    return lambda r: (rng := main_date(r, spec)) is not None and any(_compare(op, rng, q) for op, q in ranges)


# --- tokens -------------------------------------------------------------------------------------


def _parse_token(part: str) -> tuple[str | None, str | None]:
    """(system, code): `s|c` both, `c` any system, `|c` no system, `s|` any code of the system."""
    pieces = split_unescaped(part, "|")
    if len(pieces) == 1:
        return None, _unescape(pieces[0])
    system, code = _unescape(pieces[0]), _unescape("|".join(pieces[1:]))
    return system, (code or None)


def _token_matches(value: Any, tokens: list[tuple[str | None, str | None]]) -> bool:
    if isinstance(value, str | bool):  # a `code` (status, gender) or the id: its system is implied
        text = str(value).lower() if isinstance(value, bool) else value
        return any(code is not None and code == text for _, code in tokens)
    if not isinstance(value, dict):
        return False
    if "coding" in value:  # CodeableConcept
        return any(_token_matches(c, tokens) for c in value.get("coding") or [] if isinstance(c, dict))
    code = value.get("code", value.get("value"))  # Coding, or Identifier (system|value)
    system = value.get("system")
    for want_system, want_code in tokens:
        if want_code is not None and want_code != code:
            continue
        if want_system is None or (want_system == "" and not system) or want_system == system:
            return True
    return False


# --- references ---------------------------------------------------------------------------------


def _reference_values(spec: SearchParam, value: str, modifier: str | None) -> list[tuple[str | None, str]]:
    """(type or None, id) for each comma-separated value: `123`, `Patient/123`, or an absolute URL."""
    out: list[tuple[str | None, str]] = []
    for part in value.split(","):
        parsed = parse_reference(part) if "/" in part else None
        if parsed is None:
            if "/" in part or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", part):
                raise _bad_value(spec.name, "expected an id or Type/id")
            parsed_type, rid = modifier or spec.target, part
        else:
            parsed_type, rid = parsed
            if modifier is not None and parsed_type != modifier:
                continue  # `subject:Patient=Group/1` can match nothing
        if spec.target is not None and parsed_type != spec.target:
            continue  # `patient=Group/1` can match nothing
        out.append((parsed_type, rid))
    return out


def _reference_matches(
    resource: Resource, paths: tuple[str, ...], wanted: set[tuple[str | None, str]], bare: set[str]
) -> bool:
    for path in paths:
        for ref in values_at(resource, path):
            parsed = parse_reference(ref.get("reference", "")) if isinstance(ref, dict) else None
            if parsed is not None and (parsed in wanted or parsed[1] in bare):
                return True
    return False


# --- dates --------------------------------------------------------------------------------------

_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_PREFIXES = ("eq", "ne", "lt", "gt", "ge", "le", "sa", "eb")


def parse_date_range(text: str) -> DateRange | None:
    """The range a FHIR date/dateTime/instant covers at its precision (`2020` is the whole year).

    Values without a time zone are taken as UTC, so results do not depend on the host's zone.
    """
    match = _DATE_RE.match(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        if month is None:
            start = datetime(int(year), 1, 1, tzinfo=UTC)
            return start, start.replace(year=start.year + 1)
        if day is None:
            start = datetime(int(year), int(month), 1, tzinfo=UTC)
            return start, (start + timedelta(days=32)).replace(day=1)
        if hour is None:
            start = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return start, start + timedelta(days=1)
        tz = UTC
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            hours, minutes = zone[1:].split(":")
            tz = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
        start = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), tzinfo=tz)
    except ValueError:  # 2020-13-01, 2021-02-30, 25:00 ...
        return None
    if fraction:
        digits = fraction[1:]
        start += timedelta(microseconds=int((digits + "000000")[:6]))
        width = timedelta(microseconds=10 ** max(0, 6 - len(digits)))
    else:
        width = timedelta(seconds=1) if second is not None else timedelta(minutes=1)
    start = start.astimezone(UTC)
    return start, start + width


def main_date(resource: Resource, spec: SearchParam) -> DateRange | None:
    """The resource's date for a date parameter: the first of its paths holding a readable date."""
    for path in spec.paths:
        for value in values_at(resource, path):
            if isinstance(value, str) and (rng := parse_date_range(value)) is not None:
                return rng
    return None


def _parse_date_criterion(name: str, part: str) -> tuple[str, DateRange]:
    prefix = part[:2] if part[:2] in _PREFIXES else "eq"
    text = part[2:] if part[:2] in _PREFIXES else part
    # an unencoded `+` in a query string arrives as a space: `ge2020-01-01T10:00:00 02:00`
    rng = parse_date_range(text.replace(" ", "+"))
    if rng is None:
        raise _bad_value(
            name, "expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss][zone]]]] with prefix eq, ne, lt, gt, ge, le"
        )
    return prefix, rng


def _compare(prefix: str, res: DateRange, query: DateRange) -> bool:
    """FHIR range semantics: the resource's range against the one the search value implies."""
    (rlo, rhi), (qlo, qhi) = res, query
    eq = qlo <= rlo and rhi <= qhi
    if prefix == "eq":
        return eq
    if prefix == "ne":
        return not eq
    if prefix == "gt":
        return rhi > qhi
    if prefix == "lt":
        return rlo < qlo
    if prefix == "ge":
        return eq or rhi > qhi
    if prefix == "le":
        return eq or rlo < qlo
    if prefix == "sa":
        return rlo >= qhi
    return rhi <= qlo  # eb


# --- ordering -----------------------------------------------------------------------------------


def _sort(resources: list[Resource], keys: list[tuple[str, bool]], specs: dict[str, SearchParam]) -> None:
    """Sort in place by the keys, then id; resources lacking a sort value go last either way."""
    resources.sort(key=lambda r: r["id"])
    for key, descending in reversed(keys):
        if key == "_id":
            resources.sort(key=lambda r: r["id"], reverse=descending)
            continue
        spec = specs[key]
        dated: list[tuple[datetime, Resource]] = []
        undated: list[Resource] = []
        for r in resources:
            rng = main_date(r, spec)
            if rng is None:
                undated.append(r)
            else:
                dated.append((rng[0], r))
        dated.sort(key=lambda pair: pair[0], reverse=descending)  # stable, even reversed
        resources[:] = [r for _, r in dated] + undated
