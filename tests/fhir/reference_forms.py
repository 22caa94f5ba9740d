"""One patient's resources written with every reference form a FHIR input may use.

`canonical()` turns a fixture (a transaction Bundle with `urn:uuid:` references, or a prefetch object with
relative ones) into plain resources whose references are all `Type/id`. `write()` writes them again, each
reference and fullUrl in a form chosen by a random generator, in one of several containers:

- references: relative `Type/id`, absolute with any base, versioned, `urn:uuid:<id>` (naming the
  resource's id, with or without a matching fullUrl), or exactly the target's fullUrl;
- fullUrls: `urn:uuid:<id>`, absolute (any base), or none;
- a drug: `medicationCodeableConcept`, a contained Medication (`#id`), or a Medication resource referenced
  in any of the forms above;
- containers: transaction or collection Bundle, a CDS Hooks prefetch object of searchsets, or a plain list
  of resources (no fullUrls at all).

The facts read from any of these are the same, except where a drug comes from (`MedicationRequest.path`
and `.medication`), which `comparable()` sets aside.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from typing import Any

from cds_plugin.fhir.record import FACT_FIELDS, PatientRecord

BASES = ("https://any.server/fhir", "http://localhost/fhir", "https://ehr.example.org/r4")
REFERENCE_FORMS = ("relative", "absolute", "versioned", "urn-id", "full-url")
FULL_URL_FORMS = ("urn", "absolute", "none")
DRUG_FORMS = ("concept", "contained", "referenced")
CONTAINERS = ("transaction", "collection", "prefetch", "list")
#: Prefetch keys of the clinical services (cds_plugin.services.considerations.PREFETCH) by type.
PREFETCH_KEYS = {
    "Condition": "conditions",
    "Observation": "observations",
    "MedicationRequest": "medications",
    "Medication": "medications",
    "AllergyIntolerance": "allergies",
    "Procedure": "procedures",
    "Immunization": "immunizations",
    "Encounter": "encounters",
    "CarePlan": "careplans",
}


def _resources_of(data: Any) -> list[tuple[dict, str | None]]:
    if isinstance(data, dict) and "resourceType" not in data:  # a prefetch object
        out = []
        for value in data.values():
            out.extend(_resources_of(value))
        return out
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return [(e["resource"], e.get("fullUrl")) for e in data.get("entry", []) if "resource" in e]
    return [(data, None)]


def _walk_references(value: Any, change) -> Any:  # type: ignore[no-untyped-def]
    """A copy of `value` with every Reference.reference string passed through `change`."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                out[key] = change(item)
            elif key == "contained":
                out[key] = item  # local references stay as they are
            else:
                out[key] = _walk_references(item, change)
        return out
    if isinstance(value, list):
        return [_walk_references(item, change) for item in value]
    return value


def canonical(data: Any) -> list[dict]:
    """The fixture's resources (each with an id), every reference to one of them written `Type/id`."""
    found = _resources_of(data)
    by_url: dict[str, str] = {}
    by_id: dict[str, str] = {}
    for resource, full_url in found:
        key = f"{resource['resourceType']}/{resource['id']}"
        by_id[resource["id"]] = key
        if full_url:
            by_url[full_url] = key

    def change(ref: str) -> str:
        if ref in by_url:
            return by_url[ref]
        if ref.startswith("urn:uuid:") and ref[9:] in by_id:
            return by_id[ref[9:]]
        tail = "/".join(ref.split("/")[-2:])
        if "://" in ref and tail.split("/")[-1] in by_id and by_id[tail.split("/")[-1]] == tail:
            return tail
        return ref

    return [_walk_references(copy.deepcopy(resource), change) for resource, _ in found]


