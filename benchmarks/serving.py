"""What the serving benchmarks share: the median training patient (and the one nearest it with a card),
its prefetch, the production server on loopback (gunicorn, JWT required with a pinned ES384 issuer),
signed callers, percentiles and the server's counters.

Used by benchmarks/load.py, benchmarks/hook_latency.py and benchmarks/explain_ig.py; not a benchmark
itself.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from cds_plugin.sandbox.fhir_store import FhirStore
from cds_plugin.sandbox.keys import ClientKey

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "synthea" / "train"
ISSUER = "https://ehr.bench.example"
SERVICE = "diagnosis-considerations"
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


#: How the benchmark server chooses cards: no probability floor, so every consideration the odds-ratio
#: rule lets through gets its card (at most max_cards), each explained and given a page.
CARD_SETTINGS = {"CDS_PLUGIN_MIN_CARD_PROBABILITY": "0"}


def median_patient(data_dir: str | Path) -> tuple[int, Path]:
    """The training bundle of median size as Synthea wrote it (uncompressed bytes), and that size."""
    from cds_plugin.model.dataset import bundle_files

    by_size = sorted((_size(f), f) for f in bundle_files(data_dir))
    return by_size[len(by_size) // 2]


def _size(path: Path) -> int:
    return len(gzip.open(path).read()) if path.name.endswith(".gz") else path.stat().st_size


def carded_median_patient(data_dir: str | Path, service: str = SERVICE) -> tuple[int, Path, list[str]]:
    """The training bundle nearest the median size whose call to `service` carries at least one card on
    the benchmark's server (`CARD_SETTINGS`, the services' own rule `card_worthy`): its size, its path
    and what its cards propose. The median patient itself may get no card,
    and a call without cards measures nothing of their explanations."""
    from cds_plugin.model.dataset import bundle_files
    from cds_plugin.model.engine import Engine
    from cds_plugin.services.considerations import card_worthy
    from cds_plugin.settings import Settings

    settings = Settings.load(environ=CARD_SETTINGS)
    engine = Engine.load(settings.model_path or None)
    by_size = sorted((_size(f), f) for f in bundle_files(data_dir))
    middle = len(by_size) // 2
    for i in sorted(range(len(by_size)), key=lambda i: (abs(i - middle), i)):
        size, path = by_size[i]
        assessment = engine.assess(path)
        of_kind = assessment.diagnoses if service == "diagnosis-considerations" else assessment.treatments
        cards = [c for c in of_kind if card_worthy(c, settings)]
        if cards:
            return size, path, [c.display for c in cards[: settings.max_cards]]
    raise SystemExit(f"no patient under {data_dir} gets a {service} card")


def carded_patient_line(size: int, path: Path, proposed: list[str]) -> str:
    """How a benchmark names the patient `carded_median_patient` chose."""
    return (
        f"patient nearest the median record size with a card {path.name} ({'; '.join(proposed)}): "
        f"record {size / 1024:.0f} KiB"
    )


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    data_dir: Path, workers: int, jwks_file: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "CDS_PLUGIN_BIND": f"127.0.0.1:{port}",
        "CDS_PLUGIN_DATA_DIR": str(data_dir),
        "CDS_PLUGIN_WORKERS": str(workers),
        "CDS_PLUGIN_TRUSTED_ISSUERS": json.dumps([{"iss": ISSUER, "jwks_file": str(jwks_file)}]),
        "CDS_PLUGIN_LOG_LEVEL": "WARNING",
        **CARD_SETTINGS,
        **(extra_env or {}),
    }
    log = open(data_dir / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cds_plugin.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("server exited:\n" + (data_dir / "server.log").read_text()[-3000:])
        try:
            if requests.get(base + "/readyz", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit("server not ready in 120 s")


class Caller:
    """Posts the same patient-view body with a fresh hookInstance and token; one session per thread."""

    def __init__(self, base: str, body: dict, key: ClientKey) -> None:
        self.url = f"{base}/cds-services/{SERVICE}"
        self.body = body
        self.key = key
        self.local = threading.local()
        self.errors: list[str] = []
        self.cards = 0

    def __call__(self, _i: int = 0) -> float:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        body = {**self.body, "hookInstance": str(uuid.uuid4())}
        data = json.dumps(body, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "Authorization": f"Bearer {self.key.sign(self.url, ISSUER)}",
        }
        started = time.perf_counter()
        resp = session.post(self.url, data=data, headers=headers, timeout=60)
        elapsed = time.perf_counter() - started
        if resp.status_code != 200:
            self.errors.append(f"{resp.status_code} {resp.text[:200]}")
        else:
            self.cards = len(resp.json()["cards"])
        return elapsed * 1000


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(caller: Caller, calls: int, concurrency: int) -> tuple[list[float], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        samples = list(pool.map(caller, range(calls)))
    return samples, time.perf_counter() - started


def report(label: str, samples: list[float], wall: float) -> None:
    print(
        f"{label:<16} n {len(samples):5d}   p50 {percentile(samples, 0.5):7.1f} ms   "
        f"p95 {percentile(samples, 0.95):7.1f} ms   p99 {percentile(samples, 0.99):7.1f} ms   "
        f"max {max(samples):7.1f} ms   {len(samples) / wall:5.2f} calls/s",
        flush=True,
    )


def counter(base: str, name: str) -> dict[str, float]:
    """A counter's value by its first label, summed over the workers, from /metrics."""
    out: dict[str, float] = {}
    for line in requests.get(base + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{"):
            label = line.split('="', 1)[1].split('"', 1)[0]
            out[label] = out.get(label, 0.0) + float(line.rsplit(" ", 1)[1])
    return out
