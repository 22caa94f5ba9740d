"""Liveness and readiness probes for orchestrators and load balancers."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from cds_plugin import metrics

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Alive: the process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when every registered service has loaded what it needs (the model).

    A database outage makes the answer "degraded", still 200: the service answers hook calls without its
    database (no card log, no explanation links, feedback 503), and a load balancer that took every
    replica out of rotation because their shared database failed would stop all cards at once.
    """
    runtime = current_app.extensions["cds_plugin"]
    database = runtime.db.ping()
    metrics.database_checked(database)
    services = {s.id: s.loaded for s in runtime.registry}
    loaded = all(services.values())
    status = "not ready" if not loaded else "ready" if database else "degraded"
    body = {"status": status, "database": database, "services": services}
    return jsonify(body), 200 if loaded else 503
