"""The sandbox client's signing key: generate it, publish its JWK Set, sign CDS Hooks client JWTs.

A CDS service trusts a client by its JWK Set (CDS Hooks 2.0, "Trusting CDS Clients"), so testing a
service that checks tokens needs a key whose public half the service can pin or fetch. Tokens are
shaped like the reference sandbox's (cds-hooks/sandbox): claims `iss`, `aud` (the exact URL called),
`exp` (5 minutes), `iat`, `jti`; header `alg` ES384, `typ` JWT, `kid` and, when known, `jku`.

The private key file is a private JWK (RFC 7517) with `kid`, `alg` and `use`, plus a `jku` member
when the key set will be published at a URL (extra JWK members are ignored by other software). A
PEM private key (EC P-384, or RSA for RS384) is accepted too; its `kid` is then its RFC 7638
thumbprint.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

#: Token lifetime used by the reference sandbox: long enough for a slow service, short against replay.
TOKEN_LIFETIME_S = 300
PRIVATE_KEY_FILE = "client-private.jwk.json"
JWKS_FILE = "jwks.json"
MIN_RSA_BITS = 2048


class KeyFileError(ValueError):
    """A key file that cannot be used to sign CDS Hooks client tokens; the message says why."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public EC or RSA JWK: a stable `kid` derived from the key."""
    members = ("crv", "kty", "x", "y") if jwk.get("kty") == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _algorithm_for(private_key: Any) -> str:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if not isinstance(private_key.curve, ec.SECP384R1):
            raise KeyFileError(f"EC key on curve {private_key.curve.name}: ES384 needs P-384 (secp384r1)")
        return "ES384"
    if isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"RSA key of {private_key.key_size} bits: RS384 needs at least {MIN_RSA_BITS}")
        return "RS384"
    raise KeyFileError(f"unsupported key type {type(private_key).__name__}: use EC P-384 (ES384) or RSA")


@dataclass(frozen=True)
class ClientKey:
    """A private signing key with the `kid` (and optional `jku`) that tokens name it by."""

    private_key: Any
    kid: str
    jku: str | None = None

    @property
    def alg(self) -> str:
        """ES384 for EC P-384 keys, RS384 for RSA: the two algorithms CDS Hooks 2.0 recommends."""
        return _algorithm_for(self.private_key)

    @classmethod
    def generate(cls, kid: str | None = None, jku: str | None = None) -> ClientKey:
        """A fresh EC P-384 key; `kid` defaults to a random uuid (as the reference sandbox's is)."""
        return cls(ec.generate_private_key(ec.SECP384R1()), kid or str(uuid.uuid4()), jku)

    @classmethod
    def load(cls, path: str | Path, *, kid: str | None = None, jku: str | None = None) -> ClientKey:
        """Read a private JWK (JSON) or PEM file; `kid`/`jku` given here override what the file says."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read key file: {exc.strerror or exc}") from exc
        if raw.lstrip().startswith(b"{"):
            return cls._from_jwk(path, raw, kid, jku)
        try:
            private_key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"{path}: not a private JWK nor an unencrypted PEM private key") from exc
        _algorithm_for(private_key)
        key = cls(private_key, "pending", jku)
        return cls(private_key, kid or jwk_thumbprint(key.public_jwk()), jku)

    @classmethod
    def _from_jwk(cls, path: Path, raw: bytes, kid: str | None, jku: str | None) -> ClientKey:
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise KeyFileError(f"{path}: not JSON") from exc
        if isinstance(data, dict) and isinstance(data.get("keys"), list):
            raise KeyFileError(f"{path}: a JWK Set (public keys); give the private key file instead")
        if not isinstance(data, dict) or "d" not in data:
            raise KeyFileError(f"{path}: not a private JWK (no 'd' member)")
        try:
            algo = ECAlgorithm if data.get("kty") == "EC" else RSAAlgorithm
            private_key = algo.from_jwk(data)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:
            raise KeyFileError(f"{path}: unusable JWK ({type(exc).__name__})") from exc
        _algorithm_for(private_key)
        file_kid = data.get("kid") if isinstance(data.get("kid"), str) else None
        file_jku = data.get("jku") if isinstance(data.get("jku"), str) else None
        key = cls(private_key, "pending")
        return cls(private_key, kid or file_kid or jwk_thumbprint(key.public_jwk()), jku or file_jku)

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK with `kid`, `alg` and `use: sig`, as a service's key set expects it."""
        algo = ECAlgorithm if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
        jwk: dict[str, Any] = algo.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk

    def jwks(self) -> dict[str, Any]:
        """The JWK Set to publish at the `jku` URL or to pin in the service's settings."""
        return {"keys": [self.public_jwk()]}

    def private_jwk(self) -> dict[str, Any]:
        algo = ECAlgorithm if isinstance(self.private_key, ec.EllipticCurvePrivateKey) else RSAAlgorithm
        jwk: dict[str, Any] = algo.to_jwk(self.private_key, as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        if self.jku:
            jwk["jku"] = self.jku
        return jwk

    def write(self, directory: str | Path, *, overwrite: bool = False) -> tuple[Path, Path]:
        """Write the private JWK (mode 0600) and the public JWK Set; returns both paths.

        Refuses to replace an existing private key unless `overwrite`: services may already trust it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        private_path, jwks_path = directory / PRIVATE_KEY_FILE, directory / JWKS_FILE
        if private_path.exists() and not overwrite:
            raise KeyFileError(f"{private_path} exists; pass --force to replace it")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(private_path, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.private_jwk(), fh, indent=2)
            fh.write("\n")
        os.chmod(private_path, 0o600)  # also when the file existed with wider permissions
        jwks_path.write_text(json.dumps(self.jwks(), indent=2) + "\n", encoding="utf-8")
        return private_path, jwks_path

    def sign(
        self,
        audience: str,
        issuer: str,
        *,
        lifetime_s: int = TOKEN_LIFETIME_S,
        now: float | None = None,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A compact JWS for one call to `audience` (the exact endpoint URL), with a fresh `jti`."""
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": audience,
            "exp": issued + lifetime_s,
            "iat": issued,
            "jti": str(uuid.uuid4()),
            **(extra_claims or {}),
        }
        headers: dict[str, Any] = {"typ": "JWT", "kid": self.kid}
        if self.jku:
            headers["jku"] = self.jku
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers=headers)


def describe_token(token: str) -> dict[str, Any]:
    """Header and claims of a token we signed, for display: the signature (the secret part) is left out."""
    return {
        "header": jwt.get_unverified_header(token),
        "claims": jwt.decode(token, options={"verify_signature": False}),
    }
