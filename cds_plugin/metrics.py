"""Prometheus metrics of the service: what is counted, with which labels, and how it is exposed.

One place for every metric definition (names `cds_plugin_*`, see docs/monitoring.md); it knows nothing
of HTTP. The web layer records calls, cards and feedback, the services record explanations.

Labels are bounded and never carry patient data: service ids and hooks come from the service registry,
statuses are HTTP codes, outcomes and indicators are fixed vocabularies, model versions are the models
loaded. Never a patient id, hookInstance, card uuid or token.

Multi-process: under gunicorn every worker is its own process. `cds_plugin.web.server` points
PROMETHEUS_MULTIPROC_DIR at a fresh folder in the arbiter before any worker forks; prometheus_client
then keeps each value in a per-process memory-mapped file and `exposition()` sums them over all workers
(live and dead: a restarted worker's counts are kept). Without the variable (tests, `serve --dev`) the
values live in this process and `exposition()` reads this module's registry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from cds_plugin.fhir.unread import REASONS as UNREAD_REASONS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: An explanation whose completeness error is above this is flagged (integrated gradients refine their
#: path above 1 %: `tolerance` in cds_plugin.explain.integrated_gradients).
COMPLETENESS_TOLERANCE = 0.05

UNKNOWN = "unknown"
FEEDBACK_OUTCOMES = ("accepted", "overridden")
BACKGROUND_OUTCOMES = ("done", "skipped", "failed")
INDICATORS = ("info", "warning", "critical")
#: Why a clinical service answered a call without consideration cards.
NO_CONSIDERATIONS = ("deceased", "no-clinical-facts")

#: Hook call latency, seconds: the target is 500 ms per call (integrated gradients on the cards included).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
#: Relative completeness error: |sum of scores - (F(x) - F(baseline))| / |F(x) - F(baseline)|.
COMPLETENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _ensure_value_class() -> None:
    """prometheus_client picks its value class when `prometheus_client.values` is first imported. If
    something imported it before the variable was set, pick again now, before any metric exists."""
    if multiprocess_dir() and not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.get_value_class()


_ensure_value_class()
disable_created_metrics()  # no `_created` series: noise for dashboards, absent in multi-process mode

#: This process's metrics (single-process mode); in multi-process mode the files are read instead.
REGISTRY = CollectorRegistry(auto_describe=True)
if multiprocess_dir() is None:
    ProcessCollector(registry=REGISTRY)
    PlatformCollector(registry=REGISTRY)
    GCCollector(registry=REGISTRY)

HOOK_CALLS = Counter(
    "cds_plugin_hook_calls",
    "CDS service calls answered, by service, hook and HTTP status",
    ["service", "hook", "status"],
    registry=REGISTRY,
)
HOOK_LATENCY = Histogram(
    "cds_plugin_hook_call_duration_seconds",
    "Time to answer a CDS service call, seconds (all statuses)",
    ["service"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
FEEDBACK_CALLS = Counter(
    "cds_plugin_feedback_calls",
    "Feedback calls answered, by service and HTTP status (503: the database could not store them)",
    ["service", "status"],
    registry=REGISTRY,
)
FEEDBACK_ITEMS = Counter(
    "cds_plugin_feedback_items",
    "Feedback items stored, by service, outcome and the model version of the card they are about",
    ["service", "outcome", "model_version"],
    registry=REGISTRY,
)
CARDS = Counter(
    "cds_plugin_cards_issued",
    "Cards returned to CDS clients, by service, indicator and model version",
    ["service", "indicator", "model_version"],
    registry=REGISTRY,
)
EXPLANATIONS = Counter(
    "cds_plugin_explanations",
    "Explanations computed for cards and explanation pages, by method",
    ["method"],
    registry=REGISTRY,
)
COMPLETENESS = Histogram(
    "cds_plugin_explanation_completeness_error",
    "Relative completeness error of additive explanations (sum of scores vs F(x) - F(baseline)), by method",
    ["method"],
    buckets=COMPLETENESS_BUCKETS,
    registry=REGISTRY,
)
COMPLETENESS_FLAGGED = Counter(
    "cds_plugin_explanation_completeness_flagged",
    f"Explanations whose completeness error is above {COMPLETENESS_TOLERANCE:.0%}, by method",
    ["method"],
    registry=REGISTRY,
)
UNREAD = Counter(
    "cds_plugin_unread_resources",
    "Input resources of hook calls not read into facts, by service and reason (another-patient, "
    "unparseable and no-id are data the model should have had; docs/fhir-input.md)",
    ["service", "reason"],
    registry=REGISTRY,
)
WITHOUT_CONSIDERATIONS = Counter(
    "cds_plugin_calls_without_considerations",
    "Hook calls a clinical service answered without consideration cards, by reason: deceased (the "
    "patient died at or before the reference time), no-clinical-facts (nothing but demographics read)",
    ["service", "reason"],
    registry=REGISTRY,
)
SNOOZED = Counter(
    "cds_plugin_considerations_snoozed",
    "Considerations not shown because they were overridden for the patient within override_snooze_days",
    ["service"],
    registry=REGISTRY,
)
CARD_EXPLANATION_FALLBACKS = Counter(
    "cds_plugin_card_explanation_fallbacks",
    "Explanation passes of hook calls whose cards carry attention x gradient because integrated gradients "
    "could not finish inside card_explanation_budget_s",
    ["service"],
    registry=REGISTRY,
)
BACKGROUND = Counter(
    "cds_plugin_background_explanations",
    "Explanation work after the response, by outcome: done, skipped (backlog full) or failed",
    ["outcome"],
    registry=REGISTRY,
)
DATABASE_UP = Gauge(
    "cds_plugin_database_up",
    "1 when the database answered the last check (each scrape and /readyz), 0 when it did not",
    multiprocess_mode="livemostrecent",
    registry=REGISTRY,
)
MODEL_INFO = Gauge(
    "cds_plugin_model_info",
    "1 for each model version loaded by a live worker",
    ["model_version"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
# Per-worker process figures in multi-process mode (prometheus_client's process collector sees only the
# process answering the scrape); `liveall` adds a `pid` label and drops a worker's series when it exits.
# Not in REGISTRY: in single-process mode the process collector reports the same figures.
WORKER_RSS = Gauge(
    "cds_plugin_worker_resident_memory_bytes",
    "Resident memory of each live worker process, bytes (multi-process mode)",
    multiprocess_mode="liveall",
    registry=None,
)
WORKER_CPU = Gauge(
    "cds_plugin_worker_cpu_seconds",
    "CPU time used by each live worker process, seconds (multi-process mode)",
    multiprocess_mode="liveall",
    registry=None,
)
WORKER_FDS = Gauge(
    "cds_plugin_worker_open_fds",
    "Open file descriptors of each live worker process (multi-process mode)",
    multiprocess_mode="liveall",
    registry=None,
)
WORKER_START = Gauge(
    "cds_plugin_worker_start_time_seconds",
    "Start time of each live worker process, Unix seconds (multi-process mode)",
    multiprocess_mode="liveall",
    registry=None,
)


def _label(value: object | None) -> str:
    return str(value) if value else UNKNOWN


def hook_call(service: str, hook: str | None, status: int, latency_s: float) -> None:
    """One answered service call; `service` must be a registered id (or "unknown"), never raw input."""
    HOOK_CALLS.labels(service, _label(hook), str(status)).inc()
    HOOK_LATENCY.labels(service).observe(latency_s)


def feedback_call(service: str, status: int) -> None:
    FEEDBACK_CALLS.labels(service, str(status)).inc()


def feedback_items(service: str, items: Iterable[tuple[str, str | None]]) -> None:
    """Stored feedback items as (outcome, model version of the card or None when the card is unknown)."""
    for outcome, model_version in items:
        FEEDBACK_ITEMS.labels(
            service, outcome if outcome in FEEDBACK_OUTCOMES else UNKNOWN, _label(model_version)
        ).inc()


def cards_issued(service: str, indicators: Iterable[str], model_version: str | None) -> None:
    version = _label(model_version)
    for indicator in indicators:
        CARDS.labels(service, indicator if indicator in INDICATORS else UNKNOWN, version).inc()


def explanation(method: str, completeness_error: float | None) -> None:
    """One computed explanation; its completeness error when the method is additive (else None)."""
    EXPLANATIONS.labels(method).inc()
    if completeness_error is None:
        return
    COMPLETENESS.labels(method).observe(completeness_error)
    if completeness_error > COMPLETENESS_TOLERANCE:
        COMPLETENESS_FLAGGED.labels(method).inc()


def unread_resources(service: str, counts: Mapping[str, int]) -> None:
    """One call's input resources that did not become facts, by reason (cds_plugin.fhir.unread)."""
    for reason, n in counts.items():
        if n > 0:
            UNREAD.labels(service, reason if reason in UNREAD_REASONS else UNKNOWN).inc(n)


