"""Bearer tokens for a Bulk Data server: a static token, or SMART Backend Services (client_credentials).

Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html): the client signs a JWT
assertion with its private key (ES384 for EC P-384, RS384 for RSA; `iss` and `sub` its client id, `aud`
the token endpoint, five minutes, a fresh `jti`) and trades it for an access token. The token is kept
until shortly before it expires and fetched again after that, or when the server answers 401, so an
export that outlasts one token keeps going. Tokens are never logged or printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import requests

from cds_plugin.errors import CdsPluginError
from cds_plugin.sandbox.keys import ClientKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_SCOPE = "system/*.read"
#: Fetch a new token this many seconds before the current one expires.
REFRESH_MARGIN_S = 30
ASSERTION_LIFETIME_S = 300


class AuthorizationError(CdsPluginError):
    """No access token could be had; the message says why (the server's error description)."""

    status = 401
    code = "security"


class Authorizer(Protocol):
    def header(self) -> str:
        """The Authorization header value to send now."""
        ...

    def refresh(self) -> bool:
        """Forget the current token after a 401; True when a retry may succeed with a new one."""
        ...


class StaticToken:
    """A bearer token given on the command line (nothing to refresh)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def header(self) -> str:
        return f"Bearer {self._token}"

    def refresh(self) -> bool:
        return False


class BackendServices:
    """Access tokens from a SMART Backend Services token endpoint, fetched when needed."""

    def __init__(
        self,
        client_id: str,
        key: ClientKey,
        token_url: str,
        *,
        scope: str = DEFAULT_SCOPE,
        session: requests.Session | None = None,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client_id = client_id
        self.key = key
        self.token_url = token_url
        self.scope = scope
        self.session = session or requests.Session()
        self.timeout_s = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self.fetches = 0

    def assertion(self) -> str:
        """A signed client assertion for one token request."""
        return self.key.sign(
            self.token_url,
            self.client_id,
            lifetime_s=ASSERTION_LIFETIME_S,
            now=self._clock(),
            extra_claims={"sub": self.client_id},
        )

    def header(self) -> str:
        if self._token is None or self._clock() >= self._expires_at:
            self._fetch()
        return f"Bearer {self._token}"

    def refresh(self) -> bool:
        self._token = None
        return True

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        try:
            response = self.session.post(
                self.token_url, data=form, headers={"Accept": "application/json"}, timeout=self.timeout_s
            )
        except requests.RequestException as exc:
            raise AuthorizationError(f"token endpoint unreachable ({type(exc).__name__})") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            description = body.get("error_description") if isinstance(body, dict) else None
            detail = ": ".join(str(p)[:300] for p in (error, description) if p) or "no error description"
            raise AuthorizationError(f"token endpoint refused (HTTP {response.status_code}): {detail}")
        token, expires_in = body.get("access_token"), body.get("expires_in", 300)
        if not isinstance(token, str) or not token:
            raise AuthorizationError("token endpoint answered without an access_token")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = 300
        self._token = token
        # renewed a little early (a fifth of a short lifetime), so it does not expire in flight
        self._expires_at = self._clock() + float(expires_in) - min(REFRESH_MARGIN_S, float(expires_in) / 5)
        self.fetches += 1
