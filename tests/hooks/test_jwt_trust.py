"""Client trust: every acceptance and rejection rule of CDS Hooks 2.0 "Trusting CDS Clients", with real
ES384/RS384 JWTs signed by keys generated for this run and JWK Sets served from loopback."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cds_plugin.errors import ServiceUnavailableError, UnauthorizedError
from cds_plugin.hooks.jwks import JwksCache
from cds_plugin.hooks.jwt_trust import ClientTrust, VerifiedClient
from cds_plugin.settings import SANDBOX_ISSUER, SANDBOX_JKU, Settings, SettingsError, TrustedIssuer
from cds_plugin.storage.database import Database
from cds_plugin.storage.replay_cache import DatabaseReplayCache
from tests.helpers.jwt_tokens import (
    JwksServer,
    KeyPair,
    bearer,
    client_claims,
    hmac_token,
    jwks_of,
    unsigned_token,
)

ISS = "https://ehr.example.org"
AUD = "https://cds.example.org/cds-services/demo"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def es_key() -> KeyPair:
    return KeyPair.generate("ES384", kid="es384-1")


@pytest.fixture(scope="module")
def rs_key() -> KeyPair:
    return KeyPair.generate("RS384", kid="rs384-1")


@pytest.fixture(scope="module")
def weak_keys() -> dict[str, KeyPair]:
    """Keys for algorithms we refuse, published in the issuer's JWK Set so only `alg` decides."""
    return {
        alg: KeyPair.generate(alg, kid=f"{alg.lower()}-1") for alg in ("ES256", "RS256", "PS384", "ES512")
    }


@pytest.fixture
def server(es_key: KeyPair, rs_key: KeyPair, weak_keys: dict[str, KeyPair]):
    with JwksServer(jwks=jwks_of(es_key, rs_key, *weak_keys.values())).running() as srv:
        yield srv


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cds_plugin.sqlite3'}"


@pytest.fixture
def replay(db_url: str):
    db = Database(db_url)
    db.migrate()
    yield DatabaseReplayCache(db)
    db.dispose()


class NoNetwork:
    """A stand-in HTTP session proving that pinned key sets are never fetched."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a pinned key set must not be fetched")


def make_trust(server: JwksServer, replay_cache, **kw) -> ClientTrust:
    issuer = TrustedIssuer(iss=ISS, jwks_url=server.url(), jku_allow=(server.url("/jku.json"),))
    return ClientTrust([issuer], replay_cache=replay_cache, http_timeout_s=2.0, **kw)


@pytest.fixture
def trust(server: JwksServer, replay: DatabaseReplayCache) -> ClientTrust:
    return make_trust(server, replay)


def reject(trust: ClientTrust, header: str | None, audience: str = AUD) -> str:
    """Assert the header is refused with UnauthorizedError; returns the internal reason.

    Also checks the reason never quotes the token (it is logged).
    """
    with pytest.raises(UnauthorizedError) as info:
        trust.verify(header, audience)
    reason = str(info.value)
    if header and " " in header.strip():
        token = header.strip().split(" ", 1)[1].strip()
        assert token not in reason
        for part in token.split("."):
            assert len(part) < 16 or part not in reason
    return reason


# -- acceptance ---------------------------------------------------------------------------------------


def test_valid_es384_token_is_accepted(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 176, 178, 180, 181, 182, 187, 189, 190, 191, 192, 193, 197, 199, 205."""
    claims = client_claims(ISS, AUD, sub="client-app", tenant="org-42")
    client = trust.verify(bearer(es_key.sign(claims)), AUD)
    assert client == VerifiedClient(
        iss=ISS, sub="client-app", jti=claims["jti"], kid="es384-1", exp=claims["exp"], tenant="org-42"
    )


def test_valid_rs384_token_is_accepted(trust: ClientTrust, rs_key: KeyPair) -> None:
    """Covers req 176, 180, 181, 182, 187, 189, 190, 191, 192, 194, 205 (no tenant: optional)."""
    claims = client_claims(ISS, AUD)
    client = trust.verify(bearer(rs_key.sign(claims)), AUD)
    assert (client.iss, client.kid, client.jti, client.tenant, client.sub) == (
        ISS,
        "rs384-1",
        claims["jti"],
        None,
        None,
    )


