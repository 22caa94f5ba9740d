"""JWT trust wired into the endpoints: 401 with an empty body, aud = the URL called (req 176-203)."""

from __future__ import annotations

import json

import pytest

from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app
from tests.helpers.jwt_tokens import KeyPair, bearer, client_claims, unsigned_token
from tests.web.conftest import make_registry, pv_request

ISS = "https://ehr.example.org"


@pytest.fixture
def keys():
    return KeyPair.generate("ES384", kid="k1")


def trusted_app(tmp_path, keys, **overrides):
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path),
        trusted_issuers=[{"iss": ISS, "jwks_file": str(jwks)}],
        **overrides,
    )
    return create_app(settings, make_registry())


def test_signed_call_is_accepted_and_unsigned_refused_with_empty_body(tmp_path, keys):
    client = trusted_app(tmp_path, keys).test_client()
    url = "http://localhost/cds-services/echo-patient"
    token = keys.sign(client_claims(ISS, url))
    ok = client.post(
        "/cds-services/echo-patient", json=pv_request(), headers={"Authorization": bearer(token)}
    )
    assert ok.status_code == 200
    for headers in ({}, {"Authorization": bearer(unsigned_token(client_claims(ISS, url), {"kid": "k1"}))}):
        resp = client.post("/cds-services/echo-patient", json=pv_request(), headers=headers)
        assert resp.status_code == 401 and resp.get_data() == b""
        assert resp.headers["WWW-Authenticate"] == "Bearer"


def test_replayed_token_is_refused(tmp_path, keys):
    client = trusted_app(tmp_path, keys).test_client()
    token = keys.sign(client_claims(ISS, "http://localhost/cds-services/echo-patient"))
    headers = {"Authorization": bearer(token)}
    assert client.post("/cds-services/echo-patient", json=pv_request(), headers=headers).status_code == 200
    again = client.post("/cds-services/echo-patient", json=pv_request(), headers=headers)
    assert again.status_code == 401 and again.get_data() == b""


def test_audience_is_the_exact_url_called(tmp_path, keys):
    client = trusted_app(tmp_path, keys).test_client()
    token = keys.sign(client_claims(ISS, "http://localhost/cds-services/quiet"))
    resp = client.post(
        "/cds-services/echo-patient", json=pv_request(), headers={"Authorization": bearer(token)}
    )
    assert resp.status_code == 401


def test_public_base_url_sets_the_audience(tmp_path, keys):
    client = trusted_app(tmp_path, keys, public_base_url="https://cds.example.org/").test_client()
    token = keys.sign(client_claims(ISS, "https://cds.example.org/cds-services/echo-patient"))
    resp = client.post(
        "/cds-services/echo-patient", json=pv_request(), headers={"Authorization": bearer(token)}
    )
    assert resp.status_code == 200


def test_feedback_requires_a_token_for_its_own_url(tmp_path, keys):
    client = trusted_app(tmp_path, keys).test_client()
    body = {
        "feedback": [
            {
                "card": "c",
                "outcome": "overridden",
                "overrideReason": {"userComment": "no"},
                "outcomeTimestamp": "2026-11-29T10:00:00Z",
            }
        ]
    }
    assert client.post("/cds-services/echo-patient/feedback", json=body).status_code == 401
    token = keys.sign(client_claims(ISS, "http://localhost/cds-services/echo-patient/feedback"))
    ok = client.post(
        "/cds-services/echo-patient/feedback", json=body, headers={"Authorization": bearer(token)}
    )
    assert ok.status_code == 200


def test_token_never_logged(tmp_path, keys, caplog):
    caplog.set_level("DEBUG")
    client = trusted_app(tmp_path, keys).test_client()
    token = keys.sign(client_claims(ISS, "http://localhost/cds-services/quiet"))
    client.post("/cds-services/echo-patient", json=pv_request(), headers={"Authorization": bearer(token)})
    assert token not in caplog.text and token.split(".")[2] not in caplog.text
