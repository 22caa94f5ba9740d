"""Considerations and their evidence -> spec-exact CDS Hooks cards.

A card says what to consider, how likely, and why, in a form a clinician reads in seconds: a summary
under 140 characters, one plain sentence of rationale built from the top evidence, then the evidence as
a table, the method and its completeness error, the model version, and the caveat. The indicator comes
from the calibrated probability (bands below); these cards never use "critical": they are suggestions
from a model, not safety alerts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds_plugin.explain.explanation import PROBABILITY, Explanation
from cds_plugin.fhir import clinical_text, unread
from cds_plugin.fhir.record import Observation, PatientRecord
from cds_plugin.fhir.values import age_band
from cds_plugin.hooks.card import SUMMARY_MAX, Action, Card, Link, Source, Suggestion, new_uuid
from cds_plugin.hooks.coding import Coding
from cds_plugin.model.assessment import Consideration
from cds_plugin.model.concepts import DIAGNOSIS

#: Calibrated probability bands -> card indicator (docs/cards.md).
WARNING_AT = 0.80
CAVEAT = "Model trained on synthetic (Synthea) data; not for clinical use. Review the evidence before acting."
OVERRIDE_SYSTEM = "urn:cds-plugin:override-reason"
OVERRIDE_REASONS = (
    ("already-addressed", "Already addressed"),
    ("not-clinically-relevant", "Not clinically relevant"),
    ("disagree-with-evidence", "Disagree with the evidence"),
    ("patient-preference", "Patient preference"),
)
METHOD_NAMES = {
    "integrated_gradients": "integrated gradients",
    "attention_gradient": "attention x gradient rollout",
    "attention": "attention rollout",
    "shap": "SHAP",
}


def indicator_for(probability: float) -> str:
    """warning at calibrated p >= 0.80, else info (documented in docs/cards.md)."""
    return "warning" if probability >= WARNING_AT else "info"


@dataclass(frozen=True)
class EvidenceRow:
    """One evidence line for people: what, value, date, signed contribution, and the kind of fact
    (lab, vital sign, problem, medication...), all in clinical words (cds_plugin.fhir.clinical_text)."""

    reference: str
    what: str
    value: str
    date: str
    score: float
    kind: str = ""


#: What the Patient resource's row is called: the model reads the patient's age band and sex from it.
DEMOGRAPHICS = "Age and sex"


class FactIndex:
    """The record's facts by resource reference (a panel's components share one), built once per card."""

    def __init__(self, record: PatientRecord | None) -> None:
        self.record = record
        self.by_reference: dict[str, list[Any]] = {}
        if record is not None:
            for fact in record.facts():
                self.by_reference.setdefault(fact.reference, []).append(fact)

    def describe(self, reference: str, resource_type: str, display: str) -> tuple[str, str, str, str]:
        """(kind, what, value, date) of one resource in clinical words; `display` when no fact is known."""
        facts = self.by_reference.get(reference, [])
        if not facts:
            fallback = re.sub(r",\s*\d{4}-\d{2}-\d{2}$", "", display)
            return clinical_text.kind_of(resource_type), fallback, "", ""
        fact = facts[0]
        kind = clinical_text.kind_of(resource_type, fact)
        if resource_type == "Patient":
            return kind, DEMOGRAPHICS, self._demographics(display), ""
        if isinstance(fact, Observation):
            components = [f for f in facts if isinstance(f, Observation) and f.panel is not None]
            if len(components) > 1 or (components and fact.path.startswith("Observation.component")):
                panel = components[0].panel
                what = (panel.display if panel is not None else None) or _what(fact, display)
                return (
                    kind,
                    what,
                    clinical_text.panel_value(components),
                    clinical_text.clinical_date(fact.date),
                )
            return kind, _what(fact, display), clinical_text.observation_value(fact), _date(fact)
        return kind, _what(fact, display), "", _date(fact)

    def _demographics(self, display: str) -> str:
        """`age 55-59, female` (age in the model's bands: no finer, it identifies)."""
        if self.record is None:
            return display
        patient = self.record.patient
        parts = [f"age {age_band(self.record.age)}", patient.sex or "sex unknown"]
        if self.record.deceased:
            parts.append("deceased")
        return ", ".join(parts)


def _what(fact: Any, display: str) -> str:
    concept = getattr(fact, "code", None)
    if concept is None and getattr(fact, "types", None):
        concept = fact.types[0]  # encounters are named by their type
    if concept is None and getattr(fact, "categories", None) and hasattr(fact.categories[0], "display"):
        concept = fact.categories[0]  # care plans by their category
    what = concept.display if concept is not None and hasattr(concept, "display") else None
    return what or re.sub(r",\s*\d{4}-\d{2}-\d{2}$", "", display)


def _date(fact: Any) -> str:
    return clinical_text.clinical_date(fact.date) if isinstance(fact.date, datetime) else ""


def evidence_rows(explanation: Explanation, record: PatientRecord | None, n: int = 5) -> list[EvidenceRow]:
    """The top evidence with kind/what/value/date read from the patient's own facts where possible."""
    index = FactIndex(record)
    rows = []
    for ev in explanation.top(n):
        kind, what, value, date = index.describe(ev.reference, ev.resource_type, ev.display)
        rows.append(EvidenceRow(ev.reference, what, value, date, ev.score, kind))
    return rows


def _phrase(row: EvidenceRow) -> str:
    if row.what == DEMOGRAPHICS and row.value:
        return row.value  # "age 75-79, male", not "Age and sex age 75-79, male"
    parts = [row.what]
    if row.value:
        parts.append(row.value)
    text = " ".join(parts)
    return f"{text} on {row.date}" if row.date else text


def rationale(consideration: Consideration, rows: Sequence[EvidenceRow], additive: bool) -> str:
    """One plain sentence: 'Suggested mainly because of A and B; C pointed the other way.'"""
    up = [r for r in rows if r.score > 0][:2]
    down = [r for r in rows if r.score < 0][:1] if additive else []
    if not up:
        return (
            f"The model rates {consideration.display} at {consideration.probability:.0%}; "
            "no single fact stands out."
        )
    sentence = "Suggested mainly because of " + " and ".join(_phrase(r) for r in up)
    if down:
        sentence += f"; {_phrase(down[0])} pointed the other way"
    return sentence + "."


def change_sentence(explanation: Explanation, rows: Sequence[EvidenceRow]) -> str | None:
    """What additive contributions add up to, so a reader takes them as shares of one change: from the
    method's baseline (for integrated gradients from empty facts: an empty record) to the patient's
    probability. When they cancel, one contribution can exceed that change, even 1, which would read as
    an impossible change in probability: the sentence says so."""
    if explanation.f_x is None or explanation.f_baseline is None:
        return None
    empty = explanation.method == "integrated_gradients" and explanation.settings.get("baseline") == "mask"
    start = "an empty record's" if empty else "the baseline's"
    change = explanation.f_x - explanation.f_baseline
    sentence = (
        f"The contributions add up to the change from {start} {explanation.f_baseline:.2f} to this "
        f"record's {explanation.f_x:.2f}"
    )
    if any(abs(r.score) > abs(change) for r in rows):
        sentence += "; they partly cancel, so one alone can exceed that change"
    return sentence + "."


def _md(text: str) -> str:
    """Escape table-breaking characters of patient-derived text."""
    return text.replace("|", "\\|").replace("\n", " ").replace("*", "\\*").replace("_", "\\_")


def detail_markdown(
    consideration: Consideration,
    explanation: Explanation | None,
    record: PatientRecord | None,
    model_version: str,
    explanation_note: str | None = None,
) -> str:
    lines = []
    if explanation is not None and explanation.evidence:
        additive = explanation.score_unit == PROBABILITY
        rows = evidence_rows(explanation, record)
        lines.append(_md(rationale(consideration, rows, additive)))
        lines.append("")
        unit = "contribution (probability)" if additive else "relevance"
        lines.append(f"| Kind | What | Value | Date | {unit} |")
        lines.append("|---|---|---|---|---|")
        for r in rows:
            arrow = ("▲ +" if r.score > 0 else "▼ ") if additive else ""
            lines.append(f"| {r.kind} | {_md(r.what)} | {_md(r.value)} | {r.date} | {arrow}{r.score:.3f} |")
        lines.append("")
        method = METHOD_NAMES.get(explanation.method, explanation.method)
        if explanation.completeness_error is not None:
            method += f" (completeness error {explanation.completeness_error:.1%})"
        lines.append(f"Explained by {method}.")
        frame = change_sentence(explanation, rows) if additive else None
        if frame:
            lines.append(frame)
        if explanation_note:
            lines.append("")
            lines.append(_md(explanation_note))
    else:
        lines.append(f"The model rates {_md(consideration.display)} at {consideration.probability:.0%}.")
    lines.append(
        f"Probability {consideration.probability:.2f} (threshold {consideration.threshold:.2f}); "
        f"model {model_version}."
    )
    lost = unread.could_not_read_sentence(record) if record is not None else None
    if lost:
        lines.append("")
        lines.append(f"**{_md(lost)}**: the model did not see them (listed on the explanation page).")
    lines.append("")
    lines.append(f"*{CAVEAT}*")
    return "\n".join(lines)


def no_facts_card(record: PatientRecord, source_label: str, model_card_url: str | None) -> Card:
    """The one card of a call whose record holds no clinical facts: no considerations, and why (an
    empty answer would read as "nothing to consider"). Information only: no suggestion, no action."""
    lost = unread.could_not_read(record)
    if lost:
        summary = "No considerations: none of this patient's clinical data could be read"
        why = f"**{_md(unread.could_not_read_sentence(record) or '')}**."
    else:
        summary = "No considerations: no clinical data about this patient was received"
        others = record.resources - 1
        why = (
            "The call carried the Patient resource only."
            if others <= 0
            else f"Besides the Patient, the call carried {others} resources, none of them clinical data "
            "the model reads."
        )
    lines = [
        "The model read 0 clinical facts (only age and sex), so it offers no considerations rather than a "
        "guess from demographics alone.",
        "",
        why,
        "",
        "Check that the EHR sends the patient's conditions, medications and observations (prefetch) or "
        "lets this service query its FHIR server.",
        "",
        f"*{CAVEAT}*",
    ]
    return Card(
        uuid=new_uuid(),
        summary=summary,
        detail="\n".join(lines),
        indicator="info",
        source=Source(label=source_label, url=model_card_url),
    )


def summary_for(consideration: Consideration) -> str:
    where = "not on the problem list" if consideration.kind == DIAGNOSIS else "not prescribed"
    tail = f": {where} (p {consideration.probability:.2f})"
    display = consideration.display
    room = SUMMARY_MAX - 1 - len("Consider ") - len(tail)
    if len(display) > room:
        display = display[: room - 1].rstrip() + "…"
    return f"Consider {display}{tail}"


def suggestion_for(consideration: Consideration, patient_id: str) -> Suggestion:
    """A concrete FHIR action: a provisional problem-list Condition, or a draft MedicationRequest proposal."""
    coding = {"system": consideration.system, "code": consideration.code, "display": consideration.display}
    subject = {"reference": f"Patient/{patient_id}"}
    if consideration.kind == DIAGNOSIS:
        resource = {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
                ]
            },
            "verificationStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                        "code": "provisional",
                    }
                ]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                        }
                    ]
                }
            ],
            "code": {"coding": [coding], "text": consideration.display},
            "subject": subject,
        }
        label = f"Add {consideration.display} to the problem list (provisional)"
        description = f"Create a provisional Condition for {consideration.display} on the problem list"
    else:
        resource = {
            "resourceType": "MedicationRequest",
            "status": "draft",
            "intent": "proposal",
            "medicationCodeableConcept": {"coding": [coding], "text": consideration.display},
            "subject": subject,
        }
        label = f"Propose {consideration.display} (draft order)"
        description = f"Create a draft MedicationRequest proposal for {consideration.display}"
    return Suggestion(
        label=label[:200],
        uuid=new_uuid(),
        isRecommended=False,  # a model's consideration for the clinician to weigh, never a recommendation
        actions=[Action(type="create", description=description, resource=resource)],
    )