def call_without_considerations(service: str, reason: str) -> None:
    """A call answered without consideration cards: "deceased" or "no-clinical-facts"."""
    WITHOUT_CONSIDERATIONS.labels(service, reason if reason in NO_CONSIDERATIONS else UNKNOWN).inc()


def considerations_snoozed(service: str, n: int) -> None:
    """`n` considerations of one call held back: overridden for this patient lately."""
    if n > 0:
        SNOOZED.labels(service).inc(n)


def card_explanation_fallback(service: str) -> None:
    """A call's cards were explained by the fallback method: the card method overran its budget."""
    CARD_EXPLANATION_FALLBACKS.labels(_label(service)).inc()


def background_explanation(outcome: str) -> None:
    """Outcome of one job of the after-response queue: "done", "skipped" or "failed"."""
    BACKGROUND.labels(outcome if outcome in BACKGROUND_OUTCOMES else UNKNOWN).inc()


def database_checked(up: bool) -> None:
    """The database answered a ping (True) or not; hook calls go on either way, feedback does not."""
    DATABASE_UP.set(1 if up else 0)


def model_loaded(model_version: str) -> None:
    MODEL_INFO.labels(_label(model_version)).set(1)


_process_lock = threading.Lock()
_process_sampled = 0.0
_process = ProcessCollector(registry=None)


