"""A FHIR Bulk Data client: kick-off, status polling, download of the manifest's files, DELETE.

Bulk Data Access 2.0 (https://hl7.org/fhir/uv/bulkdata/export.html): kick-off `Patient/$export`,
`Group/[id]/$export` or `$export` with `Prefer: respond-async, handling=lenient` (a type the server
lacks is reported in its error files instead of failing the export), `_type`, `_since`; poll the
Content-Location, honouring `Retry-After` (seconds or an HTTP date) and showing `X-Progress`; download
every `output` file (with the bearer token when `requiresAccessToken`) and the `error` files (their
OperationOutcomes are surfaced); DELETE the job when everything is on disk. Errors from the server are
raised as `BulkDataError` carrying the OperationOutcome's diagnostics, never a traceback.
"""

from __future__ import annotations

import email.utils
import json
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from cds_plugin.errors import CdsPluginError
from cds_plugin.hooks.fhir_client import secure_enough
from cds_plugin.population.authorization import Authorizer

NDJSON = "application/fhir+ndjson"
#: Status and manifest answers are small JSON documents; a bigger one is not a Bulk Data server.
MAX_JSON_BYTES = 64 * 1024 * 1024
#: Transient failures (5xx, network) tolerated in a row while polling, before giving up.
MAX_TRANSIENT = 5
DEFAULT_WAIT_S = 2.0
MAX_WAIT_S = 120.0
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")


class BulkDataError(CdsPluginError):
    """The export could not be made or fetched; the message names the step and the server's words."""

    code = "exception"


class JobGoneError(BulkDataError):
    """The status URL answers 404: the job expired or was deleted (a resumed run starts a new one)."""


@dataclass(frozen=True)
class ExportRequest:
    """What to export: `level` patient, group (with `group`) or system; `types` for `_type`."""

    level: str = "patient"
    group: str | None = None
    types: tuple[str, ...] | None = None
    since: str | None = None

    def path(self) -> str:
        if self.level == "group":
            return f"Group/{self.group}/$export"
        return "Patient/$export" if self.level == "patient" else "$export"

    def to_json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "group": self.group,
            "types": list(self.types or []),
            "since": self.since,
        }


@dataclass(frozen=True)
class OutputFile:
    """One manifest entry: its position in `output` (or `error`), type and URL."""

    index: int
    type: str
    url: str


@dataclass(frozen=True)
class Manifest:
    transaction_time: str
    requires_token: bool
    output: tuple[OutputFile, ...]
    errors: tuple[OutputFile, ...]
    raw: dict[str, Any]


def outcome_text(body: bytes | str | None) -> str | None:
    """The diagnostics (or details) of an OperationOutcome body, joined; None if it is not one."""
    try:
        data = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("resourceType") != "OperationOutcome":
        return None
    texts = []
    for issue in data.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        details = issue.get("details") if isinstance(issue.get("details"), dict) else {}
        text = issue.get("diagnostics") or details.get("text") or issue.get("code")
        if isinstance(text, str) and text:
            texts.append(f"{issue.get('severity', 'error')}: {text[:500]}")
    return "; ".join(texts) or None


