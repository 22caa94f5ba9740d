"""`cds-plugin serve` starts the production server (gunicorn) and `--dev` the Flask server, for real."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.helpers.live_server import start_server


@pytest.mark.parametrize("dev", [False, True], ids=["gunicorn", "dev"])
def test_serve_answers_discovery(tmp_path, dev):
    server = start_server(tmp_path, *(["--dev"] if dev else []))
    base = server.base
    try:
        assert requests.get(base + "/healthz", timeout=5).json() == {"status": "ok"}
        resp = requests.get(base + "/cds-services", timeout=5)
        assert resp.status_code == 200 and "services" in resp.json()
        # JWT is required by default: an unsigned call is refused with an empty body
        call = requests.post(base + "/cds-services/anything", json={}, timeout=5)
        assert call.status_code in (401, 404)
    finally:
        server.stop()
    log = server.log()
    if not dev:
        assert "gunicorn" in log.lower() and log.lower().count("booting worker") == 2
    assert (tmp_path / "cds_plugin.sqlite3").exists()


def test_bad_setting_exits_with_a_clear_message(tmp_path):
    env = {**os.environ, "CDS_PLUGIN_WORKERS": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "cds_plugin.cli", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "CDS_PLUGIN_WORKERS" in result.stderr


def test_dev_server_redacts_link_tokens_in_request_logs():
    import logging

    from cds_plugin.cli import _RedactTokens

    record = logging.LogRecord(
        "werkzeug", logging.INFO, "", 0, '%s - - "%s" %s',
        ("127.0.0.1", "GET /explanations/abc?token=eyJpZCI6.c2ln&x=1 HTTP/1.1", "200"), None,
    )  # fmt: skip
    _RedactTokens().filter(record)
    assert "eyJpZCI6" not in record.getMessage() and "token=REDACTED&x=1" in record.getMessage()


def test_python_dash_m_cds_plugin_is_the_cli():
    """`python -m cds_plugin` works where the `cds-plugin` script is not on PATH, exit status included."""
    version = subprocess.run(
        [sys.executable, "-m", "cds_plugin", "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("cds-plugin ")
    env = {**os.environ, "CDS_PLUGIN_WORKERS": "lots"}
    bad = subprocess.run(
        [sys.executable, "-m", "cds_plugin", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "CDS_PLUGIN_WORKERS" in bad.stderr
