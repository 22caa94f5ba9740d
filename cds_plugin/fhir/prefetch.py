"""CDS Hooks prefetch objects: `{key: resource | searchset Bundle | null}`.

A null value means the client could not or did not prefetch that key (CDS Hooks 2.0, "Prefetch");
the record notes it so the caller can decide whether to query the FHIR server instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any

from cds_plugin.errors import FhirInputError
from cds_plugin.fhir.build import Collected, Options, pick_record, read_entries
from cds_plugin.fhir.bundle import Entry, EntryCounter, iter_bundle
from cds_plugin.fhir.limits import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ENTRIES,
    Limits,
)
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.fhir.unread import NOT_CLINICAL, UNPARSEABLE


def iter_prefetch(
    prefetch: Mapping[str, Any],
    *,
    limits: Limits,
    counter: EntryCounter,
    notes: list[str],
    strict: bool = False,
    where: str = "prefetch",
    unread: Counter[str] | None = None,
) -> Iterator[Entry]:
    """Yield the resources of a prefetch object, in key order as given (values that are not resources
    counted in `unread`)."""
    unread = Counter() if unread is None else unread
    for key, value in prefetch.items():
        at = f"{where}.{key}"
        if value is None:
            notes.append(f"{at}: null (not prefetched)")
            continue
        if type(value) is not dict or type(value.get("resourceType")) is not str:
            message = f"{at}: not a FHIR resource or Bundle"
            if strict:
                raise FhirInputError(message, expression=at)
            notes.append(message + "; skipped")
            unread[UNPARSEABLE] += 1
            continue
        rtype = value["resourceType"]
        if rtype == "Bundle":
            yield from iter_bundle(
                value, at, limits=limits, counter=counter, notes=notes, strict=strict, unread=unread
            )
        elif rtype == "OperationOutcome":
            notes.append(f"{at}: OperationOutcome instead of data (the client could not prefetch)")
            unread[NOT_CLINICAL] += 1
        else:
            counter.add(1, at)
            yield Entry(value, None, at)


def read_prefetch(
    prefetch: Mapping[str, Any],
    *,
    patient_id: str | None = None,
    draft_orders: Mapping[str, Any] | None = None,
    as_of: datetime | date | None = None,
    strict: bool = False,
    validation: str = "fast",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> PatientRecord:
    """A hook call's patient record: the prefetch plus, for order-select/order-sign, `context.draftOrders`.

    `patient_id` is `context.patientId`: the prefetched Patient must be that patient.
    """
    options = Options.make(
        as_of=as_of,
        strict=strict,
        validation=validation,
        max_bytes=max_bytes,
        max_entries=max_entries,
        max_depth=max_depth,
    )
    if not isinstance(prefetch, Mapping) or "resourceType" in prefetch:
        raise FhirInputError("prefetch: not a prefetch object", expression="prefetch")
    counter = EntryCounter(options.limits)
    collected = Collected([], [])
    kwargs = {
        "limits": options.limits,
        "counter": counter,
        "notes": collected.notes,
        "strict": options.strict,
        "unread": collected.unread,
    }
    collected.entries.extend(iter_prefetch(dict(prefetch), where="prefetch", **kwargs))
    if draft_orders is not None:
        if not isinstance(draft_orders, Mapping) or draft_orders.get("resourceType") != "Bundle":
            raise FhirInputError("context.draftOrders: not a Bundle", expression="context.draftOrders")
        collected.entries.extend(iter_bundle(dict(draft_orders), "context.draftOrders", **kwargs))
    return pick_record(read_entries(collected, options), patient_id)