def test_rs384_key_published_without_alg_is_accepted(
    server: JwksServer, replay: DatabaseReplayCache, rs_key: KeyPair
) -> None:
    """Covers req 197, 205: an RSA JWK without 'alg' is still usable for RS384 (not guessed as RS256)."""
    server.jwks = {"keys": [rs_key.public_jwk(with_alg=False)]}
    trust = make_trust(server, replay)
    assert trust.verify(bearer(rs_key.sign(client_claims(ISS, AUD))), AUD).kid == "rs384-1"


def test_aud_as_array_containing_the_endpoint_is_accepted(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 189 (aud may be an array of strings), 196."""
    token = es_key.sign(client_claims(ISS, ["https://other.example.org/x", AUD]))
    assert trust.verify(bearer(token), AUD).iss == ISS


def test_bearer_scheme_is_case_insensitive(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 178 (Authorization: Bearer); the auth scheme is case-insensitive per RFC 7235."""
    assert trust.verify("bearer " + es_key.sign(client_claims(ISS, AUD)), AUD).iss == ISS


def test_typ_header_may_be_absent(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 184: typ is the client's duty; when given it must be JWT, when absent we still verify."""
    import jwt as pyjwt

    token = es_key.sign(client_claims(ISS, AUD), {"typ": None})
    assert "typ" not in pyjwt.get_unverified_header(token)
    trust.verify(bearer(token), AUD)
    trust.verify(bearer(es_key.sign(client_claims(ISS, AUD), {"typ": "jwt"})), AUD)


def test_small_clock_skew_is_tolerated(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 190, 191: exp just past and iat just ahead are within the leeway (30 s by default)."""
    now = time.time()
    expired_10s_ago = client_claims(ISS, AUD, now=now - 300, lifetime_s=290)
    trust.verify(bearer(es_key.sign(expired_10s_ago)), AUD)
    issued_10s_ahead = client_claims(ISS, AUD, now=now + 10)
    trust.verify(bearer(es_key.sign(issued_10s_ahead)), AUD)


# -- replay ---------------------------------------------------------------------------------------------


def test_replayed_jti_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 192 (jti protects against replay attacks)."""
    header = bearer(es_key.sign(client_claims(ISS, AUD)))
    trust.verify(header, AUD)
    assert "replayed" in reject(trust, header)


def test_reused_jti_in_a_new_token_is_rejected(trust: ClientTrust, es_key: KeyPair, rs_key: KeyPair) -> None:
    """Covers req 192: the jti, not the token bytes, is what may be used once."""
    claims = client_claims(ISS, AUD)
    trust.verify(bearer(es_key.sign(claims)), AUD)
    assert "replayed" in reject(trust, bearer(rs_key.sign(claims | {"iat": claims["iat"] + 1})))


def test_replay_is_refused_across_two_workers_sharing_the_database(
    server: JwksServer, db_url: str, es_key: KeyPair
) -> None:
    """Covers req 192: two workers (two engines, two ClientTrust) on one database refuse a replay."""
    db_a, db_b = Database(db_url), Database(db_url)
    db_a.migrate()
    db_b.migrate()
    try:
        worker_a = make_trust(server, DatabaseReplayCache(db_a))
        worker_b = make_trust(server, DatabaseReplayCache(db_b))
        header = bearer(es_key.sign(client_claims(ISS, AUD)))
        worker_a.verify(header, AUD)
        assert "replayed" in reject(worker_b, header)
    finally:
        db_a.dispose()
        db_b.dispose()


def test_concurrent_replays_accept_exactly_one(server: JwksServer, db_url: str, es_key: KeyPair) -> None:
    """Covers req 192: the same token sent at once to several workers is accepted exactly once."""
    dbs = [Database(db_url) for _ in range(2)]
    for d in dbs:
        d.migrate()
    workers = [make_trust(server, DatabaseReplayCache(d)) for d in dbs]
    header = bearer(es_key.sign(client_claims(ISS, AUD)))
    outcomes: list[str] = []
    barrier = threading.Barrier(10)

    def call(i: int) -> None:
        barrier.wait()
        try:
            workers[i % 2].verify(header, AUD)
            outcomes.append("ok")
        except UnauthorizedError:
            outcomes.append("refused")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for d in dbs:
        d.dispose()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 9


def test_rejected_token_does_not_use_up_its_jti(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 192: only verified tokens are recorded, so forged tokens cannot block a real jti."""
    claims = client_claims(ISS, AUD)
    forged = KeyPair.generate("ES384", kid="es384-1").sign(claims)
    reject(trust, bearer(forged))
    reject(trust, bearer(es_key.sign(claims | {"aud": "https://elsewhere.example.org"})))
    trust.verify(bearer(es_key.sign(claims)), AUD)


def test_replay_cache_failure_fails_closed_without_blaming_the_client(
    server: JwksServer, es_key: KeyPair
) -> None:
    """Covers req 192: if replays cannot be checked, the call is refused (503), not let through."""

    class Broken:
        def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
            raise RuntimeError("database is down")

    trust = make_trust(server, Broken())
    with pytest.raises(ServiceUnavailableError):
        trust.verify(bearer(es_key.sign(client_claims(ISS, AUD))), AUD)


def test_replay_entry_lives_until_exp_plus_leeway(server: JwksServer, es_key: KeyPair) -> None:
    """Covers req 192: the jti is kept as long as the token could still pass the exp check."""
    seen = []

    class Recording:
        def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
            seen.append((iss, jti, expires_at.timestamp()))
            return True

    claims = client_claims(ISS, AUD)
    make_trust(server, Recording(), leeway_s=30).verify(bearer(es_key.sign(claims)), AUD)
    assert seen == [(ISS, claims["jti"], claims["exp"] + 30)]


# -- audience and times --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        "https://cds.example.org/cds-services/other",
        "https://cds.example.org/cds-services",
        AUD + "/",
        AUD.upper(),
        "https://cds.example.org",
        ["https://cds.example.org/cds-services/other"],
        [],
        [AUD, 7],
        7,
        None,
    ],
)
def test_wrong_aud_is_rejected(trust: ClientTrust, es_key: KeyPair, aud: object) -> None:
    """Covers req 189, 196 (aud MUST be the URL of the CDS Service endpoint being invoked)."""
    claims = client_claims(ISS, AUD) | {"aud": aud}
    if aud is None:
        del claims["aud"]
    assert "aud" in reject(trust, bearer(es_key.sign(claims)))


def test_expired_token_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 190 (exp)."""
    claims = client_claims(ISS, AUD, now=time.time() - 400, lifetime_s=300)  # expired 100 s ago
    assert "expired" in reject(trust, bearer(es_key.sign(claims)))


def test_expiry_uses_the_configured_leeway(server: JwksServer, replay, es_key: KeyPair) -> None:
    """Covers req 190: with leeway 0, a token expired 5 s ago is refused."""
    trust = make_trust(server, replay, leeway_s=0)
    claims = client_claims(ISS, AUD, now=time.time() - 305, lifetime_s=300)
    assert "expired" in reject(trust, bearer(es_key.sign(claims)))


def test_iat_in_the_future_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 191 (iat)."""
    claims = client_claims(ISS, AUD, now=time.time() + 120)
    assert "future" in reject(trust, bearer(es_key.sign(claims)))


def test_nbf_in_the_future_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 190, 191: an optional nbf is honoured too."""
    claims = client_claims(ISS, AUD, nbf=int(time.time()) + 120)
    assert "nbf" in reject(trust, bearer(es_key.sign(claims)))


def test_overlong_lifetime_is_rejected(server: JwksServer, replay, es_key: KeyPair) -> None:
    """Covers req 190, 192: a token living longer than jwt_max_lifetime_s would make replay caching moot."""
    trust = make_trust(server, replay, max_lifetime_s=600)
    claims = client_claims(ISS, AUD, lifetime_s=601)
    assert "lifetime" in reject(trust, bearer(es_key.sign(claims)))
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD, lifetime_s=-5))))  # exp before iat


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "iss", "aud"])
def test_missing_required_claim_is_rejected(trust: ClientTrust, es_key: KeyPair, claim: str) -> None:
    """Covers req 187, 189, 190, 191, 192 (iss, aud, exp, iat, jti are required)."""
    token = es_key.sign(client_claims(ISS, AUD, omit=(claim,)))
    assert claim in reject(trust, bearer(token))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", "9999999999"),
        ("exp", True),
        ("exp", float("nan")),
        ("exp", float("inf")),
        ("iat", "0"),
        ("iat", float("nan")),
        ("iat", None),
        ("jti", 12345),
        ("jti", ""),
        ("jti", "x" * 300),
        ("iss", 42),
    ],
)
def test_claim_of_wrong_type_is_rejected(
    trust: ClientTrust, es_key: KeyPair, claim: str, value: object
) -> None:
    """Covers req 187, 190, 191, 192 (exp and iat are numbers, jti and iss strings)."""
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD) | {claim: value})))


