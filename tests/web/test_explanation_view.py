"""The explanation view through the real services and a tiny model: a real hook call, then the card's link.

Checks what a clinician sees (consideration, probability, evidence matching the stored payload), who
gets in (only the link's own, unexpired, signed token), the security headers, SHAP on request and
Accept / Dismiss landing in the feedback table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
import torch

from cds_plugin.settings import Settings, SettingsError
from cds_plugin.storage.database import explanations
from cds_plugin.web.app import create_app

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parents[2] / "fhir_fixtures" / "requests"
SHAP_BUDGET = 40


# --- a small DOM for reading our own pages ------------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return " ".join(
            " ".join((c if isinstance(c, str) else c.text()).split()) for c in self.children
        ).strip()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        out = []
        for child in self.children:
            if isinstance(child, Node):
                wanted = tag is None or child.tag == tag
                for key, value in attrs.items():
                    key = key.rstrip("_")
                    have = child.attrs.get(key)
                    if have is None or (value not in have.split() if key == "class" else have != value):
                        wanted = False
                if wanted:
                    out.append(child)
                out.extend(child.find_all(tag, **attrs))
        return out

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert found, f"no <{tag} {attrs}>"
        return found[0]


VOID = {"meta", "link", "input", "br", "img", "hr"}


class TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def dom(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    return builder.root


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("view")


@pytest.fixture(scope="module")
def view_app(tiny_model, data_dir):
    settings = Settings.load(
        environ={},
        data_dir=str(data_dir),
        jwt_required=False,
        model_path=str(tiny_model),
        shap_max_evals=SHAP_BUDGET,  # integrated gradients on the card: the default
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def client(view_app):
    return view_app.test_client()


@pytest.fixture(scope="module")
def issued(client):
    """A real hook call; its first card and the card's explanation link (path and token)."""
    body = json.loads((FIXTURES / "diabetes-adult-2025.patient-view.json").read_text())
    resp = client.post("/cds-services/diagnosis-considerations", json=body)
    assert resp.status_code == 200, resp.get_json()
    cards = resp.get_json()["cards"]
    assert cards, "the tiny model suggested nothing for the diabetes fixture"
    return cards


def link_of(card: dict) -> tuple[str, str, str]:
    """(path, entry id, token) of a card's explanation link."""
    url = urlsplit(card["links"][0]["url"])
    token = parse_qs(url.query)["token"][0]
    return url.path, url.path.rsplit("/", 1)[1], token


def stored(view_app, entry_id: str) -> dict:
    row = view_app.extensions["cds_plugin"].explanation_store.get(entry_id)
    assert row is not None
    return row["payload"]


def feedback_rows(view_app, card_uuid: str) -> list[dict]:
    return view_app.extensions["cds_plugin"].feedback_store.for_card(card_uuid)


def assert_refused(resp) -> None:
    assert resp.status_code == 403
    assert resp.mimetype == "text/html"
    page = dom(resp.get_data(as_text=True))
    assert page.find("h1").text() == "This link is invalid or has expired"
    assert not page.find_all("section", id="evidence")
    assert resp.headers["Cache-Control"] == "no-store"


# --- the page -----------------------------------------------------------------------------------------


def test_page_shows_the_consideration_probability_and_evidence(view_app, client, issued):
    card = issued[0]
    path, entry_id, token = link_of(card)
    resp = client.get(path, query_string={"token": token})
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    payload = stored(view_app, entry_id)
    c = payload["consideration"]
    page = dom(resp.get_data(as_text=True))

    assert page.find("h1").text() == f"Consider {c['display']}"
    assert c["display"] in card["summary"]
    assert page.find(id="probability").text() == f"{c['probability']:.2f}"
    assert page.find(id="threshold").text() == f"{c['threshold']:.2f}"
    assert f"(p {c['probability']:.2f})" in card["summary"]

    rows = page.find(id="evidence-table").find("tbody").find_all("tr")
    expected = payload["evidence_rows"][:12]
    assert len(rows) == len(expected) > 0
    for tr, row in zip(rows, expected, strict=True):
        assert tr.attrs["data-reference"] == row["reference"]
        assert tr.find(class_="ev-what").text() == row["what"]
        assert tr.find(class_="ev-value").text() == row["value"]
        assert tr.find(class_="ev-date").text() == row["date"]
        sign = "+" if row["score"] > 0 else "−" if row["score"] < 0 else "±"
        assert f"{sign}{abs(row['score']):.3f}" in tr.find(class_="ev-score").text()

    bars = page.find("svg", class_="bar-chart").find_all("g", class_="bar")
    assert [b.attrs["data-reference"] for b in bars] == [r["reference"] for r in expected]
    for bar, row in zip(bars, expected, strict=True):
        assert float(bar.attrs["data-score"]) == pytest.approx(row["score"])
        assert bar.find("title").text()  # every bar has its text equivalent
        assert bar.attrs["class"].split()[1] == ("bar-up" if row["score"] > 0 else "bar-down")

    assert "completeness error" in page.find(id="completeness").text()
    attention = page.find("article", id="method-attention")
    assert "not a reason for this consideration" in attention.text()
    assert attention.find("table").find_all("tr")  # recomputed when the page was rendered
    assert page.find("button", id="shap-button")
    chips = page.find("ol", class_="timeline").find_all("li", class_="chip")
    assert len(chips) == len(payload["timeline"])
    about = page.find("section", class_="about")
    assert about.find("a").attrs["href"] == payload["model_card_url"]
    assert payload["caveat"] in about.text()
    assert {i.attrs["value"] for i in page.find_all("input", type="radio")} == {
        "already-addressed",
        "not-clinically-relevant",
        "disagree-with-evidence",
        "patient-preference",
    }