def write(resources: list[dict], rng: random.Random, container: str | None = None) -> tuple[Any, str]:
    """The resources in another form (see the module docstring); returns (input, patient id)."""
    container = container or rng.choice(CONTAINERS)
    resources = [copy.deepcopy(r) for r in resources]
    resources += _drug_forms(resources, rng)
    full_urls: dict[str, str | None] = {}
    for resource in resources:
        key = f"{resource['resourceType']}/{resource['id']}"
        form = rng.choice(FULL_URL_FORMS) if container != "list" else "none"
        if form == "urn":
            full_urls[key] = f"urn:uuid:{resource['id']}"
        elif form == "absolute":
            full_urls[key] = f"{rng.choice(BASES)}/{key}"
        else:
            full_urls[key] = None
    if container == "prefetch":
        patient_key = next(k for k in full_urls if k.startswith("Patient/"))
        full_urls[patient_key] = None  # a prefetch's Patient is a bare resource
    keys = set(full_urls)

    def change(ref: str) -> str:
        if ref not in keys:
            return ref  # conditional, or not in the input
        form = rng.choice(REFERENCE_FORMS)
        if form == "full-url":
            return full_urls[ref] or f"urn:uuid:{ref.split('/', 1)[1]}"
        if form == "absolute":
            return f"{rng.choice(BASES)}/{ref}"
        if form == "versioned":
            return f"{ref}/_history/{rng.randint(1, 9)}"
        if form == "urn-id":
            return f"urn:uuid:{ref.split('/', 1)[1]}"
        return ref

    written = [_walk_references(r, change) for r in resources]
    patient = next(r for r in written if r["resourceType"] == "Patient")

    def entry(resource: dict, search: bool = False) -> dict:
        out: dict[str, Any] = {}
        url = full_urls[f"{resource['resourceType']}/{resource['id']}"]
        if url:
            out["fullUrl"] = url
        out["resource"] = resource
        if search:
            out["search"] = {"mode": "match"}
        return out

    if container == "list":
        return written, patient["id"]
    if container == "prefetch":
        prefetch: dict[str, Any] = {"patient": patient}
        for resource in written:
            if resource is patient:
                continue
            key = PREFETCH_KEYS.get(resource["resourceType"], "other")
            bundle = prefetch.setdefault(key, {"resourceType": "Bundle", "type": "searchset", "entry": []})
            bundle["entry"].append(entry(resource, search=True))
        return prefetch, patient["id"]
    bundle = {"resourceType": "Bundle", "type": container, "entry": [entry(r) for r in written]}
    return bundle, patient["id"]


def _drug_forms(resources: list[dict], rng: random.Random) -> list[dict]:
    """Rewrite each prescription's drug in a form chosen at random; returns the Medications to add."""
    medications = {r["id"]: r for r in resources if r["resourceType"] == "Medication"}
    added = []
    for resource in resources:
        if resource["resourceType"] != "MedicationRequest":
            continue
        concept = resource.get("medicationCodeableConcept")
        if concept is None:
            ref = resource.get("medicationReference", {}).get("reference", "")
            target = medications.get(ref.split("/", 1)[-1]) if ref.startswith("Medication/") else None
            if target is None or "code" not in target:
                continue
            concept = target["code"]
        form = rng.choice(DRUG_FORMS)
        resource.pop("medicationCodeableConcept", None)
        resource.pop("medicationReference", None)
        if form == "concept":
            resource["medicationCodeableConcept"] = copy.deepcopy(concept)
        elif form == "contained":
            local = f"m{rng.randint(0, 99)}"
            medication = {"resourceType": "Medication", "id": local, "code": copy.deepcopy(concept)}
            resource["contained"] = [*resource.get("contained", []), medication]
            resource["medicationReference"] = {"reference": f"#{local}"}
        else:
            mid = f"drug-{resource['id']}"[:64]
            added.append({"resourceType": "Medication", "id": mid, "code": copy.deepcopy(concept)})
            resource["medicationReference"] = {"reference": f"Medication/{mid}"}
    return added


def comparable(record: PatientRecord) -> dict[str, Any]:
    """The record's patient and facts, with where each drug came from set aside."""
    out: dict[str, Any] = {"patient": record.patient}
    for name, _ in FACT_FIELDS:
        facts = getattr(record, name)
        if name == "medication_requests":
            facts = tuple(
                dataclasses.replace(f, path="MedicationRequest.medication", medication=None) for f in facts
            )
        out[name] = facts
    return out