# -- keys: kid, jku, issuers ----------------------------------------------------------------------------


def test_missing_kid_is_rejected(trust: ClientTrust, es_key: KeyPair, server: JwksServer) -> None:
    """Covers req 182 (kid is required)."""
    assert "kid" in reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), omit_kid=True)))
    assert "kid" in reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"kid": ""})))
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"kid": 7})))
    assert server.total_hits == 0  # refused before any fetch


def test_unknown_kid_is_rejected(trust: ClientTrust, server: JwksServer) -> None:
    """Covers req 182, 183 (kid identifies a key in the client's JWK Set)."""
    stranger = KeyPair.generate("ES384", kid="not-published")
    assert "unknown kid" in reject(trust, bearer(stranger.sign(client_claims(ISS, AUD))))


def test_key_with_known_kid_but_other_signer_is_rejected(trust: ClientTrust) -> None:
    """Covers req 180, 183: the signature must be by the published key with that kid."""
    impostor = KeyPair.generate("ES384", kid="es384-1")
    assert "signature" in reject(trust, bearer(impostor.sign(client_claims(ISS, AUD))))


def test_tampered_payload_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 180 (JWS integrity)."""
    from tests.helpers.jwt_tokens import b64url

    head, _payload, sig = es_key.sign(client_claims(ISS, AUD)).split(".")
    other = b64url(json.dumps(client_claims(ISS, AUD, tenant="someone-else")).encode())
    reject(trust, bearer(f"{head}.{other}.{sig}"))


def test_unknown_kid_refreshes_the_key_set_once_on_rotation(
    server: JwksServer, replay: DatabaseReplayCache, es_key: KeyPair
) -> None:
    """Covers req 182, 183, 197: a rotated-in key is found by one refetch; refetches are rate limited."""
    clock = {"now": 1000.0}
    cache = JwksCache(cache_s=3600, timeout_s=2.0, min_refresh_interval_s=10, clock=lambda: clock["now"])
    trust = make_trust(server, replay, jwks_cache=cache)
    server.jwks = jwks_of(es_key)
    trust.verify(bearer(es_key.sign(client_claims(ISS, AUD))), AUD)
    assert server.total_hits == 1

    rotated = KeyPair.generate("ES384", kid="es384-2")
    server.jwks = jwks_of(es_key, rotated)
    clock["now"] += 11
    trust.verify(bearer(rotated.sign(client_claims(ISS, AUD))), AUD)
    assert server.total_hits == 2  # exactly one refetch for the unknown kid

    bogus = KeyPair.generate("ES384", kid="never-published")
    clock["now"] += 1
    reject(trust, bearer(bogus.sign(client_claims(ISS, AUD))))
    reject(trust, bearer(bogus.sign(client_claims(ISS, AUD))))
    assert server.total_hits == 2  # rate limited: made-up kids cannot make us hammer the client

    clock["now"] += 11
    reject(trust, bearer(bogus.sign(client_claims(ISS, AUD))))
    assert server.total_hits == 3  # one refetch per call at most, then it fails
    trust.verify(bearer(rotated.sign(client_claims(ISS, AUD))), AUD)  # known kids need no fetch
    assert server.total_hits == 3


def test_jku_not_on_the_allow_list_is_rejected_without_fetching(
    trust: ClientTrust, es_key: KeyPair, server: JwksServer
) -> None:
    """Covers req 185, 195 (allow list of iss and jku URLs)."""
    for jku in (server.url("/attacker.json"), "https://attacker.example.org/jwks.json", server.url() + "?x"):
        assert "jku" in reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"jku": jku})))
    assert server.total_hits == 0


def test_jku_on_the_allow_list_is_fetched_from_it(
    trust: ClientTrust, es_key: KeyPair, server: JwksServer
) -> None:
    """Covers req 185, 186, 195, 198 (JWK Set at the jku URL, honoured when allowed)."""
    token = es_key.sign(client_claims(ISS, AUD), {"jku": server.url("/jku.json")})
    assert trust.verify(bearer(token), AUD).kid == "es384-1"
    assert server.hits == {"/jku.json": 1}


def test_jku_must_be_a_string(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 185 (jku is a URL)."""
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"jku": ["x"]})))


