"""`/explanations/<id>`: the clinician's page behind a card's "Why this suggestion?" link.

The page shows what a clinician needs to judge one suggestion in seconds: the consideration with its
calibrated probability and threshold, the signed contribution of each FHIR resource (integrated
gradients, stored with the card), the patient's facts on a timeline coloured by contribution, attention
rollout (recomputed here: one forward pass) and SHAP (on request: hundreds of forward passes) beside it,
and Accept / Dismiss posted as CDS Hooks feedback.

The page holds patient data, so every request (page, SHAP, feedback) must carry the link's signed,
expiring token; anything else gets the same bare 403 page. Everything is server-rendered: charts are
inline SVG, forms work without JavaScript, and the one script (SHAP progress) is a static file, so a
strict Content-Security-Policy holds. The token is never logged (it is a credential) and neither is
anything from the payload (patient data).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from pydantic import ValidationError

from cds_plugin import metrics
from cds_plugin.cards.card_builder import OVERRIDE_REASONS, OVERRIDE_SYSTEM, EvidenceRow, rationale
from cds_plugin.cards.view_data import linearization_from_payload
from cds_plugin.fhir import unread
from cds_plugin.hooks.feedback import FeedbackItem
from cds_plugin.model.assessment import Consideration
from cds_plugin.model.concepts import DIAGNOSIS
from cds_plugin.settings import SettingsError
from cds_plugin.web.link_tokens import LinkTokenError
from cds_plugin.web.runtime import Runtime

log = logging.getLogger(__name__)

bp = Blueprint(
    "explanation_view",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/explanations-static",
)

#: Ids come from secrets.token_urlsafe; anything else is refused before touching the database.
ENTRY_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
#: Rows in the main chart and evidence table, and in each side-by-side column.
CHART_ROWS = 12
SIDE_ROWS = 8
#: One SHAP run at a time per process: it takes seconds of both cores, and hook calls come first.
_shap_slot = threading.BoundedSemaphore(1)
#: Contributions below this share of the largest are drawn as "little effect".
NEGLIGIBLE = 0.02

#: Kinds of fact in words, for pages stored before they carried their own (clinical_text.kind_of).
RESOURCE_LABELS = {
    "Condition": "problem",
    "Observation": "observation",
    "MedicationRequest": "medication",
    "Procedure": "procedure",
    "Immunization": "immunization",
    "Encounter": "encounter",
    "AllergyIntolerance": "allergy",
    "CarePlan": "care plan",
    "Patient": "demographics",
}
SYSTEM_LABELS = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://loinc.org": "LOINC",
    "urn:cds-plugin:ingredient": "Medication ingredient",
}
METHOD_LABELS = {
    "integrated_gradients": "Integrated gradients",
    "attention": "Attention rollout",
    "attention_gradient": "Attention × gradient",
    "shap": "SHAP",
}


class LinkRefused(Exception):
    """The request does not open this page; the reason is for the log only, never for the response."""


# --- access -------------------------------------------------------------------------------------------


def _runtime() -> Runtime:
    return current_app.extensions["cds_plugin"]


def _open(entry_id: str) -> tuple[dict[str, Any], str]:
    """The stored entry and the token that opened it, or LinkRefused (token checked before the database)."""
    token = request.args.get("token", "")
    if not ENTRY_ID.match(entry_id):
        raise LinkRefused("malformed id")
    runtime = _runtime()
    try:
        runtime.link_signer.verify(token, entry_id)
    except LinkTokenError as exc:
        raise LinkRefused(str(exc)) from exc
    row = runtime.explanation_store.get(entry_id)
    if row is None or not isinstance(row.get("payload"), dict):
        raise LinkRefused("entry expired or absent")
    return row, token


@bp.errorhandler(LinkRefused)
def _refused(exc: LinkRefused) -> tuple[str, int]:
    log.info("explanation link refused: %s", exc)
    return render_template("explanations/invalid_link.html"), 403


def install(app: Flask) -> None:
    """Register the blueprint and its security headers. Call before `install_cors`: after_request hooks
    run in reverse order, so these headers are set last and the CORS header is taken off these pages."""
    settings = app.extensions["cds_plugin"].settings
    ancestors = settings.view_frame_ancestors.strip() or "'none'"
    if any(c in ancestors for c in ";,\r\n"):
        raise SettingsError(
            "CDS_PLUGIN_VIEW_FRAME_ANCESTORS: a space-separated CSP source list, no ';' or ','"
        )
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}"
    )
    frame_options = {"'none'": "DENY", "'self'": "SAMEORIGIN"}.get(ancestors)
    app.register_blueprint(bp)

    @app.after_request
    def explanation_headers(response: Response) -> Response:
        if request.blueprint != bp.name:
            return response
        response.headers.pop("Access-Control-Allow-Origin", None)
        response.headers["Content-Security-Policy"] = csp
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if frame_options:
            response.headers["X-Frame-Options"] = frame_options
        if request.endpoint == f"{bp.name}.static":
            response.headers["Cache-Control"] = "public, max-age=3600"
        else:
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        return response


# --- what the page shows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One FHIR resource and what one method gave it, described for people."""

    reference: str
    resource_type: str
    what: str
    value: str
    date: str
    score: float
    additive: bool
    kind: str = ""  # lab, vital sign, problem, medication... (clinical_text.kind_of)

    @property
    def direction(self) -> str:
        if not self.additive:
            return "relevance"
        return "up" if self.score > 0 else "down" if self.score < 0 else "none"

    @property
    def score_text(self) -> str:
        return format_score(self.score, self.additive)

    @property
    def glyph(self) -> str:
        return {"up": "▲", "down": "▼"}.get(self.direction, "")

    @property
    def label(self) -> str:
        """The row in words (SVG titles, screen readers)."""
        parts = [self.what]
        if self.value:
            parts.append(self.value)
        if self.date:
            parts.append(f"on {self.date}")
        text = " ".join(parts)
        if not self.additive:
            return f"{text}: {self.score_text} of the model's attention"
        if self.direction == "none":
            return f"{text}: no effect"
        way = "pushes the probability up" if self.score > 0 else "pushes the probability down"
        return f"{text}: {way} by {abs(self.score):.3f}"