def retry_after_s(value: str | None, default: float) -> float:
    """Seconds to wait from a Retry-After header (delay-seconds or an HTTP date), within bounds."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_WAIT_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return min(max(when.timestamp() - time.time(), 0.0), MAX_WAIT_S)


def parse_manifest(data: Any) -> Manifest:
    if not isinstance(data, dict) or not isinstance(data.get("output"), list):
        raise BulkDataError("export status: the completed answer is not a Bulk Data manifest (no output)")

    def files(items: Any, what: str) -> tuple[OutputFile, ...]:
        out = []
        for i, item in enumerate(items or []):
            rtype = item.get("type") if isinstance(item, dict) else None
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(rtype, str) or not _TYPE.fullmatch(rtype) or not isinstance(url, str):
                raise BulkDataError(f"export manifest: {what}[{i}] has no usable type and url")
            out.append(OutputFile(i, rtype, url))
        return tuple(out)

    errors = data.get("error") if isinstance(data.get("error"), list) else []
    return Manifest(
        transaction_time=str(data.get("transactionTime", "")),
        requires_token=data.get("requiresAccessToken") is True,
        output=files(data["output"], "output"),
        errors=files(errors, "error"),
        raw=data,
    )


class BulkDataClient:
    """One FHIR server's Bulk Data API. `sleep` and `clock` are injectable for tests."""

    def __init__(
        self,
        base_url: str,
        authorizer: Authorizer | None = None,
        *,
        session: requests.Session | None = None,
        timeout_s: float = 60.0,
        allow_http: bool = False,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if not secure_enough(self.base_url, allow_http):
            raise BulkDataError(
                f"{self.base_url}: plain http is allowed to loopback only (the token would travel in clear)"
            )
        self.authorizer = authorizer
        self.session = session or requests.Session()
        self.timeout_s = timeout_s
        self.allow_http = allow_http
        self.sleep = sleep

    # -- HTTP --------------------------------------------------------------------------------------

    def _request(self, method: str, url: str, *, auth: bool = True, **kwargs: Any) -> requests.Response:
        """One request, retried once with a fresh token after a 401."""
        if not secure_enough(url, self.allow_http):
            raise BulkDataError(f"{_origin(url)}: plain http is allowed to loopback only")
        for attempt in (1, 2):
            headers = dict(kwargs.pop("headers", None) or {})
            if auth and self.authorizer is not None:
                headers["Authorization"] = self.authorizer.header()
            try:
                response = self.session.request(
                    method, url, headers=headers, timeout=self.timeout_s, **kwargs
                )
            except requests.RequestException as exc:
                raise BulkDataError(f"{_origin(url)}: unreachable ({type(exc).__name__})") from None
            kwargs["headers"] = headers
            if response.status_code == 401 and attempt == 1 and self.authorizer is not None:
                if self.authorizer.refresh():
                    response.close()
                    continue
            return response
        raise AssertionError("unreachable")

    @staticmethod
    def _failure(step: str, response: requests.Response) -> BulkDataError:
        text = outcome_text(response.content[:MAX_JSON_BYTES])
        detail = text or (response.reason or "no OperationOutcome")
        cls = JobGoneError if response.status_code == 404 and step == "export status" else BulkDataError
        return cls(f"{step}: HTTP {response.status_code}: {detail}")

    # -- the protocol --------------------------------------------------------------------------------

    def kick_off(self, request: ExportRequest) -> str:
        """Start an export; returns the status URL (Content-Location)."""
        params: dict[str, str] = {"_outputFormat": NDJSON}
        if request.types:
            params["_type"] = ",".join(request.types)
        if request.since:
            params["_since"] = request.since
        # lenient: a server without one of the asked types exports the others and says so in `error`
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async, handling=lenient"}
        response = self._request("GET", f"{self.base_url}/{request.path()}", params=params, headers=headers)
        if response.status_code != 202:
            raise self._failure("export kick-off", response)
        location = response.headers.get("Content-Location")
        if not location:
            raise BulkDataError("export kick-off: 202 without a Content-Location header")
        return requests.compat.urljoin(self.base_url + "/", location)

    def wait(self, status_url: str, on_progress: Callable[[str | None], None] | None = None) -> Manifest:
        """Poll the status URL until the manifest comes (raises BulkDataError, JobGoneError on 404)."""
        transient = 0
        delay = DEFAULT_WAIT_S
        while True:
            response = self._request("GET", status_url, headers={"Accept": "application/json"})
            status = response.status_code
            if status == 200:
                if len(response.content) > MAX_JSON_BYTES:
                    raise BulkDataError("export status: manifest larger than 64 MiB")
                try:
                    data = response.json()
                except ValueError:
                    raise BulkDataError("export status: the completed answer is not JSON") from None
                return parse_manifest(data)
            if status == 202:
                transient = 0
                if on_progress is not None:
                    on_progress(response.headers.get("X-Progress"))
                self.sleep(retry_after_s(response.headers.get("Retry-After"), delay))
                delay = min(delay * 1.5, 30.0)
                continue
            if status == 429 or (status >= 500 and transient < MAX_TRANSIENT):
                transient += status >= 500
                self.sleep(retry_after_s(response.headers.get("Retry-After"), delay))
                delay = min(delay * 2, MAX_WAIT_S)
                continue
            raise self._failure("export status", response)

    def download(
        self,
        item: OutputFile,
        target: Path,
        *,
        with_token: bool,
        on_bytes: Callable[[int, int | None], None] | None = None,
    ) -> int:
        """Stream one file to `target` (via a temporary name); returns its size in bytes."""
        response = self._request("GET", item.url, auth=with_token, headers={"Accept": NDJSON}, stream=True)
        with response:
            if response.status_code != 200:
                raise self._failure(f"download of {item.type} file {item.index + 1}", response)
            total = response.headers.get("Content-Length")
            expected = int(total) if total and total.isdigit() else None
            tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex[:8]}")
            size = 0
            try:
                with tmp.open("wb") as fh:
                    for chunk in response.iter_content(1024 * 1024):
                        fh.write(chunk)
                        size += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk), expected)
                os.replace(tmp, target)
            except requests.RequestException as exc:
                tmp.unlink(missing_ok=True)
                raise BulkDataError(
                    f"download of {item.type} file {item.index + 1}: {type(exc).__name__}"
                ) from None
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return size

    def delete(self, status_url: str) -> None:
        """DELETE the job (its files on the server); a job already gone is fine."""
        response = self._request("DELETE", status_url)
        if response.status_code not in (200, 202, 204, 404):
            raise self._failure("export delete", response)


def error_messages(path: Path, limit: int = 1000) -> list[str]:
    """The issues of an `error` file (NDJSON of OperationOutcomes), as text, at most `limit`."""
    out: list[str] = []
    with path.open("rb") as fh:
        for line in fh:
            text = outcome_text(line)
            if text:
                out.append(text)
            if len(out) >= limit:
                break
    return out


def _origin(url: str) -> str:
    parts = requests.utils.urlparse(url)
    return f"{parts.scheme}://{parts.netloc}"
