"""The clinical services: diagnosis and treatment considerations on patient-view, order review on
order-select (`order-select-review`) and order-sign (`order-sign-review`). Each joins a hook to the
Engine, the explainers and the card builder.

The Engine is loaded once per worker (the services' `load`), shared by the four services. Cards carry
the explanation named by `card_explanation_method` (integrated gradients by default), one shared pass
for all the cards of a call, inside `card_explanation_budget_s`: when it cannot finish in time the cards
are answered with attention x gradient and say so, and integrated gradients are computed right after
the response and added to the explanation page (as they are when a cheaper method is configured).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from cds_plugin import metrics
from cds_plugin.cards.card_builder import build_card, no_facts_card
from cds_plugin.cards.view_data import view_payload
from cds_plugin.explain import registry as explain_methods
from cds_plugin.explain.explanation import ExplanationTimeout
from cds_plugin.fhir import unread
from cds_plugin.fhir.prefetch import read_prefetch
from cds_plugin.fhir.record import PatientRecord
from cds_plugin.hooks.card import Card, new_uuid
from cds_plugin.hooks.registry import HookCall, ServiceRegistry, default_registry
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.model.assessment import Assessment, Consideration
from cds_plugin.model.concepts import DIAGNOSIS, TREATMENT
from cds_plugin.services.background import BackgroundQueue
from cds_plugin.settings import Settings

log = logging.getLogger(__name__)

#: Exactly the data the model reads, by patient; only the Patient is required, the rest degrade.
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&_count=200",
    "medications": "MedicationRequest?patient={{context.patientId}}&_count=200",
    "observations": (
        "Observation?patient={{context.patientId}}&category=laboratory,vital-signs&_sort=-date&_count=200"
    ),
    "allergies": "AllergyIntolerance?patient={{context.patientId}}",
    "procedures": "Procedure?patient={{context.patientId}}&_sort=-date&_count=100",
    "immunizations": "Immunization?patient={{context.patientId}}&_count=100",
    "encounters": "Encounter?patient={{context.patientId}}&_sort=-date&_count=50",
    "careplans": "CarePlan?patient={{context.patientId}}&status=active",
}
OPTIONAL = frozenset(PREFETCH) - {"patient"}
WARM_UP_PATIENT = {"resourceType": "Patient", "id": "warm-up", "gender": "unknown", "birthDate": "1970-01-01"}
#: A drafted medication rated below this (and below a quarter of its threshold) gets an info card.
UNLIKELY_DRAFT = 0.05
SOURCE_LABEL = "cds-plugin considerations (synthetic-data model)"
#: What cards carry when `card_explanation_method` overruns its budget: label-specific, a few ms.
FALLBACK_METHOD = "attention_gradient"
FALLBACK_NOTE = (
    "Integrated gradients did not finish within this call's time budget: this evidence is from attention "
    "x gradient rollout; the explanation page adds integrated gradients."
)


class ExplanationBudget:
    """The time the card attributions of one call may still take, counted from their first use (a call
    that explains twice, as order review does, shares one budget)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None

    def left(self) -> float:
        if self.started is None:
            self.started = time.perf_counter()
        return max(self.seconds - (time.perf_counter() - self.started), 1e-6)


@dataclass
class ServiceEnvironment:
    """What the services need from the running app: settings, where explanation pages live, and the
    overrides remembered per patient."""

    settings: Settings
    explanation_store: Any  # cds_plugin.storage.explanation_store.ExplanationStore, or None
    link_signer: Any  # cds_plugin.web.link_tokens.LinkSigner, or None
    override_store: Any = None  # cds_plugin.storage.override_store.OverrideStore, or None


_env: ServiceEnvironment | None = None
_engines: dict[str, Any] = {}
_engine_lock = threading.Lock()
#: Integrated gradients after the response: low priority, bounded (cds_plugin.services.background).
_background = BackgroundQueue(max_pending=4, name="explain-after", on_outcome=metrics.background_explanation)


def configure(environment: ServiceEnvironment) -> None:
    """Called by the app factory before the services load."""
    global _env
    _env = environment
    _background.max_pending = environment.settings.background_max_pending


def environment() -> ServiceEnvironment:
    if _env is None:
        raise RuntimeError("cds_plugin.services.considerations.configure() was not called")
    return _env


