"""Link tokens of the explanation pages: anything a browser sends is refused cleanly, never a 500."""

from __future__ import annotations

import pytest

from cds_plugin.web.link_tokens import LinkSigner, LinkTokenError

SIGNER = LinkSigner(b"0123456789abcdef")


def test_a_signed_token_opens_its_page_only():
    token = SIGNER.sign("entry", 4e9)
    SIGNER.verify(token, "entry", now=0)
    with pytest.raises(LinkTokenError):
        SIGNER.verify(token, "other", now=0)


@pytest.mark.parametrize("token", ["é.ü", "abc.\u00ff", "\u2603.\u2603", "a.b", ".", ""])
def test_non_ascii_and_forged_tokens_are_refused(token):
    """Found by the OpenAPI fuzz test: hmac.compare_digest raised TypeError on non-ASCII str."""
    with pytest.raises(LinkTokenError):
        SIGNER.verify(token, "entry", now=0)
