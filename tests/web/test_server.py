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
        env={
            "CDS_PLUGIN_JWT_REQUIRED": "false",
            # integrated gradients on three cards keep the worker busy for seconds: time to kill it
            "CDS_PLUGIN_CARD_EXPLANATION_METHOD": "integrated_gradients",
            "CDS_PLUGIN_MIN_CARD_PROBABILITY": "0",
        },
        workers=1,
    )
    try:
        (victim,) = server.workers()
        body = json.loads(REQUEST.read_text())
        url = server.base + "/cds-services/diagnosis-considerations"
        outcome: dict[str, object] = {}

        def call() -> None:
            try:
                outcome["status"] = requests.post(url, json=body, timeout=120).status_code
            except requests.RequestException as exc:
                outcome["error"] = type(exc).__name__

        in_flight = threading.Thread(target=call)
        in_flight.start()
        time.sleep(1.0)  # the call is being answered (it takes several seconds)
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
        assert resp.status_code == 200 and len(resp.json()["cards"]) == 3
    finally:
        server.stop()
