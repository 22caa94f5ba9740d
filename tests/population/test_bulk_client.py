"""The Bulk Data client against the loopback FHIR server: polling, downloads, error files, tokens, DELETE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from cds_plugin.population.authorization import AuthorizationError, BackendServices, StaticToken
from cds_plugin.population.bulk_client import (
    BulkDataClient,
    BulkDataError,
    ExportRequest,
    JobGoneError,
    error_messages,
    retry_after_s,
)
from cds_plugin.sandbox.fhir_server import FhirServer
from cds_plugin.sandbox.keys import ClientKey

TOKEN = "s3cret-token"
KEY = ClientKey.generate(kid="bulk-client-key")


def data() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(3):
        out.append({"resourceType": "Patient", "id": f"p{i}"})
        out += [
            {"resourceType": "Observation", "id": f"o{i}-{k}", "status": "final", "code": {"text": "x"},
             "subject": {"reference": f"Patient/p{i}"}}
            for k in range(3)
        ]  # fmt: skip
    return out


@pytest.fixture
def server() -> Iterator[FhirServer]:
    with FhirServer(
        data(), token=TOKEN, clients={"bulk-client": KEY.jwks()}, export_delay_s=1.2, export_file_lines=4
    ) as srv:
        yield srv


class Sleeps:
    """Records the waits instead of sleeping them through (then sleeps a little so the job advances)."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        import time

        self.waits.append(seconds)
        time.sleep(0.3)


def test_export_polls_with_progress_downloads_and_deletes(server: FhirServer, tmp_path: Path) -> None:
    sleeps = Sleeps()
    client = BulkDataClient(server.base_url, StaticToken(TOKEN), sleep=sleeps)
    status_url = client.kick_off(ExportRequest(types=("Patient", "Observation")))
    progress: list[str | None] = []
    manifest = client.wait(status_url, progress.append)
    assert progress and all("resource types written" in (p or "") for p in progress)
    assert sleeps.waits and set(sleeps.waits) == {1.0}  # the server's Retry-After: 1
    assert manifest.requires_token
    assert [f.type for f in manifest.output] == ["Patient", "Observation", "Observation", "Observation"]
    lines = 0
    for item in manifest.output:
        target = tmp_path / f"{item.type}.{item.index}.ndjson"
        size = client.download(item, target, with_token=True)
        assert size == target.stat().st_size
        lines += len(target.read_text().splitlines())
    assert lines == 12
    assert not list(tmp_path.glob(".tmp-*"))
    client.delete(status_url)
    with pytest.raises(JobGoneError):
        client.wait(status_url)
    client.delete(status_url)  # already gone: fine


def test_server_operation_outcomes_become_messages(server: FhirServer) -> None:
    with pytest.raises(BulkDataError, match=r"export kick-off: HTTP 401: error: a bearer token is required"):
        BulkDataClient(server.base_url, None).kick_off(ExportRequest())
    with pytest.raises(BulkDataError, match=r"HTTP 404: error: Group/nope is not known"):
        BulkDataClient(server.base_url, StaticToken(TOKEN)).kick_off(ExportRequest("group", "nope"))
    with pytest.raises(BulkDataError, match=r"HTTP 400: error: _since: expected a FHIR instant"):
        BulkDataClient(server.base_url, StaticToken(TOKEN)).kick_off(ExportRequest(since="yesterday"))


def test_types_the_server_lacks_are_reported_in_error_files(server: FhirServer, tmp_path: Path) -> None:
    client = BulkDataClient(server.base_url, StaticToken(TOKEN), sleep=Sleeps())
    manifest = client.wait(client.kick_off(ExportRequest(types=("Patient", "Nonsense"))))
    assert [f.type for f in manifest.output] == ["Patient"]
    [error] = manifest.errors
    client.download(error, tmp_path / "errors.ndjson", with_token=True)
    assert error_messages(tmp_path / "errors.ndjson") == [
        "error: resource type Nonsense is not supported by this server; not exported"
    ]


def test_backend_services_tokens_are_fetched_and_renewed(server: FhirServer, tmp_path: Path) -> None:
    assert server.auth is not None
    server.auth.token_lifetime_s = 1  # expires between polls: the client must fetch another
    auth = BackendServices("bulk-client", KEY, server.token_url)
    client = BulkDataClient(server.base_url, auth, sleep=Sleeps())
    manifest = client.wait(client.kick_off(ExportRequest(types=("Patient",))))
    assert auth.fetches >= 2
    server.auth.token_lifetime_s = 300
    auth.refresh()
    auth.header()
    fetches = auth.fetches
    server.auth._tokens.clear()  # the server forgets the token (restart, revocation): 401, then a new one
    client.download(manifest.output[0], tmp_path / "p.ndjson", with_token=True)
    assert auth.fetches == fetches + 1
    assert len((tmp_path / "p.ndjson").read_text().splitlines()) == 3
    claims = jwt.decode(auth.assertion(), options={"verify_signature": False})
    assert claims["iss"] == claims["sub"] == "bulk-client"
    assert claims["aud"] == server.token_url
    assert claims["exp"] - claims["iat"] == 300
    assert jwt.get_unverified_header(auth.assertion())["alg"] == "ES384"


def test_backend_services_refusal_shows_the_error_description(server: FhirServer) -> None:
    stranger = BackendServices("not-registered", KEY, server.token_url)
    with pytest.raises(AuthorizationError, match=r"HTTP 401\): invalid_client: client is not registered"):
        BulkDataClient(server.base_url, stranger).kick_off(ExportRequest())


def test_plain_http_only_to_loopback() -> None:
    with pytest.raises(BulkDataError, match="plain http is allowed to loopback only"):
        BulkDataClient("http://fhir.example.org/fhir", StaticToken(TOKEN))
    BulkDataClient("http://fhir.example.org/fhir", StaticToken(TOKEN), allow_http=True)
    BulkDataClient("https://fhir.example.org/fhir", StaticToken(TOKEN))


def test_retry_after_forms() -> None:
    assert retry_after_s("5", 2.0) == 5.0
    assert retry_after_s(None, 2.0) == 2.0
    assert retry_after_s("soon", 2.0) == 2.0
    assert retry_after_s("100000", 2.0) == 120.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", 2.0) == 0.0  # a date in the past
