"""JWK Sets of trusted CDS clients: loaded from a pinned file or fetched over HTTP(S) and cached per URL.

A CDS client publishes its public keys as a JWK Set (RFC 7517), either at a URL it names in the token's
`jku` header or out of band (CDS Hooks 2.0, "Trusting CDS Clients"). Fetching happens on the request
path, so every failure (network, status, body) becomes a `JwksError` the caller turns into a 401, and
refetches are rate limited so a flood of tokens with made-up `kid`s cannot make us hammer the client.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from jwt import PyJWK
from jwt.exceptions import PyJWTError

log = logging.getLogger(__name__)

#: A JWK Set is a few KiB; anything much larger is a misconfigured or hostile server.
MAX_JWKS_BYTES = 512 * 1024


class JwksError(Exception):
    """A JWK Set could not be had or used; the message says why (no secrets in it)."""


@dataclass(frozen=True)
class Jwk:
    """One usable key of a JWK Set: its `kid`, the `alg` it declares (if any) and the parsed key object."""

    kid: str | None
    alg: str | None
    kty: str
    key: Any  # a cryptography public key (private halves are reduced to their public key), or bytes for oct

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Jwk:
        """Parse with PyJWT's `PyJWK`; raises `PyJWTError` for a key PyJWT cannot use."""
        jwk = PyJWK.from_dict(data)
        key = jwk.key
        if hasattr(key, "public_key") and callable(key.public_key):  # a private JWK published by mistake
            key = key.public_key()
        alg = data.get("alg")
        kid = data.get("kid")
        return cls(
            kid=kid if isinstance(kid, str) else None,
            alg=alg if isinstance(alg, str) else None,
            kty=str(data.get("kty")),
            key=key,
        )


@dataclass(frozen=True)
class KeySet:
    """Usable keys of one JWK Set, with where they came from (a URL or a file path) for log messages."""

    keys: tuple[Jwk, ...]
    source: str

    def find(self, kid: str) -> list[Jwk]:
        """Keys whose `kid` equals `kid` (normally one; several only if the publisher broke uniqueness)."""
        return [k for k in self.keys if k.kid == kid]

    def kids(self) -> list[str]:
        return [k.kid for k in self.keys if k.kid]

    def __iter__(self) -> Iterator[Jwk]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def parse_jwks(data: Any, source: str) -> KeySet:
    """A `KeySet` from a decoded JWK Set, skipping keys PyJWT cannot use, symmetric and non-signing keys.

    Keys are parsed one by one (as `PyJWKSet` does) so that each key's own `alg` stays known: PyJWT
    would otherwise guess RS256 for an RSA key without `alg`.
    """
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError(f"{source}: not a JWK Set (no 'keys' array)")
    keys: list[Jwk] = []
    for item in data["keys"]:
        if not isinstance(item, dict) or item.get("use") not in (None, "sig"):
            continue
        if item.get("kty") == "oct":  # a symmetric secret has no place in a published key set
            continue
        try:
            keys.append(Jwk.from_dict(item))
        except (PyJWTError, ValueError, TypeError, KeyError, AttributeError) as exc:  # never crash on input
            log.debug("%s: skipping unusable key: %s", source, type(exc).__name__)
    if not keys:
        raise JwksError(f"{source}: no usable signing keys in the JWK Set")
    return KeySet(keys=tuple(keys), source=source)


def load_jwks_file(path: str | Path) -> KeySet:
    """Read a pinned JWK Set from disk (no network), e.g. the public sandbox's bundled key set."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise JwksError(f"{path}: cannot read JWK Set file: {exc.strerror or exc}") from exc
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksError(f"{path}: JWK Set file larger than {MAX_JWKS_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise JwksError(f"{path}: JWK Set file is not JSON") from exc
    return parse_jwks(data, str(path))


@dataclass
class _Entry:
    keys: KeySet | None = None
    fetched_at: float = float("-inf")  # last successful fetch (clock time)
    attempted_at: float = float("-inf")  # last attempt, successful or not
    error: str | None = None  # message of the last failed attempt


class JwksCache:
    """Fetches JWK Sets by URL and keeps each for `cache_s` seconds; safe to share between threads.

    `get(url)` serves the cached set while it is fresh. `get(url, refresh=True)` (used on an unknown
    `kid`) refetches, but never more often than every `min_refresh_interval_s` per URL; failed fetches are
    rate limited the same way. When a refetch fails but an older set is cached, the older set is served
    (logged) for up to `max_stale_s` past its cache time, so a client's brief outage does not lock out
    every call while a key the client has since withdrawn is not trusted for ever.
    """

    def __init__(
        self,
        *,
        cache_s: float = 3600,
        timeout_s: float = 5.0,
        min_refresh_interval_s: float = 10.0,
        max_stale_s: float | None = None,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache_s = cache_s
        self.timeout_s = timeout_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.max_stale_s = cache_s if max_stale_s is None else max_stale_s
        self._session = session or requests.Session()
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._url_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.fetch_count = 0  # successful and failed HTTP attempts, for tests and metrics

    def _url_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._url_locks.setdefault(url, threading.Lock())

    def get(self, url: str, *, refresh: bool = False) -> KeySet:
        """The key set at `url`; fetched when absent or stale, or when `refresh` and not rate limited."""
        with self._url_lock(url):  # one fetch per URL at a time; other threads wait and reuse its result
            entry = self._entries.setdefault(url, _Entry())
            now = self._clock()
            age = now - entry.fetched_at
            fresh = entry.keys is not None and age < self.cache_s
            usable = entry.keys is not None and age < self.cache_s + self.max_stale_s
            may_fetch = now - entry.attempted_at >= self.min_refresh_interval_s
            if fresh and not refresh:
                return entry.keys  # type: ignore[return-value]
            if not may_fetch:
                if usable:
                    return entry.keys  # type: ignore[return-value]
                raise JwksError(f"{url}: {entry.error or 'JWK Set unavailable'} (retry rate limited)")
            entry.attempted_at = now
            try:
                keys = self._fetch(url)
            except JwksError as exc:
                entry.error = str(exc)
                if usable:
                    log.warning("JWK Set refresh failed, keeping the previous set: %s", exc)
                    return entry.keys  # type: ignore[return-value]
                raise
            entry.keys, entry.fetched_at, entry.error = keys, now, None
            return keys

    def _fetch(self, url: str) -> KeySet:
        """One GET of `url`: 200 with a JSON JWK Set of at most MAX_JWKS_BYTES, no redirects."""
        with self._lock:
            self.fetch_count += 1
        if not url.startswith(("https://", "http://")):
            raise JwksError(f"{url}: only http(s) JWK Set URLs are supported")
        try:
            with self._session.get(
                url,
                timeout=self.timeout_s,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json, application/jwk-set+json"},
            ) as resp:
                if resp.status_code != 200:
                    raise JwksError(f"{url}: HTTP {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_content(chunk_size=16384):
                    body.extend(chunk)
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksError(f"{url}: JWK Set larger than {MAX_JWKS_BYTES} bytes")
        except requests.RequestException as exc:
            raise JwksError(f"{url}: fetch failed ({type(exc).__name__})") from exc
        try:
            data = json.loads(bytes(body))
        except (ValueError, RecursionError) as exc:
            raise JwksError(f"{url}: answer is not JSON") from exc
        keys = parse_jwks(data, url)
        log.info("fetched JWK Set %s (%d usable keys)", url, len(keys))
        return keys
