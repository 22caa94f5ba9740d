"""A full round of calls over every fixture patient against the real server (gunicorn, DEBUG logging),
then every line it logged is searched for the patients' names, ids and birth dates and for every access
token used: none may appear. Covers success, FHIR-server fetching with a token, feedback, the explanation
page and its links, and the error paths (bad input, wrong FHIR token, bad JWT, unknown service)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.keys import ClientKey
from tests.helpers.live_server import LiveServer, start_server

ROOT = Path(__file__).resolve().parents[2]
PATIENTS = ROOT / "fhir_fixtures" / "patients"
REQUESTS = ROOT / "fhir_fixtures" / "requests"
ISS = "https://ehr.phi-test.example"
FHIR_TOKEN = "fhir-access-token-7f3a9c1e5b2d4a68"


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> tuple[ClientKey, Path]:
    directory = tmp_path_factory.mktemp("keys")
    client_key = ClientKey.generate(kid="phi-test")
    _, jwks = client_key.write(directory)
    return client_key, jwks


@pytest.fixture(scope="module")
def fhir() -> Iterator[FhirServer]:
    with FhirServer(PATIENTS, token=FHIR_TOKEN) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, key, tiny_model) -> Iterator[LiveServer]:
    _, jwks = key
    live = start_server(
        tmp_path_factory.mktemp("phi"),
        env={
            "CDS_PLUGIN_LOG_LEVEL": "DEBUG",
            "CDS_PLUGIN_MODEL_PATH": str(tiny_model),
            "CDS_PLUGIN_MIN_CARD_PROBABILITY": "0",  # every call has cards, pages and links
            "CDS_PLUGIN_TRUSTED_ISSUERS": json.dumps([{"iss": ISS, "jwks_file": str(jwks)}]),
        },
        workers=1,
    )
    yield live
    live.stop()


def _secrets_of_patients() -> set[str]:
    """Names, ids and birth dates of every fixture patient, and the ids of all their resources."""
    found: set[str] = set()
    for path in PATIENTS.glob("*.json"):
        for entry in json.loads(path.read_text())["entry"]:
            resource = entry["resource"]
            if resource.get("id"):
                found.add(resource["id"])
            if resource["resourceType"] != "Patient":
                continue
            found.add(resource["birthDate"])
            for name in resource.get("name", []):
                found.update(n for n in [name.get("family"), *name.get("given", [])] if n)
    return {s for s in found if len(s) >= 4}


class Round:
    """Calls the server the way an EHR does, remembering every token it used."""

    def __init__(self, server: LiveServer, key: ClientKey) -> None:
        self.base = server.base
        self.key = key
        self.tokens: set[str] = {FHIR_TOKEN}
        self.http = requests.Session()

    def post(self, path: str, body: dict, *, jwt: str | None = None) -> requests.Response:
        url = self.base + path
        token = jwt or self.key.sign(url, ISS)
        self.tokens.add(token)
        return self.http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120)

    def get(self, url: str) -> requests.Response:
        query = urlsplit(url).query
        self.tokens.update(re.findall(r"token=([^&]+)", query))
        return self.http.get(url, timeout=120)


def test_no_patient_data_or_token_in_any_log_line(server, key, fhir):
    client_key, _ = key
    r = Round(server, client_key)
    statuses: list[int] = []
    for path in sorted(REQUESTS.glob("*.json")):
        body = json.loads(path.read_text())
        hook = body["hook"]
        service = f"{hook}-review" if hook != "patient-view" else "diagnosis-considerations"
        services = [service] if hook != "patient-view" else [service, "treatment-considerations"]
        for sid in services:
            # 1. with the prefetch the EHR sent
            resp = r.post(f"/cds-services/{sid}", body)
            statuses.append(resp.status_code)
            assert resp.status_code == 200, resp.text[:300]
            cards = resp.json()["cards"]
            # 2. without prefetch: everything fetched from the FHIR server with the access token
            fetched = {k: v for k, v in body.items() if k != "prefetch"}
            fetched.update(
                fhirServer=fhir.base_url,
                fhirAuthorization={
                    "access_token": FHIR_TOKEN,
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "patient/*.read",
                    "subject": "cds-plugin",
                },
            )
            statuses.append(r.post(f"/cds-services/{sid}", fetched).status_code)
            # 3. feedback and the explanation page
            if cards:
                first = cards[0]
                link = first["links"][0]["url"]
                statuses.append(r.get(link).status_code)
                override = {"reason": first["overrideReasons"][0], "userComment": "seen"}
                items = [
                    {
                        "card": first["uuid"],
                        "outcome": "overridden",
                        "outcomeTimestamp": "2026-11-29T10:00:00Z",
                        "overrideReason": override,
                    }
                ]
                if first.get("suggestions"):
                    items.append(
                        {
                            "card": first["uuid"],
                            "outcome": "accepted",
                            "outcomeTimestamp": "2026-11-29T10:01:00Z",
                            "acceptedSuggestions": [{"id": first["suggestions"][0]["uuid"]}],
                        }
                    )
                statuses.append(r.post(f"/cds-services/{sid}/feedback", {"feedback": items}).status_code)
        # 4. error paths, each with this patient's data in the request
        patient = body["prefetch"]["patient"]
        bad = copy.deepcopy(body)
        bad["prefetch"]["patient"]["birthDate"] = " ".join(patient["name"][0]["given"])  # not a date
        statuses.append(r.post(f"/cds-services/{service}", bad).status_code)
        wrong_token = {k: v for k, v in body.items() if k != "prefetch"}
        wrong_token.update(
            fhirServer=fhir.base_url,
            fhirAuthorization={"access_token": "wrong-" + FHIR_TOKEN, "token_type": "Bearer",
                               "expires_in": 300, "scope": "patient/*.read", "subject": "x"},
        )  # fmt: skip
        r.tokens.add("wrong-" + FHIR_TOKEN)
        statuses.append(r.post(f"/cds-services/{service}", wrong_token).status_code)
        forged = client_key.sign(server.base + "/cds-services/elsewhere", ISS)  # wrong audience
        statuses.append(r.post(f"/cds-services/{service}", body, jwt=forged).status_code)
        statuses.append(r.post("/cds-services/no-such-service", body).status_code)

    assert {200, 400, 401, 404, 412} <= set(statuses), sorted(set(statuses))
    log = server.log()
    assert "hook_call" in log and "feedback" in log  # the calls were logged at all
    assert len(log.splitlines()) > 100
    leaks = sorted({s for s in _secrets_of_patients() | r.tokens if s in log})
    assert not leaks, f"{len(leaks)} patient identifiers or tokens in the log, e.g. {leaks[0][:12]}..."
    # the tokens' signatures alone must not appear either (a log that split a token would hide it)
    signatures = {t.rsplit(".", 1)[-1] for t in r.tokens if t.count(".") == 2}
    assert not [s for s in signatures if s in log]
