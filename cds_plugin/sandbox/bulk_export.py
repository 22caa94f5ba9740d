"""FHIR Bulk Data export (`$export`) for the loopback FHIR server, and NDJSON export files on disk.

Population tools read whole populations through Bulk Data Access 2.0
(https://hl7.org/fhir/uv/bulkdata/export.html); testing them end to end needs a server that speaks it.
This one implements the asynchronous request pattern over the in-memory store:

- kick-off `GET [base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export` with
  `Prefer: respond-async`, `_outputFormat` (NDJSON only), `_type` and `_since`: 202 + Content-Location;
- status `GET [base]/bulk-status/[job]`: 202 with `X-Progress` and `Retry-After` while running, then
  200 with the manifest (`requiresAccessToken` true when the server wants a bearer token);
- files `GET [base]/bulk-files/[job]/[name]` (`application/fhir+ndjson`), `error` files holding
  OperationOutcomes;
- `DELETE [base]/bulk-status/[job]`: 202, the job and its files are gone.

Patient and Group exports hold the patients' compartments (every type with a `patient` search
parameter) plus the Medications their MedicationRequests reference: supporting resources the spec lets a
server include, and without which `medicationReference` could not be read. A resource without
`meta.lastUpdated` counts as updated when the store was loaded, for `_since`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cds_plugin.errors import CdsPluginError, NotFoundError
from cds_plugin.sandbox.fhir_search import params_for, parse_date_range, supported_types
from cds_plugin.sandbox.fhir_store import TYPE_RE, FhirStore, parse_reference, values_at

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
#: `_outputFormat` values the spec says a server must accept for NDJSON.
NDJSON_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
#: Kick-off parameters of the spec this server does not implement: refused unless `handling=lenient`.
UNSUPPORTED_PARAMS = frozenset(
    {"_elements", "patient", "_typeFilter", "includeAssociatedData", "organizeOutputBy"}
)
DEFAULT_LINES_PER_FILE = 10_000
MAX_JOBS = 4
_FILE_NAME = re.compile(r"[A-Z][A-Za-z]+\.\d{3}\.ndjson")


class TooManyJobsError(CdsPluginError):
    status = 429
    code = "throttled"


@dataclass(frozen=True)
class ExportRequest:
    """What one kick-off asked for. `group` is a Group id; `level` is system, patient or group."""

    level: str
    group: str | None = None
    types: tuple[str, ...] | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class ExportFile:
    """One NDJSON file written: its type, name in the export folder and number of resources."""

    type: str
    name: str
    count: int


def _last_updated(resource: dict[str, Any], loaded_at: datetime) -> datetime:
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    rng = parse_date_range(value) if isinstance(value, str) else None
    return rng[0] if rng is not None else loaded_at


def _patient_ids(store: FhirStore, request: ExportRequest) -> set[str] | None:
    """The patients in scope (None: every resource, a system-level export)."""
    if request.level == "system":
        return None
    if request.level == "patient":
        return {r["id"] for r in store.all("Patient")}
    group = store.get("Group", request.group or "")
    if group is None:
        raise NotFoundError(f"Group/{request.group} is not known", expression="Group")
    ids = set()
    for entity in values_at(group, "member.entity"):
        parsed = parse_reference(entity.get("reference", "")) if isinstance(entity, dict) else None
        if parsed is not None and parsed[0] == "Patient" and store.get("Patient", parsed[1]) is not None:
            ids.add(parsed[1])
    return ids


def _in_compartment(resource: dict[str, Any], rtype: str, patients: set[str]) -> bool:
    if rtype == "Patient":
        return resource["id"] in patients
    spec = params_for(rtype).get("patient")
    if spec is None:
        return False
    for path in spec.paths:
        for ref in values_at(resource, path):
            parsed = parse_reference(ref.get("reference", "")) if isinstance(ref, dict) else None
            if parsed is not None and parsed[0] == "Patient" and parsed[1] in patients:
                return True
    return False


def export_types(store: FhirStore, request: ExportRequest) -> list[str]:
    """Resource types the export writes, in a stable order (Patient first)."""
    if request.level == "system":
        available = set(store.types())
    else:
        available = {t for t in store.types() if t == "Patient" or "patient" in params_for(t)}
        if "Medication" in store.types():
            available.add("Medication")  # supporting resources of MedicationRequests (see module doc)
    if request.types is not None:
        available &= set(request.types)
    return sorted(available, key=lambda t: (t != "Patient", t == "Medication", t))


def write_export(
    store: FhirStore,
    out_dir: str | Path,
    request: ExportRequest | None = None,
    *,
    lines_per_file: int = DEFAULT_LINES_PER_FILE,
    loaded_at: datetime | None = None,
    on_type_done: Callable[[str], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[ExportFile]:
    """Write the resources `request` selects as `Type.000.ndjson`, `Type.001.ndjson`, ... under `out_dir`.

    A new file starts every `lines_per_file` resources, as servers split large types. Used by the
    server's export jobs and by scripts that need an export of a folder of bundles on disk.
    """
    if lines_per_file < 1:
        raise ValueError("lines_per_file must be at least 1")
    request = request or ExportRequest("system")
    loaded_at = loaded_at or datetime.now(UTC)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patients = _patient_ids(store, request)
    files: list[ExportFile] = []
    medications: set[str] = set()
    for rtype in export_types(store, request):
        if cancelled():
            break
        if rtype == "Medication" and patients is not None:
            candidates: Iterable[dict[str, Any]] = (
                r for r in (store.get("Medication", mid) for mid in sorted(medications)) if r is not None
            )
        else:
            candidates = store.all(rtype)
        number, count, fh = 0, 0, None
        try:
            for resource in candidates:
                if patients is not None and rtype != "Medication":
                    if not _in_compartment(resource, rtype, patients):
                        continue
                if request.since is not None and _last_updated(resource, loaded_at) <= request.since:
                    continue
                if rtype == "MedicationRequest":
                    for ref in values_at(resource, "medicationReference"):
                        parsed = parse_reference(ref.get("reference", "")) if isinstance(ref, dict) else None
                        if parsed is not None and parsed[0] == "Medication":
                            medications.add(parsed[1])
                if fh is None or count == lines_per_file:
                    if fh is not None:
                        fh.close()
                        files.append(ExportFile(rtype, f"{rtype}.{number:03d}.ndjson", count))
                        number += 1
                    fh = (out / f"{rtype}.{number:03d}.ndjson").open("w", encoding="utf-8")
                    count = 0
                fh.write(json.dumps(resource, separators=(",", ":"), ensure_ascii=False) + "\n")
                count += 1
        finally:
            if fh is not None:
                fh.close()
                files.append(ExportFile(rtype, f"{rtype}.{number:03d}.ndjson", count))
        if on_type_done is not None:
            on_type_done(rtype)
    return files


# --- jobs ------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One export: its request, progress, and (once done) its files or the error that stopped it."""

    id: str
    request: ExportRequest
    request_url: str
    folder: Path
    transaction_time: datetime
    ready_at: float  # monotonic time before which the status stays 202 (a slow server, for demos/tests)
    types: list[str]
    done_types: list[str] = field(default_factory=list)
    files: list[ExportFile] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # OperationOutcomes for the error file
    failure: str | None = None
    finished: bool = False
    cancelled: bool = False


