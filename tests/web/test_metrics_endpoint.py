"""GET /metrics: counters move on calls, feedback outcomes by model version, token protection, no patient
data in labels, and counts summed over the workers of a real gunicorn server."""

from __future__ import annotations

import concurrent.futures
import json
import re
from pathlib import Path

import pytest
import requests

from cds_plugin import metrics
from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.helpers.live_server import start_server
from tests.web.conftest import make_registry, pv_request

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
TS = "2026-11-29T10:00:00Z"


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def scraped(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, from a text exposition."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def test_metrics_in_prometheus_text_format(client):
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE cds_plugin_hook_calls_total counter" in resp.text
    assert "# TYPE cds_plugin_hook_call_duration_seconds histogram" in resp.text
    assert resp.headers["Cache-Control"] == "no-store"


def test_hook_calls_latency_and_cards_move(client):
    calls = value("cds_plugin_hook_calls_total", service="echo-patient", hook="patient-view", status="200")
    latency = value("cds_plugin_hook_call_duration_seconds_count", service="echo-patient")
    cards = value(
        "cds_plugin_cards_issued_total", service="echo-patient", indicator="info", model_version="test-1"
    )
    for _ in range(3):
        assert client.post("/cds-services/echo-patient", json=pv_request()).status_code == 200
    assert client.post("/cds-services/echo-patient", json={}).status_code == 400
    assert (
        value("cds_plugin_hook_calls_total", service="echo-patient", hook="patient-view", status="200")
        == calls + 3
    )
    assert value("cds_plugin_hook_call_duration_seconds_count", service="echo-patient") == latency + 4
    assert (
        value(
            "cds_plugin_cards_issued_total", service="echo-patient", indicator="info", model_version="test-1"
        )
        == cards + 3
    )
    assert value("cds_plugin_hook_calls_total", service="echo-patient", hook="unknown", status="400") >= 1


def test_errors_and_unknown_services_have_bounded_labels(client):
    before = value("cds_plugin_hook_calls_total", service="boom", hook="patient-view", status="500")
    assert client.post("/cds-services/boom", json=pv_request()).status_code == 500
    assert client.post("/cds-services/no-such-thing-1234", json=pv_request()).status_code == 404
    assert client.post("/cds-services/no-such-thing-1234/feedback", json={}).status_code == 404
    assert (
        value("cds_plugin_hook_calls_total", service="boom", hook="patient-view", status="500") == before + 1
    )
    text = client.get("/metrics").text
    assert "no-such-thing-1234" not in text
    assert scraped(text, "cds_plugin_hook_calls_total", service="unknown", status="404") >= 1
    assert scraped(text, "cds_plugin_feedback_calls_total", service="unknown", status="404") >= 1


def feedback_item(card: str, outcome: str, suggestion: str = "s1") -> dict:
    item = {"card": card, "outcome": outcome, "outcomeTimestamp": TS}
    if outcome == "accepted":
        item["acceptedSuggestions"] = [{"id": suggestion}]
    else:
        item["overrideReason"] = {"userComment": "not now"}
    return item


def test_feedback_outcomes_by_model_version(client):
    card = client.post("/cds-services/echo-patient", json=pv_request()).get_json()["cards"][0]
    labels = {"service": "echo-patient"}
    accepted = value("cds_plugin_feedback_items_total", **labels, outcome="accepted", model_version="test-1")
    overridden = value(
        "cds_plugin_feedback_items_total", **labels, outcome="overridden", model_version="unknown"
    )
    ok = value("cds_plugin_feedback_calls_total", **labels, status="200")
    bad = value("cds_plugin_feedback_calls_total", **labels, status="400")
    body = {
        "feedback": [
            feedback_item(card["uuid"], "accepted", card["suggestions"][0]["uuid"]),
            feedback_item("card-never-issued", "overridden"),
            feedback_item("card-never-issued", "overridden"),  # the same item twice: stored once
        ]
    }
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 200
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 200  # a retry
    assert client.post("/cds-services/echo-patient/feedback", json={"feedback": []}).status_code == 400
    assert (
        value("cds_plugin_feedback_items_total", **labels, outcome="accepted", model_version="test-1")
        == accepted + 1
    )
    assert (
        value("cds_plugin_feedback_items_total", **labels, outcome="overridden", model_version="unknown")
        == overridden + 1
    )
    assert value("cds_plugin_feedback_calls_total", **labels, status="200") == ok + 2
    assert value("cds_plugin_feedback_calls_total", **labels, status="400") == bad + 1


def test_feedback_503_is_counted(app, client, monkeypatch):
    import sqlalchemy as sa

    def broken(*_args, **_kwargs):
        raise sa.exc.OperationalError("INSERT", {}, Exception("database down"))

    monkeypatch.setattr(app.extensions["cds_plugin"].feedback_store, "save", broken)
    before = value("cds_plugin_feedback_calls_total", service="echo-patient", status="503")
    body = {"feedback": [feedback_item("c1", "overridden")]}
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 503
    assert value("cds_plugin_feedback_calls_total", service="echo-patient", status="503") == before + 1


def test_database_up_is_checked_on_each_scrape(app, client, tmp_path):
    """Without feedback traffic nothing else would show a database outage (hook calls go on)."""
    import sqlalchemy as sa

    assert scraped(client.get("/metrics").text, "cds_plugin_database_up") == 1.0
    app.extensions["cds_plugin"].db.engine = sa.create_engine(f"sqlite:///{tmp_path}/missing-dir/x.sqlite3")
    assert scraped(client.get("/metrics").text, "cds_plugin_database_up") == 0.0
    assert client.get("/readyz").get_json()["status"] == "degraded"


def test_token_protects_the_endpoint(tmp_path):
    settings = Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False, metrics_token="s3cret")
    client = create_app(settings, make_registry()).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 401 and resp.get_data() == b""
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    resp = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert resp.status_code == 200 and "cds_plugin_hook_calls_total" in resp.text