def test_without_jku_the_out_of_band_jwks_url_is_used(
    trust: ClientTrust, es_key: KeyPair, server: JwksServer
) -> None:
    """Covers req 186, 199 (without jku the JWK Set is agreed out of band: the issuer's jwks_url)."""
    trust.verify(bearer(es_key.sign(client_claims(ISS, AUD))), AUD)
    assert server.hits == {"/.well-known/jwks.json": 1}


def test_issuer_with_only_jku_allow_needs_a_jku(server: JwksServer, replay, es_key: KeyPair) -> None:
    """Covers req 195, 199: no jku and no out-of-band key source means no trust."""
    issuer = TrustedIssuer(iss=ISS, jku_allow=(server.url(),))
    trust = ClientTrust([issuer], replay_cache=replay)
    assert "no key source" in reject(trust, bearer(es_key.sign(client_claims(ISS, AUD))))
    trust.verify(bearer(es_key.sign(client_claims(ISS, AUD), {"jku": server.url()})), AUD)


def test_untrusted_issuer_is_rejected(trust: ClientTrust, es_key: KeyPair, server: JwksServer) -> None:
    """Covers req 187, 195 (allow list of issuers)."""
    for iss in ("https://evil.example.org", ISS + "/", ISS.upper()):
        token = es_key.sign(client_claims(iss, AUD), {"jku": server.url("/jku.json")})
        assert "not trusted" in reject(trust, bearer(token))
    assert server.total_hits == 0


