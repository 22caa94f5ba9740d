"""The tasks that score a partition of patients and explain the top of the worklist, run on Dask workers.

`score_partition` reads one partition's pieces (cds_plugin.population.grouping), builds each patient's
record, rates them with `Engine.assess_many` and writes two files: the worklist rows (one per patient
and consideration at or above its threshold and not already documented) and one row per patient (scored
or unreadable, and why). `explain_partition` re-reads a partition for the few patients whose rows made
the top of the list and adds the top-3 integrated-gradients evidence of those rows. Files are written
to a temporary name and renamed, so each is whole or absent; a task run twice (a worker killed after
writing but before reporting) writes the same content again.
"""

from __future__ import annotations

import json
import os
import re
import resource
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cds_plugin.errors import CdsPluginError
from cds_plugin.fhir.build import Collected, Options, read_entries
from cds_plugin.fhir.bundle import Entry
from cds_plugin.fhir.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.fhir.references import ResourceIndex, resource_key
from cds_plugin.population.cluster import worker_engine
from cds_plugin.population.evidence import describe
from cds_plugin.population.grouping import patient_of

EVIDENCE_PER_ROW = 3
EVIDENCE_FIELDS = ("reference", "what", "value", "date", "attribution")

ROW_SCHEMA = pa.schema(
    [
        ("patient", pa.string()),
        ("code", pa.string()),
        ("display", pa.string()),
        ("kind", pa.string()),
        ("probability", pa.float64()),
        ("threshold", pa.float64()),
    ]
)
PATIENT_SCHEMA = pa.schema(
    [
        ("patient", pa.string()),
        ("status", pa.string()),  # scored | unreadable
        ("reason", pa.string()),
        ("suggestions", pa.int32()),
        ("skipped_resources", pa.int32()),
    ]
)
EVIDENCE_SCHEMA = pa.schema(
    [("patient", pa.string()), ("kind", pa.string()), ("code", pa.string())]
    + [
        (f"evidence_{i}_{name}", pa.float64() if name == "attribution" else pa.string())
        for i in range(1, EVIDENCE_PER_ROW + 1)
        for name in EVIDENCE_FIELDS
    ]
)

_NAMED = re.compile(r"^([A-Z][A-Za-z]+)(?:/[^\s:]+| at \S+)")


def reason_of(message: str) -> str:
    """A problem message without the resource id or file position it starts with, to count by reason."""
    return _NAMED.sub(r"\1", message).removesuffix("; skipped")


def score_file(parts_dir: str, partition: int) -> Path:
    return Path(parts_dir) / f"score-{partition:05d}.parquet"


def patients_file(parts_dir: str, partition: int) -> Path:
    return Path(parts_dir) / f"patients-{partition:05d}.parquet"


def write_atomic(table: pa.Table, path: Path) -> None:
    """Write a Parquet file under a temporary name and rename it into place."""
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class Partition:
    """One partition read back: each patient's entries (Patient first) and the shared Medications."""

    patients: dict[str, list[Entry]] = field(default_factory=dict)
    medications: ResourceIndex = field(default_factory=ResourceIndex)
    orphans: Counter[str] = field(default_factory=Counter)  # resources of a patient not in the export