def test_metrics_can_be_switched_off(tmp_path):
    settings = Settings.load(environ={}, data_dir=str(tmp_path), jwt_required=False, metrics_enabled=False)
    client = create_app(settings, make_registry()).test_client()
    assert client.get("/metrics").status_code == 404
    assert client.post("/cds-services/echo-patient", json=pv_request()).status_code == 200


def test_no_patient_data_in_the_exposition(client):
    body = json.loads((FIXTURES / "diabetes-adult-2025.patient-view.json").read_text())
    body["hook"] = "patient-view"
    patient = body["prefetch"]["patient"]
    resp = client.post("/cds-services/echo-patient", json=body)
    assert resp.status_code == 200
    text = client.get("/metrics").text
    name = patient["name"][0]
    for secret in (
        patient["id"],
        name["family"],
        *name["given"],
        body["hookInstance"],
        body["context"]["userId"],
    ):
        assert secret not in text


@pytest.mark.timeout(300)
def test_counts_are_summed_over_gunicorn_workers(tmp_path):
    """A real server with two workers: whichever worker answers each call or scrape, the sums are exact."""
    # generous start-up limit: two workers load the real model, slow on a busy machine
    server = start_server(tmp_path, env={"CDS_PLUGIN_JWT_REQUIRED": "false"}, workers=2, ready_s=180)
    try:

        def calls(i: int) -> int:
            with requests.Session() as http:  # a connection each: calls spread over both workers
                if i % 2:
                    return http.get(server.base + "/cds-services", timeout=30).status_code
                item = feedback_item("card-never-issued", "overridden")
                item["overrideReason"]["userComment"] = f"n{i}"  # ten distinct items
                return http.post(
                    server.base + "/cds-services/diagnosis-considerations/feedback",
                    json={"feedback": [item]},
                    timeout=30,
                ).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(calls, range(20)))
        assert statuses == [200] * 20
        bodies = [requests.get(server.base + "/metrics", timeout=10).text for _ in range(4)]
        for text in bodies:  # the same sums from every worker
            assert scraped(text, "cds_plugin_feedback_calls_total", status="200") == 10
            assert (
                scraped(
                    text,
                    "cds_plugin_feedback_items_total",
                    service="diagnosis-considerations",
                    outcome="overridden",
                    model_version="unknown",
                )
                == 10
            )
            assert len(set(re.findall(r'cds_plugin_worker_start_time_seconds\{pid="(\d+)"\}', text))) >= 1
            assert scraped(text, "cds_plugin_model_info") >= 1
        # both workers answered (each reports its own process figures), yet every scrape has the full sums
        pids = set(re.findall(r'cds_plugin_worker_resident_memory_bytes\{pid="(\d+)"\}', bodies[-1]))
        assert len(pids) == 2, pids
        assert (tmp_path / "metrics").is_dir() and any((tmp_path / "metrics").glob("counter_*.db"))
    finally:
        server.stop()
