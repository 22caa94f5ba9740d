"""Synthetic patients with planted rules: a treatment is started within the year after the visit exactly
when the record holds a given Observation (the "X" of the rule).

Rules, independent of each other: a urine microalbumin -> metformin; an LDL cholesterol -> atorvastatin.
Each patient has one visit T with a year of follow-up (the only reference time the task can use) and
noise facts: a weight, a social finding (never a label), and labs of X's shape from a pool. For each rule,
in every other patient, X is dated 30 days before T and the treatment ordered 90 days after T; the other
patients get one more noise lab instead, so every input has the same facts count and token length and
no single noise fact is missing more often with one label than the other. A model that learns the task
must learn "X -> treatment": nothing else predicts the labels (not even X's place among the labs).
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

T = date(2015, 3, 1)
#: label code -> (resource id suffix of X, X's LOINC code and display, RxNorm code and drug).
RULES = {
    "metformin": (
        "x-metformin",
        ("14957-5", "Microalbumin in Urine"),
        ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ),
    "atorvastatin": (
        "x-atorvastatin",
        ("2089-1", "Cholesterol in LDL"),
        ("259255", "atorvastatin 80 MG Oral Tablet"),
    ),
}
RULE_CODE = "metformin"
#: Noise labs of X's shape (codes without reference ranges, so no flag changes the length).
NOISE_LABS = [
    ("1742-6", "Alanine aminotransferase"),
    ("1920-8", "Aspartate aminotransferase"),
    ("6768-6", "Alkaline phosphatase"),
    ("2885-2", "Protein"),
    ("1751-7", "Albumin"),
    ("17861-6", "Calcium"),
    ("2028-9", "Carbon dioxide"),
    ("1975-2", "Bilirubin"),
]
#: Social findings: facts in the input, never labels.
FINDINGS = [
    ("73595000", "Stress (finding)"),
    ("160903007", "Full-time employment (finding)"),
    ("224299000", "Received higher education (finding)"),
    ("422650009", "Social isolation (finding)"),
]
VALUES = (50, 60, 70, 80, 90)


def _tag(rng: random.Random) -> str:
    """A random id prefix: the linearization orders labs of one date by id, so X's place among them is
    random and a model cannot learn "the lab in slot k" instead of "X"."""
    return f"{rng.randrange(16**6):06x}"


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _at(when: date, hour: int) -> str:
    return f"{when.isoformat()}T{hour:02d}:00:00Z"


def _lab(oid: str, pid: str, code: str, display: str, value: float, unit: str, when: date) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": _coding("http://loinc.org", code, display),
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _at(when, 9),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
    }


def _medication(mid: str, pid: str, code: str, display: str, when: date) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": _coding("http://www.nlm.nih.gov/research/umls/rxnorm", code, display),
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": _at(when, 10),
    }


def _encounter(eid: str, pid: str, when: date) -> dict:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [_coding("http://snomed.info/sct", "185349003", "Encounter for check up")],
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": _at(when, 8), "end": _at(when, 9)},
    }


def patient_bundle(
    i: int, planted: dict[str, bool], rng: random.Random, flipped: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """One patient's Bundle; `planted[code]`: X before the visit and the treatment after it. For the
    labels in `flipped` the treatment goes the other way (label noise: the rule holds, not always)."""
    pid = f"p{i}"
    t = T + timedelta(days=rng.randint(0, 60))
    finding_code, finding = rng.choice(FINDINGS)
    resources: list[dict] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "gender": rng.choice(["female", "male"]),
            "birthDate": f"{rng.randint(1950, 1960)}-06-15",
        },
        _encounter(f"{pid}-visit", pid, t),
        _encounter(f"{pid}-followup", pid, t + timedelta(days=400)),
        _lab(
            f"{pid}-weight", pid, "29463-7", "Body Weight", rng.choice(VALUES), "kg", t - timedelta(days=30)
        ),
        {
            "resourceType": "Condition",
            "id": f"{pid}-finding",
            "clinicalStatus": _coding(
                "http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"
            ),
            "code": _coding("http://snomed.info/sct", finding_code, finding),
            "subject": {"reference": f"Patient/{pid}"},
            "onsetDateTime": _at(t - timedelta(days=500), 8),
        },
    ]
    missing = sum(not planted[label] for label in RULES)
    for k, (loinc, name) in enumerate(rng.sample(NOISE_LABS, 3 + missing)):
        resources.append(
            _lab(
                f"{_tag(rng)}-{pid}-lab{k}",
                pid,
                loinc,
                name,
                rng.choice(VALUES),
                "mg/dL",
                t - timedelta(days=30),
            )
        )
    for label, (suffix, (loinc, name), (rxnorm, drug)) in RULES.items():
        if planted[label]:
            resources.append(
                _lab(
                    f"{_tag(rng)}-{pid}-{suffix}",
                    pid,
                    loinc,
                    name,
                    rng.choice(VALUES),
                    "mg/dL",
                    t - timedelta(days=30),
                )
            )
        if planted[label] != (label in flipped):
            resources.append(_medication(f"{pid}-{label}", pid, rxnorm, drug, t + timedelta(days=90)))
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def write_corpus(
    folder: Path, n: int = 60, seed: int = 7, noise: float = 0.0
) -> list[tuple[Path, dict[str, bool]]]:
    """n patients, each rule planted in every other one (independently), each label flipped with
    probability `noise` (so validation is not perfectly separable and calibration stays moderate);
    returns (file, planted) pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        planted = {"metformin": i % 2 == 0, "atorvastatin": (i // 2) % 2 == 0}
        flipped = frozenset(label for label in RULES if rng.random() < noise)
        path = folder / f"patient-{i:03d}.json"
        path.write_text(json.dumps(patient_bundle(i, planted, rng, flipped)))
        out.append((path, planted))
    return out


def visit_time(bundle_path: Path) -> datetime:
    """The start of the patient's visit: the reference time of its training example (explain as of it)."""
    bundle = json.loads(bundle_path.read_text())
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "Encounter" and r["id"].endswith("-visit"):
            return datetime.fromisoformat(r["period"]["start"].replace("Z", "+00:00"))
    raise ValueError("no visit")