def test_unreachable_key_server_is_a_rejection_not_a_crash(
    server: JwksServer, replay, es_key: KeyPair
) -> None:
    """Covers req 197: a client whose JWK Set cannot be had is refused."""
    server.status = 500
    assert "JWK Set unavailable" in reject(
        make_trust(server, replay), bearer(es_key.sign(client_claims(ISS, AUD)))
    )


# -- algorithms ------------------------------------------------------------------------------------------


def test_alg_none_is_rejected(trust: ClientTrust) -> None:
    """Covers req 201, 202 (unsecured JWS never accepted)."""
    claims = client_claims(ISS, AUD)
    for token in (unsigned_token(claims, {"kid": "es384-1"}), unsigned_token(claims) + "c2ln"):
        reject(trust, bearer(token))
    assert "not allowed" in reject(trust, bearer(unsigned_token(claims, {"kid": "es384-1"}) + "AAAA"))
    for spelling in ("None", "NONE", "nOnE"):
        token = unsigned_token(claims, {"alg": spelling, "kid": "es384-1"}) + "AAAA"
        assert "not allowed" in reject(trust, bearer(token))


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_is_rejected(trust: ClientTrust, alg: str) -> None:
    """Covers req 203 (no symmetric algorithms)."""
    token = hmac_token(client_claims(ISS, AUD), b"shared-secret-" * 4, {"kid": "es384-1"}, alg=alg)
    assert "not allowed" in reject(trust, bearer(token))


@pytest.mark.parametrize("key_name", ["es_key", "rs_key"])
def test_hs256_signed_with_the_public_key_is_rejected(
    trust: ClientTrust, request: pytest.FixtureRequest, key_name: str
) -> None:
    """Covers req 203: the classic key-confusion attack (public key PEM used as HMAC secret)."""
    key: KeyPair = request.getfixturevalue(key_name)
    claims = client_claims(ISS, AUD)
    for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode()):
        token = hmac_token(claims, secret, {"kid": key.kid})
        assert "not allowed" in reject(trust, bearer(token))