def read_partition(pieces: list[str], wanted: set[str] | None = None) -> Partition:
    """Group a partition's lines by patient (`wanted`: only those patients)."""
    out = Partition()
    others: dict[str, list[Entry]] = {}
    for path in pieces:
        name = Path(path).parent.name
        with open(path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                resource_ = json.loads(line)
                rtype = resource_["resourceType"]
                if rtype == "Medication":
                    out.medications.add(resource_, None, resource_key(resource_))
                    continue
                owner = patient_of(resource_, rtype)
                if owner is None or (wanted is not None and owner not in wanted):
                    continue
                entry = Entry(resource_, None, f"{name}:{number}")
                if rtype == "Patient":
                    out.patients.setdefault(owner, []).insert(0, entry)
                else:
                    others.setdefault(owner, []).append(entry)
    for owner, entries in others.items():
        if owner in out.patients:
            out.patients[owner].extend(entries)
        else:
            for entry in entries:
                out.orphans[entry.resource["resourceType"]] += 1
    return out


def _options(max_bytes: int) -> Options:
    # max_entries: each patient's resources are already bounded by the partition size on disk
    return Options.make(
        as_of=None,
        strict=False,
        validation="fast",
        max_bytes=max_bytes,
        max_entries=10**9,
        max_depth=DEFAULT_MAX_DEPTH,
    )


def build_records(
    partition: Partition, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[list[PatientRecord], list[tuple[str, str]]]:
    """Each patient's record, and (patient, reason) for those that cannot be read. Frees the entries."""
    options = _options(max_bytes)
    records, unreadable = [], []
    for key in list(partition.patients):
        entries = partition.patients.pop(key)
        try:
            found = read_entries(Collected(entries, []), options, shared=partition.medications)
        except CdsPluginError as exc:
            unreadable.append((key, reason_of(exc.message)))
            continue
        records.extend(found)
    return records, unreadable


def score_partition(
    partition: int, pieces: list[str], parts_dir: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, Any]:
    """Score one partition (see the module docstring); returns counts for the run's manifest."""
    started, cpu = time.perf_counter(), time.process_time()
    engine = worker_engine()
    data = read_partition(pieces)
    records, unreadable = build_records(data, max_bytes)
    assessments = engine.assess_many(records) if records else []
    rows: dict[str, list[Any]] = {name: [] for name in ROW_SCHEMA.names}
    people: dict[str, list[Any]] = {name: [] for name in PATIENT_SCHEMA.names}
    issues: Counter[str] = Counter()
    for record, assessment in zip(records, assessments, strict=True):
        suggested = [
            c for c in assessment.considerations if c.probability >= c.threshold and not c.documented
        ]
        for c in suggested:
            rows["patient"].append(record.reference)
            rows["code"].append(c.code)
            rows["display"].append(c.display)
            rows["kind"].append(c.kind)
            rows["probability"].append(float(c.probability))
            rows["threshold"].append(float(c.threshold))
        skipped = [i for i in record.issues if i.endswith("; skipped")]
        issues.update(reason_of(i) for i in skipped)
        for name, value in zip(
            PATIENT_SCHEMA.names, (record.reference, "scored", "", len(suggested), len(skipped)), strict=True
        ):
            people[name].append(value)
    for key, reason in unreadable:
        for name, value in zip(PATIENT_SCHEMA.names, (key, "unreadable", reason, 0, 0), strict=True):
            people[name].append(value)
    write_atomic(pa.table(rows, schema=ROW_SCHEMA), score_file(parts_dir, partition))
    write_atomic(pa.table(people, schema=PATIENT_SCHEMA), patients_file(parts_dir, partition))
    return {
        "partition": partition,
        "patients": len(records),
        "unreadable": len(unreadable),
        "unreadable_reasons": dict(Counter(reason for _, reason in unreadable)),
        "rows": len(rows["patient"]),
        "orphans": dict(data.orphans),
        "skipped_in_records": dict(issues),
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "pid": os.getpid(),
        "peak_rss": peak_rss_bytes(),
    }


def explain_partition(
    partition: int,
    pieces: list[str],
    wanted: list[tuple[str, str, str]],
    parts_dir: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> dict[str, Any]:
    """Top-3 integrated-gradients evidence for the (patient, kind, code) rows `wanted` of one partition.

    Writes `explain-PPPPP-XXXXXXXX.parquet`; returns its name and the keys it holds (rows that could not
    be explained are absent from the file and counted in `failed`).
    """
    started, cpu = time.perf_counter(), time.process_time()
    engine = worker_engine()
    by_patient: dict[str, set[tuple[str, str]]] = {}
    for patient, kind, code in wanted:
        by_patient.setdefault(patient, set()).add((kind, code))
    records, _ = build_records(read_partition(pieces, set(by_patient)), max_bytes)
    columns: dict[str, list[Any]] = {name: [] for name in EVIDENCE_SCHEMA.names}
    keys: list[list[str]] = []
    for record, assessment in zip(records, engine.assess_many(records) if records else [], strict=True):
        targets = [c for c in assessment.considerations if (c.kind, c.code) in by_patient[record.reference]]
        if not targets:
            continue
        try:
            explanations = engine.explain(assessment, targets, method="integrated_gradients")
        except CdsPluginError:
            continue
        for target, explanation in zip(targets, explanations, strict=True):
            columns["patient"].append(record.reference)
            columns["kind"].append(target.kind)
            columns["code"].append(target.code)
            top = explanation.top(EVIDENCE_PER_ROW)
            for i in range(EVIDENCE_PER_ROW):
                evidence = top[i] if i < len(top) else None
                what, value, date = (
                    describe(record, evidence.reference, evidence.display) if evidence else ("",) * 3
                )
                prefix = f"evidence_{i + 1}_"
                columns[prefix + "reference"].append(evidence.reference if evidence else None)
                columns[prefix + "what"].append(what or None)
                columns[prefix + "value"].append(value or None)
                columns[prefix + "date"].append(date or None)
                columns[prefix + "attribution"].append(float(evidence.score) if evidence else None)
            keys.append([record.reference, target.kind, target.code])
    failed = len(wanted) - len(keys)  # unreadable now, no longer suggested, or the explanation failed
    name = f"explain-{partition:05d}-{uuid.uuid4().hex[:8]}.parquet"
    write_atomic(pa.table(columns, schema=EVIDENCE_SCHEMA), Path(parts_dir) / name)
    return {
        "partition": partition,
        "file": name,
        "keys": keys,
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(time.process_time() - cpu, 3),
        "pid": os.getpid(),
        "peak_rss": peak_rss_bytes(),
    }