def load_engine() -> Any:
    """The Engine, loaded once per process and shared by the services; warms up the explainers."""
    path = environment().settings.model_path
    with _engine_lock:
        if path not in _engines:
            from cds_plugin.explain import warm_up
            from cds_plugin.explain.engine import Engine

            started = time.perf_counter()
            engine = Engine.load(path or None)
            warm_up()  # shap compiles on its first call
            # the first attribution pays for imports and lazy set-up: pay it here, not in a hook call
            for method in dict.fromkeys((environment().settings.card_explanation_method, FALLBACK_METHOD)):
                engine.explain(WARM_UP_PATIENT, engine.labels[0].code, method=method)
            _engines[path] = engine
            metrics.model_loaded(engine.version)
            log.info("model %s loaded in %.1f s", engine.version, time.perf_counter() - started)
        return _engines[path]


def _record(call: HookCall) -> PatientRecord:
    """The call's patient record, its resources accounted for in the log line and the metrics."""
    draft = call.context.model_dump().get("draftOrders")
    record = read_prefetch(
        {k: v for k, v in call.prefetch.items() if v is not None},
        patient_id=call.context.patientId,
        draft_orders=draft,
    )
    counts = unread.summary(record)
    call.log_fields.update(counts)
    metrics.unread_resources(call.service.id, record.unread)
    if counts["could_not_read"]:
        log.warning(
            "%s: %d of %d input resources could not be read (%s)",
            call.service.id,
            counts["could_not_read"],
            unread.readable(record),
            ", ".join(f"{r} {n}" for r, n in counts["unread"].items() if r in unread.LOST),
        )
    return record


def _without_considerations(call: HookCall, record: PatientRecord) -> CDSResponse | None:
    """The answer when no consideration may be offered (None otherwise): the patient had died at the
    reference time (no cards), or nothing but demographics was read (one info card saying why, so the
    silence is not taken for "nothing to consider")."""
    reason = None
    if record.deceased:
        reason = "deceased"
    elif unread.clinical_facts(record) == 0:
        reason = "no-clinical-facts"
    if reason is None:
        return None
    call.log_fields["withheld"] = reason
    metrics.call_without_considerations(call.service.id, reason)
    if reason == "deceased":
        log.info("%s: the patient is deceased at the reference time: no considerations", call.service.id)
        return CDSResponse(cards=[])
    log.warning(
        "%s: 0 clinical facts read from %d input resources (%d could not be read): no considerations",
        call.service.id,
        record.resources,
        unread.could_not_read(record),
    )
    return CDSResponse(cards=[no_facts_card(record, SOURCE_LABEL, _model_card_url(call))])


def _drafted(record: PatientRecord, labels: Any) -> set[int]:
    """Treatment considerations (label indices) of the draft orders."""
    return {
        i
        for m in record.medication_requests
        if m.status == "draft" and (i := labels.of_request(m)) is not None
    }


def _model_card_url(call: HookCall) -> str | None:
    return f"{call.base_url.rstrip('/')}/model-card" if call.base_url else None


def _issue_cards(
    call: HookCall,
    engine: Any,
    assessment: Assessment,
    items: Sequence[Consideration],
    *,
    budget: ExplanationBudget,
    summaries: dict[str, str] | None = None,
    suggest: bool = True,
    indicator: str | None = None,
) -> list[Card]:
    """Explain the considerations (one shared pass) and build a card and an explanation page for each."""
    if not items:
        return []
    env = environment()
    settings = env.settings
    method, explanations = _card_explanations(call, engine, assessment, items, budget)
    note = FALLBACK_NOTE if method != settings.card_explanation_method else None
    for explained in explanations:
        metrics.explanation(explained.method, explained.completeness_error)
    cards = []
    for consideration, explanation in zip(items, explanations, strict=True):
        card_uuid = new_uuid()
        view_url = _store_view(call, engine, assessment, consideration, {method: explanation}, card_uuid)
        cards.append(
            build_card(
                consideration,
                explanation,
                assessment.record,
                model_version=engine.version,
                source_label=SOURCE_LABEL,
                model_card_url=_model_card_url(call),
                view_url=view_url,
                patient_id=call.context.patientId,
                smart_launch_url=settings.smart_launch_url or None,
                card_uuid=card_uuid,
                summary=(summaries or {}).get(consideration.code),
                indicator=indicator,
                suggest=suggest,
                explanation_note=note,
            )
        )
    return cards


