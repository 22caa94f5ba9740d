"""Authenticating CDS clients by the signed JWT they send (CDS Hooks 2.0, "Trusting CDS Clients").

Every call carries `Authorization: Bearer <JWT>`, signed by the client with a key from its JWK Set.
`ClientTrust.verify` accepts a token only when all of this holds, checked in this order so that nothing
an attacker controls decides how the token is verified:

1. the header is `Bearer <compact JWS>`;
2. the JOSE header's `alg` is ES384 or RS384 (never none nor HMAC), `kid` is present, `typ` is JWT if
   given, and no `crit`/`b64` extensions are used;
3. `iss` names a configured trusted issuer, and a `jku`, if sent, is on that issuer's `jku_allow` list;
4. the key comes from the issuer's pinned file, else the allowed `jku`, else its `jwks_url`; the `kid`
   must resolve there (one rate-limited refetch on an unknown `kid`), and the key type must match `alg`
   (EC P-384 for ES384, RSA for RS384) so a public key can never be used as an HMAC secret;
5. the signature verifies with exactly that algorithm;
6. `aud` is the endpoint called, `exp` is not past, `iat` is not in the future, the lifetime is bounded;
7. `jti` was never accepted before within its lifetime (replay cache shared through the database).

Any failure raises `UnauthorizedError`; its message is for the log, never for the client, and never
contains the token.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_plugin.errors import ServiceUnavailableError, UnauthorizedError
from cds_plugin.hooks.jwks import Jwk, JwksCache, JwksError, KeySet, load_jwks_file
from cds_plugin.settings import Settings, SettingsError, TrustedIssuer

log = logging.getLogger(__name__)

#: CDS Hooks 2.0 recommends exactly these; everything else (none, HS*, ES256, RS256, PS*, EdDSA) is refused.
ALLOWED_ALGORITHMS: tuple[str, ...] = ("ES384", "RS384")
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 256
MIN_RSA_BITS = 2048
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)


class ReplayCache(Protocol):
    """Remembers accepted (iss, jti) pairs until they expire; see `cds_plugin.storage.replay_cache`."""

    def claim(self, iss: str, jti: str, expires_at: datetime) -> bool: ...


@dataclass(frozen=True)
class VerifiedClient:
    """Who called, as proven by a verified JWT; safe to log (no token material)."""

    iss: str
    sub: str | None
    jti: str
    kid: str
    exp: int
    tenant: str | None = None


def _fail(reason: str) -> UnauthorizedError:
    return UnauthorizedError(f"client JWT rejected: {reason}")


def _is_number(value: Any) -> bool:
    """A JSON number usable as a NumericDate: not a bool, not NaN/Infinity (which Python's json accepts)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def key_matches_alg(alg: str, jwk: Jwk) -> bool:
    """True when `jwk` is the right kind of key for `alg`: blocks algorithm/key confusion."""
    if jwk.alg is not None and jwk.alg != alg:
        return False
    key = jwk.key
    if alg == "ES384":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    if alg == "RS384":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS
    return False


class ClientTrust:
    """Verifies CDS clients' JWTs against the configured trusted issuers. Thread-safe; one per worker."""

    def __init__(
        self,
        issuers: Iterable[TrustedIssuer],
        *,
        replay_cache: ReplayCache,
        leeway_s: float = 30,
        max_lifetime_s: float = 3600,
        jwks_cache_s: float = 3600,
        http_timeout_s: float = 5.0,
        refresh_interval_s: float = 10.0,
        jwks_cache: JwksCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Pinned key files are read now, so a missing or broken file stops start-up (SettingsError)."""
        self.issuers: dict[str, TrustedIssuer] = {}
        for issuer in issuers:
            if issuer.iss in self.issuers:
                raise SettingsError(f"trusted_issuers: issuer {issuer.iss!r} is listed twice")
            self.issuers[issuer.iss] = issuer
        self.replay_cache = replay_cache
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self.jwks = (
            jwks_cache
            if jwks_cache is not None
            else JwksCache(
                cache_s=jwks_cache_s, timeout_s=http_timeout_s, min_refresh_interval_s=refresh_interval_s
            )
        )
        self._clock = clock
        self._pinned: dict[str, KeySet] = {}
        for issuer in self.issuers.values():
            if issuer.jwks_file:
                try:
                    self._pinned[issuer.iss] = load_jwks_file(issuer.jwks_file)
                except JwksError as exc:
                    raise SettingsError(f"trusted_issuers[{issuer.iss}].jwks_file: {exc}") from exc

    @classmethod
    def from_settings(cls, settings: Settings, replay_cache: ReplayCache, **kwargs: Any) -> ClientTrust:
        """Build from `Settings` (issuers incl. the sandbox when trusted, leeway, lifetime, cache time)."""
        return cls(
            settings.issuers,
            replay_cache=replay_cache,
            leeway_s=settings.jwt_leeway_s,
            max_lifetime_s=settings.jwt_max_lifetime_s,
            jwks_cache_s=settings.jwks_cache_s,
            **kwargs,
        )

    def verify(self, authorization_header: str | None, audience: str) -> VerifiedClient:
        """Check the `Authorization` header of a call to `audience` (the endpoint URL called)."""
        token = self._bearer_token(authorization_header)
        header, unverified = self._unverified_parts(token)
        alg, kid = header["alg"], header["kid"]
        issuer = self._issuer(unverified, header)
        key = self._resolve_key(issuer, header, alg, kid)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                options={
                    "verify_signature": True,
                    "verify_aud": False,
                    "verify_iss": False,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise _fail(
                f"signature or structure invalid ({type(exc).__name__}, iss={issuer.iss}, kid={kid})"
            ) from None
        if claims.get("iss") != issuer.iss:  # the same bytes were decoded twice; belt and braces
            raise _fail("iss changed between decodes")
        exp = self._check_claims(claims, audience)
        jti: str = claims["jti"]
        self._claim_jti(issuer.iss, jti, exp)
        sub = claims.get("sub")
        tenant = claims.get("tenant")
        return VerifiedClient(
            iss=issuer.iss,
            sub=sub if isinstance(sub, str) else None,
            jti=jti,
            kid=kid,
            exp=int(exp),
            tenant=tenant if isinstance(tenant, str) else None,
        )

    # -- steps ---------------------------------------------------------------------------------------

    @staticmethod
    def _bearer_token(authorization_header: str | None) -> str:
        if not authorization_header:
            raise _fail("no Authorization header")
        if len(authorization_header) > MAX_TOKEN_CHARS:
            raise _fail("Authorization header too long")
        match = _BEARER.fullmatch(authorization_header)
        if not match:
            raise _fail("Authorization header is not 'Bearer <token>'")
        token = match.group(1)
        if not _COMPACT_JWS.fullmatch(token):
            raise _fail("token is not a signed compact JWS")
        return token

    @staticmethod
    def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and claims before verification: used only to choose how to verify, never trusted."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise _fail(f"malformed token ({type(exc).__name__})") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise _fail(f"alg {str(alg)[:20]!r} not allowed (only {', '.join(ALLOWED_ALGORITHMS)})")
        if not isinstance(header.get("kid"), str) or not header["kid"]:
            raise _fail("kid missing from JWT header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise _fail("typ is not JWT")
        if "crit" in header or "b64" in header:
            raise _fail("JWS extensions (crit, b64) not supported")
        jku = header.get("jku")
        if jku is not None and not isinstance(jku, str):
            raise _fail("jku is not a string")
        return header, claims

    def _issuer(self, claims: dict[str, Any], header: dict[str, Any]) -> TrustedIssuer:
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise _fail("iss missing")
        issuer = self.issuers.get(iss)
        if issuer is None:
            raise _fail(f"issuer not trusted (iss={iss[:200]!r})")
        jku = header.get("jku")
        if jku is not None and jku not in issuer.jku_allow:
            raise _fail(f"jku not on the allow list of {iss}")
        return issuer

    def _resolve_key(self, issuer: TrustedIssuer, header: dict[str, Any], alg: str, kid: str) -> Jwk:
        pinned = self._pinned.get(issuer.iss)
        if pinned is not None:
            return self._pick(pinned, issuer, alg, kid)
        url = header.get("jku") or issuer.jwks_url  # a jku here is already known to be allowed
        if not url:
            raise _fail(f"no key source for {issuer.iss}: token has no jku and issuer has no jwks_url")
        try:
            keys = self.jwks.get(url)
            if not keys.find(kid):
                keys = self.jwks.get(url, refresh=True)  # key rotation: refetch once (rate limited)
        except JwksError as exc:
            raise _fail(f"JWK Set unavailable for {issuer.iss}: {exc}") from None
        return self._pick(keys, issuer, alg, kid)

    @staticmethod
    def _pick(keys: KeySet, issuer: TrustedIssuer, alg: str, kid: str) -> Jwk:
        found = keys.find(kid)
        if not found:
            raise _fail(f"unknown kid {kid[:100]!r} for {issuer.iss}")
        for key in found:
            if key_matches_alg(alg, key):
                return key
        raise _fail(f"key {kid[:100]!r} of {issuer.iss} is not a key for {alg}")

    def _check_claims(self, claims: dict[str, Any], audience: str) -> float:
        """Audience, times and jti shape; returns `exp`."""
        aud = claims.get("aud")
        if isinstance(aud, str):
            aud_ok = aud == audience
        elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
            aud_ok = audience in aud
        else:
            aud_ok = False
        if not aud_ok:
            raise _fail("aud is not the endpoint called")
        now = self._clock()
        exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
        if not _is_number(exp):
            raise _fail("exp missing or not a number")
        if not _is_number(iat):
            raise _fail("iat missing or not a number")
        if now >= exp + self.leeway_s:
            raise _fail("token expired")
        if iat > now + self.leeway_s:
            raise _fail("iat is in the future")
        if nbf is not None and (not _is_number(nbf) or nbf > now + self.leeway_s):
            raise _fail("token not yet valid (nbf)")
        if exp <= iat:
            raise _fail("exp is not after iat")
        if exp - iat > self.max_lifetime_s:
            raise _fail(f"token lifetime {int(exp - iat)} s exceeds {int(self.max_lifetime_s)} s")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _fail("jti missing")
        if len(jti) > MAX_JTI_CHARS:
            raise _fail("jti too long")
        return float(exp)

    def _claim_jti(self, iss: str, jti: str, exp: float) -> None:
        # remembered until the token could no longer pass the exp check, leeway included
        expires_at = datetime.fromtimestamp(exp + self.leeway_s, UTC)
        try:
            fresh = self.replay_cache.claim(iss, jti, expires_at)
        except Exception as exc:  # fail closed, but do not blame the client for our storage
            log.error("JWT replay cache unavailable: %s", type(exc).__name__)
            raise ServiceUnavailableError("replay cache unavailable") from exc
        if not fresh:
            raise _fail(f"jti replayed (iss={iss})")
