"""A read-only FHIR R4 REST server over a folder of bundles, for loopback tests and demos.

CDS services fetch what prefetch did not bring from the EHR's FHIR server; testing that path (and
showing it) needs a FHIR server that starts in milliseconds, holds exactly the fixture data, and
can demand a bearer token like a real one. This is it: read, type-level search with the parameters
CDS queries use, paging, and a CapabilityStatement; Bulk Data `$export` (cds_plugin.sandbox.bulk_export)
and a SMART Backend Services token endpoint for registered clients (cds_plugin.sandbox.smart_auth), for
population tools. It is not a general FHIR server (no writes, no _include, JSON only), and it binds to
loopback unless told otherwise.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, g, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server, select_address_family

from cds_plugin import __version__
from cds_plugin.errors import CdsPluginError, NotFoundError, UnauthorizedError
from cds_plugin.sandbox.bulk_export import (
    DEFAULT_LINES_PER_FILE,
    NDJSON,
    BulkExports,
    TooManyJobsError,
    parse_kickoff,
)
from cds_plugin.sandbox.fhir_search import SearchPage, params_for, search, supported_types
from cds_plugin.sandbox.fhir_store import DataSource, FhirStore
from cds_plugin.sandbox.smart_auth import (
    BackendAuth,
    TokenRequestError,
    parse_client_option,
    smart_configuration,
    token_error_body,
)
from cds_plugin.web.operation_outcome import operation_outcome

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json; charset=utf-8"
DEFAULT_PORT = 8090
TOKEN_ENV = "CDS_PLUGIN_SANDBOX_FHIR_TOKEN"  # noqa: S105 (a variable name, not a secret)
TOKEN_PATH = "/auth/token"  # noqa: S105 (a path, not a secret)
#: Reachable without a bearer token: what a client reads before it has one.
OPEN_PATHS = frozenset({"/fhir/metadata", "/fhir/.well-known/smart-configuration", TOKEN_PATH})


def _fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")), status=status, content_type=FHIR_JSON, headers=headers
    )


def create_fhir_app(
    store: FhirStore,
    token: str | None = None,
    *,
    page_size_default: int = 50,
    auth: BackendAuth | None = None,
    exports: BulkExports | None = None,
) -> Flask:
    """The Flask app serving `store` under /fhir.

    With `token` and/or `auth` (registered SMART Backend Services clients), every request but the open
    paths (/metadata, the SMART configuration, the token endpoint) needs `Authorization: Bearer` with
    the static token or one the token endpoint issued. `exports` runs the Bulk Data jobs (a default
    one is made). Separate from FhirServer so tests (or another WSGI server) can use the app directly.
    """
    if page_size_default < 1:
        raise ValueError("page_size_default must be at least 1")
    app = Flask("cds_plugin.sandbox.fhir_server")
    started = datetime.now(UTC).isoformat(timespec="seconds")
    bp = Blueprint("fhir", __name__, url_prefix="/fhir")
    secured = token is not None or auth is not None
    jobs = exports if exports is not None else BulkExports(store)
    app.extensions["bulk_exports"] = jobs

    @app.before_request
    def check_token() -> None:
        g.base = request.host_url.rstrip("/") + "/fhir"
        if not secured or request.path in OPEN_PATHS:
            return
        scheme, _, provided = request.headers.get("Authorization", "").partition(" ")
        provided = provided.strip()
        if scheme.lower() != "bearer" or not provided:
            log.info("FHIR server: request without a bearer token refused")
            raise UnauthorizedError("a bearer token is required")
        static_ok = token is not None and hmac.compare_digest(provided.encode(), token.encode())
        if not static_ok and not (auth is not None and auth.valid(provided)):
            log.info("FHIR server: request with a wrong or expired bearer token refused")
            raise UnauthorizedError("a bearer token is required")

    @bp.get("/metadata")
    def metadata() -> Response:
        return _fhir_response(_capability_statement(store, g.base, started, secured, auth is not None))

    @bp.get("/.well-known/smart-configuration")
    def smart_config() -> Response:
        if auth is None:
            raise NotFoundError("this server has no SMART Backend Services clients registered")
        token_url = request.host_url.rstrip("/") + TOKEN_PATH
        return Response(json.dumps(smart_configuration(token_url)), content_type="application/json")

    @app.post(TOKEN_PATH)
    def token_endpoint() -> Response:
        headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
        try:
            if auth is None:
                raise TokenRequestError("invalid_client", "no clients are registered with this server", 401)
            body = auth.token(request.form, request.host_url.rstrip("/") + TOKEN_PATH)
        except TokenRequestError as exc:
            log.info("token endpoint: request refused (%s)", exc.error)
            return Response(
                token_error_body(exc), status=exc.status, content_type="application/json", headers=headers
            )
        return Response(json.dumps(body), content_type="application/json", headers=headers)

    def kickoff(level: str, group: str | None = None) -> Response:
        export_request, unsupported = parse_kickoff(
            store, level, group, list(request.args.items(multi=True)), request.headers.get("Prefer", "")
        )
        job = jobs.start(export_request, request.url, unsupported)
        log.info("bulk export: %s-level job started", level)
        return Response(status=202, headers={"Content-Location": f"{g.base}/bulk-status/{job.id}"})

    @bp.get("/$export")
    def export_system() -> Response:
        return kickoff("system")

    @bp.get("/Patient/$export")
    def export_patients() -> Response:
        return kickoff("patient")

    @bp.get("/Group/<gid>/$export")
    def export_group(gid: str) -> Response:
        return kickoff("group", gid)

    @bp.get("/bulk-status/<job_id>")
    def export_status(job_id: str) -> Response:
        job = jobs.get(job_id)
        if not jobs.ready(job):
            headers = {"X-Progress": jobs.progress(job), "Retry-After": str(jobs.retry_after_s)}
            return Response(status=202, headers=headers)
        if job.failure is not None:
            return _fhir_response(operation_outcome(job.failure, "exception", severity="fatal"), 500)
        body = jobs.manifest(job, f"{g.base}/bulk-files", secured)
        return Response(json.dumps(body), content_type="application/json", headers={"Expires": "0"})

    @bp.delete("/bulk-status/<job_id>")
    def export_delete(job_id: str) -> Response:
        jobs.delete(job_id)
        log.info("bulk export: job deleted")
        return Response(status=202)

    @bp.get("/bulk-files/<job_id>/<name>")
    def export_file(job_id: str, name: str) -> Response:
        return send_file(jobs.file(job_id, name), mimetype=NDJSON, conditional=False)

    @bp.get("/<rtype>")
    def search_type(rtype: str) -> Response:
        return _searchset(store, rtype, list(request.args.items(multi=True)), page_size_default)

    @bp.post("/<rtype>/_search")
    def search_post(rtype: str) -> Response:
        params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
        return _searchset(store, rtype, params, page_size_default)

    @bp.get("/<rtype>/<rid>")
    def read(rtype: str, rid: str) -> Response:
        if rtype not in supported_types(store):
            raise NotFoundError(
                f"resource type {rtype!r} is not supported", expression=rtype, code="not-supported"
            )
        resource = store.get(rtype, rid)
        if resource is None:
            raise NotFoundError(f"{rtype}/{rid} is not known", expression=rtype)
        headers = {}
        version = (resource.get("meta") or {}).get("versionId")
        if isinstance(version, str):
            headers["ETag"] = f'W/"{version}"'
        return _fhir_response(resource, headers=headers)

    app.register_blueprint(bp)

    @app.errorhandler(CdsPluginError)
    def project_error(exc: CdsPluginError) -> Response:
        headers = (
            {"WWW-Authenticate": 'Bearer realm="cds-plugin sandbox FHIR server"'}
            if exc.status == 401
            else None
        )
        if isinstance(exc, TooManyJobsError):
            headers = {"Retry-After": str(jobs.retry_after_s * 5)}
        body = operation_outcome(exc.message, exc.code, exc.expression)
        return _fhir_response(body, exc.status, headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = {404: "not-found", 405: "not-supported"}.get(status, "processing")
        headers = dict(exc.get_headers())  # keeps Allow on 405
        headers.pop("Content-Type", None)
        return _fhir_response(operation_outcome(exc.name, code), status, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        log.exception("FHIR server: unexpected error")  # the traceback has code paths, not resources
        return _fhir_response(operation_outcome("internal error", "exception", severity="fatal"), 500)

    return app


def _searchset(
    store: FhirStore, rtype: str, params: list[tuple[str, str]], page_size_default: int
) -> Response:
    page = search(store, rtype, params, page_size_default=page_size_default)
    base = g.base
    entries: list[dict[str, Any]] = [
        {"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
        for r in page.resources
    ]
    if page.warnings:
        outcome = {"resourceType": "OperationOutcome", "issue": []}
        for message in page.warnings:
            outcome["issue"].append({"severity": "warning", "code": "not-supported", "diagnostics": message})
        entries.append(
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": outcome, "search": {"mode": "outcome"}}
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": datetime.now(UTC).isoformat(timespec="seconds")},
        "type": "searchset",
        "total": page.total,
        "link": _links(base, rtype, page),
    }
    if entries:
        bundle["entry"] = entries
    return _fhir_response(bundle)


def _links(base: str, rtype: str, page: SearchPage) -> list[dict[str, str]]:
    """self/first/previous/next: the applied parameters plus explicit _count and _offset."""

    def url(offset: int) -> str:
        query = [*page.applied, ("_count", str(page.count)), ("_offset", str(offset))]
        return f"{base}/{rtype}?{urlencode(query)}"

    links = [{"relation": "self", "url": url(page.offset)}, {"relation": "first", "url": url(0)}]
    if page.count > 0:
        if page.offset > 0:
            links.append({"relation": "previous", "url": url(max(0, page.offset - page.count))})
        if page.offset + page.count < page.total:
            links.append({"relation": "next", "url": url(page.offset + page.count)})
    return links


def _capability_statement(
    store: FhirStore, base: str, date: str, secured: bool, smart: bool = False
) -> dict[str, Any]:
    resources = []
    for rtype in supported_types(store):
        params = params_for(rtype)
        resources.append(
            {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [{"name": name, "type": params[name].kind} for name in sorted(params)],
            }
        )
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": (
            "Read-only. Result parameters: _count (max 1000), _offset, _sort (date, -date, _id), "
            "_summary=count. Comma means OR, a repeated parameter AND; unsupported parameters are "
            "ignored and reported in an OperationOutcome entry."
        ),
        "resource": resources,
        "operation": [
            {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
            {
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
            },
            {
                "name": "export",
                "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
            },
        ],
    }
    if secured:
        rest["security"] = {
            "description": "Every request except /metadata needs 'Authorization: Bearer <token>'"
            + (" (SMART Backend Services: see .well-known/smart-configuration)." if smart else ".")
        }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "cds-plugin",
        "kind": "instance",
        "software": {"name": "cds-plugin sandbox FHIR server", "version": __version__},
        "implementation": {"description": "Loopback FHIR server for testing and demos", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    }


class _RedactingRequestHandler(WSGIRequestHandler):
    """Request log lines with the resource type only: ids and query values may identify a patient."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = self.path.split("?", 1)[0]
        parts = path.split("/")
        shown = "/".join(parts[:3]) + ("/*" if len(parts) > 3 else "")
        log.info("%s %s -> %s", self.command, shown, getattr(code, "value", code))

    def log_error(self, format: str, *args: Any) -> None:
        # http.server passes the raw request line here on malformed requests; keep it out of the log
        log.warning("FHIR server: malformed HTTP request refused")


