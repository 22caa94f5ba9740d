"""Grouping a Bulk Data export by patient without holding it anywhere: a partitioned shuffle on disk.

NDJSON comes by resource type; the model needs each patient's resources together. Stage 1 (one task
per source file, on the Dask workers) reads its file line by line, checks each line, and appends it to
the piece of its patient's partition (a stable hash of `Patient/id` modulo the partition count), so a
patient's resources all land in one partition whatever file they came from. Medications name no patient:
stage 1 sets them aside and records which partitions' MedicationRequests reference each one, and stage 2
copies every Medication into exactly those partitions. Scoring then reads one partition at a time, so a
worker's memory follows the partition size, not the population.

Malformed lines are counted and kept as (file, line, reason), never copied; resources naming no patient
and types the model does not use are counted. A task writes its pieces into a temporary folder and
renames it into place when done: a piece set is whole or absent, and the run's manifest says which ones
a rerun may trust.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cds_plugin.errors import CdsPluginError
from cds_plugin.fhir.limits import DEFAULT_MAX_BYTES, Limits, loads
from cds_plugin.fhir.references import parse_reference, resource_key
from cds_plugin.fhir.resources import SUBJECT_ELEMENT, USED_TYPES
from cds_plugin.population.source import open_lines

#: Malformed lines kept with file and line per task; beyond this only the count grows.
MAX_EXAMPLES = 200
#: Lines buffered in memory (all partitions together) before they are appended to the pieces.
FLUSH_BYTES = 16 * 1024 * 1024
MEDICATIONS_FILE = "medications.ndjson"
REFS_FILE = "medication-refs.json"


def partition_of(patient: str, partitions: int) -> int:
    """The partition of `Patient/id`: stable across processes and machines (unlike `hash`)."""
    return zlib.crc32(patient.encode("utf-8")) % partitions


def piece_name(partition: int) -> str:
    return f"part-{partition:05d}.ndjson"


@dataclass
class SplitResult:
    """What one grouping task wrote and met. `folder` is relative to the groups folder."""

    key: str
    folder: str
    pieces: dict[int, int] = field(default_factory=dict)  # partition -> lines written
    lines: int = 0
    malformed: int = 0
    examples: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line from 1, reason)
    no_patient: Counter[str] = field(default_factory=Counter)  # by resource type
    not_used: Counter[str] = field(default_factory=Counter)  # resources of types the model does not use
    set_aside: int = 0  # Medications kept for stage 2 in folder/medications.ndjson
    unreferenced: int = 0  # Medications no MedicationRequest of the export references (stage 2)
    cpu_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "folder": self.folder,
            "pieces": {str(p): n for p, n in sorted(self.pieces.items())},
            "lines": self.lines,
            "malformed": self.malformed,
            "examples": [list(e) for e in self.examples],
            "no_patient": dict(self.no_patient),
            "not_used": dict(self.not_used),
            "set_aside": self.set_aside,
            "unreferenced": self.unreferenced,
            "cpu_seconds": self.cpu_seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SplitResult:
        return cls(
            key=data["key"],
            folder=data["folder"],
            pieces={int(p): n for p, n in data["pieces"].items()},
            lines=data["lines"],
            malformed=data["malformed"],
            examples=[tuple(e) for e in data["examples"]],  # type: ignore[misc]
            no_patient=Counter(data["no_patient"]),
            not_used=Counter(data["not_used"]),
            set_aside=data["set_aside"],
            unreferenced=data["unreferenced"],
            cpu_seconds=data.get("cpu_seconds", 0.0),
        )


class _Pieces:
    """Buffered appends to one task's piece files (few open files, bounded memory)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.buffers: dict[int, list[bytes]] = {}
        self.buffered = 0
        self.counts: dict[int, int] = {}

    def add(self, partition: int, line: bytes) -> None:
        self.buffers.setdefault(partition, []).append(line if line.endswith(b"\n") else line + b"\n")
        self.counts[partition] = self.counts.get(partition, 0) + 1
        self.buffered += len(line)
        if self.buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        for partition, lines in self.buffers.items():
            with (self.folder / piece_name(partition)).open("ab") as fh:
                fh.writelines(lines)
        self.buffers.clear()
        self.buffered = 0


def patient_of(resource: dict[str, Any], rtype: str) -> str | None:
    """`Patient/id` the resource belongs to: its own for a Patient, else what its patient element names
    (literal references only: `urn:uuid:` and conditional ones cannot be followed across files)."""
    if rtype == "Patient":
        return resource_key(resource)
    subject = resource.get(SUBJECT_ELEMENT[rtype])
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(ref, str):
        return None
    parsed = parse_reference(ref)
    if parsed.kind == "literal" and parsed.type == "Patient":
        return f"Patient/{parsed.id}"
    return None


