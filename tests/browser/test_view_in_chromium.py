"""The explanation view in a real browser: Debian's headless Chromium driven by Playwright.

The app runs on loopback (werkzeug in a thread) with the real services and the tiny model. The test
makes a real hook call, opens the card's link, checks the chart and the evidence rows against the
stored payload, computes SHAP with the button (progress, then the table), dismisses with a reason and
finds the feedback row in the database. Screenshots go to test-artifacts/ (gitignored; CI keeps them).

Chromium is the system one (`apt-get install chromium`), never a downloaded build: hospitals' closed
networks are the target, and `.ci/run` installs the package.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from werkzeug.serving import WSGIRequestHandler, make_server

from cds_plugin.settings import Settings
from cds_plugin.web.app import create_app

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fhir_fixtures" / "requests"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class QuietHandler(WSGIRequestHandler):
    """The request line holds the link's token: keep it out of the test log."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@pytest.fixture(scope="module")
def served(tiny_model, tmp_path_factory) -> Iterator[tuple[str, object]]:
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is absent: install Debian's chromium package (see .ci/run)")
    settings = Settings.load(
        environ={},
        data_dir=str(tmp_path_factory.mktemp("browser")),
        jwt_required=False,
        model_path=str(tiny_model),
        card_explanation_method="integrated_gradients",  # the page's IG chart straight from the card
        shap_max_evals=60,
    )
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="view-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_clinician_reviews_and_dismisses_in_chromium(served, browser):
    base, app = served
    runtime = app.extensions["cds_plugin"]  # type: ignore[attr-defined]
    ARTIFACTS.mkdir(exist_ok=True)

    body = json.loads((FIXTURES / "diabetes-adult-2025.patient-view.json").read_text())
    answer = requests.post(f"{base}/cds-services/diagnosis-considerations", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    cards = answer.json()["cards"]
    assert cards, "the tiny model suggested nothing for the diabetes fixture"
    card = cards[0]
    link = card["links"][0]["url"]
    assert link.startswith(f"{base}/explanations/")
    entry_id = link.split("?")[0].rsplit("/", 1)[1]
    payload = runtime.explanation_store.get(entry_id)["payload"]
    expected = payload["evidence_rows"][:12]

    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)

    response = page.goto(link, wait_until="networkidle")
    assert response is not None and response.status == 200
    assert page.locator("h1").inner_text() == f"Consider {payload['consideration']['display']}"
    assert page.locator("#probability").inner_text() == f"{payload['consideration']['probability']:.2f}"

    # the chart: one bar per evidence row, drawn with a width, in the row's direction
    bars = page.locator("svg.bar-chart g.bar")
    assert bars.count() == len(expected) > 0
    for i, row in enumerate(expected):
        bar = bars.nth(i)
        assert bar.get_attribute("data-reference") == row["reference"]
        assert float(bar.get_attribute("data-score") or "nan") == pytest.approx(row["score"])
        box = bar.locator("rect.bar-rect").bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0
        sign = "+" if row["score"] > 0 else "−"
        assert f"{sign}{abs(row['score']):.3f}" in bar.locator("text.bar-value").text_content()

    # the evidence rows, as the clinician reads them
    rows = page.locator("#evidence-table tbody tr")
    assert rows.count() == len(expected)
    for i, row in enumerate(expected):
        tr = rows.nth(i)
        assert tr.locator(".ev-what").inner_text() == row["what"]
        assert tr.locator(".ev-value").inner_text() == row["value"]
        assert tr.locator(".ev-date").inner_text() == row["date"]
        assert tr.locator(".ev-what").is_visible()
    assert page.locator("#method-attention table tbody tr").count() > 0
    assert page.locator("#print-button").is_visible()  # the script ran (CSP allowed it)
    page.screenshot(path=str(ARTIFACTS / "explanation-view.png"), full_page=True)

    # print: controls left out, the explanation kept
    page.emulate_media(media="print")
    assert page.locator("#feedback").is_hidden() and page.locator("#evidence-table").is_visible()
    page.screenshot(path=str(ARTIFACTS / "explanation-view-print.png"), full_page=True)
    page.emulate_media(media="screen")

    # SHAP on request, from the keyboard: progress, then the table in place
    page.locator("#shap-button").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#shap-result[data-state=done]", timeout=120_000)
    shap_rows = page.locator("#table-shap tbody tr")
    assert shap_rows.count() > 0
    assert "SHAP computed" in page.locator("#shap-status").inner_text()
    page.locator("#compare").screenshot(path=str(ARTIFACTS / "explanation-view-shap.png"))

    # dismiss with a reason
    page.get_by_label("Not clinically relevant").check()
    page.get_by_label("Comment (optional)").fill("Seen in clinic last week.")
    page.locator("#dismiss-button").click()
    page.wait_for_selector("#done-title")
    assert "Not clinically relevant" in page.locator("#done-outcome").inner_text()
    page.screenshot(path=str(ARTIFACTS / "explanation-view-feedback.png"), full_page=True)

    stored = runtime.feedback_store.for_card(card["uuid"])
    assert len(stored) == 1
    assert stored[0]["outcome"] == "overridden"
    assert stored[0]["override_reason_code"] == "not-clinically-relevant"
    assert stored[0]["override_user_comment"] == "Seen in clinic last week."
    assert stored[0]["service_id"] == "diagnosis-considerations"

    assert not problems, problems  # no script error, no CSP violation
    assert not outside, outside  # every asset from the app itself
    context.close()


def test_expired_link_in_chromium(served, browser):
    base, _ = served
    page = browser.new_page()
    response = page.goto(f"{base}/explanations/{'x' * 32}?token=bogus.token")
    assert response is not None and response.status == 403
    assert page.locator("h1").inner_text() == "This link is invalid or has expired"
    page.close()