def format_score(score: float, additive: bool) -> str:
    if not additive:
        return f"{score:.0%}" if score >= 0.01 else f"{score:.1%}"
    sign = "+" if score > 0 else "−" if score < 0 else "±"
    return f"{sign}{abs(score):.3f}"


class Facts:
    """What, value and date of each resource of the stored input, for rows of any method.

    The card's own evidence rows (read from the full FHIR record) are the best description; other
    resources are described from the stored model input (display, value parsed from the fact text)."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self.rows = {r["reference"]: r for r in payload.get("evidence_rows", [])}
        # every resource in clinical words (pages stored since issue 15; older ones parse the segments)
        self.described: dict[str, Mapping[str, Any]] = dict(payload.get("resources") or {})
        self.segments: dict[str, list[Mapping[str, Any]]] = {}
        for s in payload.get("segments", []):
            self.segments.setdefault(s["reference"], []).append(s)

    def kind(self, reference: str, resource_type: str) -> str:
        """The kind of fact in words (lab, vital sign, problem...)."""
        for source in (self.rows, self.described):
            if source.get(reference, {}).get("kind"):
                return str(source[reference]["kind"])
        return RESOURCE_LABELS.get(resource_type, resource_type)

    def describe(self, reference: str, resource_type: str, fallback: str) -> tuple[str, str, str]:
        if reference in self.rows:
            r = self.rows[reference]
            return r["what"], r["value"], r["date"]
        if reference in self.described:
            d = self.described[reference]
            return str(d["what"]), str(d["value"]), str(d["date"])
        segments = self.segments.get(reference, [])
        if not segments:
            return fallback, "", ""
        if resource_type == "Patient":
            return "; ".join(s["text"] for s in segments), "", ""
        first = segments[0]
        values = [v for s in segments if (v := _value_of(s))]
        if len(values) > 1:
            values = [f"{s['display']} {v}" for s in segments if (v := _value_of(s))]
        date = (first.get("date") or "")[:10]
        return first["display"] or fallback, " · ".join(values), date


def _value_of(segment: Mapping[str, Any]) -> str:
    """An observation fact's value from its text: "lab: LDL 190 mg/dL high; 4y ago" -> "190 mg/dL high"."""
    if segment.get("resource_type") != "Observation":
        return ""
    text = str(segment.get("text", ""))
    body = text.split(": ", 1)[1] if ": " in text else text
    body = body.rsplit("; ", 1)[0] if "; " in body else body
    display = str(segment.get("display") or "")
    if display and body.startswith(display):
        return body[len(display) :].strip()
    return ""


