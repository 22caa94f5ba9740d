"""The production server (gunicorn) replaces a worker killed in the middle of a request, and the next call
succeeds."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import requests

from tests.helpers.fhir_faults import FaultyFhirServer
from tests.helpers.live_server import start_server

REQUEST = (
    Path(__file__).resolve().parents[2]
    / "fhir_fixtures"
    / "requests"
    / "diabetes-adult-2025.patient-view.json"
)


def test_worker_killed_mid_request_is_replaced_and_the_next_call_succeeds(tmp_path):
    server = start_server(
        tmp_path,
        # the first call waits on a slow FHIR server for its missing prefetch keys: time to kill the worker
        env={
            "CDS_PLUGIN_JWT_REQUIRED": "false",
            "CDS_PLUGIN_FHIR_FETCH_BUDGET_S": "30",
            "CDS_PLUGIN_MIN_CARD_PROBABILITY": "0",
        },
        workers=1,
    )
    try:
        (victim,) = server.workers()
        body = json.loads(REQUEST.read_text())
        url = server.base + "/cds-services/diagnosis-considerations"
        outcome: dict[str, object] = {}
        with FaultyFhirServer(slow_s=8.0) as fhir:
            slow = {
                **body,
                "fhirServer": fhir.base_url.removesuffix("/fhir") + "/fhir/Slow",
                "fhirAuthorization": {
                    "access_token": "t",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "user/*.read",
                    "subject": "cds-service",
                },
            }

            def call() -> None:
                try:
                    outcome["status"] = requests.post(url, json=slow, timeout=120).status_code
                except requests.RequestException as exc:
                    outcome["error"] = type(exc).__name__

            in_flight = threading.Thread(target=call)
            in_flight.start()
            deadline = time.monotonic() + 10
            while not any("/Slow/" in p for p in fhir.paths) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert any("/Slow/" in p for p in fhir.paths)  # the worker is waiting on the FHIR server
            assert in_flight.is_alive()
            os.kill(victim, signal.SIGKILL)
            in_flight.join(60)
        assert "error" in outcome  # the connection dropped: no half answer, no cards
        deadline = time.monotonic() + 180
        replaced: set[int] = set()
        while time.monotonic() < deadline:
            replaced = server.workers() - {victim}
            if replaced:
                try:
                    if requests.get(server.base + "/readyz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
            time.sleep(0.5)
        assert replaced and victim not in server.workers()
        resp = requests.post(url, json=body, timeout=120)
        assert resp.status_code == 200 and 1 <= len(resp.json()["cards"]) <= 3
    finally:
        server.stop()