class BulkExports:
    """The server's export jobs: each runs on its own thread and writes into a private temp folder.

    `delay_s` keeps a job "in progress" at least that long, so clients' polling can be seen and tested.
    `close()` cancels every job and removes its files (the server calls it on stop).
    """

    def __init__(
        self,
        store: FhirStore,
        *,
        lines_per_file: int = DEFAULT_LINES_PER_FILE,
        delay_s: float = 0.0,
        retry_after_s: int = 1,
        max_jobs: int = MAX_JOBS,
    ) -> None:
        self.store = store
        self.lines_per_file = lines_per_file
        self.delay_s = delay_s
        self.retry_after_s = retry_after_s
        self.max_jobs = max_jobs
        self.loaded_at = datetime.now(UTC)
        self._root = Path(tempfile.mkdtemp(prefix="cds-plugin-bulk-"))
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, request: ExportRequest, request_url: str, unsupported_types: list[str]) -> Job:
        """Kick off a job (raises TooManyJobsError past `max_jobs` running ones)."""
        types = export_types(self.store, request)
        _patient_ids(self.store, request)  # an unknown Group is a 404 now, not a failed job later
        with self._lock:
            running = sum(1 for j in self._jobs.values() if not j.finished)
            if running >= self.max_jobs:
                raise TooManyJobsError(f"{running} exports are running; retry later")
            job_id = uuid.uuid4().hex
            folder = self._root / job_id
            folder.mkdir()
            job = Job(
                id=job_id,
                request=request,
                request_url=request_url,
                folder=folder,
                transaction_time=datetime.now(UTC),
                ready_at=time.monotonic() + self.delay_s,
                types=types,
            )
            for rtype in unsupported_types:
                job.errors.append(
                    _outcome(f"resource type {rtype} is not supported by this server; not exported")
                )
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), name=f"bulk-export-{job_id[:8]}", daemon=True).start()
        return job

    def _run(self, job: Job) -> None:
        try:
            job.files = write_export(
                self.store,
                job.folder,
                job.request,
                lines_per_file=self.lines_per_file,
                loaded_at=self.loaded_at,
                on_type_done=job.done_types.append,
                cancelled=lambda: job.cancelled,
            )
            if job.errors:
                with (job.folder / "OperationOutcome.000.ndjson").open("w", encoding="utf-8") as fh:
                    for outcome in job.errors:
                        fh.write(json.dumps(outcome, separators=(",", ":")) + "\n")
        except Exception:  # a bug, or the disk: the status answers 500 with an OperationOutcome
            log.exception("bulk export: job failed")
            job.failure = "the export failed on the server"
        finally:
            job.finished = True
            if job.cancelled:
                shutil.rmtree(job.folder, ignore_errors=True)

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None or job.cancelled:
            raise NotFoundError("no such export job (finished and deleted, or never started)")
        return job

    def ready(self, job: Job) -> bool:
        return job.finished and time.monotonic() >= job.ready_at

    def progress(self, job: Job) -> str:
        """The X-Progress text: how many of the job's types are written."""
        return f"{len(job.done_types)} of {len(job.types)} resource types written"

    def manifest(self, job: Job, files_base: str, requires_token: bool) -> dict[str, Any]:
        output = [
            {"type": f.type, "url": f"{files_base}/{job.id}/{f.name}", "count": f.count} for f in job.files
        ]
        errors = []
        if job.errors:
            errors.append(
                {"type": "OperationOutcome", "url": f"{files_base}/{job.id}/OperationOutcome.000.ndjson"}
            )
        return {
            "transactionTime": job.transaction_time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request": job.request_url,
            "requiresAccessToken": requires_token,
            "output": output,
            "deleted": [],
            "error": errors,
        }

    def file(self, job_id: str, name: str) -> Path:
        job = self.get(job_id)
        known = {f.name for f in job.files} | ({"OperationOutcome.000.ndjson"} if job.errors else set())
        if not self.ready(job) or not _FILE_NAME.fullmatch(name) or name not in known:
            raise NotFoundError("no such export file")
        return job.folder / name

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        job.cancelled = True
        with self._lock:
            self._jobs.pop(job_id, None)
        if job.finished:
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
        for job in jobs:
            job.cancelled = True
        shutil.rmtree(self._root, ignore_errors=True)