def rows_of(explanation: Mapping[str, Any] | None, facts: Facts, n: int) -> list[Row]:
    """The top n evidence entries of a stored explanation (evidence is kept sorted by |score|)."""
    if not explanation:
        return []
    additive = explanation.get("score_unit") == "probability"
    out = []
    for ev in explanation.get("evidence", [])[:n]:
        fallback = str(ev.get("display", "")).rsplit(", ", 1)[0]
        what, value, date = facts.describe(ev["reference"], ev["resource_type"], fallback)
        kind = facts.kind(ev["reference"], ev["resource_type"])
        out.append(
            Row(ev["reference"], ev["resource_type"], what, value, date, float(ev["score"]), additive, kind)
        )
    return out


@dataclass(frozen=True)
class Bar:
    """One bar of the contribution chart, in SVG user units."""

    row: Row
    y: float
    x: float
    width: float
    value_x: float
    value_anchor: str
    what: str
    detail: str


@dataclass(frozen=True)
class BarChart:
    """A diverging horizontal bar chart: up to the right of the axis, down to the left (and hatched)."""

    bars: list[Bar]
    width: int = 760
    row_height: int = 40
    top: int = 28
    zero_x: float = 540.0
    half: float = 150.0
    summary: str = ""

    @property
    def height(self) -> int:
        return self.top + self.row_height * len(self.bars) + 8


def bar_chart(rows: Sequence[Row]) -> BarChart | None:
    if not rows:
        return None
    chart = BarChart(bars=[])
    largest = max(abs(r.score) for r in rows) or 1.0
    bars = []
    for i, r in enumerate(rows):
        length = max(abs(r.score) / largest * chart.half, 1.5 if r.score else 0.0)
        y = chart.top + i * chart.row_height + 8
        up = r.score >= 0
        x = chart.zero_x if up else chart.zero_x - length
        value_x = chart.zero_x + length + 6 if up else chart.zero_x - length - 6
        detail = " · ".join(p for p in (r.value, r.date) if p)
        bars.append(
            Bar(r, y, x, length, value_x, "start" if up else "end", _clip(r.what, 44), _clip(detail, 52))
        )
    up = sum(1 for r in rows if r.direction == "up")
    down = sum(1 for r in rows if r.direction == "down")
    summary = (
        f"Bar chart of the {len(rows)} largest contributions: {up} push the probability up, "
        f"{down} push it down. The same values are listed in the evidence table below."
    )
    return BarChart(bars=bars, summary=summary)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1].rstrip() + "…"


@dataclass(frozen=True)
class Chip:
    """One fact on the timeline, with its contribution class (colour, and a glyph for colour-blind use)."""

    what: str
    value: str
    kind: str
    tone: str
    glyph: str
    note: str


@dataclass(frozen=True)
class Day:
    date: str
    chips: list[Chip]


@dataclass
class Timeline:
    days: list[Day] = field(default_factory=list)
    additive: bool = True
    count: int = 0


def _tone(score: float | None, largest: float, additive: bool) -> tuple[str, str]:
    """A colour class and a glyph: up-1..3 / down-1..3 by size, 'flat' for little effect, 'unread'."""
    if score is None:
        return "unread", "○"
    if largest <= 0 or abs(score) < NEGLIGIBLE * largest:
        return "flat", "–"
    share = abs(score) / largest
    level = 3 if share >= 0.5 else 2 if share >= 0.15 else 1
    if not additive or score > 0:
        return f"up-{level}", "▲" if additive else "●"
    return f"down-{level}", "▼"


