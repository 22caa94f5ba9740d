"""JWK Set loading and fetching: caching, rate-limited refresh, and bad answers that must never crash."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from cds_plugin.hooks.jwks import MAX_JWKS_BYTES, JwksCache, JwksError, load_jwks_file, parse_jwks
from tests.helpers.jwt_tokens import JwksServer, KeyPair, jwks_of

SANDBOX_JWKS = Path(__file__).resolve().parents[2] / "cds_plugin" / "hooks" / "data" / "sandbox_jwks.json"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def es_key() -> KeyPair:
    return KeyPair.generate("ES384", kid="es-1")


@pytest.fixture(scope="module")
def rs_key() -> KeyPair:
    return KeyPair.generate("RS384", kid="rs-1")


@pytest.fixture
def server(es_key: KeyPair):
    with JwksServer(jwks=es_key.jwks()).running() as srv:
        yield srv


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _cache(clock: FakeClock, **kw) -> JwksCache:
    kw.setdefault("cache_s", 3600)
    kw.setdefault("timeout_s", 2.0)
    kw.setdefault("min_refresh_interval_s", 10.0)
    return JwksCache(clock=clock, **kw)


# -- parsing ----------------------------------------------------------------------------------------


def test_parse_keeps_usable_signing_keys_and_skips_the_rest(es_key: KeyPair, rs_key: KeyPair) -> None:
    """Covers req 197 (client keys as a JWK Set): unknown or unusable entries are skipped, not fatal."""
    data = {
        "keys": [
            es_key.public_jwk(),
            rs_key.public_jwk(with_alg=False),
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},  # symmetric: never trusted
            {"kty": "XYZ", "kid": "unknown-kty"},
            {"kty": "EC", "kid": "bad-curve", "crv": "P-999", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "no-coords", "crv": "P-384"},
            es_key.public_jwk(kid="enc-key", use="enc"),
            "not an object",
            42,
        ]
    }
    keys = parse_jwks(data, "test")
    assert keys.kids() == ["es-1", "rs-1"]
    assert keys.find("rs-1")[0].alg is None  # no alg invented for an RSA key without one
    assert keys.find("es-1")[0].alg == "ES384"
    assert keys.find("missing") == []


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        "keys",
        {},
        {"keys": {}},
        {"keys": []},
        {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]},
        {"keys": [{"kty": "nope"}]},
    ],
)
def test_parse_rejects_sets_without_usable_keys(data: object) -> None:
    """Covers req 197: what is not a JWK Set with a usable key is an error, not an empty trust."""
    with pytest.raises(JwksError):
        parse_jwks(data, "test")


def test_private_jwk_is_reduced_to_its_public_key(es_key: KeyPair) -> None:
    """Covers req 197: a publisher mistakenly including 'd' still only yields a public key to verify with."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    private = ECAlgorithm.to_jwk(es_key.private_key, as_dict=True) | {"kid": "p", "alg": "ES384"}
    key = parse_jwks({"keys": [private]}, "test").find("p")[0]
    assert isinstance(key.key, ec.EllipticCurvePublicKey)


def test_sandbox_file_loads_with_its_kid() -> None:
    """Covers req 199 (JWK Set communicated out of band): the bundled sandbox key set is pinned."""
    keys = load_jwks_file(SANDBOX_JWKS)
    assert keys.kids() == [SANDBOX_KID]
    assert keys.find(SANDBOX_KID)[0].alg == "ES384"


def test_file_errors_are_jwks_errors(tmp_path: Path) -> None:
    """Covers req 199: a broken pinned file is reported clearly."""
    with pytest.raises(JwksError, match="cannot read"):
        load_jwks_file(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(JwksError, match="not JSON"):
        load_jwks_file(bad)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_JWKS_BYTES + 10))
    with pytest.raises(JwksError, match="larger"):
        load_jwks_file(big)


# -- fetching and caching -----------------------------------------------------------------------------


def test_fetch_is_cached_for_cache_s(server: JwksServer, clock: FakeClock) -> None:
    """Covers req 185, 198 (JWK Set at a URL): one fetch serves calls until the cache time passes."""
    cache = _cache(clock, cache_s=60)
    url = server.url()
    assert cache.get(url).kids() == ["es-1"]
    clock.now += 59
    cache.get(url)
    assert server.total_hits == 1
    clock.now += 2
    cache.get(url)
    assert server.total_hits == 2


