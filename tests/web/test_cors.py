"""CORS for browser clients (req 208)."""

from __future__ import annotations

from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.web.conftest import make_registry


def test_preflight_allows_authorization_and_content_type(client):
    resp = client.options(
        "/cds-services/echo-patient",
        headers={
            "Origin": "https://ehr.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "POST" in resp.headers["Access-Control-Allow-Methods"]


def test_simple_request_gets_origin_header(client):
    resp = client.get("/cds-services", headers={"Origin": "https://ehr.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


def test_configured_origins_only(tmp_path):
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path),
        jwt_required=False,
        cors_origins="https://ehr.example, https://other.example",
    )
    client = create_app(settings, make_registry()).test_client()
    ok = client.get("/cds-services", headers={"Origin": "https://ehr.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ehr.example"
    assert "Origin" in ok.headers["Vary"]
    bad = client.get("/cds-services", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in bad.headers
