"""CORS for browser-based CDS clients (the public sandbox is one): preflights answered, Authorization and
Content-Type allowed, origins from the settings. No cookies are used, so credentials are never allowed."""

from __future__ import annotations

from flask import Flask, Response, request


def install_cors(app: Flask, origins: tuple[str, ...]) -> None:
    allow_all = "*" in origins

    @app.after_request
    def add_cors_headers(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if not origin:
            return response
        if allow_all:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.vary.add("Origin")
        else:
            return response
        if request.method == "OPTIONS":
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "600"
        return response
