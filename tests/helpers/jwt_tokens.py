"""Mint real CDS-client JWTs in tests, and serve JWK Sets from a loopback HTTP server.

Keys are generated per run with `cryptography`; nothing here is a fixture of a real client. Typical use:

    kp = KeyPair.generate("ES384", kid="k1")
    token = kp.sign(client_claims(iss="https://ehr.example", aud="http://localhost/cds-services/x"))
    headers = {"Authorization": f"Bearer {token}"}

`JwksServer` serves a (mutable) JWK Set on 127.0.0.1 so tests can exercise fetching, `jku` and key
rotation without the network.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_b64(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass
class KeyPair:
    """A private key with its JWS algorithm and kid; signs tokens and publishes its public JWK."""

    alg: str
    kid: str
    private_key: Any

    @classmethod
    def generate(cls, alg: str = "ES384", kid: str | None = None, *, rsa_bits: int = 2048) -> KeyPair:
        """A fresh key for `alg` (ES256/ES384/ES512 or RS256/RS384/RS512/PS384)."""
        if alg in _CURVES:
            key: Any = ec.generate_private_key(_CURVES[alg]())
        elif alg[:2] in ("RS", "PS"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        else:
            raise ValueError(f"no key type for {alg}")
        return cls(alg=alg, kid=kid or f"{alg.lower()}-{uuid.uuid4().hex[:8]}", private_key=key)

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()

    def public_jwk(self, *, with_alg: bool = True, **extra: Any) -> dict[str, Any]:
        """The public JWK (kid, use=sig, alg unless `with_alg=False`), plus `extra` members."""
        algo = ECAlgorithm if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
        jwk: dict[str, Any] = algo.to_jwk(self.public_key, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig"})
        if with_alg:
            jwk["alg"] = self.alg
        jwk.update(extra)
        return jwk

    def jwks(self) -> dict[str, Any]:
        """A JWK Set holding only this key."""
        return {"keys": [self.public_jwk()]}

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(
        self,
        claims: dict[str, Any],
        headers: dict[str, Any] | None = None,
        *,
        alg: str | None = None,
        omit_kid: bool = False,
    ) -> str:
        """A compact JWS of `claims`, signed with this key's own algorithm.

        The header has alg (this key's, or `alg` to lie about it), typ=JWT and this key's kid (unless
        `omit_kid`); `headers` entries are added last, e.g. `{"jku": url}` or `{"kid": 7}`, and an entry
        set to None is removed (`{"typ": None}`). Built by hand
        so tests can send what PyJWT would refuse to encode (a numeric iss, a non-string kid, a header
        alg that does not match the key).
        """
        header: dict[str, Any] = {"alg": alg or self.alg, "typ": "JWT"}
        if not omit_kid:
            header["kid"] = self.kid
        header.update(headers or {})
        header = {k: v for k, v in header.items() if v is not None}  # None removes an entry, e.g. typ
        signing_input = f"{_json_b64(header)}.{_json_b64(claims)}".encode("ascii")
        signature = get_default_algorithms()[self.alg].sign(signing_input, self.private_key)
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def jwks_of(*pairs: KeyPair) -> dict[str, Any]:
    """A JWK Set with the public keys of all `pairs`."""
    return {"keys": [p.public_jwk() for p in pairs]}


def client_claims(
    iss: str,
    aud: str | list[str],
    *,
    lifetime_s: int = 300,
    now: float | None = None,
    omit: tuple[str, ...] = (),
    **extra: Any,
) -> dict[str, Any]:
    """The claims a CDS Hooks 2.0 client sends (iss, aud, exp, iat, jti), minus `omit`, plus `extra`."""
    now = time.time() if now is None else now
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": int(now),
        "exp": int(now) + lifetime_s,
        "jti": str(uuid.uuid4()),
    }
    claims.update(extra)
    for name in omit:
        claims.pop(name, None)
    return claims


def unsigned_token(claims: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    """An `alg: none` token (empty signature), built by hand so no library refuses to make it."""
    header = {"alg": "none", "typ": "JWT", **(headers or {})}
    return f"{_json_b64(header)}.{_json_b64(claims)}."


def hmac_token(
    claims: dict[str, Any], secret: bytes, headers: dict[str, Any] | None = None, *, alg: str = "HS256"
) -> str:
    """An HMAC-signed token, built by hand so `secret` may be a public key PEM (key-confusion attack)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    header = {"alg": alg, "typ": "JWT", **(headers or {})}
    signing_input = f"{_json_b64(header)}.{_json_b64(claims)}"
    sig = hmac.new(secret, signing_input.encode("ascii"), digest).digest()
    return f"{signing_input}.{b64url(sig)}"


def bearer(token: str) -> str:
    return f"Bearer {token}"


@dataclass
class JwksServer:
    """A loopback HTTP server answering GET with `jwks` (mutable: rotate keys by assigning it).

    Set `status`, `body` (raw bytes) or `delay_s` to simulate a broken or slow server; `hits` counts
    requests per path.
    """

    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    status: int = 200
    body: bytes | None = None
    delay_s: float = 0.0
    hits: dict[str, int] = field(default_factory=dict)
    base_url: str = ""

    def url(self, path: str = "/.well-known/jwks.json") -> str:
        return self.base_url + path

    @property
    def total_hits(self) -> int:
        return sum(self.hits.values())

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                body = owner.body if owner.body is not None else json.dumps(owner.jwks).encode()
                try:
                    self.send_response(owner.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # client timed out first
                    pass

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
