"""FHIR input fixtures (fhir_fixtures/) and helpers for the tests of cds_plugin.fhir."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fhir_fixtures"
PATIENTS = FIXTURES / "patients"
REQUESTS = FIXTURES / "requests"
EDGE = FIXTURES / "edge"
BULK = FIXTURES / "bulk"
TRAIN = Path(os.environ.get("CDS_PLUGIN_TRAIN_DATA", ROOT.parent / "shared/data/synthea/train"))

PATIENT_NAMES = sorted(p.stem for p in PATIENTS.glob("*.json"))
HOOKS = ("patient-view", "order-select", "order-sign")


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def patient_bundle(name: str) -> dict:
    return load(PATIENTS / f"{name}.json")


def request_body(name: str, hook: str) -> dict:
    return load(REQUESTS / f"{name}.{hook}.json")


def edge(name: str) -> Any:
    return load(EDGE / f"{name}.json")


def walk_resources(data: Any) -> Iterator[tuple[dict, str | None]]:
    """Every resource in a JSON input (entries, nested Bundles, prefetch values, contained), with fullUrl."""
    if isinstance(data, list):
        for item in data:
            yield from walk_resources(item)
        return
    if not isinstance(data, dict):
        return
    if "resourceType" not in data:
        for value in data.values():
            yield from walk_resources(value)
        return
    yield data, None
    if data.get("resourceType") == "Bundle" and isinstance(data.get("entry"), list):
        for entry in data["entry"]:
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                resource = entry["resource"]
                if resource.get("resourceType") == "Bundle":
                    yield from walk_resources(resource)
                else:
                    yield resource, entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None


def input_names(data: Any) -> set[str]:
    """What a provenance reference may be: `Type/id` of every resource with an id, every fullUrl, and the
    `Type/id` an absolute fullUrl (`http://server/fhir/Type/id`) names."""
    names: set[str] = set()
    for resource, full_url in walk_resources(data):
        rid, rtype = resource.get("id"), resource.get("resourceType")
        if isinstance(rid, str) and isinstance(rtype, str):
            names.add(f"{rtype}/{rid}")
        if full_url:
            names.add(full_url)
            parts = full_url.split("/")
            if "://" in full_url and len(parts) >= 2 and parts[-2] == rtype:
                names.add(f"{rtype}/{parts[-1]}")
    return names


@pytest.fixture(params=PATIENT_NAMES)
def patient_name(request: pytest.FixtureRequest) -> str:
    return request.param
