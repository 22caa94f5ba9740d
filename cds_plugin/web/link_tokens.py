"""Signed, expiring tokens for explanation links: the page holds patient data, so its URL carries proof.

A token is `base64url(json{"id", "exp"}) . base64url(HMAC-SHA256(secret, payload))`. It is bound to one
explanation id and one expiry; a token for another id, an expired token or a forged one is refused.
The secret comes from `link_secret` (set it the same on every replica), else a random one is created
once in the data folder (mode 0600).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path


class LinkTokenError(Exception):
    """The token does not open this page (the reason is for logs only)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_secret(configured: str, data_dir: str, name: str = "link_secret") -> bytes:
    """The configured secret, else one kept in `data_dir/<name>` (created on first use, mode 0600)."""
    if configured:
        return configured.encode()
    path = Path(data_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_urlsafe(48).encode())
    return path.read_bytes().strip()


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("link_secret must be at least 16 characters")
        self.secret = secret

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self.secret, payload.encode(), hashlib.sha256).digest())

    def sign(self, entry_id: str, expires_at: float) -> str:
        payload = _b64(json.dumps({"id": entry_id, "exp": int(expires_at)}, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str | None, entry_id: str, now: float | None = None) -> None:
        if not token or token.count(".") != 1 or len(token) > 1000:
            raise LinkTokenError("malformed token")
        payload, mac = token.split(".")
        if not hmac.compare_digest(mac.encode(), self._mac(payload).encode()):  # bytes: str must be ASCII
            raise LinkTokenError("bad signature")
        try:
            claims = json.loads(_unb64(payload))
        except (ValueError, UnicodeDecodeError) as exc:
            raise LinkTokenError("malformed payload") from exc
        if not isinstance(claims, dict) or claims.get("id") != entry_id:
            raise LinkTokenError("token is for another page")
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp <= (time.time() if now is None else now):
            raise LinkTokenError("token expired")
