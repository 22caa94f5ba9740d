"""A Bulk Data export of the small Synthea corpus (the tiny model's), and a LocalCluster the tests share.

The export is written by the sandbox server's own export code, at most 400 resources per file, so
each large type comes in several files. Tests run on one shared two-worker cluster through its
scheduler address (starting one costs seconds: torch is imported in each worker); the test that kills a
worker leaves it to its nanny, which starts another, and the next run's plugin loads the model there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cds_plugin.fhir.resources import USED_TYPES
from cds_plugin.sandbox.bulk_export import ExportRequest, write_export
from cds_plugin.sandbox.fhir_store import FhirStore

LINES_PER_FILE = 400


@pytest.fixture(scope="session")
def store(corpus: Path) -> FhirStore:
    return FhirStore.load(corpus)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory, store: FhirStore) -> Path:
    out = tmp_path_factory.mktemp("export")
    write_export(
        store, out, ExportRequest("patient", types=tuple(sorted(USED_TYPES))), lines_per_file=LINES_PER_FILE
    )
    claim = {"resourceType": "Claim", "id": "c1", "patient": {"reference": "Patient/x"}}
    (out / "Claim.000.ndjson").write_text(json.dumps(claim) + "\n")  # a type the model does not read
    return out


@pytest.fixture(scope="session")
def patient_refs(export_dir: Path) -> set[str]:
    refs = set()
    for path in export_dir.glob("Patient.*.ndjson"):
        refs.update(f"Patient/{json.loads(line)['id']}" for line in path.read_text().splitlines())
    return refs


@pytest.fixture(scope="session")
def shared_cluster(tiny_model: Path) -> Iterator[str]:
    """The scheduler address of a two-worker LocalCluster (the worklist registers its plugin itself)."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=":0"
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()
