"""Spec example bodies parse and round-trip; card invariants cds-resp-1..6 (req 3, 80-147, 216-219)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cds_plugin.hooks.card import Action, Card, Link, Source, Suggestion
from cds_plugin.hooks.coding import Coding
from cds_plugin.hooks.discovery import DiscoveryResponse
from cds_plugin.hooks.request import CDSRequest, FhirAuthorization
from cds_plugin.hooks.response import CDSResponse


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("binary-CDSHookServices.json", DiscoveryResponse),
        ("binary-CDSHooksRequestPV.json", CDSRequest),
        ("binary-CDSHooksResponse.json", CDSResponse),
    ],
)
def test_spec_examples_round_trip(schemas_dir, name, model):
    original = json.loads((schemas_dir / "examples" / name).read_text())
    parsed = model.model_validate(original)
    assert parsed.to_json() == original


def test_to_json_drops_nulls_and_empties_but_keeps_cards():
    card = Card(summary="s", indicator="info", source=Source(label="x", url=None), links=[], detail="")
    assert CDSResponse(cards=[card]).to_json() == {
        "cards": [{"summary": "s", "indicator": "info", "source": {"label": "x"}}]
    }
    assert CDSResponse().to_json() == {"cards": []}


def test_summary_must_be_under_140_characters():
    Card(summary="x" * 139, indicator="info", source=Source(label="x"))
    with pytest.raises(ValidationError):
        Card(summary="x" * 140, indicator="info", source=Source(label="x"))


def test_indicator_values():
    with pytest.raises(ValidationError):
        Card(summary="s", indicator="hard-stop", source=Source(label="x"))


def test_suggestions_need_selection_behavior():
    """cds-resp-6."""
    with pytest.raises(ValidationError, match="cds-resp-6"):
        Card(summary="s", indicator="info", source=Source(label="x"), suggestions=[Suggestion(label="a")])


def test_at_most_one_recommended():
    """cds-resp-1."""
    s = [Suggestion(label="a", isRecommended=True), Suggestion(label="b", isRecommended=True)]
    with pytest.raises(ValidationError, match="cds-resp-1"):
        Card(
            summary="s",
            indicator="info",
            source=Source(label="x"),
            suggestions=s,
            selectionBehavior="at-most-one",
        )


def test_override_reasons_need_display():
    """cds-resp-4 / req 136, 219."""
    with pytest.raises(ValidationError, match="cds-resp-4"):
        Card(
            summary="s",
            indicator="info",
            source=Source(label="x"),
            overrideReasons=[Coding(system="s", code="c")],
        )


def test_app_context_only_on_smart_links():
    """cds-resp-3 / req 146, 147."""
    Link(label="l", url="https://x", type="smart", appContext="{}")
    with pytest.raises(ValidationError, match="cds-resp-3"):
        Link(label="l", url="https://x", type="absolute", appContext="{}")


def test_actions_need_description_and_right_payload():
    """cds-resp-2, cds-resp-5 / req 134."""
    with pytest.raises(ValidationError):
        Action(type="create", resource={"resourceType": "Task"})
    with pytest.raises(ValidationError, match="needs a resource"):
        Action(type="create", description="d")
    with pytest.raises(ValidationError, match="cds-resp-2"):
        Action(type="delete", description="d", resource={"resourceType": "Task"})
    Action(type="delete", description="d", resourceId="Task/1")


def test_coding_needs_system_and_code():
    with pytest.raises(ValidationError):
        Coding(code="c")


def test_ensure_uuids_fills_only_missing():
    card = Card(
        summary="s",
        indicator="info",
        source=Source(label="x"),
        uuid="keep",
        suggestions=[Suggestion(label="a")],
        selectionBehavior="any",
    )
    CDSResponse(cards=[card]).ensure_uuids()
    assert card.uuid == "keep" and card.suggestions[0].uuid


def test_access_token_never_in_repr():
    auth = FhirAuthorization(access_token="s3cr3t", token_type="Bearer", expires_in=1, scope="a", subject="b")
    assert "s3cr3t" not in repr(auth) and "s3cr3t" not in str(auth)
    request = CDSRequest(
        hook="h", hookInstance="i", context={}, fhirServer="http://x", fhirAuthorization=auth
    )
    assert "s3cr3t" not in repr(request)


@pytest.mark.parametrize("url", ["example.com", "/relative", "ftp://x/y", "javascript:alert(1)"])
def test_urls_must_be_absolute(url):
    """Req 107, 111, 139."""
    with pytest.raises(ValidationError, match="absolute"):
        Source(label="x", url=url)
    with pytest.raises(ValidationError, match="absolute"):
        Source(label="x", icon=url)
    with pytest.raises(ValidationError, match="absolute"):
        Link(label="x", url=url, type="absolute")


def test_action_resource_must_be_a_fhir_resource():
    """Req 130."""
    with pytest.raises(ValidationError, match="resourceType"):
        Action(type="create", description="d", resource={"foo": 1})


def test_only_top_level_cards_kept_when_empty():
    from cds_plugin.hooks.wire import KEEP_EMPTY, prune_empty

    assert prune_empty({"cards": [], "x": {"cards": []}}, KEEP_EMPTY) == {"cards": []}