def timeline_of(payload: Mapping[str, Any], facts: Facts) -> Timeline:
    """The patient's facts by date (newest first), coloured by the integrated-gradients contribution of
    their resource; resources the model did not read (input length limit) are marked as such."""
    explanations = payload.get("explanations", {})
    ig = explanations.get("integrated_gradients")
    entries = payload.get("timeline", [])
    if ig:
        by_reference = {e["reference"]: float(e["score"]) for e in ig.get("evidence", [])}
        scores = [by_reference.get(e["reference"]) for e in entries]
        additive = True
    else:
        scores = [e.get("score") for e in entries]
        primary = next(iter(explanations.values()), {})
        additive = primary.get("score_unit") == "probability"
    largest = max((abs(s) for s in scores if s is not None), default=0.0)
    days: dict[str, list[Chip]] = {}
    for entry, score in zip(entries, scores, strict=True):
        tone, glyph = _tone(score, largest, additive)
        if score is None:
            note = "not read by the model (input length limit)"
        elif additive:
            note = f"contribution {format_score(score, True)}"
        else:
            note = f"relevance {format_score(score, False)}"
        _, value, _ = facts.describe(entry["reference"], entry["resource_type"], entry["display"])
        day = (entry.get("date") or "")[:10] or "undated"
        days.setdefault(day, []).append(
            Chip(
                what=entry["display"],
                value=value,
                kind=facts.kind(entry["reference"], entry["resource_type"]),
                tone=tone,
                glyph=glyph,
                note=note,
            )
        )
    ordered = sorted((d for d in days if d != "undated"), reverse=True)
    if "undated" in days:
        ordered.append("undated")
    for chips in days.values():
        chips.sort(key=lambda c: (c.tone == "unread", c.kind, c.what))
    return Timeline(days=[Day(d, days[d]) for d in ordered], additive=additive, count=len(entries))


@dataclass(frozen=True)
class InputAccount:
    """What the call's resources became (cds_plugin.fhir.unread): read into facts, could not be read
    (data the model should have had), or not used (not clinical, unsupported types, duplicates)."""

    resources: int
    read: int
    lost: int
    readable: int
    lost_reasons: list[tuple[str, int]]
    other_reasons: list[tuple[str, int]]
    not_used_types: str


def input_account(payload: Mapping[str, Any]) -> InputAccount | None:
    """From the stored page (None for pages stored before the accounting existed)."""
    data = payload.get("input")
    if not isinstance(data, Mapping):
        return None
    counts = {str(k): int(v) for k, v in dict(data.get("unread") or {}).items()}
    listed = unread.words(counts)
    types = dict(data.get("not_used_types") or {})
    return InputAccount(
        resources=int(data.get("resources", 0)),
        read=int(data.get("read", 0)),
        lost=int(data.get("could_not_read", 0)),
        readable=int(data.get("readable", 0)),
        lost_reasons=[(words, n) for _, words, n, lost in listed if lost],
        other_reasons=[(words, n) for _, words, n, lost in listed if not lost],
        not_used_types=", ".join(f"{t} {n}" for t, n in types.items()),
    )


@dataclass(frozen=True)
class Gauge:
    """The probability on a 0..1 scale with the threshold marked."""

    probability: float
    threshold: float
    width: int = 320

    @property
    def p_x(self) -> float:
        return 10 + self.probability * (self.width - 20)

    @property
    def t_x(self) -> float:
        return 10 + self.threshold * (self.width - 20)


@dataclass
class MethodColumn:
    """One method in the side-by-side comparison."""

    key: str
    title: str
    subtitle: str
    rows: list[Row]
    note: str = ""
    completeness: str = ""
    available: bool = True


# --- model work ---------------------------------------------------------------------------------------


def _engine_for(payload: Mapping[str, Any]) -> tuple[Any | None, str]:
    """The running engine if it is the model that made this suggestion, else (None, why)."""
    try:
        from cds_plugin.services.considerations import load_engine

        engine = load_engine()
    except Exception as exc:  # not configured (custom registry) or the model failed to load
        log.warning("explanation view: no engine (%s)", type(exc).__name__)
        return None, "The model is not loaded in this service, so it cannot be recomputed here."
    if engine.version != payload.get("model_version"):
        return None, (
            f"This service now runs model {engine.version}; this suggestion came from model "
            f"{payload.get('model_version')}. Attention rollout and SHAP are not recomputed: they would "
            "explain a different model."
        )
    if not payload.get("segments") or not payload.get("reference_time"):
        return None, "The model input of this suggestion was not stored, so it cannot be recomputed."
    return engine, ""