def _card_explanations(
    call: HookCall,
    engine: Any,
    assessment: Assessment,
    items: Sequence[Consideration],
    budget: ExplanationBudget,
) -> tuple[str, list[Any]]:
    """(method, explanations) for the cards: `card_explanation_method` within the call's budget, else
    the fallback method, counted and logged (no patient data: the service and a fixed word)."""
    method = environment().settings.card_explanation_method
    settings = {"budget_s": budget.left()} if "budget_s" in explain_methods.get(method).defaults else {}
    try:
        return method, engine.explain(assessment, list(items), method=method, **settings)
    except ExplanationTimeout:
        metrics.card_explanation_fallback(call.service.id)
        call.log_fields["card_explanation"] = "fallback"
        log.info("%s: %s overran the budget; cards explained by %s", call.service.id, method, FALLBACK_METHOD)
        return FALLBACK_METHOD, engine.explain(assessment, list(items), method=FALLBACK_METHOD)


def _store_view(
    call: HookCall,
    engine: Any,
    assessment: Assessment,
    consideration: Consideration,
    explanations: dict,
    card_uuid: str,
) -> str | None:
    """Store the page's data and return its signed link; None (no link) when storage is unavailable."""
    env = environment()
    if env.explanation_store is None or env.link_signer is None or not call.base_url:
        return None
    entry_id = env.explanation_store.new_id()
    payload = view_payload(
        consideration,
        explanations,
        assessment.record,
        assessment.linearization,
        model_version=engine.version,
        service_id=call.service.id,
        card_uuid=card_uuid,
        hook_instance=call.hook_instance,
        model_card_url=_model_card_url(call),
    )
    try:
        expires = env.explanation_store.put(entry_id, card_uuid, call.service.id, call.hook_instance, payload)
    except Exception as exc:
        log.warning("explanation page not stored: %s", type(exc).__name__)
        return None
    if "integrated_gradients" not in explanations:
        _background.submit(
            _add_integrated_gradients,
            engine,
            assessment,
            consideration,
            env.explanation_store,
            entry_id,
            payload,
        )
    token = env.link_signer.sign(entry_id, expires.replace(tzinfo=expires.tzinfo or UTC).timestamp())
    return f"{call.base_url.rstrip('/')}/explanations/{entry_id}?token={token}"


def _add_integrated_gradients(
    engine: Any,
    assessment: Assessment,
    consideration: Consideration,
    store: Any,
    entry_id: str,
    payload: dict,
) -> None:
    # failures are counted and logged (type only) by the queue; the page computes what is missing
    explanation = engine.explain(assessment, consideration, method="integrated_gradients")
    metrics.explanation(explanation.method, explanation.completeness_error)
    payload["explanations"]["integrated_gradients"] = explanation.to_json()
    store.update_payload(entry_id, payload)


def _overridden(call: HookCall) -> set[str]:
    """Considerations (`system|code`) overridden for this patient within `override_snooze_days`; none
    when the database cannot say (the call goes on: cards are shown rather than the call failing)."""
    env = environment()
    days = env.settings.override_snooze_days
    if env.override_store is None or call.patient_key is None or days <= 0:
        return set()
    try:
        return env.override_store.overridden(call.patient_key, days)
    except Exception as exc:
        log.warning("overrides not read, cards not held back: %s", type(exc).__name__)
        return set()


def _not_overridden(
    call: HookCall, items: Sequence[Consideration], overridden: set[str]
) -> list[Consideration]:
    kept = [c for c in items if f"{c.system}|{c.code}" not in overridden]
    if len(kept) < len(items):
        metrics.considerations_snoozed(call.service.id, len(items) - len(kept))
        call.log_fields["snoozed"] = len(items) - len(kept)
    return kept


def card_worthy(c: Consideration, settings: Settings) -> bool:
    """Whether a card may propose `c`: likely, plausible and not yet documented (`suggested`), at or
    above the probability floor, and supported by the patient's own record (its odds at least
    `min_card_odds_ratio` times an empty record's). The benchmarks ask this too, so they measure the
    cards the services issue."""
    return (
        c.suggested
        and c.probability >= settings.min_card_probability
        and c.odds_ratio >= settings.min_card_odds_ratio
    )


def _suggested(
    call: HookCall, items: Sequence[Consideration], exclude: set[int], limit: int, overridden: set[str]
) -> list[Consideration]:
    """What cards may propose (`card_worthy`), best first, at most `limit`: not excluded and not
    overridden for this patient lately."""
    settings = environment().settings
    candidates = [c for c in items if card_worthy(c, settings) and c.label_index not in exclude]
    return _not_overridden(call, candidates, overridden)[:limit]


