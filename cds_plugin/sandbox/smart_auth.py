"""SMART Backend Services authorization for the loopback FHIR server: a token endpoint for registered clients.

Bulk Data clients authenticate with the client_credentials grant and a signed JWT assertion
(https://hl7.org/fhir/smart-app-launch/backend-services.html). A client is registered by its id and its
JWK Set (no fetching: the sandbox trusts only key sets given to it). The assertion is accepted when:
`alg` is ES384 or RS384 and the key named by `kid` is of that kind (the same rule as CDS client JWTs,
`cds_plugin.hooks.jwt_trust.key_matches_alg`); `iss` and `sub` are the registered client id; `aud` is
the token endpoint's URL; `exp` is at most five minutes ahead; `jti` was not used before. The answer
is an opaque bearer token good for `token_lifetime_s`, with the `system/` read scopes asked for.
Errors follow RFC 6749 section 5.2 (`{"error": ..., "error_description": ...}`), never naming the token.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from cds_plugin.hooks.jwks import JwksError, KeySet, load_jwks_file, parse_jwks
from cds_plugin.hooks.jwt_trust import ALLOWED_ALGORITHMS, key_matches_alg

log = logging.getLogger(__name__)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The spec caps an assertion's lifetime at five minutes.
MAX_ASSERTION_LIFETIME_S = 300
LEEWAY_S = 30
DEFAULT_TOKEN_LIFETIME_S = 300
#: SMART v1 (`system/Patient.read`) and v2 (`system/Patient.rs`) read scopes, any type or `*`.
_READ_SCOPE = re.compile(r"system/(\*|[A-Z][A-Za-z]+)\.(read|r|rs|s)")
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class TokenRequestError(Exception):
    """A refused token request: the RFC 6749 error code and a description safe to send back."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


@dataclass(frozen=True)
class IssuedToken:
    client_id: str
    scope: str
    expires_at: float


def load_clients(clients: Mapping[str, KeySet | Mapping[str, Any] | str | Path]) -> dict[str, KeySet]:
    """Registered clients: id -> JWK Set (a KeySet, a decoded JWK Set, or the path of a JWK Set file)."""
    out: dict[str, KeySet] = {}
    for client_id, keys in clients.items():
        if isinstance(keys, KeySet):
            out[client_id] = keys
        elif isinstance(keys, Mapping):
            out[client_id] = parse_jwks(dict(keys), f"client {client_id}")
        else:
            out[client_id] = load_jwks_file(keys)
    return out


