"""The sandbox client's keys: files written by `sandbox keys`, and tokens that our own verifier accepts
when the printed JWK Set is pinned (CDS Hooks 2.0 "Trusting CDS Clients", shaped like the reference
sandbox's tokens)."""

from __future__ import annotations

import json
import stat
from datetime import datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from cds_plugin.cli import main
from cds_plugin.hooks.jwt_trust import ClientTrust
from cds_plugin.sandbox.keys import (
    JWKS_FILE,
    PRIVATE_KEY_FILE,
    TOKEN_LIFETIME_S,
    ClientKey,
    KeyFileError,
    jwk_thumbprint,
)
from cds_plugin.settings import TrustedIssuer
from tests.helpers.jwt_tokens import bearer

ISS = "https://sandbox-client.example.org"
JKU = "https://sandbox-client.example.org/.well-known/jwks.json"
AUD = "https://cds.example.org/cds-services/echo-patient"


class MemoryReplayCache:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
        fresh = (iss, jti) not in self.seen
        self.seen.add((iss, jti))
        return fresh


def trust_pinned(jwks_path: Path, *, jku_allow: tuple[str, ...] = (JKU,)) -> ClientTrust:
    issuer = TrustedIssuer(iss=ISS, jwks_file=str(jwks_path), jku_allow=jku_allow)
    return ClientTrust([issuer], replay_cache=MemoryReplayCache())


def test_keys_command_writes_a_private_key_and_prints_the_jwks(tmp_path: Path, capsys) -> None:
    out = tmp_path / "keys"
    assert main(["sandbox", "keys", "--out", str(out), "--kid", "k-1", "--jku", JKU]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / JWKS_FILE).read_text())
    (public,) = printed["keys"]
    assert public["kty"] == "EC" and public["crv"] == "P-384"
    assert public["kid"] == "k-1" and public["alg"] == "ES384" and public["use"] == "sig"
    assert "d" not in public
    private = json.loads((out / PRIVATE_KEY_FILE).read_text())
    assert private["d"] and private["jku"] == JKU
    assert stat.S_IMODE((out / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    # an existing key is never replaced silently: services may trust it already
    assert main(["sandbox", "keys", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert json.loads((out / PRIVATE_KEY_FILE).read_text())["d"] == private["d"]
    assert main(["sandbox", "keys", "--out", str(out), "--force"]) == 0


def test_signed_tokens_verify_with_the_printed_jwks_pinned(tmp_path: Path, capsys) -> None:
    assert main(["sandbox", "keys", "--out", str(tmp_path), "--jku", JKU]) == 0
    jwks_path = tmp_path / "pinned.json"
    jwks_path.write_text(capsys.readouterr().out)
    key = ClientKey.load(tmp_path / PRIVATE_KEY_FILE)
    token = key.sign(AUD, ISS)

    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES384", "typ": "JWT", "kid": key.kid, "jku": JKU}
    claims = jwt.decode(token, options={"verify_signature": False})
    assert set(claims) == {"iss", "aud", "exp", "iat", "jti"}
    assert claims["aud"] == AUD and claims["iss"] == ISS
    assert claims["exp"] - claims["iat"] == TOKEN_LIFETIME_S == 300

    trust = trust_pinned(jwks_path)
    verified = trust.verify(bearer(token), AUD)
    assert verified.iss == ISS and verified.kid == key.kid and verified.jti == claims["jti"]
    # every token has its own jti, so a second call is not a replay
    assert trust.verify(bearer(key.sign(AUD, ISS)), AUD).jti != claims["jti"]


def test_tokens_are_bound_to_the_exact_url_and_jku(tmp_path: Path) -> None:
    key = ClientKey.generate(kid="k", jku=JKU)
    _, jwks_path = key.write(tmp_path)
    with pytest.raises(Exception, match="aud"):
        trust_pinned(jwks_path).verify(bearer(key.sign(AUD, ISS)), AUD + "/feedback")
    with pytest.raises(Exception, match="jku"):
        trust_pinned(jwks_path, jku_allow=("https://elsewhere.example/jwks.json",)).verify(
            bearer(key.sign(AUD, ISS)), AUD
        )
    no_jku = ClientKey(key.private_key, key.kid)
    assert "jku" not in jwt.get_unverified_header(no_jku.sign(AUD, ISS))
    assert trust_pinned(jwks_path).verify(bearer(no_jku.sign(AUD, ISS)), AUD).kid == "k"


def test_overrides_when_loading(tmp_path: Path) -> None:
    path, _ = ClientKey.generate(kid="file-kid", jku=JKU).write(tmp_path)
    assert ClientKey.load(path).kid == "file-kid"
    loaded = ClientKey.load(path, kid="other", jku="https://x.example/j.json")
    assert (loaded.kid, loaded.jku) == ("other", "https://x.example/j.json")


def test_pem_keys_are_accepted_with_a_thumbprint_kid(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key = ClientKey.load(pem)
    assert key.alg == "ES384"
    assert key.kid == jwk_thumbprint(key.public_jwk())
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps(key.jwks()))
    assert trust_pinned(jwks_path).verify(bearer(key.sign(AUD, ISS)), AUD).kid == key.kid


def test_rsa_keys_sign_rs384(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key = ClientKey.load(pem, kid="rsa-1")
    token = key.sign(AUD, ISS)
    assert jwt.get_unverified_header(token)["alg"] == "RS384"
    jwks_path = tmp_path / "jwks.json"
    jwks_path.write_text(json.dumps(key.jwks()))
    assert trust_pinned(jwks_path).verify(bearer(token), AUD).kid == "rsa-1"


def test_unusable_key_files_are_refused(tmp_path: Path) -> None:
    p256 = tmp_path / "p256.pem"
    p256.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="P-384"):
        ClientKey.load(p256)
    key = ClientKey.generate()
    public_set = tmp_path / "jwks.json"
    public_set.write_text(json.dumps(key.jwks()))
    with pytest.raises(KeyFileError, match="JWK Set"):
        ClientKey.load(public_set)
    public_jwk = tmp_path / "public.json"
    public_jwk.write_text(json.dumps(key.public_jwk()))
    with pytest.raises(KeyFileError, match="private"):
        ClientKey.load(public_jwk)
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    with pytest.raises(KeyFileError):
        ClientKey.load(garbage)
    with pytest.raises(KeyFileError, match="cannot read"):
        ClientKey.load(tmp_path / "missing.pem")


def test_thumbprint_matches_rfc_7638_example() -> None:
    jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1"
            "L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4"
            "QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbO"
            "pbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csF"
            "Cur-kEgU8awapJzKnqDKgw"
        ),
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
