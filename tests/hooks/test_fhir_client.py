"""The FHIR-server fallback against a real HTTP server on loopback (req 34, 54, 60, 61)."""

from __future__ import annotations

import time

import pytest

from cds_plugin.hooks.fhir_client import FetchError, FhirFetcher
from tests.helpers.fhir_faults import FaultyFhirServer


@pytest.fixture
def server():
    with FaultyFhirServer(slow_s=3.0) as srv:
        yield srv


def fetcher(server, token="good-token", budget=2.0, pages=10):
    return FhirFetcher(server.base_url, token, budget_s=budget, max_pages=pages)


def test_read_sends_bearer_token(server):
    """Req 61: the service presents the access token with each call."""
    assert fetcher(server).fetch("Patient/p1")["id"] == "p1"
    assert server.seen_auth[-1] == "Bearer good-token"


def test_no_token_sends_no_authorization(server):
    fetcher(server, token=None).fetch("Patient/p1")
    assert server.seen_auth[-1] is None


def test_missing_resource_read_is_no_data(server):
    assert fetcher(server).fetch("Patient/nobody") is None


def test_search_follows_every_next_page(server):
    bundle = fetcher(server).fetch("Observation?patient=p1")
    assert [e["resource"]["id"] for e in bundle["entry"]] == [f"o{i}" for i in range(6)]
    assert bundle["total"] == 6 and "link" not in bundle
    assert all(a == "Bearer good-token" for a in server.seen_auth)


def test_paging_stops_at_the_cap(server):
    f = fetcher(server, pages=2)
    bundle = f.fetch("Observation?patient=p1")
    assert len(bundle["entry"]) == 4
    assert f.truncated == {"Observation"}


def test_endless_paging_ends_within_budget(server):
    f = fetcher(server, pages=1000, budget=1.0)
    started = time.monotonic()
    with pytest.raises(FetchError, match="time budget"):
        f.fetch("Endless?x=1")
    assert time.monotonic() - started < 2.0


def test_next_link_to_another_server_is_not_followed(server):
    """The access token must never be sent to another origin."""
    with pytest.raises(FetchError, match="another server"):
        fetcher(server).fetch("Elsewhere?x=1")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("Unauthorized/p1", "refused access \\(401\\)"),
        ("Broken/p1", "answered 500"),
        ("Malformed?x=1", "not JSON"),
        ("NotFhir/p1", "not a FHIR resource"),
    ],
)
def test_faults_become_fetch_errors(server, query, message):
    with pytest.raises(FetchError, match=message):
        fetcher(server, token="wrong").fetch(query)


def test_slow_server_is_cut_at_the_budget(server):
    f = fetcher(server, budget=0.5)
    started = time.monotonic()
    data, errors = f.fetch_many({"slow": "Slow/p1", "patient": "Patient/p1"})
    elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert set(data) == {"patient"} and data["patient"]["id"] == "p1"
    assert "time budget" in errors["slow"]


def test_queries_run_in_parallel(server):
    server.slow_s = 0.6
    f = fetcher(server, budget=3.0)
    started = time.monotonic()
    data, errors = f.fetch_many({f"k{i}": "Slow/p1" for i in range(4)})
    assert not errors and len(data) == 4
    assert time.monotonic() - started < 1.8  # four 0.6 s queries, not 2.4 s in series


def test_unreachable_server():
    f = FhirFetcher("http://127.0.0.1:9/fhir", "t", budget_s=1.0)
    with pytest.raises(FetchError, match="unreachable|time budget"):
        f.fetch("Patient/p1")


def test_token_not_in_repr():
    f = FhirFetcher("http://127.0.0.1:9/fhir", "secret-token-value", budget_s=1.0)
    assert "secret-token-value" not in repr(f)


@pytest.mark.parametrize(
    ("url", "allow_http", "expected"),
    [
        ("https://ehr.example/fhir", False, True),
        ("http://127.0.0.1:8090/fhir", False, True),
        ("http://localhost/fhir", False, True),
        ("http://ehr.example/fhir", False, False),
        ("http://ehr.example/fhir", True, True),
        ("ftp://ehr.example/fhir", True, False),
        ("file:///etc/passwd", True, False),
    ],
)
def test_only_https_or_loopback_servers_get_the_token(url, allow_http, expected):
    """Req 2, 168: the access token never travels in clear to a remote server."""
    from cds_plugin.hooks.fhir_client import secure_enough

    assert secure_enough(url, allow_http) is expected
