"""Patient pseudonyms: what the database keeps instead of a patient id.

`patient_key` is HMAC-SHA256 over the calling EHR (the verified JWT issuer, empty when JWT checks are
off) and `Patient/<id>` (ids are unique within one EHR, not across EHRs). Without the secret a key cannot
be linked back to a patient, nor a patient id checked against it; with it, the same patient of the same
EHR gets the same key on every replica, so give every replica the same `pseudonym_secret`.
"""

from __future__ import annotations

import hashlib
import hmac


class Pseudonymizer:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("pseudonym_secret must be at least 16 characters")
        self._secret = secret

    def patient_key(self, issuer: str | None, patient_id: str) -> str:
        """64 hex characters naming this EHR's patient; never the id itself."""
        message = f"{issuer or ''}\n{patient_id.removeprefix('Patient/')}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never the secret
        return "Pseudonymizer()"
