"""Fetching missing prefetch data from the CDS client's FHIR server, within one time budget.

Every query of a call runs in parallel; searches follow `Bundle.link[next]` up to a page cap, and only
to the same server (the access token never leaves for another origin). The access token lives only in
this object for the duration of one call: never stored, never logged, never in an error message.
Each answer is held to the request limits (`request_limits`: size, nesting, string length, and the
call's FHIR resource count, shared with the request); a breach fails that query like any other fault.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from cds_plugin.errors import InputLimitError
from cds_plugin.hooks.request_limits import RequestLimits, ResourceCounter, check_json

log = logging.getLogger(__name__)

_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """One small pool per process: threads are reused across calls (starting threads costs latency)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fhir-fetch")
        return _executor


class FetchError(Exception):
    """One query failed; the message is safe to log (no token, no patient data)."""


LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


def secure_enough(url: str, allow_http: bool = False) -> bool:
    """HTTPS, or plain HTTP only to loopback (tests, a local sandbox) or when explicitly allowed.

    The spec requires TLS between service and FHIR server; the access token must not travel in clear.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    return allow_http or host in LOOPBACK_HOSTS or host.startswith("127.")


def same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class FhirFetcher:
    """Runs relative FHIR queries against one server for one call, sharing one deadline."""

    def __init__(
        self,
        base_url: str,
        access_token: str | None,
        budget_s: float,
        max_pages: int = 10,
        max_bytes: int = 16 * 1024 * 1024,
        session: requests.Session | None = None,
        limits: RequestLimits | None = None,
        counter: ResourceCounter | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._token = access_token
        self.deadline = time.monotonic() + budget_s
        self.max_pages = max_pages
        self.max_bytes = max_bytes
        self.session = session or requests.Session()
        self.truncated: set[str] = set()
        #: Each answer is held to the request limits; `counter` shares max_entries with the request.
        self.limits = counter.limits if counter is not None else (limits or RequestLimits())
        self.counter = counter or ResourceCounter(self.limits)

    def __repr__(self) -> str:
        return f"FhirFetcher(base_url={self.base_url!r})"

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def fetch_many(self, queries: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
        """Run all queries in parallel; returns (data by key, failure reason by key) by the deadline."""
        futures = {key: _pool().submit(self.fetch, query) for key, query in queries.items()}
        wait(futures.values(), timeout=max(self.remaining(), 0))
        data: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for key, future in futures.items():
            if not future.done():
                future.cancel()
                errors[key] = "FHIR server did not answer within the time budget"
                continue
            try:
                data[key] = future.result()
            except FetchError as exc:
                errors[key] = str(exc)
            except Exception as exc:
                log.warning("unexpected error fetching prefetch key: %s", type(exc).__name__)
                errors[key] = "unexpected error while fetching"
        return data, errors

    def fetch(self, query: str) -> Any:
        """One read or search. A read answered 404 is `None` (no such resource); searches are paged."""
        url = urljoin(self.base_url, query)
        first = self._get(url, read="?" not in query)
        if first is None or first.get("resourceType") != "Bundle":
            return first
        entries = list(first.get("entry") or [])
        page, pages = first, 1
        while True:
            next_url = next(
                (
                    ln.get("url")
                    for ln in page.get("link") or []
                    if isinstance(ln, dict) and ln.get("relation") == "next"
                ),
                None,
            )
            if not next_url:
                break
            if pages >= self.max_pages:
                self.truncated.add(query.split("?", 1)[0])
                log.warning("FHIR paging stopped at the cap of %d pages", self.max_pages)
                break
            next_url = urljoin(url, next_url)
            if not same_origin(next_url, self.base_url):
                raise FetchError("FHIR server's next link points to another server")
            page = self._get(next_url, read=False)
            if page is None or page.get("resourceType") != "Bundle":
                raise FetchError("FHIR server's next page is not a Bundle")
            entries.extend(page.get("entry") or [])
            pages += 1
        merged = {k: v for k, v in first.items() if k not in ("link", "entry")}
        merged["entry"] = entries
        merged["total"] = len(entries)
        return merged

    def _get(self, url: str, read: bool) -> dict[str, Any] | None:
        remaining = self.remaining()
        if remaining <= 0:
            raise FetchError("time budget spent before the query could run")
        headers = {"Accept": "application/fhir+json, application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        try:
            with self.session.get(
                url, headers=headers, timeout=(min(remaining, 5.0), remaining), stream=True
            ) as resp:
                if resp.status_code == 404 and read:
                    return None
                if resp.status_code in (401, 403):
                    raise FetchError(f"FHIR server refused access ({resp.status_code})")
                if resp.status_code != 200:
                    raise FetchError(f"FHIR server answered {resp.status_code}")
                body = bytearray()
                for chunk in resp.iter_content(chunk_size=65536):
                    body.extend(chunk)
                    if len(body) > self.max_bytes:
                        raise FetchError("FHIR server's answer is larger than the allowed size")
                    if self.remaining() <= 0:
                        raise FetchError("FHIR server did not answer within the time budget")
        except requests.Timeout as exc:
            raise FetchError("FHIR server did not answer within the time budget") from exc
        except requests.RequestException as exc:
            raise FetchError(f"FHIR server unreachable ({type(exc).__name__})") from exc
        try:
            data = json.loads(body)
        except RecursionError as exc:
            raise FetchError(
                f"FHIR server's answer: JSON nested deeper than {self.limits.max_depth} levels"
            ) from exc
        except ValueError as exc:
            raise FetchError("FHIR server's answer is not JSON") from exc
        try:
            check_json(data, self.limits, label="FHIR server's answer", counter=self.counter)
        except InputLimitError as exc:
            raise FetchError(exc.message) from exc
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FetchError("FHIR server's answer is not a FHIR resource")
        if data["resourceType"] == "OperationOutcome":
            raise FetchError("FHIR server answered with an OperationOutcome")
        return data