@pytest.mark.parametrize("alg", ["ES256", "RS256", "PS384", "ES512"])
def test_other_asymmetric_algorithms_are_rejected(
    trust: ClientTrust, weak_keys: dict[str, KeyPair], alg: str
) -> None:
    """Covers req 200, 205, 207: only ES384 and RS384, even for a key the issuer publishes."""
    assert "not allowed" in reject(trust, bearer(weak_keys[alg].sign(client_claims(ISS, AUD))))


def test_alg_must_match_the_key_type(
    trust: ClientTrust, server: JwksServer, es_key: KeyPair, rs_key: KeyPair, weak_keys: dict[str, KeyPair]
) -> None:
    """Covers req 181, 205: the header's alg cannot pick a key of another type (key confusion)."""
    claims = client_claims(ISS, AUD)
    # ES384 header naming the RSA key, RS384 header naming the EC key
    reject(trust, bearer(es_key.sign(claims, {"kid": "rs384-1"})))
    reject(trust, bearer(rs_key.sign(claims, {"kid": "es384-1"})))
    # a P-256 key published as ES384 is not an ES384 key
    p256 = weak_keys["ES256"]
    server.jwks = {"keys": [p256.public_jwk(alg="ES384", kid="p256-as-384")]}
    forged = p256.sign(client_claims(ISS, AUD), {"kid": "p256-as-384"}, alg="ES384")
    reject(trust, bearer(forged))


def test_key_whose_jwk_alg_differs_is_not_used(server: JwksServer, replay, rs_key: KeyPair) -> None:
    """Covers req 181: a key published for RS256 is not used for RS384 tokens."""
    server.jwks = {"keys": [rs_key.public_jwk(alg="RS256")]}
    assert "not a key for RS384" in reject(
        make_trust(server, replay), bearer(rs_key.sign(client_claims(ISS, AUD)))
    )


def test_typ_other_than_jwt_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 184 (typ SHALL be JWT)."""
    assert "typ" in reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"typ": "at+jwt"})))


def test_critical_header_extensions_are_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 180: JWS extensions we do not implement (crit) must not be ignored (RFC 7515 4.1.11)."""
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"crit": ["exp2"], "exp2": 1})))
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"crit": ["b64"], "b64": False})))


# -- the Authorization header ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_authorization_header_is_rejected(trust: ClientTrust, header: str | None) -> None:
    """Covers req 177, 178 (authentication required: Authorization header with a Bearer JWT)."""
    reject(trust, header)


def test_scheme_other_than_bearer_is_rejected(trust: ClientTrust, es_key: KeyPair) -> None:
    """Covers req 178 (the JWT is presented as a Bearer token)."""
    token = es_key.sign(client_claims(ISS, AUD))
    for header in (
        f"Basic {token}",
        f"Token {token}",
        token,
        f"Bearer{token}",
        f"Bearer {token} extra",
        "Bearer",
    ):
        reject(trust, header)


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c",
        "e30.e30.c2ln",  # {} header: no alg
        "W10.e30.c2ln",  # [] header
        "!!!.???.###",
        "eyJhbGciOiJFUzM4NCIsImtpZCI6ImVzMzg0LTEifQ.bm90IGpzb24.c2ln",  # payload not JSON
        "eyJhbGciOiJFUzM4NCIsImtpZCI6ImVzMzg0LTEifQ.W10.c2ln",  # payload a JSON array
        "eyJhbGciOiJFUzM4NCIsImtpZCI6ImVzMzg0LTEifQ.e30.c2ln",  # {} payload, junk signature
        "x" * 20000,
    ],
)
def test_malformed_token_is_rejected(trust: ClientTrust, token: str) -> None:
    """Covers req 176, 180 (a signed JWT is required); garbage never crashes the verifier."""
    reject(trust, bearer(token))


# -- configuration: settings, pinned key sets, the public sandbox ----------------------------------------


