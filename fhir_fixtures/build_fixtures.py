"""Rebuild fhir_fixtures/patients and fhir_fixtures/requests from the Synthea training bundles.

Run from the repository root: `python fhir_fixtures/build_fixtures.py` (reads CDS_PLUGIN_TRAIN_DATA, by
default ../shared/data/synthea/train). The output is deterministic. The hand-made cases in
fhir_fixtures/edge and fhir_fixtures/bulk are written by hand and not touched here.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TRAIN = Path(os.environ.get("CDS_PLUGIN_TRAIN_DATA", ROOT.parent.parent / "shared/data/synthea/train"))
FHIR_BASE = "http://localhost/fhir"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
#: Target size of a trimmed patient bundle (the request files hold about the same data again).
BUDGET = 160_000
#: Types dropped outright: billing, notes, provenance and device data carry nothing the model reads.
DROP = {
    "Claim",
    "ExplanationOfBenefit",
    "DocumentReference",
    "Provenance",
    "ImagingStudy",
    "SupplyDelivery",
    "MedicationAdministration",
    "Device",
}

#: fixture name -> (source file, the drug of the draft order in order-select/order-sign: RxNorm code, display)
PATIENTS = {
    "diabetes-adult-2025": (
        "exafluence-qicore-2025/48283fc4-addd-3f4d-7a42-e6e7cecd69f9.json.gz",
        ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ),
    "hypertension-adult-2019": (
        "smart-r4-2019/Liz_Conn_27c911c6-f045-4ffa-af5d-6eba57ac94b2.json.gz",
        ("314076", "lisinopril 10 MG Oral Tablet"),
    ),
    "heart-failure-elderly-2019": (
        "smart-r4-2019/Tommy_Friesen_dc0e6a8c-6c31-4d75-966f-ac682f486756.json.gz",
        ("314076", "lisinopril 10 MG Oral Tablet"),
    ),
    "pregnancy-young-adult-2025": (
        "exafluence-qicore-2025/80ca3294-65fd-8fa6-779a-0ca77297ba87.json.gz",
        ("313782", "Acetaminophen 325 MG Oral Tablet"),
    ),
    "asthma-adolescent-2019": (
        "smart-r4-2019/Monika_Green_5a422bd7-d15f-4ce5-89f1-d3fa4f19c34e.json.gz",
        ("562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet"),
    ),
    "copd-adult-2019": (
        "smart-r4-2019/Birgit_Schmeler_7e8ee10e-569b-4229-9380-62c49244902c.json.gz",
        ("745679", "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ),
    "child-toddler-2019": (
        "smart-r4-2019/Andy_Gusikowski_76742a08-3643-41fa-bddc-73a2c0bae9da.json.gz",
        ("308182", "Amoxicillin 250 MG Oral Capsule"),
    ),
}


def _when(resource: dict) -> str:
    for key in ("effectiveDateTime", "issued", "authoredOn", "onsetDateTime", "occurrenceDateTime"):
        if key in resource:
            return resource[key]
    for key in ("period", "performedPeriod"):
        if key in resource:
            return resource[key].get("start", "")
    return ""


def trim(bundle: dict) -> dict:
    """Drop unused types, then DiagnosticReports, then the oldest Observations, until under BUDGET."""
    entries = [e for e in bundle["entry"] if e["resource"]["resourceType"] not in DROP]

    def size(items: list) -> int:
        return len(json.dumps({"resourceType": "Bundle", "type": bundle["type"], "entry": items}))

    if size(entries) > BUDGET:
        entries = [e for e in entries if e["resource"]["resourceType"] != "DiagnosticReport"]
    observations = sorted(
        (e for e in entries if e["resource"]["resourceType"] == "Observation"),
        key=lambda e: (_when(e["resource"]), e["resource"]["id"]),
    )
    drop: set[str] = set()
    while size([e for e in entries if e["fullUrl"] not in drop]) > BUDGET and observations:
        for entry in observations[:20]:
            drop.add(entry["fullUrl"])
        observations = observations[20:]
    return {
        "resourceType": "Bundle",
        "type": bundle["type"],
        "entry": [e for e in entries if e["fullUrl"] not in drop],
    }


def dump(data: dict, path: Path) -> None:
    """Compact JSON with one Bundle entry per line: small, yet diffable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dump(data) + "\n", encoding="utf-8")


def _dump(data: object, level: int = 0) -> str:
    if isinstance(data, dict) and data.get("resourceType") == "Bundle" and "entry" in data:
        head = {k: v for k, v in data.items() if k != "entry"}
        pad = " " * (level + 1)
        lines = [pad + json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in data["entry"]]
        inner = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1]
        return inner + ',"entry":[\n' + ",\n".join(lines) + "\n" + " " * level + "]}"
    if isinstance(data, dict):
        parts = [json.dumps(k) + ":" + _dump(v, level + 1) for k, v in data.items()]
        return "{\n" + ",\n".join(" " * (level + 1) + p for p in parts) + "\n" + " " * level + "}"
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def relative_references(value: object, names: dict[str, str]) -> object:
    """Rewrite `urn:uuid:` references to `Type/id`, as a FHIR server would return the resources."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and item in names:
                out[key] = names[item]
            else:
                out[key] = relative_references(item, names)
        return out
    if isinstance(value, list):
        return [relative_references(item, names) for item in value]
    return value


def searchset(resources: list[dict], query: str, include: list[dict] = ()) -> dict:
    entries = [
        {
            "fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in resources
    ]
    entries += [
        {
            "fullUrl": f"{FHIR_BASE}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "include"},
        }
        for r in include
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{FHIR_BASE}/{query}"}],
        "entry": entries,
    }


def requests(name: str, bundle: dict, draft: tuple[str, str]) -> dict[str, dict]:
    names = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    resources = [relative_references(e["resource"], names) for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    pid = patient["id"]

    def of(rtype: str) -> list[dict]:
        return [r for r in resources if r["resourceType"] == rtype]

    last = max(_when(r) for r in resources if _when(r))
    prefetch = {
        "patient": patient,
        "conditions": searchset(of("Condition"), f"Condition?patient={pid}"),
        "observations": searchset(of("Observation"), f"Observation?patient={pid}"),
        "medications": searchset(
            of("MedicationRequest"),
            f"MedicationRequest?patient={pid}&_include=MedicationRequest:medication",
            include=of("Medication"),
        ),
    }
    order = {
        "resourceType": "MedicationRequest",
        "id": "draft-1",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": draft[0], "display": draft[1]}],
            "text": draft[1],
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": last,
    }
    draft_orders = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": order}]}
    out = {}
    for hook in ("patient-view", "order-select", "order-sign"):
        context: dict = {"userId": "Practitioner/example", "patientId": pid}
        if hook == "order-select":
            context["selections"] = ["MedicationRequest/draft-1"]
        if hook != "patient-view":
            context["draftOrders"] = draft_orders
        out[hook] = {
            "hookInstance": str(uuid.uuid5(uuid.NAMESPACE_URL, f"cds-plugin/fhir_fixtures/{name}/{hook}")),
            "hook": hook,
            "fhirServer": FHIR_BASE,
            "context": context,
            "prefetch": prefetch,
        }
    return out


def main() -> None:
    for name, (source, draft) in PATIENTS.items():
        bundle = trim(json.loads(gzip.open(TRAIN / source).read()))
        dump(bundle, ROOT / "patients" / f"{name}.json")
        for hook, body in requests(name, bundle, draft).items():
            dump(body, ROOT / "requests" / f"{name}.{hook}.json")
        print(f"{name}: {len(bundle['entry'])} entries")


if __name__ == "__main__":
    main()
