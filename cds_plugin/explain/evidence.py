"""From position scores to evidence a clinician can check: one entry per FHIR resource of the input.

Every model position is exactly one fact (linearization segment) and every fact belongs to one resource,
so summing fact scores per resource loses nothing: for additive methods the evidence still adds up to
F(x) - F(baseline). References come from the segments, which name resources exactly as the input did, so
every evidence entry points at a resource the EHR sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cds_plugin.explain.explanation import Evidence, Explanation, FactScore
from cds_plugin.fhir.clinical_text import observation_value as clinical_value
from cds_plugin.fhir.record import Observation

if TYPE_CHECKING:
    from cds_plugin.explain.inputs import ExplainInput, Target
    from cds_plugin.fhir.linearize import Segment

#: Facts of one resource named in its display at most (a panel's components, the patient's age and sex).
MAX_PARTS = 3


def fact_scores(inp: ExplainInput, position_scores: np.ndarray) -> dict[int, float]:
    """Position scores keyed by linearization segment (segment index -> score)."""
    return {
        segment: float(score) for segment, score in zip(inp.position_segments, position_scores, strict=True)
    }


def _segment_part(segment: Segment, fact: Any, age: float | None) -> str:
    """What the fact is, with its value and unit for an observation, in clinical words (rounded to the
    quantity's precision, units as clinicians write them: cds_plugin.fhir.clinical_text)."""
    if segment.resource_type == "Patient":
        return segment.text
    if isinstance(fact, Observation):
        value = clinical_value(fact)
        return f"{segment.display} {value}".strip() if value else segment.display
    return segment.display


def displays(inp: ExplainInput) -> dict[str, str]:
    """A short display per resource of the input: "what, value and unit, date"."""
    cached = inp.cache.get("displays")
    if cached is not None:
        return cached
    facts: dict[tuple[str, str], Any] = {}
    age = None
    if inp.record is not None:
        age = inp.record.age
        facts = {(f.reference, f.path): f for f in inp.record.facts()}
    parts: dict[str, list[str]] = {}
    dates: dict[str, str] = {}
    segments = inp.linearization.segments
    for index in inp.position_segments:
        segment = segments[index]
        part = _segment_part(segment, facts.get((segment.reference, segment.path)), age)
        bucket = parts.setdefault(segment.reference, [])
        if part and part not in bucket:
            bucket.append(part)
        if segment.date is not None and segment.reference not in dates:
            dates[segment.reference] = segment.date.date().isoformat()
    out = {}
    for reference, bucket in parts.items():
        text = "; ".join(bucket[:MAX_PARTS]) + (" …" if len(bucket) > MAX_PARTS else "")
        out[reference] = f"{text}, {dates[reference]}" if reference in dates else text
    inp.cache["displays"] = out
    return out


def evidence_of(inp: ExplainInput, per_fact: Mapping[int, float]) -> list[Evidence]:
    """Fact scores summed per resource, sorted by |score| (input order among equals)."""
    totals: dict[str, float] = {}
    kinds: dict[str, str] = {}
    segments = inp.linearization.segments
    for index in inp.position_segments:
        segment = segments[index]
        totals[segment.reference] = totals.get(segment.reference, 0.0) + per_fact.get(index, 0.0)
        kinds.setdefault(segment.reference, segment.resource_type)
    magnitude = sum(abs(v) for v in totals.values())
    names = displays(inp)
    entries = [
        Evidence(
            reference=reference,
            resource_type=kinds[reference],
            display=names.get(reference, reference),
            score=score,
            share=abs(score) / magnitude if magnitude > 0 else 0.0,
        )
        for reference, score in totals.items()
    ]
    order = sorted(range(len(entries)), key=lambda i: -abs(entries[i].score))
    return [entries[i] for i in order]


def build(
    inp: ExplainInput,
    target: Target,
    *,
    method: str,
    settings: Mapping[str, Any],
    label_specific: bool,
    score_unit: str,
    position_scores: np.ndarray | None = None,
    per_fact: Mapping[int, float] | None = None,
    f_x: float | None = None,
    f_baseline: float | None = None,
    completeness_error: float | None = None,
    warnings: Sequence[str] = (),
    elapsed_s: float = 0.0,
) -> Explanation:
    """An Explanation from scores per model position (or per segment, `per_fact`)."""
    if per_fact is None:
        if position_scores is None:
            raise ValueError("build: position_scores or per_fact is needed")
        per_fact = fact_scores(inp, position_scores)
    segments = inp.linearization.segments
    facts = [
        FactScore(
            segment=index,
            reference=segments[index].reference,
            path=segments[index].path,
            text=segments[index].text,
            score=float(per_fact.get(index, 0.0)),
        )
        for index in inp.position_segments
    ]
    return Explanation(
        model_version=inp.engine.version,
        method=method,
        settings=dict(settings),
        target=target.explained(),
        probability=float(inp.probabilities[target.label_index]),
        label_specific=label_specific,
        score_unit=score_unit,
        evidence=evidence_of(inp, per_fact),
        facts=facts,
        f_x=f_x,
        f_baseline=f_baseline,
        completeness_error=completeness_error,
        reference_time=inp.reference_time,
        warnings=list(warnings),
        elapsed_s=elapsed_s,
    )