def _outcome(message: str, severity: str = "error", code: str = "not-supported") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }


def parse_kickoff(
    store: FhirStore, level: str, group: str | None, args: list[tuple[str, str]], prefer: str
) -> tuple[ExportRequest, list[str]]:
    """The request of a kick-off, and the `_type` entries to report in the error file (lenient only).

    Raises CdsPluginError (400) for what the spec says a server must refuse.
    """
    preferences = {p.strip().lower() for p in prefer.split(",")}
    if "respond-async" not in preferences:
        raise CdsPluginError("$export needs the header 'Prefer: respond-async'", expression="Prefer")
    lenient = "handling=lenient" in preferences
    types: list[str] | None = None
    since = None
    unsupported: list[str] = []
    known = set(supported_types(store))
    for name, value in args:
        if name == "_outputFormat":
            if value not in NDJSON_FORMATS:
                raise CdsPluginError(
                    f"_outputFormat {value!r}: only NDJSON is supported", code="not-supported"
                )
        elif name == "_type":
            for rtype in (t.strip() for t in value.split(",")):
                if not rtype:
                    continue
                if not TYPE_RE.match(rtype):
                    raise CdsPluginError(f"_type: {rtype[:64]!r} is not a resource type", expression="_type")
                if rtype not in known:
                    if not lenient:
                        raise CdsPluginError(
                            f"_type: {rtype} is not supported", expression="_type", code="not-supported"
                        )
                    unsupported.append(rtype)
                    continue
                types = [*(types or []), rtype]
            if types is None:
                types = []
        elif name == "_since":
            rng = parse_date_range(value)
            if rng is None or "T" not in value:
                raise CdsPluginError("_since: expected a FHIR instant (with a time)", expression="_since")
            since = rng[0]
        elif not lenient:  # the spec's other parameters (UNSUPPORTED_PARAMS) and unknown ones
            what = "is not supported" if name in UNSUPPORTED_PARAMS else "is not a parameter of $export"
            raise CdsPluginError(f"{name[:64]} {what}", expression=name[:64], code="not-supported")
    request = ExportRequest(level, group, tuple(types) if types is not None else None, since)
    return request, unsupported