class BackendAuth:
    """The token endpoint's logic and the issued tokens; thread-safe (the server is threaded)."""

    def __init__(
        self,
        clients: Mapping[str, KeySet | Mapping[str, Any] | str | Path],
        *,
        token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clients = load_clients(clients)
        self.token_lifetime_s = token_lifetime_s
        self._clock = clock
        self._tokens: dict[str, IssuedToken] = {}
        self._jtis: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def token(self, form: Mapping[str, str], token_url: str) -> dict[str, Any]:
        """The access token response for a token request (raises TokenRequestError)."""
        if form.get("grant_type") != "client_credentials":
            raise TokenRequestError("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenRequestError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion") or ""
        if not _COMPACT_JWS.fullmatch(assertion) or len(assertion) > 16 * 1024:
            raise TokenRequestError("invalid_request", "client_assertion is not a signed JWT")
        scope = self._scope(form.get("scope") or "")
        client_id = self._verify(assertion, token_url)
        now = self._clock()
        access_token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens = {t: v for t, v in self._tokens.items() if v.expires_at > now}
            self._tokens[access_token] = IssuedToken(client_id, scope, now + self.token_lifetime_s)
        log.info("token endpoint: access token issued to client %s", client_id)
        return {
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.token_lifetime_s,
            "scope": scope,
        }

    def valid(self, access_token: str) -> bool:
        """True for a token this endpoint issued that has not expired (constant-time comparisons)."""
        now = self._clock()
        with self._lock:
            items = list(self._tokens.items())
        found = False
        for token, issued in items:
            if hmac.compare_digest(token.encode(), access_token.encode()) and issued.expires_at > now:
                found = True
        return found

    @staticmethod
    def _scope(scope: str) -> str:
        scopes = scope.split()
        if not scopes:
            raise TokenRequestError("invalid_scope", "scope is required (e.g. system/*.read)")
        for item in scopes:
            if not _READ_SCOPE.fullmatch(item):
                raise TokenRequestError("invalid_scope", f"scope {item[:64]!r} is not granted (read only)")
        return " ".join(scopes)

    def _verify(self, assertion: str, token_url: str) -> str:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError, TypeError):
            raise TokenRequestError("invalid_client", "client_assertion is not a JWT", 401) from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise TokenRequestError(
                "invalid_client", f"alg must be one of {', '.join(ALLOWED_ALGORITHMS)}", 401
            )
        if not isinstance(kid, str) or not kid:
            raise TokenRequestError("invalid_client", "kid missing from the JWT header", 401)
        client_id = unverified.get("iss")
        keys = self.clients.get(client_id) if isinstance(client_id, str) else None
        if keys is None:
            log.info("token endpoint: assertion from an unregistered client refused")
            raise TokenRequestError("invalid_client", "client is not registered", 401)
        candidates = [k for k in keys.find(kid) if key_matches_alg(alg, k)]
        if not candidates:
            raise TokenRequestError("invalid_client", f"no {alg} key with that kid for this client", 401)
        now = self._clock()
        try:
            claims = jwt.decode(
                assertion,
                candidates[0].key,
                algorithms=[alg],
                audience=token_url,
                issuer=client_id,
                # times are checked below against this endpoint's clock
                options={
                    "require": ["exp", "iss", "sub", "aud", "jti"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRequestError("invalid_client", "aud must be the token endpoint URL", 401) from None
        except jwt.PyJWTError as exc:
            reason = type(exc).__name__
            raise TokenRequestError("invalid_client", f"client_assertion rejected ({reason})", 401) from None
        if claims.get("sub") != client_id:
            raise TokenRequestError("invalid_client", "sub must equal iss (the client id)", 401)
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise TokenRequestError("invalid_client", "exp is not a number", 401)
        if exp + LEEWAY_S <= now:
            raise TokenRequestError("invalid_client", "client_assertion has expired", 401)
        if exp > now + MAX_ASSERTION_LIFETIME_S + LEEWAY_S:
            raise TokenRequestError("invalid_client", "exp is more than five minutes ahead", 401)
        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise TokenRequestError("invalid_client", "jti missing", 401)
        with self._lock:
            self._jtis = {k: v for k, v in self._jtis.items() if v > now}
            if (client_id, jti) in self._jtis:
                raise TokenRequestError("invalid_client", "jti was already used", 401)
            self._jtis[(client_id, jti)] = float(exp) + LEEWAY_S
        return client_id


def parse_client_option(value: str) -> tuple[str, str]:
    """`ID=JWKS_FILE` from the command line; raises ValueError with a message for the user."""
    client_id, sep, path = value.partition("=")
    if not sep or not client_id or not path:
        raise ValueError(f"--client: expected ID=JWKS_FILE, got {value!r}")
    try:
        load_jwks_file(path)
    except JwksError as exc:
        raise ValueError(f"--client {client_id}: {exc}") from None
    return client_id, path


def smart_configuration(token_url: str) -> dict[str, Any]:
    """`.well-known/smart-configuration` for backend services (what a client needs to find the endpoint)."""
    return {
        "token_endpoint": token_url,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALLOWED_ALGORITHMS),
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric"],
    }


def token_error_body(exc: TokenRequestError) -> str:
    return json.dumps({"error": exc.error, "error_description": exc.description})