def _card_rows(detail: str) -> list[tuple[str, float]]:
    """(what, contribution) of each evidence row of a card's detail table, as the card prints them."""
    rows = []
    for line in detail.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[4][:1] in "▲▼":
            rows.append((cells[1].replace("\\", ""), float(cells[4].split()[-1])))
    return rows


def _signed(score_text: str) -> float:
    """'▼ −0.195 (down)' -> -0.195"""
    return float(score_text.split(" (")[0].strip(" ▲▼").replace("−", "-").replace("±", ""))


def test_the_card_and_its_page_show_the_same_integrated_gradients(view_app, client, issued):
    """The numbers on the card are the page's, stored with the card (not recomputed another way)."""
    for card in issued:
        assert "Explained by integrated gradients (completeness error" in card["detail"]
        path, entry_id, token = link_of(card)
        page = dom(client.get(path, query_string={"token": token}).get_data(as_text=True))
        payload = stored(view_app, entry_id)
        assert payload["card_method"] == "integrated_gradients"
        assert not page.find_all(id="card-method")  # nothing to reconcile
        on_card = _card_rows(card["detail"])
        assert on_card
        table = page.find(id="evidence-table").find("tbody").find_all("tr")
        on_page = [
            (tr.find(class_="ev-what").text(), _signed(tr.find(class_="ev-score").text()))
            for tr in table[: len(on_card)]
        ]
        assert on_card == on_page
        stored_ig = payload["explanations"]["integrated_gradients"]
        error = f"completeness error {stored_ig['completeness_error']:.1%}"
        assert error in card["detail"]