class FhirServer:
    """The FHIR server on a background thread (`start`/`stop`, or `with`), or in the foreground.

    Data is loaded in the constructor so a broken fixture fails at once. `port=0` picks a free
    port; `base_url` gives the one actually bound. `clients` registers SMART Backend Services clients
    (id -> JWK Set, see cds_plugin.sandbox.smart_auth); `export_delay_s` keeps Bulk Data jobs running
    at least that long and `export_file_lines` is the most resources per NDJSON file.
    """

    def __init__(
        self,
        data: DataSource,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        page_size_default: int = 50,
        *,
        clients: Mapping[str, Any] | None = None,
        export_delay_s: float = 0.0,
        export_file_lines: int = DEFAULT_LINES_PER_FILE,
    ) -> None:
        self.store = FhirStore.load(data)
        self.host = host
        self.port = port
        self.token = token
        self.auth = BackendAuth(clients) if clients else None
        self.exports = BulkExports(self.store, lines_per_file=export_file_lines, delay_s=export_delay_s)
        self.app = create_fhir_app(
            self.store, token, page_size_default=page_size_default, auth=self.auth, exports=self.exports
        )
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def token_url(self) -> str:
        """The SMART Backend Services token endpoint (an `aud` for client assertions)."""
        return self.base_url.removesuffix("/fhir") + TOKEN_PATH

    @property
    def base_url(self) -> str:
        """e.g. `http://127.0.0.1:53124/fhir`; only known once the server is bound."""
        if self._server is None:
            raise RuntimeError("the FHIR server is not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/fhir"

    def _bind(self) -> BaseWSGIServer:
        if self._server is not None:
            raise RuntimeError("the FHIR server is already started")
        # Bind the socket here: werkzeug's own bind prints and calls sys.exit on a busy port, which a
        # library (or a test) must not do. An OSError is raised instead.
        family = select_address_family(self.host, self.port)
        with socket.create_server((self.host, self.port), family=family) as sock:
            server = make_server(
                self.host,
                sock.getsockname()[1],
                self.app,
                threaded=True,
                request_handler=_RedactingRequestHandler,
                fd=sock.fileno(),  # werkzeug duplicates it, so closing ours is fine
            )
        self._server = server
        self.port = server.port
        return server

    def start(self) -> FhirServer:
        """Bind and serve on a daemon thread; returns self so `FhirServer(...).start()` reads well."""
        server = self._bind()
        # a short poll interval makes stop() quick (it waits for the loop to notice)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fhir-server", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self, on_ready: Callable[[str], None] | None = None) -> None:
        """Bind, call `on_ready(base_url)`, and serve in the calling thread until Ctrl-C (CLI mode).

        Raises OSError when the address cannot be bound (before `on_ready`).
        """
        server = self._bind()
        try:
            if on_ready is not None:
                on_ready(self.base_url)
            server.serve_forever()  # returns on KeyboardInterrupt, closing the socket
        finally:
            server.server_close()
            self._server = None
            self.exports.close()

    def stop(self) -> None:
        """Stop serving and release the port; safe to call twice."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self.exports.close()

    def __enter__(self) -> FhirServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cds-plugin sandbox fhir-server`."""
    parser.add_argument(
        "--data", required=True, type=Path, help="folder (or file) of FHIR bundles, .json or .json.gz"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: loopback only)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"require 'Authorization: Bearer TOKEN' (default: ${TOKEN_ENV}, else no check)",
    )
    parser.add_argument("--page-size", type=int, default=50, help="entries per page when _count is absent")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID=JWKS_FILE",
        help="register a SMART Backend Services client by its JWK Set (repeatable); bearer tokens from "
        f"the token endpoint ({TOKEN_PATH}) are then accepted, and required",
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C. Returns 2 for unusable data or options, 1 when the port cannot be bound."""
    if args.page_size < 1:
        print("error: --page-size must be at least 1", file=sys.stderr)
        return 2
    try:
        clients = dict(parse_client_option(value) for value in args.client)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server = FhirServer(
            args.data,
            host=args.host,
            port=args.port,
            token=args.token,
            page_size_default=args.page_size,
            clients=clients,
        )
    except CdsPluginError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(
            f"warning: binding {args.host}, not loopback: the data is reachable from the network",
            file=sys.stderr,
        )
    counts = ", ".join(f"{n} {rtype}" for rtype, n in server.store.counts().items()) or "no resources"

    def ready(base_url: str) -> None:
        print(f"FHIR R4 server at {base_url} ({counts}); Ctrl-C stops it", flush=True)
        if server.token or server.auth:
            print("bearer token required (except /metadata)", flush=True)
        if server.auth:
            print(
                f"SMART Backend Services token endpoint at {server.token_url} "
                f"({len(server.auth.clients)} client(s) registered)",
                flush=True,
            )

    try:
        server.serve_forever(on_ready=ready)
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