def sample_process(min_interval_s: float = 10.0) -> None:
    """Copy this worker's memory, CPU and descriptors into its `cds_plugin_worker_*` gauges, at most
    once per `min_interval_s` (multi-process mode only; otherwise the process collector answers)."""
    global _process_sampled
    if multiprocess_dir() is None:
        return
    now = time.monotonic()
    with _process_lock:
        if now - _process_sampled < min_interval_s:
            return
        _process_sampled = now
    figures = {s.name: s.value for family in _process.collect() for s in family.samples}
    for name, gauge in (
        ("process_resident_memory_bytes", WORKER_RSS),
        ("process_cpu_seconds_total", WORKER_CPU),
        ("process_open_fds", WORKER_FDS),
        ("process_start_time_seconds", WORKER_START),
    ):
        if name in figures:
            gauge.set(figures[name])


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """Every worker's metrics summed (multi-process) or this process's, as the scraper's Accept header
    asks (Prometheus text 0.0.4 by default, OpenMetrics when asked for); returns the body and its type."""
    encode, content_type = choose_encoder(accept or "")
    path = multiprocess_dir()
    if path is None:
        return encode(REGISTRY), content_type
    from prometheus_client.multiprocess import MultiProcessCollector

    sample_process(0.0)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    return encode(registry), content_type


def mode_consistent() -> bool:
    """False when PROMETHEUS_MULTIPROC_DIR is set but values were made before it was (counts would then
    stay in each worker instead of being summed): the variable must be set before workers fork."""
    return bool(multiprocess_dir()) == bool(getattr(values.ValueClass, "_multiprocess", False))


def worker_exited(pid: int) -> None:
    """In the gunicorn arbiter when a worker exits: drop its live gauges (model info, process figures)."""
    path = multiprocess_dir()
    if path is None:
        return
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(pid, path)