def _considerations_of_kind(call: HookCall, kind: str) -> CDSResponse:
    """patient-view: the most likely considerations of one kind (DIAGNOSIS or TREATMENT) as cards."""
    engine = load_engine()
    call.model_version = engine.version
    record = _record(call)
    withheld = _without_considerations(call, record)
    if withheld is not None:
        return withheld
    assessment = engine.assess(record)
    of_kind = assessment.diagnoses if kind == DIAGNOSIS else assessment.treatments
    settings = environment().settings
    items = _suggested(call, of_kind, set(), settings.max_cards, _overridden(call))
    budget = ExplanationBudget(settings.card_explanation_budget_s)
    return CDSResponse(cards=_issue_cards(call, engine, assessment, items, budget=budget))


def diagnosis_considerations(call: HookCall) -> CDSResponse:
    return _considerations_of_kind(call, DIAGNOSIS)


def treatment_considerations(call: HookCall) -> CDSResponse:
    return _considerations_of_kind(call, TREATMENT)


def order_review(call: HookCall) -> CDSResponse:
    """Considerations with the draft in mind; a drafted medication the model finds very unlikely for this
    patient gets an info card with its evidence (never a block). At most `max_cards` cards in all: the
    unusual drafts first (they are about the order being placed), then the best considerations."""
    engine = load_engine()
    call.model_version = engine.version
    record = _record(call)
    withheld = _without_considerations(call, record)
    if withheld is not None:
        return withheld
    drafted = _drafted(record, engine.labels)
    assessment = engine.assess(record)
    settings = environment().settings
    limit = settings.max_cards
    budget = ExplanationBudget(settings.card_explanation_budget_s)
    overridden = _overridden(call)
    unusual: list[Consideration] = []
    baseline = None
    if drafted:
        without = dataclasses.replace(
            record, medication_requests=tuple(m for m in record.medication_requests if m.status != "draft")
        )
        baseline = engine.assess(without)
        unusual = _not_overridden(
            call,
            [
                c
                for c in baseline.treatments
                if c.label_index in drafted and c.probability < min(UNLIKELY_DRAFT, c.threshold / 4)
            ],
            overridden,
        )[:limit]
    suggested = _suggested(call, assessment.considerations, drafted, limit - len(unusual), overridden)
    cards = _issue_cards(call, engine, assessment, suggested, budget=budget)
    if baseline is not None and unusual:
        summaries = {
            c.code: f"Drafted {c.display[:70]}: unusual for this patient (model p {c.probability:.2f})"
            for c in unusual
        }
        cards += _issue_cards(
            call,
            engine,
            baseline,
            unusual,
            budget=budget,
            summaries=summaries,
            suggest=False,
            indicator="info",
        )
    return CDSResponse(cards=cards)


def register(registry: ServiceRegistry) -> None:
    common = {"prefetch": PREFETCH, "optional_prefetch": OPTIONAL, "load": load_engine}
    registry.service(
        "diagnosis-considerations",
        hook="patient-view",
        title="Diagnosis considerations",
        description="Diagnoses the model finds likely for this patient and that are not on the problem "
        "list, with the patient's own data that led to each.",
        usage_requirements="Model trained on synthetic data; not for clinical use.",
        **common,
    )(diagnosis_considerations)
    registry.service(
        "treatment-considerations",
        hook="patient-view",
        title="Treatment considerations",
        description="Medications the model finds likely for this patient and that are not prescribed, "
        "with the patient's own data that led to each.",
        usage_requirements="Model trained on synthetic data; not for clinical use.",
        **common,
    )(treatment_considerations)
    for hook, when in (("order-select", "when orders are selected"), ("order-sign", "at signing")):
        registry.service(
            f"{hook}-review",
            hook=hook,
            title=f"Order review ({hook})",
            description=f"Considerations with the drafted orders in mind, {when}; flags a drafted "
            "medication the model finds very unlikely for this patient (information only).",
            usage_requirements="Model trained on synthetic data; not for clinical use.",
            **common,
        )(order_review)


register(default_registry)

__all__ = ["DIAGNOSIS", "TREATMENT", "ServiceEnvironment", "configure", "load_engine", "register"]