def test_pinned_jwks_file_is_used_without_network(tmp_path: Path, replay, es_key: KeyPair) -> None:
    """Covers req 199 (JWK Set communicated out of band): a pinned file, no fetching at all."""
    path = tmp_path / "client_jwks.json"
    path.write_text(json.dumps(es_key.jwks()))

    cache = JwksCache(session=NoNetwork())  # type: ignore[arg-type]
    trust = ClientTrust([TrustedIssuer(iss=ISS, jwks_file=str(path))], replay_cache=replay, jwks_cache=cache)
    trust.verify(bearer(es_key.sign(client_claims(ISS, AUD))), AUD)
    # a jku is still checked against the allow list (empty here), even though keys come from the file
    reject(trust, bearer(es_key.sign(client_claims(ISS, AUD), {"jku": "https://ehr.example.org/jwks"})))


def test_public_sandbox_issuer_uses_its_pinned_key_set(replay, es_key: KeyPair) -> None:
    """Covers req 195, 199: with CDS_PLUGIN_TRUST_PUBLIC_SANDBOX the sandbox's bundled JWK Set is pinned;
    a token with the sandbox's kid signed by any other key is refused, with or without its jku."""

    settings = Settings.load(environ={"CDS_PLUGIN_TRUST_PUBLIC_SANDBOX": "true"})
    trust = ClientTrust.from_settings(settings, replay, jwks_cache=JwksCache(session=NoNetwork()))  # type: ignore[arg-type]
    assert SANDBOX_ISSUER in trust.issuers
    lookalike = KeyPair.generate("ES384", kid=SANDBOX_KID)
    claims = client_claims(SANDBOX_ISSUER, AUD)
    assert "signature" in reject(trust, bearer(lookalike.sign(claims)))
    assert "signature" in reject(trust, bearer(lookalike.sign(claims, {"jku": SANDBOX_JKU})))
    assert "jku" in reject(
        trust, bearer(lookalike.sign(claims, {"jku": "https://evil.example.org/jwks.json"}))
    )
    assert "unknown kid" in reject(trust, bearer(es_key.sign(claims)))


def test_sandbox_is_not_trusted_by_default(replay) -> None:
    """Covers req 195: the public sandbox (whose private key is public) is trusted only when asked."""
    trust = ClientTrust.from_settings(Settings.load(environ={}), replay)
    assert trust.issuers == {}
    lookalike = KeyPair.generate("ES384", kid=SANDBOX_KID)
    assert "not trusted" in reject(trust, bearer(lookalike.sign(client_claims(SANDBOX_ISSUER, AUD))))


def test_from_settings_reads_issuers_and_limits_from_the_environment(
    server: JwksServer, replay, es_key: KeyPair
) -> None:
    """Covers req 195: trusted issuers as JSON in CDS_PLUGIN_TRUSTED_ISSUERS, limits from settings."""
    environ = {
        "CDS_PLUGIN_TRUSTED_ISSUERS": json.dumps([{"iss": ISS, "jwks_url": server.url()}]),
        "CDS_PLUGIN_JWT_LEEWAY_S": "0",
        "CDS_PLUGIN_JWT_MAX_LIFETIME_S": "120",
        "CDS_PLUGIN_JWKS_CACHE_S": "60",
    }
    trust = ClientTrust.from_settings(Settings.load(environ=environ), replay)
    assert (trust.leeway_s, trust.max_lifetime_s, trust.jwks.cache_s) == (0, 120, 60)
    trust.verify(bearer(es_key.sign(client_claims(ISS, AUD, lifetime_s=120))), AUD)
    assert "lifetime" in reject(trust, bearer(es_key.sign(client_claims(ISS, AUD, lifetime_s=121))))


def test_bad_issuer_configuration_stops_start_up(tmp_path: Path, replay) -> None:
    """Covers req 195: a missing pinned file or a duplicated issuer is a configuration error."""
    with pytest.raises(SettingsError, match="jwks_file"):
        ClientTrust([TrustedIssuer(iss=ISS, jwks_file=str(tmp_path / "nope.json"))], replay_cache=replay)
    issuer = TrustedIssuer(iss=ISS, jwks_url="https://ehr.example.org/jwks")
    with pytest.raises(SettingsError, match="twice"):
        ClientTrust([issuer, issuer], replay_cache=replay)