def _explain(engine: Any, payload: Mapping[str, Any], method: str, **settings: Any) -> dict[str, Any]:
    """Run `method` on the stored model input (same facts, same order, same positions as the card)."""
    from cds_plugin.explain import ExplainInput, resolve_targets, run

    lin = linearization_from_payload(dict(payload))
    encoded = engine.vocab.encode(lin)
    consideration = payload["consideration"]
    targets, _ = resolve_targets(engine, f"{consideration['kind']}:{consideration['code']}")
    return run(ExplainInput(engine, lin, encoded), targets, method, **settings)[0].to_json()


def _completeness(explanation: Mapping[str, Any] | None) -> str:
    if not explanation or explanation.get("completeness_error") is None:
        return ""
    f_x, f_0 = explanation.get("f_x"), explanation.get("f_baseline")
    text = f"completeness error {explanation['completeness_error']:.1%}"
    if f_x is not None and f_0 is not None:
        total = sum(float(e["score"]) for e in explanation.get("evidence", []))
        text = (
            f"Contributions add up to {format_score(total, True)}; the model moves from "
            f"{f_0:.2f} without the patient's facts to {f_x:.2f} with them ({text})."
        )
    return text


def _columns(
    payload: Mapping[str, Any], facts: Facts, engine: Any | None, why_not: str
) -> list[MethodColumn]:
    explanations = payload.get("explanations", {})
    ig = explanations.get("integrated_gradients")
    columns = [
        MethodColumn(
            key="integrated_gradients",
            title="Integrated gradients",
            subtitle="Why: signed contribution of each resource to the probability (stored with the card).",
            rows=rows_of(ig, facts, SIDE_ROWS),
            completeness=_completeness(ig),
            available=ig is not None,
            note="" if ig else why_not or "Integrated gradients could not be computed for this suggestion.",
        )
    ]
    attention: dict[str, Any] | None = None
    note = why_not
    if engine is not None:
        try:
            attention = _explain(engine, payload, "attention")
        except Exception as exc:
            log.warning("attention rollout failed: %s", type(exc).__name__)
            note = "Attention rollout could not be computed."
    if attention is not None:
        expected = payload["consideration"]["probability"]
        if abs(attention["probability"] - expected) > 0.005:
            note = (
                f"The recomputed probability ({attention['probability']:.2f}) differs from the card's "
                f"({expected:.2f}); read this column with care."
            )
    columns.append(
        MethodColumn(
            key="attention",
            title="Attention rollout",
            subtitle="What the model looked at — not a reason for this consideration.",
            rows=rows_of(attention, facts, SIDE_ROWS),
            available=attention is not None,
            note=note,
        )
    )
    shap = explanations.get("shap")
    columns.append(
        MethodColumn(
            key="shap",
            title="SHAP",
            subtitle="Signed contribution of whole facts, from many runs of the model with facts left out.",
            rows=rows_of(shap, facts, SIDE_ROWS),
            completeness=_completeness(shap),
            available=shap is not None,
            note="" if engine is not None else why_not,
        )
    )
    return columns


def _consideration(payload: Mapping[str, Any]) -> Consideration:
    c = payload["consideration"]
    return Consideration(
        code=c["code"],
        system=c["system"],
        display=c["display"],
        kind=c["kind"],
        probability=float(c["probability"]),
        threshold=float(c["threshold"]),
        documented=bool(c.get("documented")),
        label_index=-1,
    )


def _card_suggestions(card_uuid: str) -> list[str]:
    try:
        issued = _runtime().card_log.get(card_uuid)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("card log unavailable: %s", type(exc).__name__)
        return []
    return list(issued["suggestion_uuids"]) if issued else []


def _previous_feedback(card_uuid: str) -> list[dict[str, Any]]:
    try:
        rows = _runtime().feedback_store.for_card(card_uuid)
    except sa.exc.SQLAlchemyError:
        return []
    reasons = dict(OVERRIDE_REASONS)
    return [
        {
            "outcome": "Accepted" if r["outcome"] == "accepted" else "Dismissed",
            "reason": reasons.get(r["override_reason_code"] or "", r["override_reason_code"] or ""),
            "when": r["received_at"].strftime("%Y-%m-%d %H:%M UTC") if r["received_at"] else "",
        }
        for r in rows
    ]


