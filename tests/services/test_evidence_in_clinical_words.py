"""Evidence in clinical words, over every fixture's cards (fhir_fixtures/requests): no UCUM annotation,
no bracketed UCUM unit, no more decimals than the quantity warrants, dates as dates, kinds in words, no
system URL; the same for every resource the explanation page describes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.clinical_words import SYSTEM_URL, WORDS_FOR_KINDS, value_problems
from tests.helpers.open_app import open_app

REQUESTS = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
SERVICES = {
    "patient-view": ("diagnosis-considerations", "treatment-considerations"),
    "order-select": ("order-select-review",),
    "order-sign": ("order-sign-review",),
}
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@pytest.fixture(scope="module")
def app(card_model, tmp_path_factory):
    return open_app(card_model, tmp_path_factory.mktemp("words"), max_cards=5)


def _quantities(body: dict) -> dict[str, list[tuple[str | None, float]]]:
    """(LOINC code, value) of every quantity of every Observation sent, by `Type/id`."""
    out: dict[str, list[tuple[str | None, float]]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            if value.get("resourceType") == "Observation":
                found = []
                for item in [value, *value.get("component", [])]:
                    quantity = item.get("valueQuantity")
                    if quantity and isinstance(quantity.get("value"), int | float):
                        codes = [c.get("code") for c in item.get("code", {}).get("coding", [])]
                        loinc = next((c for c in codes if c and "-" in c), None)
                        found.append((loinc, float(quantity["value"])))
                out[f"Observation/{value.get('id')}"] = found
            for item in value.values():
                walk(item)

    walk(body)
    return out


def _check_row(row: dict, quantities: dict, where: str) -> list[str]:
    problems = [f"{where}: kind {row['kind']!r}"] if row["kind"] not in WORDS_FOR_KINDS else []
    if row["date"] and not DATE.fullmatch(row["date"]):
        problems.append(f"{where}: date {row['date']!r}")
    for text in (row["what"], row["value"]):
        if SYSTEM_URL.search(text):
            problems.append(f"{where}: system URL in {text!r}")
    found = quantities.get(row["reference"], [])
    parts = row["value"].split("/") if len(found) == 2 and "/" in row["value"] else [row["value"]]
    for part, (loinc, value) in zip(parts, found, strict=False):
        problems += [f"{where}: {row['value']!r}: {p}" for p in value_problems(part, loinc, value)]
    return problems


def _table_rows(detail: str) -> list[dict]:
    rows = []
    for line in detail.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("Kind", "---"):
            rows.append({"kind": cells[0], "what": cells[1], "value": cells[2], "date": cells[3]})
    return rows


def test_every_fixture_card_speaks_clinical_words(app):
    client = app.test_client()
    store = app.extensions["cds_plugin"].explanation_store
    problems: list[str] = []
    cards_seen = resources_seen = 0
    for path in sorted(REQUESTS.glob("*.json")):
        body = json.loads(path.read_text())
        quantities = _quantities(body)
        for service in SERVICES[body["hook"]]:
            resp = client.post(f"/cds-services/{service}", json=body)
            assert resp.status_code == 200, (path.name, service)
            for card in resp.get_json()["cards"]:
                cards_seen += 1
                where = f"{path.stem} {service}"
                if SYSTEM_URL.search(card["summary"] + card.get("detail", "")):
                    problems.append(f"{where}: system URL in the card text")
                entry_id = card["links"][0]["url"].split("/explanations/")[1].split("?")[0]
                payload = store.get(entry_id)["payload"]
                shown = _table_rows(card["detail"])
                assert [r["what"] for r in shown] == [
                    r["what"] for r in payload["evidence_rows"][: len(shown)]
                ]
                for row in payload["evidence_rows"]:
                    problems += _check_row(row, quantities, where)
                for reference, row in payload["resources"].items():
                    resources_seen += 1
                    problems += _check_row({**row, "reference": reference}, quantities, where)
    assert cards_seen >= 30 and resources_seen > 1000
    assert not problems, problems[:20]
