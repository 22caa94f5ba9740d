"""The loopback FHIR server's SMART Backend Services token endpoint: who gets a token, and what it opens."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.keys import ClientKey
from cds_plugin.sandbox.smart_auth import ASSERTION_TYPE

TIMEOUT = 5
EC_KEY = ClientKey.generate(kid="ec-1")
RSA_KEY = ClientKey(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa-1")
OTHER_KEY = ClientKey.generate(kid="ec-1")  # same kid, another key: its signatures must fail


@pytest.fixture(scope="module")
def server() -> Iterator[FhirServer]:
    patient = {"resourceType": "Patient", "id": "p"}
    with FhirServer([patient], clients={"ec-client": EC_KEY.jwks(), "rsa-client": RSA_KEY.jwks()}) as srv:
        yield srv


def assertion(server: FhirServer, key: ClientKey, client_id: str, **overrides: Any) -> str:
    claims = {"sub": client_id, **overrides.pop("claims", {})}
    lifetime = overrides.pop("lifetime_s", 300)
    audience = overrides.pop("aud", server.token_url)
    return key.sign(audience, overrides.pop("iss", client_id), lifetime_s=lifetime, extra_claims=claims)


def token_request(server: FhirServer, client_assertion: str, **form: str) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        "scope": "system/*.read",
        **form,
    }
    return requests.post(server.token_url, data=data, timeout=TIMEOUT)


@pytest.mark.parametrize(("key", "client_id"), [(EC_KEY, "ec-client"), (RSA_KEY, "rsa-client")])
def test_es384_and_rs384_clients_get_a_token_that_opens_the_server(
    server: FhirServer, key: ClientKey, client_id: str
) -> None:
    assert requests.get(f"{server.base_url}/Patient/p", timeout=TIMEOUT).status_code == 401
    response = token_request(server, assertion(server, key, client_id))
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "system/*.read"
    headers = {"Authorization": f"Bearer {body['access_token']}"}
    assert requests.get(f"{server.base_url}/Patient/p", headers=headers, timeout=TIMEOUT).status_code == 200
    wrong = {"Authorization": f"Bearer {body['access_token']}x"}
    assert requests.get(f"{server.base_url}/Patient/p", headers=wrong, timeout=TIMEOUT).status_code == 401


def test_smart_configuration_names_the_token_endpoint(server: FhirServer) -> None:
    config = requests.get(f"{server.base_url}/.well-known/smart-configuration", timeout=TIMEOUT).json()
    assert config["token_endpoint"] == server.token_url
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["ES384", "RS384"]
    assert "client_credentials" in config["grant_types_supported"]


def _hs256(server: FhirServer) -> str:
    now = int(time.time())
    claims = {"iss": "ec-client", "sub": "ec-client", "aud": server.token_url, "exp": now + 60, "jti": "x"}
    return jwt.encode(claims, "a-shared-secret-of-enough-length!", algorithm="HS256", headers={"kid": "ec-1"})


def _es256(server: FhirServer) -> str:
    now = int(time.time())
    claims = {"iss": "ec-client", "sub": "ec-client", "aud": server.token_url, "exp": now + 60, "jti": "y"}
    return jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "ec-1"}
    )


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda s: assertion(s, OTHER_KEY, "ec-client"), "invalid_client"),  # signature by another key
        (lambda s: assertion(s, EC_KEY, "nobody"), "invalid_client"),  # not registered
        (
            lambda s: assertion(s, EC_KEY, "rsa-client"),
            "invalid_client",
        ),  # another client's id, its kid unknown
        (lambda s: assertion(s, EC_KEY, "ec-client", aud="https://elsewhere/token"), "invalid_client"),
        (lambda s: assertion(s, EC_KEY, "ec-client", lifetime_s=3600), "invalid_client"),  # exp too far
        (lambda s: assertion(s, EC_KEY, "ec-client", lifetime_s=-120), "invalid_client"),  # expired
        (lambda s: assertion(s, EC_KEY, "ec-client", claims={"sub": "someone-else"}), "invalid_client"),
        (_hs256, "invalid_client"),
        (_es256, "invalid_client"),
        (lambda s: "not-a-jwt", "invalid_request"),
    ],
)
def test_bad_assertions_are_refused(server: FhirServer, make: Any, error: str) -> None:
    response = token_request(server, make(server))
    assert response.status_code in (400, 401)
    body = response.json()
    assert body["error"] == error
    assert "access_token" not in body


def test_replayed_assertion_wrong_grant_and_write_scope_are_refused(server: FhirServer) -> None:
    signed = assertion(server, EC_KEY, "ec-client", claims={"jti": str(uuid.uuid4())})
    assert token_request(server, signed).status_code == 200
    replay = token_request(server, signed)
    assert replay.json() == {"error": "invalid_client", "error_description": "jti was already used"}
    fresh = assertion(server, EC_KEY, "ec-client")
    assert token_request(server, fresh, grant_type="password").json()["error"] == "unsupported_grant_type"
    assert token_request(server, fresh, scope="system/*.write").json()["error"] == "invalid_scope"
    assert token_request(server, fresh, client_assertion_type="x").json()["error"] == "invalid_request"


def test_issued_tokens_expire(server: FhirServer) -> None:
    clock = [time.time()]
    server.auth._clock = lambda: clock[0]  # type: ignore[union-attr]
    try:
        body = token_request(server, assertion(server, EC_KEY, "ec-client")).json()
        headers = {"Authorization": f"Bearer {body['access_token']}"}
        assert (
            requests.get(f"{server.base_url}/Patient/p", headers=headers, timeout=TIMEOUT).status_code == 200
        )
        clock[0] += 301
        assert (
            requests.get(f"{server.base_url}/Patient/p", headers=headers, timeout=TIMEOUT).status_code == 401
        )
    finally:
        server.auth._clock = time.time  # type: ignore[union-attr]
