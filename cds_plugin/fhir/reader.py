"""Any FHIR R4 input -> PatientRecord(s): input dispatch, patient grouping, reference resolution.

Accepted sources (see docs/fhir-input.md): a parsed JSON object (Bundle of any type, single resource,
CDS Hooks prefetch object), JSON text as `bytes`/`str` (gzip bytes too), a path to a `.json`,
`.json.gz`, `.ndjson` or `.ndjson.gz` file or to a folder of them, or a list of any of these read
together as one input (e.g. searchset pages, or a prefetch plus draft orders).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cds_plugin.errors import FhirInputError, InputLimitError
from cds_plugin.fhir.build import Collected, Options, pick_record, read_entries
from cds_plugin.fhir.bundle import Entry, EntryCounter, iter_bundle
from cds_plugin.fhir.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ENTRIES,
    Limits,
    gunzip,
    loads,
)
from cds_plugin.fhir.ndjson import is_dir, is_file, list_files, read_ndjson_files
from cds_plugin.fhir.prefetch import iter_prefetch
from cds_plugin.fhir.record import PatientRecord

Source = Mapping[str, Any] | bytes | bytearray | str | os.PathLike[str] | Sequence[Any]

_BUNDLE_SUFFIXES = (".json", ".json.gz")
_NDJSON_SUFFIXES = (".ndjson", ".ndjson.gz")


def read_record(
    source: Source,
    *,
    as_of: datetime | date | None = None,
    patient_id: str | None = None,
    strict: bool = False,
    validation: str = "fast",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> PatientRecord:
    """Read one patient's record from any accepted source.

    `as_of` cuts the record at that time (see as_of.py); without it nothing is cut and ages are computed
    at the time of the call (the one rule: reference_time.py). `patient_id` picks the patient when the
    input holds several (and must match when it holds one). `strict=True` turns skipped malformed
    resources into errors; a malformed or missing Patient is always an error. Raises FhirInputError or
    InputLimitError only.
    """
    options = Options.make(
        as_of=as_of,
        strict=strict,
        validation=validation,
        max_bytes=max_bytes,
        max_entries=max_entries,
        max_depth=max_depth,
    )
    path = _as_path(source)
    if path is not None and (is_dir(path) or path.name.endswith(_NDJSON_SUFFIXES)):
        records = list(_read_path_records(path, options))
        return pick_record(records, patient_id)
    records = read_entries(_source_entries(source, options), options)
    return pick_record(records, patient_id)


def read_records(
    source: Source,
    *,
    as_of: datetime | date | None = None,
    strict: bool = False,
    validation: str = "fast",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Iterator[PatientRecord]:
    """Every patient's record in a source: a folder is read file by file (limits apply per file),
    NDJSON is grouped by patient (limits apply per patient and per line)."""
    options = Options.make(
        as_of=as_of,
        strict=strict,
        validation=validation,
        max_bytes=max_bytes,
        max_entries=max_entries,
        max_depth=max_depth,
    )
    path = _as_path(source)
    if path is not None and (is_dir(path) or path.name.endswith(_NDJSON_SUFFIXES)):
        yield from _read_path_records(path, options)
        return
    yield from read_entries(_source_entries(source, options), options)


# --- sources -----------------------------------------------------------------------------------------


def _source_entries(source: Source, options: Options, where: str | None = None) -> Collected:
    counter = EntryCounter(options.limits)
    collected = Collected([], [])
    collected.entries.extend(_walk(source, options, counter, collected, where))
    return collected


def _walk(
    source: Any, options: Options, counter: EntryCounter, found: Collected, where: str | None, depth: int = 0
) -> Iterator[Entry]:
    _check_list_depth(depth, options, where)
    if isinstance(source, Mapping):
        data = source if type(source) is dict else dict(source)
        yield from _walk_json(data, options, counter, found, where)
        return
    if isinstance(source, bytes | bytearray | memoryview):
        yield from _walk_json(loads(source, options.limits), options, counter, found, where)
        return
    if isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        yield from _walk_json(loads(source, options.limits), options, counter, found, where)
        return
    path = _as_path(source)
    if path is not None:
        yield from _walk_json(_load_file(path, options.limits), options, counter, found, where or path.name)
        return
    if isinstance(source, list | tuple):
        for i, item in enumerate(source):
            yield from _walk(item, options, counter, found, f"{where or 'input'}[{i}]", depth + 1)
        return
    raise FhirInputError("input: not FHIR JSON, a file or a folder", expression=where or "$")


def _walk_json(
    data: Any, options: Options, counter: EntryCounter, found: Collected, where: str | None, depth: int = 0
) -> Iterator[Entry]:
    limits, strict = options.limits, options.strict
    notes, unread = found.notes, found.unread
    if type(data) is list:
        _check_list_depth(depth + 1, options, where)
        for i, item in enumerate(data):
            yield from _walk_json(item, options, counter, found, f"{where or 'input'}[{i}]", depth + 1)
        return
    if type(data) is not dict:
        raise FhirInputError("input: not a FHIR resource, Bundle or prefetch object", expression=where or "$")
    if "resourceType" not in data:
        yield from iter_prefetch(
            data,
            limits=limits,
            counter=counter,
            notes=notes,
            strict=strict,
            where=where or "prefetch",
            unread=unread,
        )
        return
    rtype = data["resourceType"]
    if type(rtype) is not str or not rtype:
        raise FhirInputError("input: resourceType: not a string", expression=f"{where or '$'}.resourceType")
    if rtype == "Bundle":
        yield from iter_bundle(
            data, where or "Bundle", limits=limits, counter=counter, notes=notes, strict=strict, unread=unread
        )
        return
    counter.add(1, where or rtype)
    yield Entry(data, None, where or rtype)


def _check_list_depth(depth: int, options: Options, where: str | None) -> None:
    if depth > options.limits.max_depth:
        raise InputLimitError(
            f"input: lists nested deeper than {options.limits.max_depth}", expression=where or "$"
        )


def _as_path(source: Any) -> Path | None:
    """A path source: os.PathLike, or a str that does not start like JSON text."""
    if isinstance(source, os.PathLike):
        return Path(source)
    if isinstance(source, str) and source.lstrip()[:1] not in ("{", "["):
        if not source.strip() or "\x00" in source:
            raise FhirInputError("input: empty or not a file name", expression="$")
        return Path(source)
    return None


def _load_file(path: Path, limits: Limits) -> Any:
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise InputLimitError(f"{path.name}: larger than {limits.max_bytes} bytes", expression=path.name)
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or "invalid file name"
        raise FhirInputError(f"{path.name}: cannot be read ({reason})", expression=path.name) from None
    if data[:2] == b"\x1f\x8b":
        data = gunzip(data, limits, what=path.name)
    return loads(data, limits, what=path.name)


def _read_path_records(path: Path, options: Options) -> Iterator[PatientRecord]:
    if is_dir(path):
        files = list_files(path, "*")
        bundles = [p for p in files if p.name.endswith(_BUNDLE_SUFFIXES)]
        ndjson = [p for p in files if p.name.endswith(_NDJSON_SUFFIXES)]
        if not bundles and not ndjson:
            raise FhirInputError(
                f"{path.name}: no .json, .json.gz, .ndjson or .ndjson.gz files", expression=path.name
            )
        for file in bundles:
            yield from read_entries(_source_entries(file, options), options)
        if ndjson:
            yield from read_ndjson_files(ndjson, options)
        return
    if not is_file(path):
        raise FhirInputError(f"{path.name}: no such file or folder", expression=path.name)
    yield from read_ndjson_files([path], options)
