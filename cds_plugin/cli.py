"""Command line: `cds-plugin serve | sandbox ...`; train, evaluate, assess and explain come with the model."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cds_plugin import __version__
from cds_plugin.settings import Settings, SettingsError


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    overrides = {}
    if args.bind:
        overrides["bind"] = args.bind
    if args.workers:
        overrides["workers"] = args.workers
    settings = Settings.load(toml_path=args.config, **overrides)
    _configure_logging(settings.log_level)
    if args.dev:
        from cds_plugin.web.app import create_app

        host, _, port = settings.bind.rpartition(":")
        create_app(settings).run(host=host or "127.0.0.1", port=int(port), debug=False, threaded=True)
        return 0
    from cds_plugin.web.server import serve

    serve(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-plugin", description=__doc__)
    parser.add_argument("--version", action="version", version=f"cds-plugin {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the CDS Hooks service (gunicorn; --dev for Flask's server)")
    serve.add_argument("--dev", action="store_true", help="Flask development server, one process")
    serve.add_argument("--bind", help="HOST:PORT (default from CDS_PLUGIN_BIND, 127.0.0.1:8080)")
    serve.add_argument("--workers", type=int, help="gunicorn workers (default from CDS_PLUGIN_WORKERS)")
    serve.add_argument("--config", help="TOML settings file (default from CDS_PLUGIN_CONFIG)")
    serve.set_defaults(func=cmd_serve)

    sandbox = sub.add_parser("sandbox", help="tools for testing CDS services")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    try:
        from cds_plugin.sandbox import fhir_server
    except ImportError:  # pragma: no cover - only while the module is being written
        fhir_server = None
    if fhir_server is not None:
        fs = sandbox_sub.add_parser(
            "fhir-server", help="a FHIR R4 server on loopback over a folder of bundles"
        )
        fhir_server.add_arguments(fs)
        fs.set_defaults(func=fhir_server.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"cds-plugin: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
