"""`GET /metrics` (Prometheus text format) and the web layer's recording of calls, cards and feedback.

The metric definitions live in cds_plugin.metrics. Labels here come from the service registry (a service
id in the URL that is not registered is recorded as "unknown"), never from patient data or hookInstance.
With `metrics_token` set, a scrape needs `Authorization: Bearer <token>` (401 with an empty body else).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, request

from cds_plugin import metrics
from cds_plugin.hooks.feedback import FeedbackItem
from cds_plugin.hooks.registry import Service
from cds_plugin.hooks.response import CDSResponse
from cds_plugin.storage.feedback_store import fingerprint

log = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)


def _runtime() -> Any:
    return current_app.extensions["cds_plugin"]


def _enabled() -> bool:
    return bool(_runtime().settings.metrics_enabled)


def _service_label(service_id: str) -> str:
    return service_id if _runtime().registry.get(service_id) is not None else metrics.UNKNOWN


def install(app: Flask) -> None:
    """Register `/metrics` when metrics are on."""
    settings = app.extensions["cds_plugin"].settings
    if not settings.metrics_enabled:
        return
    if not metrics.mode_consistent():
        log.warning(
            "prometheus_client was set up before PROMETHEUS_MULTIPROC_DIR was set: "
            "metrics will not be summed over workers"
        )
    app.register_blueprint(bp)


@bp.get("/metrics")
def scrape() -> Response:
    token = _runtime().settings.metrics_token
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    metrics.database_checked(_runtime().db.ping())  # without feedback traffic, nothing else would tell
    body, content_type = metrics.exposition(request.headers.get("Accept"))
    return Response(body, status=200, content_type=content_type, headers={"Cache-Control": "no-store"})


@bp.after_app_request
def _sample_process(response: Response) -> Response:
    metrics.sample_process()  # multi-process mode only, at most every 10 s per worker
    return response


def hook_call(fields: dict[str, Any]) -> None:
    """From a service call's log fields: service, hook, status and latency."""
    if not _enabled():
        return
    metrics.hook_call(
        _service_label(str(fields.get("service", ""))),
        fields.get("hook"),
        int(fields.get("status", 500)),
        float(fields.get("latency_ms", 0.0)) / 1000,
    )


def cards_issued(service: Service, response: CDSResponse, model_version: str | None) -> None:
    if _enabled() and response.cards:
        metrics.cards_issued(service.id, [c.indicator for c in response.cards], model_version)


def feedback_call(fields: dict[str, Any]) -> None:
    if _enabled():
        metrics.feedback_call(_service_label(str(fields.get("service", ""))), int(fields.get("status", 500)))


def feedback_items(service_id: str, items: Sequence[FeedbackItem], added: int) -> None:
    """Stored items by outcome and the model version their card was issued with ("unknown" when the card
    was not issued here or the card log cannot be read: metrics never fail the call). Items repeated in
    the request count once, and a request the store already had in full (`added` 0, a retry) not at all."""
    if not _enabled() or not items or added == 0:
        return
    distinct = list({fingerprint(service_id, i): i for i in items}.values())
    try:
        versions = _runtime().card_log.model_versions([i.card for i in distinct])
    except sa.exc.SQLAlchemyError as exc:
        log.warning("feedback metrics without model versions: %s", type(exc).__name__)
        versions = {}
    metrics.feedback_items(_service_label(service_id), [(i.outcome, versions.get(i.card)) for i in distinct])
