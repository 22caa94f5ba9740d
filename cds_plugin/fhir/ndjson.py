"""FHIR Bulk Data export (NDJSON): one resource per line, one file per resource type, many patients.

Files named after a type the model does not use (`Claim.ndjson`, `ExplanationOfBenefit.000.ndjson`)
are not opened. Other files are read line by line (`max_bytes` applies per line), resources are grouped
by the patient they name, Medications are shared by all patients, and each patient's group becomes one
record (`max_entries` applies per patient). The used resources of the export are held in memory.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import IO

from cds_plugin.errors import FhirInputError, InputLimitError
from cds_plugin.fhir.build import Collected, Options, read_entries
from cds_plugin.fhir.bundle import Entry, EntryCounter
from cds_plugin.fhir.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_DEPTH, DEFAULT_MAX_ENTRIES, loads
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.fhir.references import ResourceIndex, parse_reference, resource_key
from cds_plugin.fhir.resources import SUBJECT_ELEMENT, USED_TYPES

_TYPE_PREFIX = re.compile(r"([A-Z][A-Za-z]+)(?:[._-].*)?")


def read_ndjson(
    paths: str | Path | Iterable[str | Path],
    *,
    as_of: datetime | date | None = None,
    strict: bool = False,
    validation: str = "fast",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Iterator[PatientRecord]:
    """One record per Patient of a bulk export (a folder, one file, or a list of files)."""
    options = Options.make(
        as_of=as_of,
        strict=strict,
        validation=validation,
        max_bytes=max_bytes,
        max_entries=max_entries,
        max_depth=max_depth,
    )
    if isinstance(paths, str | Path):
        root = Path(paths)
        files = list_files(root, "*.ndjson*") if is_dir(root) else [root]
    else:
        files = [Path(p) for p in paths]
    yield from read_ndjson_files(files, options)


def read_ndjson_files(files: list[Path], options: Options) -> Iterator[PatientRecord]:
    """Records of the patients in these NDJSON files (see the module docstring)."""
    limits = options.limits
    notes: list[str] = []
    patients: dict[str, list[Entry]] = {}
    orphans: dict[str, list[Entry]] = {}
    medications = ResourceIndex()
    unassigned = 0
    for path in files:
        type_match = _TYPE_PREFIX.fullmatch(path.name)
        if type_match and type_match.group(1) not in USED_TYPES and type_match.group(1) != "Bundle":
            continue  # a file of a type the model does not use: not opened
        for number, line in _lines(path, limits.max_bytes):
            where = f"{path.name}[{number}]"
            if not line.strip():
                continue
            resource = loads(line, limits, what=where)
            if type(resource) is not dict or type(resource.get("resourceType")) is not str:
                message = f"{where}: not a FHIR resource"
                if options.strict:
                    raise FhirInputError(message, expression=where)
                notes.append(message + "; skipped")
                continue
            rtype = resource["resourceType"]
            if rtype not in USED_TYPES:
                continue
            entry = Entry(resource, None, where)
            if rtype == "Patient":
                key = resource_key(resource) or where
                patients.setdefault(key, []).insert(0, entry)
                continue
            if rtype == "Medication":
                medications.add(resource, None, resource_key(resource))
                continue
            owner = _subject_key(resource, rtype)
            if owner is None:
                unassigned += 1
                continue
            (patients if owner in patients else orphans).setdefault(owner, []).append(entry)
    for key, entries in orphans.items():
        if key in patients:
            patients[key].extend(entries)
        else:
            unassigned += len(entries)
    if unassigned:
        notes.append(f"{unassigned} resource(s) name no patient of the export; skipped")
    if not patients:
        raise FhirInputError("NDJSON: no Patient resource", expression="Patient")
    for key, entries in patients.items():
        if entries[0].resource.get("resourceType") != "Patient":
            continue  # resources of a patient that is not in the export (counted above)
        counter = EntryCounter(limits)
        counter.add(len(entries), key)
        yield from read_entries(Collected(entries, list(notes)), options, shared=medications)


def is_dir(path: Path) -> bool:
    """Path.is_dir that answers False instead of raising (name too long, bad characters)."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def list_files(folder: Path, pattern: str) -> list[Path]:
    """Files under `folder` matching `pattern`, recursively, in name order."""
    try:
        return sorted(p for p in folder.rglob(pattern) if p.is_file())
    except OSError as exc:
        raise FhirInputError(
            f"{folder.name}: cannot be listed ({exc.strerror or type(exc).__name__})", expression=folder.name
        ) from None


def _subject_key(resource: dict, rtype: str) -> str | None:
    subject = resource.get(SUBJECT_ELEMENT[rtype])
    if type(subject) is not dict:
        return None
    ref = subject.get("reference")
    if type(ref) is not str:
        return None
    parsed = parse_reference(ref)
    if parsed.kind == "literal" and parsed.type == "Patient":
        return f"Patient/{parsed.id}"
    if parsed.kind == "urn" and parsed.id is not None:
        return f"Patient/{parsed.id}"  # `urn:uuid:<id>` naming the Patient's id
    return None


def _lines(path: Path, max_bytes: int) -> Iterator[tuple[int, bytes]]:
    try:
        with path.open("rb") as raw:
            magic = raw.read(2)
            raw.seek(0)
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
            number = 0
            while True:
                line = stream.readline(max_bytes + 1)
                if not line:
                    return
                if len(line) > max_bytes and not line.endswith(b"\n"):
                    raise InputLimitError(
                        f"{path.name}[{number}]: line longer than {max_bytes} bytes",
                        expression=f"{path.name}[{number}]",
                    )
                yield number, line
                number += 1
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise FhirInputError(
            f"{path.name}: cannot be read ({type(exc).__name__})", expression=path.name
        ) from None