def _medication_ref(resource: dict[str, Any]) -> str | None:
    value = resource.get("medicationReference")
    ref = value.get("reference") if isinstance(value, dict) else None
    if not isinstance(ref, str):
        return None
    parsed = parse_reference(ref)
    return f"Medication/{parsed.id}" if parsed.kind == "literal" and parsed.type == "Medication" else None


def _read_lines(stream: IO[bytes], max_bytes: int):  # type: ignore[no-untyped-def]
    """(line number from 1, bytes or None when longer than max_bytes) for each line."""
    number = 0
    while True:
        line = stream.readline(max_bytes + 1)
        if not line:
            return
        number += 1
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line
                rest = stream.readline(1024 * 1024)
                if not rest or rest.endswith(b"\n"):
                    break
            yield number, None
            continue
        yield number, line


def split_file(
    path: str,
    display_name: str,
    key: str,
    groups_dir: str,
    partitions: int,
    *,
    medication_map: dict[str, list[int]] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> SplitResult:
    """Stage 1 (`medication_map` None) or stage 2 (the map from stage 1) for one file; see the module doc.

    `display_name` names the file in problem reports. Runs on a worker; returns a small summary.
    """
    cpu = time.process_time()
    groups = Path(groups_dir)
    tmp = groups / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    result = SplitResult(key=key, folder=key)
    pieces = _Pieces(tmp)
    limits = Limits(max_bytes=max_bytes)
    refs: dict[str, set[int]] = {}
    set_aside: IO[bytes] | None = None
    try:
        with open_lines(path) as stream:
            for number, line in _read_lines(stream, max_bytes):
                if line is None:
                    _problem(result, display_name, number, f"line longer than {max_bytes} bytes")
                    continue
                if not line.strip():
                    continue
                result.lines += 1
                try:
                    resource = loads(line, limits, what="line")
                except CdsPluginError as exc:
                    _problem(result, display_name, number, exc.message.removeprefix("line: "))
                    continue
                rtype = resource.get("resourceType") if type(resource) is dict else None
                if type(rtype) is not str or not rtype[:1].isupper():
                    _problem(result, display_name, number, "not a FHIR resource (no resourceType)")
                    continue
                if rtype not in USED_TYPES:
                    result.not_used[rtype] += 1
                elif rtype == "Medication":
                    if medication_map is None:
                        if set_aside is None:
                            set_aside = (tmp / MEDICATIONS_FILE).open("wb")
                        set_aside.write(line if line.endswith(b"\n") else line + b"\n")
                        result.set_aside += 1
                        continue
                    targets = medication_map.get(resource_key(resource) or "")
                    if not targets:
                        result.unreferenced += 1
                    for partition in targets or ():
                        pieces.add(partition, line)
                else:
                    owner = patient_of(resource, rtype)
                    if owner is None:
                        result.no_patient[rtype] += 1
                        continue
                    partition = partition_of(owner, partitions)
                    pieces.add(partition, line)
                    if rtype == "MedicationRequest":
                        medication = _medication_ref(resource)
                        if medication is not None:
                            refs.setdefault(medication, set()).add(partition)
        pieces.flush()
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = exc.strerror or type(exc).__name__
        raise CdsPluginError(f"{display_name}: cannot be read, or its pieces written ({reason})") from None
    except (EOFError, zlib.error):
        shutil.rmtree(tmp, ignore_errors=True)
        raise CdsPluginError(f"{display_name}: truncated or corrupt gzip file") from None
    finally:
        if set_aside is not None:
            set_aside.close()
    result.pieces = dict(sorted(pieces.counts.items()))
    result.cpu_seconds = round(time.process_time() - cpu, 3)
    if refs:  # kept beside the pieces (not sent back: it grows with the export), read by stage 2
        (tmp / REFS_FILE).write_text(json.dumps({m: sorted(p) for m, p in refs.items()}), encoding="utf-8")
    target = groups / key
    if target.exists():  # a duplicate of this task finished first: same input, same pieces
        shutil.rmtree(target)
    os.rename(tmp, target)
    return result


def _problem(result: SplitResult, name: str, number: int, reason: str) -> None:
    result.malformed += 1
    if len(result.examples) < MAX_EXAMPLES:
        result.examples.append((name, number, reason))


def medication_map(groups_dir: str, results: list[SplitResult]) -> dict[str, list[int]]:
    """Medication/id -> every partition whose MedicationRequests reference it, over all stage-1 tasks."""
    merged: dict[str, set[int]] = {}
    for result in results:
        path = Path(groups_dir) / result.folder / REFS_FILE
        if not path.exists():
            continue
        for medication, partitions in json.loads(path.read_text(encoding="utf-8")).items():
            merged.setdefault(medication, set()).update(partitions)
    return {m: sorted(p) for m, p in merged.items()}


def pieces_of(partition: int, groups_dir: str, results: list[SplitResult]) -> list[str]:
    """Paths of every piece of one partition, in task order."""
    name = piece_name(partition)
    return [str(Path(groups_dir) / r.folder / name) for r in results if partition in r.pieces]
