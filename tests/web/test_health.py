"""Liveness and readiness."""

from __future__ import annotations

import sqlalchemy as sa

from cds_plugin.hooks.registry import ServiceRegistry
from cds_plugin.web.app import create_app


def test_healthz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_reports_database_and_services(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["database"] is True and body["services"]["echo-patient"] is True


def test_readyz_degraded_but_200_when_database_unreachable(app, client, tmp_path):
    """The replica still answers hook calls without its database: it stays in rotation, saying why."""
    app.extensions["cds_plugin"].db.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/x.sqlite3")
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.get_json()["database"] is False and resp.get_json()["status"] == "degraded"


def test_readyz_503_until_the_services_have_loaded(settings):
    registry = ServiceRegistry()
    registry.service("m", hook="patient-view", description="d", load=lambda: "model")(lambda call: None)
    app = create_app(settings, registry)
    registry.get("m").loaded = False  # as while a worker is still loading its model
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503 and resp.get_json()["status"] == "not ready"


def test_services_load_once_at_start(settings):
    loads = []
    registry = ServiceRegistry()
    registry.service("m", hook="patient-view", description="d", load=lambda: loads.append(1) or "model")(
        lambda call: None
    )
    create_app(settings, registry)
    assert loads == [1] and registry.get("m").state == "model"
