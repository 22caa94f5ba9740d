"""Liveness and readiness probes for orchestrators and load balancers."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Alive: the process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready: the database answers and every registered service has loaded what it needs."""
    runtime = current_app.extensions["cds_plugin"]
    database = runtime.db.ping()
    services = {s.id: s.loaded for s in runtime.registry}
    ready = database and all(services.values())
    body = {"status": "ready" if ready else "not ready", "database": database, "services": services}
    return jsonify(body), 200 if ready else 503