def build_card(
    consideration: Consideration,
    explanation: Explanation | None,
    record: PatientRecord | None,
    *,
    model_version: str,
    source_label: str,
    model_card_url: str | None,
    view_url: str | None,
    patient_id: str,
    smart_launch_url: str | None = None,
    card_uuid: str | None = None,
    summary: str | None = None,
    indicator: str | None = None,
    suggest: bool = True,
    explanation_note: str | None = None,
) -> Card:
    links = []
    if view_url:
        links.append(Link(label="Why this suggestion?", url=view_url, type="absolute", autolaunchable=False))
    if smart_launch_url:
        links.append(
            Link(label="Open in the SMART app", url=smart_launch_url, type="smart", autolaunchable=False)
        )
    suggestions = [suggestion_for(consideration, patient_id)] if suggest else None
    return Card(
        uuid=card_uuid or new_uuid(),
        summary=summary or summary_for(consideration),
        detail=detail_markdown(consideration, explanation, record, model_version, explanation_note),
        indicator=indicator or indicator_for(consideration.probability),
        source=Source(
            label=source_label,
            url=model_card_url,
            topic=Coding(system=consideration.system, code=consideration.code, display=consideration.display),
        ),
        suggestions=suggestions,
        selectionBehavior="at-most-one" if suggestions else None,
        overrideReasons=[Coding(system=OVERRIDE_SYSTEM, code=c, display=d) for c, d in OVERRIDE_REASONS],
        links=links or None,
    )
