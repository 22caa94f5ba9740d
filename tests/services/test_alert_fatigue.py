"""Alert fatigue: at most `max_cards` cards per service and call, and a consideration overridden for a
patient is not shown to that patient again for `override_snooze_days`, kept in the database (surviving
restarts, shared by replicas; SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cds_plugin import metrics
from cds_plugin.settings import Settings
from tests.helpers.databases import database_url  # noqa: F401  (a fixture)
from tests.helpers.open_app import open_app

REQUESTS = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
SERVICE = "diagnosis-considerations"


def request_of(name: str) -> dict:
    return json.loads((REQUESTS / name).read_text())


def as_another_patient(body: dict) -> dict:
    """The same data under another patient id."""
    pid = body["context"]["patientId"]
    return json.loads(json.dumps(body).replace(pid, "another-patient-0001"))


def make_app(tiny_model, data_dir, url: str = "", **overrides):  # type: ignore[no-untyped-def]
    return open_app(tiny_model, data_dir, database_url=url, **overrides)


def topics(resp) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        f"{c['source']['topic']['system']}|{c['source']['topic']['code']}" for c in resp.get_json()["cards"]
    ]


def override(client, card: dict) -> None:  # type: ignore[no-untyped-def]
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"system": "urn:cds-plugin:override-reason", "code": "not-clinically-relevant"}
        },
        "outcomeTimestamp": "2026-12-01T09:00:00Z",
    }
    assert client.post(f"/cds-services/{SERVICE}/feedback", json={"feedback": [item]}).status_code == 200


def test_an_override_holds_for_that_patient_across_restarts_and_replicas(tiny_model, tmp_path, database_url):  # noqa: F811
    body = request_of("diabetes-adult-2025.patient-view.json")
    first = make_app(tiny_model, tmp_path / "a", database_url, pseudonym_secret="shared-secret-0123456789")
    client = first.test_client()
    resp = client.post(f"/cds-services/{SERVICE}", json=body)
    shown = topics(resp)
    assert shown
    card = resp.get_json()["cards"][0]
    override(client, card)
    snoozed = metrics.REGISTRY.get_sample_value(
        "cds_plugin_considerations_snoozed_total", {"service": SERVICE}
    )

    assert shown[0] not in topics(client.post(f"/cds-services/{SERVICE}", json=body))
    after = metrics.REGISTRY.get_sample_value("cds_plugin_considerations_snoozed_total", {"service": SERVICE})
    assert after == (snoozed or 0) + 1
    # another replica (its own data folder, the same database and secret): held back there too
    replica = make_app(tiny_model, tmp_path / "b", database_url, pseudonym_secret="shared-secret-0123456789")
    assert shown[0] not in topics(replica.test_client().post(f"/cds-services/{SERVICE}", json=body))
    # another patient with the same data still gets it
    assert shown[0] in topics(
        replica.test_client().post(f"/cds-services/{SERVICE}", json=as_another_patient(body))
    )
    # switched off, or past the snooze: shown again
    off = make_app(tiny_model, tmp_path / "c", database_url, pseudonym_secret="shared-secret-0123456789",
                   override_snooze_days=0)  # fmt: skip
    assert shown[0] in topics(off.test_client().post(f"/cds-services/{SERVICE}", json=body))


@pytest.mark.parametrize("max_cards", [1, 2])
def test_at_most_max_cards_per_service_and_call(tiny_model, tmp_path, max_cards):
    client = make_app(tiny_model, tmp_path, max_cards=max_cards).test_client()
    counts = []
    for path in sorted(REQUESTS.glob("*.json")):
        body = json.loads(path.read_text())
        services = (
            ["diagnosis-considerations", "treatment-considerations"]
            if body["hook"] == "patient-view"
            else [f"{body['hook']}-review"]
        )
        for service in services:
            cards = client.post(f"/cds-services/{service}", json=body).get_json()["cards"]
            counts.append(len(cards))
    assert max(counts) == max_cards  # with the floor off, every call has more candidates than that


def test_settings_are_checked():
    from cds_plugin.settings import SettingsError

    with pytest.raises(SettingsError, match="MAX_CARDS"):
        Settings.load(environ={"CDS_PLUGIN_MAX_CARDS": "0"})
    with pytest.raises(SettingsError, match="OVERRIDE_SNOOZE_DAYS"):
        Settings.load(environ={"CDS_PLUGIN_OVERRIDE_SNOOZE_DAYS": "-1"})
    with pytest.raises(SettingsError, match="PSEUDONYM_SECRET"):
        Settings.load(environ={"CDS_PLUGIN_PSEUDONYM_SECRET": "short"})
    assert Settings.load(environ={}).override_snooze_days == 90
