"""Strict reads of the FHIR R4 elements the record uses, straight from the JSON dict.

Checking only what we read keeps parsing fast (the default; see docs/fhir-input.md) while still refusing
data of the wrong shape with a message naming the element. Problems are raised as `ElementError(path,
problem)`; the resource reader adds the resource's name and turns it into FhirInputError. Messages never
quote values (they may be PHI).
"""

from __future__ import annotations

import math
from datetime import date, datetime
from typing import Any

from cds_plugin.fhir.record import Coding, Concept
from cds_plugin.fhir.times import BadTime, parse_date, parse_datetime


class ElementError(Exception):
    """An element of the wrong shape: `path` relative to the resource, `problem` in words."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def string(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str:
        raise ElementError(path, "not a string")
    return value


def code(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if type(value) is not str or not value or value != value.strip():
        raise ElementError(path, "not a code")
    return value


def boolean(value: Any, path: str) -> bool | None:
    if value is None:
        return None
    if type(value) is not bool:
        raise ElementError(path, "not a boolean")
    return value


def number(value: Any, path: str) -> float | None:
    if value is None:
        return None
    kind = type(value)
    if kind is int:
        return float(value) if abs(value) < 1e300 else _not_number(path)
    if kind is float and math.isfinite(value):
        return value
    return _not_number(path)


def _not_number(path: str) -> float:
    raise ElementError(path, "not a number")


def date_time(value: Any, path: str) -> datetime | None:
    if value is None:
        return None
    if type(value) is not str:
        raise ElementError(path, "not a FHIR dateTime")
    try:
        return parse_datetime(value)
    except BadTime as exc:
        raise ElementError(path, str(exc)) from None


def date_only(value: Any, path: str) -> date | None:
    if value is None:
        return None
    if type(value) is not str:
        raise ElementError(path, "not a FHIR date")
    try:
        return parse_date(value)
    except BadTime as exc:
        raise ElementError(path, str(exc)) from None


def obj(value: Any, path: str, kind: str = "an object") -> dict | None:
    if value is None:
        return None
    if type(value) is not dict:
        raise ElementError(path, f"not {kind}")
    return value


def item(value: Any, path: str, kind: str = "an object") -> dict:
    """An array element that must be an object (FHIR JSON allows no null there)."""
    if type(value) is not dict:
        raise ElementError(path, f"not {kind}")
    return value


def array(value: Any, path: str) -> list:
    if value is None:
        return []
    if type(value) is not list:
        raise ElementError(path, "not an array")
    return value


def coding(value: Any, path: str) -> Coding:
    if type(value) is not dict:
        raise ElementError(path, "not a Coding")
    get = value.get
    system, code_, display = get("system"), get("code"), get("display")
    if system is not None and type(system) is not str:
        raise ElementError(path + ".system", "not a uri")
    if code_ is not None and type(code_) is not str:
        raise ElementError(path + ".code", "not a code")
    if display is not None and type(display) is not str:
        raise ElementError(path + ".display", "not a string")
    return Coding(system, code_, display)


def concept(value: Any, path: str) -> Concept | None:
    """CodeableConcept -> Concept (None when absent)."""
    if value is None:
        return None
    if type(value) is not dict:
        raise ElementError(path, "not a CodeableConcept")
    codings = value.get("coding")
    text = value.get("text")
    if text is not None and type(text) is not str:
        raise ElementError(path + ".text", "not a string")
    if codings is None:
        return Concept((), text)
    if type(codings) is not list:
        raise ElementError(path + ".coding", "not an array")
    return Concept(tuple(coding(c, f"{path}.coding[{i}]") for i, c in enumerate(codings)), text)


def concepts(value: Any, path: str) -> tuple[Concept, ...]:
    items = array(value, path)
    out = []
    for i, item in enumerate(items):
        found = concept(item, f"{path}[{i}]")
        if found is not None:
            out.append(found)
    return tuple(out)


def status_code(value: Any, path: str) -> str | None:
    """The code of a status CodeableConcept (clinicalStatus, verificationStatus)."""
    found = concept(value, path)
    if found is None:
        return None
    primary = found.primary
    if primary is not None:
        return primary.code
    return found.text.strip().lower() if found.text else None


def concept_codes(value: Any, path: str) -> tuple[str, ...]:
    """Codes (else texts) of an array of CodeableConcepts, e.g. category."""
    out = []
    for item in concepts(value, path):
        primary = item.primary
        if primary is not None and primary.code is not None:
            out.append(primary.code)
        elif item.text:
            out.append(item.text)
    return tuple(out)


def period(value: Any, path: str) -> tuple[datetime | None, datetime | None]:
    found = obj(value, path, "a Period")
    if found is None:
        return None, None
    return date_time(found.get("start"), path + ".start"), date_time(found.get("end"), path + ".end")


def quantity(value: Any, path: str) -> tuple[float | None, str | None, str | None]:
    """Quantity -> (value, unit, comparator); the unit is the human unit, else the UCUM code."""
    found = obj(value, path, "a Quantity")
    if found is None:
        return None, None, None
    get = found.get
    number_ = number(get("value"), path + ".value")
    unit = string(get("unit"), path + ".unit")
    ucum = string(get("code"), path + ".code")
    comparator = get("comparator")
    if comparator is not None and comparator not in ("<", "<=", ">=", ">"):
        raise ElementError(path + ".comparator", "not one of <, <=, >=, >")
    return number_, (unit or ucum), comparator


def reference(value: Any, path: str) -> str | None:
    """Reference.reference (None for a display- or identifier-only reference)."""
    found = obj(value, path, "a Reference")
    if found is None:
        return None
    ref = found.get("reference")
    if ref is None:
        return None
    if type(ref) is not str or not ref:
        raise ElementError(path + ".reference", "not a reference string")
    return ref


def reference_display(value: Any, path: str) -> str | None:
    found = obj(value, path, "a Reference")
    if found is None:
        return None
    return string(found.get("display"), path + ".display")
