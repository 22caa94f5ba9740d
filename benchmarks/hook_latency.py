"""Latency of a patient-view hook call with explanations on the cards, by card explanation method.

    .venv/bin/python benchmarks/hook_latency.py [--repeat 15] [--data DIR]

Builds the prefetch of the median training patient (every resource the model reads, as searchset
Bundles), then calls `diagnosis-considerations` through the app (in process, Flask test client, JWT off)
with `card_explanation_method` = integrated_gradients and = attention_gradient (probability floor off,
so the call carries its full 3 cards: the worst case), beside the bare
`engine.assess` of the same patient, all in one run so the ratios survive machine noise. Prints median
and p95 milliseconds and the number of cards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch

from cds_plugin.model.dataset import bundle_files
from cds_plugin.sandbox.fhir_store import FhirStore
from cds_plugin.settings import Settings

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "train"
KEYS = {
    "Patient": "patient",
    "Condition": "conditions",
    "MedicationRequest": "medications",
    "Observation": "observations",
    "AllergyIntolerance": "allergies",
    "Procedure": "procedures",
    "Immunization": "immunizations",
    "Encounter": "encounters",
    "CarePlan": "careplans",
}


def prefetch_of(path: Path) -> tuple[str, dict]:
    """The prefetch an EHR would send: every resource the model reads, references made relative
    (`Patient/123`, as a FHIR server answers; the loopback FHIR store rewrites the bundle's urn:uuids)."""
    store = FhirStore.load(path)
    (patient,) = store.all("Patient")
    prefetch: dict = {"patient": patient}
    for rtype, key in KEYS.items():
        if key != "patient":
            entries = [{"fullUrl": f"{rtype}/{r['id']}", "resource": r} for r in store.all(rtype)]
            prefetch[key] = {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(entries),
                "entry": entries,
            }
    return patient["id"], prefetch


def stats(samples: list[float]) -> str:
    samples = sorted(samples)
    return (
        f"median {statistics.median(samples):7.1f} ms   p95 {samples[int(0.95 * (len(samples) - 1))]:7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from cds_plugin.services import considerations
    from cds_plugin.web.app import create_app

    files = sorted(bundle_files(args.data), key=lambda p: p.stat().st_size)
    median = files[len(files) // 2]
    patient_id, prefetch = prefetch_of(median)
    body = {
        "hook": "patient-view",
        "hookInstance": "",
        "context": {"userId": "Practitioner/bench", "patientId": patient_id},
        "prefetch": prefetch,
    }
    size = len(json.dumps(body)) / 1024
    print(f"median patient {median.name}: request body {size:.0f} KiB, 1 torch thread")
    engine = None
    for method in ("integrated_gradients", "attention_gradient"):
        with tempfile.TemporaryDirectory() as data_dir:
            settings = Settings.load(
                environ={},
                data_dir=data_dir,
                jwt_required=False,
                card_explanation_method=method,
                min_card_probability=0.0,
            )
            client = create_app(settings).test_client()
            engine = considerations.load_engine()
            samples, cards = [], 0
            for i in range(args.repeat + 1):
                body["hookInstance"] = str(uuid.uuid4())
                started = time.perf_counter()
                resp = client.post("/cds-services/diagnosis-considerations", json=body)
                elapsed = (time.perf_counter() - started) * 1000
                assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
                cards = len(resp.get_json()["cards"])
                if i:
                    samples.append(elapsed)
            print(f"hook call, cards explained by {method:<22} {stats(samples)}   cards {cards}")
    assess = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        engine.assess(median)
        assess.append((time.perf_counter() - started) * 1000)
    print(f"{'engine.assess of the same patient':<53}{stats(assess)}")


if __name__ == "__main__":
    main()