def test_refresh_is_rate_limited_per_url(server: JwksServer, clock: FakeClock, rs_key: KeyPair) -> None:
    """Covers req 182, 183 (kid resolution): a forced refresh refetches at most once per interval."""
    cache = _cache(clock, min_refresh_interval_s=10)
    url = server.url()
    cache.get(url)
    server.jwks = jwks_of(rs_key)
    clock.now += 5
    assert cache.get(url, refresh=True).kids() == ["es-1"]  # too soon: cached set served
    assert server.total_hits == 1
    clock.now += 6
    assert cache.get(url, refresh=True).kids() == ["rs-1"]
    assert server.total_hits == 2
    other = server.url("/other.json")
    cache.get(other)  # the limit is per URL
    assert server.total_hits == 3


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b'{"keys": []}', "HTTP 500"),
        (404, b"", "HTTP 404"),
        (302, b"", "HTTP 302"),  # redirects are not followed
        (200, b"<html>hello</html>", "not JSON"),
        (200, b'{"keys": []}', "no usable"),
        (200, b'{"no": "keys"}', "not a JWK Set"),
        (200, b"[1, 2]", "not a JWK Set"),
        (200, b" " * (MAX_JWKS_BYTES + 1), "larger"),
    ],
)
def test_bad_answers_raise_jwks_error(
    server: JwksServer, clock: FakeClock, status: int, body: bytes, message: str
) -> None:
    """Covers req 197: a server that does not answer with a JWK Set gives an error, never a crash."""
    server.status, server.body = status, body
    with pytest.raises(JwksError, match=message):
        _cache(clock).get(server.url())


def test_unreachable_and_slow_servers_raise_jwks_error(server: JwksServer, clock: FakeClock) -> None:
    """Covers req 197: network failures and timeouts are errors, bounded by the timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(JwksError, match="fetch failed"):
        _cache(clock).get(f"http://127.0.0.1:{closed_port}/jwks.json")
    server.delay_s = 1.0
    with pytest.raises(JwksError, match="fetch failed"):
        _cache(clock, timeout_s=0.2).get(server.url())


def test_only_http_urls_are_fetched(clock: FakeClock, tmp_path: Path) -> None:
    """Covers req 185: jku is a URL fetched over HTTP(S); no file:// or other schemes."""
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": []}))
    with pytest.raises(JwksError, match="only http"):
        _cache(clock).get(path.as_uri())


def test_failed_fetches_are_rate_limited_too(server: JwksServer, clock: FakeClock) -> None:
    """Covers req 197: a broken client server is not hammered on every call."""
    server.status = 500
    cache = _cache(clock)
    for _ in range(3):
        with pytest.raises(JwksError):
            cache.get(server.url())
    assert server.total_hits == 1
    clock.now += 11
    server.status = 200
    assert cache.get(server.url()).kids() == ["es-1"]
    assert server.total_hits == 2


def test_failed_refresh_keeps_previous_set_for_a_bounded_time(server: JwksServer, clock: FakeClock) -> None:
    """Covers req 197: a brief outage of the client's key server does not lock the client out, but a
    key set that cannot be refreshed is not trusted for ever."""
    cache = _cache(clock, cache_s=60, max_stale_s=30)
    cache.get(server.url())
    server.status = 503
    clock.now += 61
    assert cache.get(server.url()).kids() == ["es-1"]
    assert server.total_hits == 2
    clock.now += 5  # within the retry interval: stale copy served without a fetch
    assert cache.get(server.url()).kids() == ["es-1"]
    assert server.total_hits == 2
    clock.now += 25  # 91 s old: past cache_s + max_stale_s
    with pytest.raises(JwksError, match="HTTP 503"):
        cache.get(server.url())
    server.status = 200
    clock.now += 11
    assert cache.get(server.url()).kids() == ["es-1"]


def test_concurrent_gets_fetch_once(server: JwksServer, clock: FakeClock) -> None:
    """Covers req 197: the cache is thread-safe; simultaneous first calls share one fetch."""
    server.delay_s = 0.1
    cache = _cache(clock)
    barrier = threading.Barrier(12)
    results: list[list[str]] = []

    def get() -> None:
        barrier.wait()
        results.append(cache.get(server.url()).kids())

    threads = [threading.Thread(target=get) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == [["es-1"]] * 12
    assert server.total_hits == 1
    assert cache.fetch_count == 1