def _complete_integrated_gradients(entry_id: str, payload: dict[str, Any], engine: Any | None) -> None:
    """Integrated gradients not yet on the page (the after-response queue was busy, or still at it):
    compute them now, about a second, and keep them with the page."""
    explanations = payload.setdefault("explanations", {})
    if engine is None or "integrated_gradients" in explanations:
        return
    try:
        result = _explain(engine, payload, "integrated_gradients")
    except Exception as exc:
        log.warning("integrated gradients on opening the page failed: %s", type(exc).__name__)
        return
    metrics.explanation("integrated_gradients", result.get("completeness_error"))
    explanations["integrated_gradients"] = result
    try:
        _keep_with_page(entry_id, "integrated_gradients", result)
    except sa.exc.SQLAlchemyError as exc:
        log.warning("integrated gradients not stored with the page: %s", type(exc).__name__)


def _keep_with_page(entry_id: str, method: str, result: dict[str, Any]) -> None:
    """Add one explanation to the stored page, re-read first: another method may have been added
    meanwhile (the after-response queue, SHAP, another tab)."""
    store = _runtime().explanation_store
    fresh = store.get(entry_id)
    if fresh is not None and isinstance(fresh.get("payload"), dict):
        fresh["payload"].setdefault("explanations", {})[method] = result
        store.update_payload(entry_id, fresh["payload"])


def _render_page(row: Mapping[str, Any], token: str, status: int = 200, form_error: str = "") -> Response:
    payload = row["payload"]
    engine, why_not = _engine_for(payload)
    _complete_integrated_gradients(row["id"], payload, engine)
    facts = Facts(payload)
    consideration = _consideration(payload)
    explanations = payload.get("explanations", {})
    primary_name = "integrated_gradients" if "integrated_gradients" in explanations else None
    primary_name = primary_name or next(iter(explanations), None)
    primary = explanations.get(primary_name) if primary_name else None
    chart_rows = rows_of(primary, facts, CHART_ROWS)
    suggestions = _card_suggestions(payload["card_uuid"])
    evidence_for_rationale = [
        EvidenceRow(r.reference, r.what, r.value, r.date, r.score, r.kind) for r in chart_rows
    ]
    unusual_draft = consideration.probability < consideration.threshold
    created = row.get("created_at")
    expires = row.get("expires_at")
    html = render_template(
        "explanations/view.html",
        token=token,
        entry_id=row["id"],
        payload=payload,
        c=consideration,
        is_diagnosis=consideration.kind == DIAGNOSIS,
        system_label=SYSTEM_LABELS.get(consideration.system, consideration.system),
        unusual_draft=unusual_draft,
        rationale=rationale(
            consideration, evidence_for_rationale, bool(chart_rows and chart_rows[0].additive)
        ),
        gauge=Gauge(consideration.probability, consideration.threshold),
        primary=primary,
        primary_label=METHOD_LABELS.get(primary_name or "", primary_name or ""),
        card_method_note=_card_method_note(payload, primary_name),
        chart=bar_chart(chart_rows),
        rows=chart_rows,
        completeness=_completeness(primary),
        timeline=timeline_of(payload, facts),
        account=input_account(payload),
        columns=_columns(payload, facts, engine, why_not),
        shap_ready=engine is not None,
        shap_budget=_runtime().settings.shap_max_evals,
        reasons=OVERRIDE_REASONS,
        can_accept=bool(suggestions) and not unusual_draft,
        previous=_previous_feedback(payload["card_uuid"]),
        form_error=form_error,
        created=_when(created),
        expires=_when(expires),
    )
    return Response(html, status=status, mimetype="text/html")


def _card_method_note(payload: Mapping[str, Any], primary_name: str | None) -> str:
    """One line when the card showed another method's numbers than this page leads with."""
    card_method = payload.get("card_method")
    if not card_method or card_method == primary_name:
        return ""
    shown = METHOD_LABELS.get(card_method, card_method).lower()
    if primary_name == "integrated_gradients":
        return f"The card showed {shown}; integrated gradients, computed after the call, lead this page."
    return f"The card showed {shown}."


def _when(value: Any) -> str:
    if not isinstance(value, datetime):
        return ""
    value = value if value.tzinfo else value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- routes -------------------------------------------------------------------------------------------