def test_security_headers_and_no_outside_assets(client, issued):
    path, _, token = link_of(issued[0])
    resp = client.get(path, query_string={"token": token}, headers={"Origin": "https://elsewhere.example"})
    csp = resp.headers["Content-Security-Policy"]
    for directive in (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "Access-Control-Allow-Origin" not in resp.headers  # the page is not for other origins
    page = dom(resp.get_data(as_text=True))
    assert all(s.attrs.get("src") for s in page.find_all("script"))  # no inline script
    for node in page.find_all("script") + page.find_all("link"):
        ref = node.attrs.get("src") or node.attrs.get("href") or ""
        if node.attrs.get("rel") == "icon":
            assert ref == "data:,"  # no favicon request
            continue
        assert ref.startswith("/explanations-static/"), ref
        asset = client.get(ref)
        assert asset.status_code == 200
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert not page.find_all("style") and not [n for n in page.find_all() if "style" in n.attrs]
    refused = client.get(path, query_string={"token": "forged.token"})
    assert refused.headers["Content-Security-Policy"] == csp


def test_frame_ancestors_setting(tiny_model, data_dir):
    settings = Settings.load(
        environ={"CDS_PLUGIN_VIEW_FRAME_ANCESTORS": "'self' https://ehr.example.org"},
        data_dir=str(data_dir),
        jwt_required=False,
        model_path=str(tiny_model),
        card_explanation_method="integrated_gradients",  # the page's IG chart straight from the card
        shap_max_evals=SHAP_BUDGET,
    )
    app = create_app(settings)
    resp = app.test_client().get("/explanations/" + "a" * 32, query_string={"token": "x.y"})
    assert resp.headers["Content-Security-Policy"].endswith("frame-ancestors 'self' https://ehr.example.org")
    assert "X-Frame-Options" not in resp.headers
    bad = Settings.load(
        environ={},
        data_dir=str(data_dir),
        jwt_required=False,
        model_path=str(tiny_model),
        card_explanation_method="integrated_gradients",  # the page's IG chart straight from the card
        shap_max_evals=SHAP_BUDGET,
        view_frame_ancestors="'self'; script-src *",
    )
    with pytest.raises(SettingsError):
        create_app(bad)


# --- access -------------------------------------------------------------------------------------------


def test_forged_missing_foreign_and_expired_tokens_get_403(view_app, client, issued):
    path, entry_id, token = link_of(issued[0])
    other_path, other_id, other_token = link_of(issued[-1] if len(issued) > 1 else issued[0])
    signer = view_app.extensions["cds_plugin"].link_signer
    payload, mac = token.split(".")
    forged = f"{payload}.{mac[:-2]}{'AA' if mac[-2:] != 'AA' else 'BB'}"
    for query in (
        {},
        {"token": ""},
        {"token": forged},
        {"token": signer.sign(entry_id + "x", time.time() + 600)},  # a token for another id
        {"token": signer.sign(entry_id, time.time() - 5)},  # expired
        {"token": token + "x"},
    ):
        assert_refused(client.get(path, query_string=query))
    if other_id != entry_id:
        assert_refused(client.get(path, query_string={"token": other_token}))
        assert_refused(client.get(other_path, query_string={"token": token}))
    assert_refused(client.get("/explanations/short", query_string={"token": signer.sign("short", 2e9)}))


def test_sub_requests_need_the_token(view_app, client, issued):
    path, _, token = link_of(issued[0])
    card_uuid = issued[0]["uuid"]
    before = len(feedback_rows(view_app, card_uuid))
    assert_refused(client.post(f"{path}/shap", headers={"Accept": "application/json"}))
    assert_refused(
        client.post(f"{path}/feedback", data={"outcome": "overridden", "reason": "already-addressed"})
    )
    assert_refused(
        client.post(
            f"{path}/feedback",
            query_string={"token": token + "0"},
            data={"outcome": "overridden", "reason": "already-addressed"},
        )
    )
    assert len(feedback_rows(view_app, card_uuid)) == before


def test_expired_entry_gets_403(view_app, client, issued):
    path, entry_id, token = link_of(issued[-1])
    db = view_app.extensions["cds_plugin"].db
    with db.engine.begin() as conn:
        old = conn.execute(sa.select(explanations.c.expires_at).where(explanations.c.id == entry_id)).scalar()
        conn.execute(
            explanations.update()
            .where(explanations.c.id == entry_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    try:
        assert_refused(client.get(path, query_string={"token": token}))
    finally:
        with db.engine.begin() as conn:
            conn.execute(explanations.update().where(explanations.c.id == entry_id).values(expires_at=old))
    assert client.get(path, query_string={"token": token}).status_code == 200


# --- SHAP and feedback --------------------------------------------------------------------------------


def test_shap_on_request_returns_evidence_and_is_kept(view_app, client, issued):
    path, entry_id, token = link_of(issued[0])
    resp = client.post(f"{path}/shap", query_string={"token": token}, headers={"Accept": "application/json"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.headers["Cache-Control"] == "no-store"
    result = resp.get_json()
    assert result["method"] == "shap" and result["max_evals"] == SHAP_BUDGET
    payload = stored(view_app, entry_id)
    references = {s["reference"] for s in payload["segments"]}
    assert result["evidence"] and {e["reference"] for e in result["evidence"]} <= references
    assert result["probability"] == pytest.approx(payload["consideration"]["probability"], abs=1e-3)
    assert "shap" in payload["explanations"]
    assert "integrated_gradients" in payload["explanations"]  # kept while adding SHAP
    page = dom(client.get(path, query_string={"token": token}).get_data(as_text=True))
    table = page.find("table", id="table-shap")
    assert [tr.attrs["data-reference"] for tr in table.find("tbody").find_all("tr")] == [
        e["reference"] for e in result["evidence"]
    ]
    assert not page.find_all("button", id="shap-button")


def test_shap_form_without_javascript_redirects_back(client, issued):
    path, _, token = link_of(issued[-1])
    resp = client.post(f"{path}/shap", query_string={"token": token}, headers={"Accept": "text/html"})
    assert resp.status_code == 303
    assert resp.headers["Location"].endswith("#compare") and f"token={token}" in resp.headers["Location"]


def test_accept_stores_feedback_with_the_cards_suggestions(view_app, client, issued):
    card = issued[0]
    path, _, token = link_of(card)
    resp = client.post(f"{path}/feedback", query_string={"token": token}, data={"outcome": "accepted"})
    assert resp.status_code == 200
    assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "Your feedback was recorded" in resp.get_data(as_text=True)
    rows = [r for r in feedback_rows(view_app, card["uuid"]) if r["outcome"] == "accepted"]
    assert len(rows) == 1
    assert rows[0]["service_id"] == "diagnosis-considerations"
    assert rows[0]["accepted_suggestions"] == [s["uuid"] for s in card["suggestions"]]


def test_dismiss_with_a_reason_stores_the_override(view_app, client, issued):
    card = issued[-1]
    path, _, token = link_of(card)
    resp = client.post(
        f"{path}/feedback",
        query_string={"token": token},
        data={"outcome": "overridden", "reason": "disagree-with-evidence", "comment": "Labs are old."},
    )
    assert resp.status_code == 200
    page = dom(resp.get_data(as_text=True))
    assert "Disagree with the evidence" in page.find(id="done-outcome").text()
    rows = [r for r in feedback_rows(view_app, card["uuid"]) if r["outcome"] == "overridden"]
    assert len(rows) == 1
    assert rows[0]["card_uuid"] == card["uuid"]
    assert rows[0]["override_reason_system"] == "urn:cds-plugin:override-reason"
    assert rows[0]["override_reason_code"] == "disagree-with-evidence"
    assert rows[0]["override_user_comment"] == "Labs are old."
    again = dom(client.get(path, query_string={"token": token}).get_data(as_text=True))
    assert "Disagree with the evidence" in again.find("div", class_="previous").text()


def test_dismiss_without_a_reason_is_refused_and_nothing_stored(view_app, client, issued):
    card = issued[0]
    path, _, token = link_of(card)
    before = len(feedback_rows(view_app, card["uuid"]))
    for data in ({"outcome": "overridden"}, {"outcome": "overridden", "reason": "bogus"}, {"outcome": "x"}):
        resp = client.post(f"{path}/feedback", query_string={"token": token}, data=data)
        assert resp.status_code == 400
        assert dom(resp.get_data(as_text=True)).find(id="form-error").text()
    assert len(feedback_rows(view_app, card["uuid"])) == before


def test_another_model_is_not_recomputed(view_app, client, issued):
    path, entry_id, token = link_of(issued[0])
    store = view_app.extensions["cds_plugin"].explanation_store
    payload = stored(view_app, entry_id)
    original = payload["model_version"]
    payload["model_version"] = "cds-plugin-000000000000"
    store.update_payload(entry_id, payload)
    try:
        page = dom(client.get(path, query_string={"token": token}).get_data(as_text=True))
        assert "not recomputed" in page.find("article", id="method-attention").text()
        shap = client.post(
            f"{path}/shap", query_string={"token": token}, headers={"Accept": "application/json"}
        )
        assert shap.status_code == 409
    finally:
        payload["model_version"] = original
        store.update_payload(entry_id, payload)


def test_unusual_draft_is_information_without_accept(view_app, client, issued):
    path, entry_id, token = link_of(issued[0])
    store = view_app.extensions["cds_plugin"].explanation_store
    payload = stored(view_app, entry_id)
    original = dict(payload["consideration"])
    payload["consideration"]["probability"] = 0.01  # as an order review card on a drafted medication
    store.update_payload(entry_id, payload)
    try:
        page = dom(client.get(path, query_string={"token": token}).get_data(as_text=True))
        assert page.find("h1").text() == f"Drafted {original['display']}: unusual for this patient"
        assert not page.find_all("button", id="accept-button")
        assert page.find_all("button", id="dismiss-button")
    finally:
        payload["consideration"] = original
        store.update_payload(entry_id, payload)


def test_neither_token_nor_patient_data_is_logged(view_app, client, issued, caplog):
    path, entry_id, token = link_of(issued[-1])
    display = stored(view_app, entry_id)["consideration"]["display"]
    with caplog.at_level(logging.DEBUG):
        client.get(path, query_string={"token": token})
        client.get(path, query_string={"token": token[:-1]})
        client.post(
            f"{path}/feedback",
            query_string={"token": token},
            data={"outcome": "overridden", "reason": "patient-preference", "comment": "secret note"},
        )
    assert token not in caplog.text and token.split(".")[1] not in caplog.text
    assert display not in caplog.text and "secret note" not in caplog.text
