"""A FHIR server on loopback that misbehaves on request, for the prefetch fallback tests.

Paths (under /fhir): Patient/<id> (p1 exists, others 404), Observation?patient=... (3 pages),
and fault routes by resource type: Slow (sleeps), Unauthorized (401 unless the right token),
Broken (500), Malformed (not JSON), Endless (a next link forever), Elsewhere (next link to another host),
NotFhir (JSON without resourceType). Every request's Authorization header is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}


def _obs(i: int) -> dict:
    return {
        "fullUrl": f"Observation/o{i}",
        "resource": {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
    }


class FaultyFhirServer:
    def __init__(self, token: str = "good-token", slow_s: float = 5.0) -> None:
        self.token = token
        self.slow_s = slow_s
        self.seen_auth: list[str | None] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, body: object | bytes, ctype: str = "application/fhir+json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self) -> None:
                outer.seen_auth.append(self.headers.get("Authorization"))
                outer.paths.append(self.path)
                parts = urlsplit(self.path)
                path = parts.path.removeprefix("/fhir/")
                query = parse_qs(parts.query)
                kind = path.split("/", 1)[0]
                base = f"http://127.0.0.1:{outer.port}/fhir"
                if kind == "Patient":
                    if path == "Patient/p1":
                        return self._send(200, PATIENT)
                    return self._send(404, {"resourceType": "OperationOutcome", "issue": []})
                if kind == "Observation":
                    page = int(query.get("page", ["0"])[0])
                    bundle = {
                        "resourceType": "Bundle",
                        "type": "searchset",
                        "entry": [_obs(page * 2), _obs(page * 2 + 1)],
                        "link": [],
                    }
                    if page < 2:
                        bundle["link"].append(
                            {"relation": "next", "url": f"{base}/Observation?patient=p1&page={page + 1}"}
                        )
                    return self._send(200, bundle)
                if kind == "Slow":
                    time.sleep(outer.slow_s)
                    return self._send(200, PATIENT)
                if kind == "Unauthorized":
                    if self.headers.get("Authorization") == f"Bearer {outer.token}":
                        return self._send(200, PATIENT)
                    return self._send(401, {"resourceType": "OperationOutcome", "issue": []})
                if kind == "Broken":
                    return self._send(500, b"Internal Server Error", "text/plain")
                if kind == "Malformed":
                    return self._send(200, b'{"resourceType": "Bundle", "entry": [', "application/fhir+json")
                if kind == "NotFhir":
                    return self._send(200, {"hello": "world"})
                if kind == "Endless":
                    page = int(query.get("page", ["0"])[0])
                    return self._send(
                        200,
                        {
                            "resourceType": "Bundle",
                            "type": "searchset",
                            "entry": [_obs(page)],
                            "link": [{"relation": "next", "url": f"{base}/Endless?page={page + 1}"}],
                        },
                    )
                if kind == "Elsewhere":
                    return self._send(
                        200,
                        {
                            "resourceType": "Bundle",
                            "type": "searchset",
                            "entry": [],
                            "link": [{"relation": "next", "url": "http://127.0.0.2:9/fhir/x"}],
                        },
                    )
                return self._send(404, {"resourceType": "OperationOutcome", "issue": []})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FaultyFhirServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