@bp.get("/explanations/<entry_id>")
def page(entry_id: str) -> Response:
    row, token = _open(entry_id)
    return _render_page(row, token)


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"


@bp.post("/explanations/<entry_id>/shap")
def shap(entry_id: str) -> Response | tuple[Response, int]:
    """Compute SHAP over whole facts for this suggestion and keep it with the page. Answers JSON to the
    page's script, or redirects back to the page for a plain form post (no JavaScript)."""
    row, token = _open(entry_id)
    payload = row["payload"]
    engine, why_not = _engine_for(payload)
    if engine is None:
        return jsonify(error=why_not), 409
    if not _shap_slot.acquire(blocking=False):
        response = jsonify(error="Another SHAP computation is running; try again in a few seconds.")
        response.headers["Retry-After"] = "10"
        return response, 503
    try:
        result = _explain(engine, payload, "shap", max_evals=_runtime().settings.shap_max_evals)
    except Exception as exc:
        log.warning("SHAP failed: %s", type(exc).__name__)
        return jsonify(error="SHAP could not be computed for this suggestion."), 500
    finally:
        _shap_slot.release()
    metrics.explanation("shap", result.get("completeness_error"))
    _keep_with_page(entry_id, "shap", result)
    if not _wants_json():
        return redirect(url_for(".page", entry_id=entry_id, token=token, _anchor="compare"), code=303)
    rows = rows_of(result, Facts(payload), SIDE_ROWS)
    return jsonify(
        method="shap",
        probability=result["probability"],
        completeness=_completeness(result),
        completeness_error=result.get("completeness_error"),
        max_evals=result["settings"].get("max_evals"),
        elapsed_s=round(float(result.get("elapsed_s", 0.0)), 2),
        evidence=[
            {
                "reference": r.reference,
                "what": r.what,
                "value": r.value,
                "date": r.date,
                "score": r.score,
                "score_text": r.score_text,
                "direction": r.direction,
                "label": r.label,
            }
            for r in rows
        ],
    )


@bp.post("/explanations/<entry_id>/feedback")
def feedback(entry_id: str) -> Response:
    """Accept or Dismiss from the page, stored as a CDS Hooks feedback item of the card's service."""
    row, token = _open(entry_id)
    payload = row["payload"]
    card_uuid = payload["card_uuid"]
    outcome = request.form.get("outcome", "")
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    item: dict[str, Any] = {"card": card_uuid, "outcome": outcome, "outcomeTimestamp": now}
    reasons = dict(OVERRIDE_REASONS)
    reason = request.form.get("reason", "")
    comment = request.form.get("comment", "").strip()
    if outcome == "accepted":
        suggestions = _card_suggestions(card_uuid)
        if not suggestions:
            return _render_page(row, token, 400, "This card has no suggestion to accept.")
        item["acceptedSuggestions"] = [{"id": s} for s in suggestions]
    elif outcome == "overridden":
        if reason not in reasons:
            return _render_page(row, token, 400, "Choose a reason to dismiss this suggestion.")
        item["overrideReason"] = {
            "reason": {"system": OVERRIDE_SYSTEM, "code": reason, "display": reasons[reason]},
            **({"userComment": comment} if comment else {}),
        }
    else:
        return _render_page(row, token, 400, "Choose Accept or Dismiss.")
    try:
        parsed = FeedbackItem.model_validate(item)
    except ValidationError:
        return _render_page(row, token, 400, "The comment is too long (at most 10,000 characters).")
    try:
        _runtime().feedback_store.save(payload["service_id"], [parsed])
    except sa.exc.SQLAlchemyError as exc:
        log.error("view feedback not stored, database error: %s", type(exc).__name__)
        return _render_page(row, token, 503, "Your feedback could not be stored; please try again later.")
    log.info("explanation view: feedback stored (%s)", outcome)
    html = render_template(
        "explanations/feedback_done.html",
        accepted=outcome == "accepted",
        reason=reasons.get(reason, ""),
        comment=comment if outcome == "overridden" else "",
        c=_consideration(payload),
        back=url_for(".page", entry_id=entry_id, token=token),
    )
    return Response(html, status=200, mimetype="text/html")
