"""`cds-plugin sandbox call` and `cds-plugin sandbox keys`: options, exit statuses and output.

Exit statuses of `call`: 0 the answer conforms to CDS Hooks 2.0 (warnings allowed), 1 it breaks the
spec (or the call failed with an HTTP error), 2 a usage or connection problem (bad option, unreadable
file, unreachable service, no such service).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from cds_plugin.sandbox.client import (
    DEFAULT_ISSUER,
    DEFAULT_USER,
    PREFETCH_MODES,
    CallOptions,
    SandboxClient,
    SandboxError,
    check_feedback_spec,
)
from cds_plugin.sandbox.fhir_server import TOKEN_ENV
from cds_plugin.sandbox.keys import ClientKey, KeyFileError

KEY_ENV = "CDS_PLUGIN_SANDBOX_KEY"
ISS_ENV = "CDS_PLUGIN_SANDBOX_ISS"
JKU_ENV = "CDS_PLUGIN_SANDBOX_JKU"
DEFAULT_KEYS_DIR = "sandbox-keys"


def add_call_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cds-plugin sandbox call`."""
    parser.add_argument(
        "--service",
        required=True,
        help="the service's discovery URL (.../cds-services), one service's URL (.../cds-services/ID), "
        "or the base URL (/cds-services is appended)",
    )
    parser.add_argument("--hook", required=True, help="the hook to call, e.g. patient-view, order-select")
    parser.add_argument("--service-id", help="which service, when several answer the hook")
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument(
        "--bundle", type=Path, help="FHIR bundle (or folder of bundles) with the patient's data"
    )
    data.add_argument("--fhir-server", help="base URL of a FHIR R4 server with the patient's data")
    parser.add_argument(
        "--patient", help="Patient id (required with --fhir-server; optional with one patient)"
    )
    parser.add_argument(
        "--fhir-token",
        default=os.environ.get(TOKEN_ENV),
        help=f"bearer token for --fhir-server, also sent as fhirAuthorization (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--no-serve-bundle",
        dest="serve_bundle",
        action="store_false",
        help="with --bundle, do not serve it on a loopback FHIR server (then no fhirServer is sent)",
    )
    parser.add_argument(
        "--prefetch",
        choices=PREFETCH_MODES,
        default="all",
        help="fill every template (all), none, or every other one (partial) to exercise the FHIR fallback",
    )
    parser.add_argument(
        "--key",
        default=os.environ.get(KEY_ENV),
        help=f"private key (JWK or PEM, e.g. from `sandbox keys`) to sign with (default: ${KEY_ENV}, "
        "else a throwaway key)",
    )
    parser.add_argument(
        "--jku", default=os.environ.get(JKU_ENV), help=f"jku header URL (default: ${JKU_ENV})"
    )
    parser.add_argument(
        "--iss",
        default=os.environ.get(ISS_ENV, DEFAULT_ISSUER),
        help=f"the JWT issuer (default: ${ISS_ENV}, else {DEFAULT_ISSUER})",
    )
    parser.add_argument("--user", default=DEFAULT_USER, help=f"context userId (default {DEFAULT_USER})")
    parser.add_argument(
        "--encounter", help="context encounterId (default: the latest, where the hook needs one)"
    )
    parser.add_argument("--draft-order", type=Path, help="JSON file with the draft order (order-select/sign)")
    parser.add_argument("--context", type=Path, help="JSON object merged over the built context")
    parser.add_argument(
        "--feedback",
        metavar="accept|override:REASON",
        help="send feedback on the first card: accept its first suggestion, or override it",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)")
    parser.add_argument("--json", action="store_true", help="print request, response and findings as JSON")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SandboxError(f"{what}: cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise SandboxError(f"{what}: {path} is not JSON") from exc


def _options(args: argparse.Namespace) -> tuple[CallOptions, str | None]:
    """The call's options, and a note for the user when the key is a throwaway one."""
    if args.feedback:
        check_feedback_spec(args.feedback)
    if args.timeout <= 0:
        raise SandboxError("--timeout must be positive")
    note = None
    if args.key:
        key = ClientKey.load(args.key, jku=args.jku)
    else:
        key = ClientKey.generate(jku=args.jku)
        note = (
            f"signing with a throwaway key (kid {key.kid}); a service that checks tokens will refuse it: "
            "make one with `cds-plugin sandbox keys` and register its JWK Set with the service"
        )
    draft = _read_json(args.draft_order, "--draft-order") if args.draft_order else None
    if draft is not None and not isinstance(draft, dict):
        raise SandboxError("--draft-order: expected a FHIR resource (a JSON object)")
    context = _read_json(args.context, "--context") if args.context else None
    if context is not None and not isinstance(context, dict):
        raise SandboxError("--context: expected a JSON object")
    options = CallOptions(
        service=args.service,
        hook=args.hook,
        service_id=args.service_id,
        bundle=args.bundle,
        fhir_server=args.fhir_server,
        patient=args.patient,
        fhir_token=args.fhir_token or None,
        serve_bundle=args.serve_bundle,
        prefetch=args.prefetch,
        key=key,
        issuer=args.iss,
        user=args.user,
        encounter=args.encounter,
        draft_order=draft,
        context=context,
        feedback=args.feedback,
        timeout_s=args.timeout,
    )
    return options, note


def run_call(args: argparse.Namespace) -> int:
    """Make the call; 0 conforms, 1 breaks the spec, 2 usage or connection error."""
    try:
        options, note = _options(args)
        assert options.key is not None
        client = SandboxClient(options.key, options.issuer, timeout_s=options.timeout_s)
        result = client.call(options)
    except (SandboxError, KeyFileError) as exc:
        print(f"cds-plugin sandbox call: error: {exc}", file=sys.stderr)
        return 2
    if note:
        result.notes.append(note)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        from cds_plugin.sandbox.render import render_call

        render_call(result, Console(soft_wrap=False))
    return result.exit_code


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cds-plugin sandbox keys`."""
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_KEYS_DIR),
        help=f"folder for the files (default {DEFAULT_KEYS_DIR})",
    )
    parser.add_argument("--kid", help="key id (default: a random uuid)")
    parser.add_argument("--jku", help="URL where the JWK Set will be published; sent as the tokens' jku")
    parser.add_argument("--force", action="store_true", help="replace an existing private key")


def run_keys(args: argparse.Namespace) -> int:
    """Write a new ES384 key and print its public JWK Set (stdout: JSON only, so it can be redirected)."""
    key = ClientKey.generate(kid=args.kid, jku=args.jku)
    try:
        private_path, jwks_path = key.write(args.out, overwrite=args.force)
    except KeyFileError as exc:
        print(f"cds-plugin sandbox keys: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(
            f"cds-plugin sandbox keys: error: cannot write to {args.out}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(key.jwks(), indent=2))
    print(
        f"private key: {private_path} (keep it secret; use it with `sandbox call --key`)\n"
        f"public JWK Set: {jwks_path} (pin it as the issuer's jwks_file, or publish it"
        + (f" at {args.jku})" if args.jku else " and pass --jku)"),
        file=sys.stderr,
    )
    return 0
