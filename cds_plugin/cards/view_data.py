"""The explanation view's data for one card: what the page shows, stored with the card.

Kept as plain JSON (stored in the database, read by the view and by tests): the consideration, each
method's explanation, and the patient's facts (what, date, resource) for the timeline, coloured by the
integrated-gradients contribution of their resource.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cds_plugin.cards.card_builder import CAVEAT, FactIndex, evidence_rows
from cds_plugin.explain.explanation import Explanation
from cds_plugin.fhir import unread
from cds_plugin.fhir.linearize import Linearization, Segment
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.model.assessment import Consideration

VIEW_FORMAT = 1


def view_payload(
    consideration: Consideration,
    explanations: dict[str, Explanation],
    record: PatientRecord | None,
    linearization: Linearization | None,
    *,
    model_version: str,
    service_id: str,
    card_uuid: str,
    hook_instance: str,
    model_card_url: str | None,
) -> dict[str, Any]:
    primary = explanations.get("integrated_gradients") or next(iter(explanations.values()), None)
    by_reference = {e.reference: e.score for e in primary.evidence} if primary else {}
    timeline = []
    if linearization is not None:
        seen = set()
        for segment in linearization.segments:
            if segment.reference in seen or segment.resource_type == "Patient":
                continue
            seen.add(segment.reference)
            timeline.append(
                {
                    "reference": segment.reference,
                    "resource_type": segment.resource_type,
                    "display": segment.display,
                    "text": segment.text,
                    "date": segment.date.isoformat() if segment.date else None,
                    "score": by_reference.get(segment.reference),
                }
            )
    rows = evidence_rows(primary, record, n=12) if primary else []
    return {
        "format": VIEW_FORMAT,
        "service_id": service_id,
        "card_uuid": card_uuid,
        "hook_instance": hook_instance,
        "model_version": model_version,
        "model_card_url": model_card_url,
        "caveat": CAVEAT,
        "consideration": consideration.to_json(),
        "explanations": {name: e.to_json() for name, e in explanations.items()},
        # the method whose numbers the card showed (the first given): the page says when it is not IG
        "card_method": next(iter(explanations), None),
        "evidence_rows": [
            {
                "reference": r.reference,
                "kind": r.kind,
                "what": r.what,
                "value": r.value,
                "date": r.date,
                "score": r.score,
            }
            for r in rows
        ],
        # every resource of the model input in clinical words, for the rows of the other methods
        "resources": _described(record, linearization),
        "timeline": timeline,
        "patient_reference": record.reference if record is not None else None,
        # what the call's resources became: read, or unread by reason (counts only, no patient data)
        "input": input_account(record) if record is not None else None,
        # the model input, so the view can run other methods (attention, SHAP) on the same facts later
        "reference_time": linearization.reference_time.isoformat() if linearization is not None else None,
        "segments": [segment_json(s) for s in linearization.segments] if linearization is not None else [],
    }


def _described(record: PatientRecord | None, linearization: Linearization | None) -> dict[str, Any]:
    if linearization is None:
        return {}
    index = FactIndex(record)
    out: dict[str, Any] = {}
    for segment in linearization.segments:
        if segment.reference not in out:
            kind, what, value, date = index.describe(
                segment.reference, segment.resource_type, segment.display
            )
            out[segment.reference] = {"kind": kind, "what": what, "value": value, "date": date}
    return out


def input_account(record: PatientRecord) -> dict[str, Any]:
    """The record's resource accounting (cds_plugin.fhir.unread) for the page."""
    return {
        **unread.summary(record),
        "readable": unread.readable(record),
        "not_used_types": dict(sorted(record.skipped.items())),
    }


def segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "text": segment.text,
        "reference": segment.reference,
        "resource_type": segment.resource_type,
        "path": segment.path,
        "date": segment.date.isoformat() if segment.date else None,
        "display": segment.display,
        "code": segment.code,
        "value": segment.value,
        "unit": segment.unit,
        "value_code": segment.value_code,
        "status": segment.status,
    }


def linearization_from_payload(payload: dict[str, Any]) -> Linearization:
    """Rebuild the stored model input's linearization (same segments, same order)."""
    segments = tuple(
        Segment(
            text=s["text"],
            reference=s["reference"],
            resource_type=s["resource_type"],
            path=s["path"],
            date=datetime.fromisoformat(s["date"]) if s.get("date") else None,
            display=s["display"],
            code=s.get("code"),
            value=s.get("value"),
            unit=s.get("unit"),
            value_code=s.get("value_code"),
            status=s.get("status"),
        )
        for s in payload.get("segments", [])
    )
    return Linearization(segments=segments, reference_time=datetime.fromisoformat(payload["reference_time"]))
