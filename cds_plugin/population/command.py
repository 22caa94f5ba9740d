"""`cds-plugin worklist SOURCE --out DIR ...`: options, progress bars, the summary, exit statuses.

Exit statuses: 0 the worklist is written; 1 the run failed (the server refused, a worker kept dying);
2 a usage problem (bad option, unreadable source or key, a folder holding another run); 130 interrupted
(Ctrl-C: rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

TOKEN_ENV = "CDS_PLUGIN_BULK_TOKEN"  # noqa: S105 (a variable name, not a secret)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `cds-plugin worklist`."""
    parser.add_argument(
        "source", help="a folder of Bulk Data NDJSON files (.ndjson, .ndjson.gz), or a FHIR server base URL"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (a rerun into it continues)")
    parser.add_argument(
        "--workers", type=int, help="worker processes of the local Dask cluster (default: the CPU count)"
    )
    parser.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786")
    parser.add_argument(
        "--explain-top", type=int, default=50, help="rows that get integrated-gradients evidence (default 50)"
    )
    parser.add_argument(
        "--model", help="model folder (default: $CDS_PLUGIN_MODEL_PATH, else the packaged one)"
    )
    parser.add_argument(
        "--partition-mb",
        type=float,
        default=8.0,
        help="NDJSON per partition, MiB (default 8): bounds each worker's memory",
    )
    export = parser.add_argument_group("export from a FHIR server (SOURCE is a URL)")
    export.add_argument("--group", help="export Group/ID/$export instead of Patient/$export")
    export.add_argument(
        "--type",
        dest="types",
        help="comma-separated resource types for _type (default: the types the model reads)",
    )
    export.add_argument("--since", help="_since: only resources changed after this instant")
    auth = export.add_mutually_exclusive_group()
    auth.add_argument(
        "--token", default=os.environ.get(TOKEN_ENV), help=f"a bearer token (default: ${TOKEN_ENV})"
    )
    auth.add_argument("--client-id", help="SMART Backend Services client id (with --key and --token-url)")
    export.add_argument("--key", help="the client's private key: a JWK or PEM file (EC P-384 or RSA)")
    export.add_argument("--token-url", help="the server's token endpoint")
    export.add_argument("--scope", default="system/*.read", help="scopes to ask for (default system/*.read)")


def _authorizer(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cds_plugin.population.authorization import BackendServices, StaticToken
    from cds_plugin.sandbox.keys import ClientKey

    if args.client_id or args.key or args.token_url:
        if not (args.client_id and args.key and args.token_url):
            raise ValueError("--client-id, --key and --token-url go together")
        return BackendServices(args.client_id, ClientKey.load(args.key), args.token_url, scope=args.scope)
    return StaticToken(args.token) if args.token else None


def _export_request(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from cds_plugin.fhir.resources import USED_TYPES
    from cds_plugin.population.bulk_client import ExportRequest

    types = tuple(t.strip() for t in args.types.split(",") if t.strip()) if args.types else None
    if types is None:
        types = tuple(sorted(USED_TYPES))
    return ExportRequest(
        level="group" if args.group else "patient", group=args.group, types=types, since=args.since
    )


class RichReporter:
    """Progress bars on stderr (export polling, download, grouping, scoring, explaining)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def begin(self, stage: str, description: str, total: float | None) -> None:
        self.tasks[stage] = (self.progress.add_task(description, total=total), total)

    def advance(self, stage: str, amount: float = 1, description: str | None = None) -> None:
        if stage in self.tasks:
            self.progress.update(self.tasks[stage][0], advance=amount, description=description or None)

    def end(self, stage: str) -> None:
        if stage in self.tasks:
            task, total = self.tasks[stage]
            self.progress.update(task, completed=total or 1, total=total or 1)


def _summary(result: Any) -> str:
    lines = [
        f"worklist: {result.rows} row(s) for {result.patients} patient(s) scored"
        + (f", {result.unreadable} unreadable" if result.unreadable else "")
        + f"; evidence on the top {result.explained}",
        f"  {result.worklist}",
        f"  {result.csv}",
        f"  {result.report}",
    ]
    unread = [f"{p.count} {p.what}" for p in result.problems if p.count]
    if unread:
        lines.append("not read: " + "; ".join(unread))
    t = result.timings
    busy = t.get("group", 0) + t.get("score", 0)
    speed = f" ({result.patients / busy:.1f} patients/s)" if busy > 0 and result.partitions_scored else ""
    lines.append(
        f"grouping {t.get('group', 0):.1f} s, scoring {t.get('score', 0):.1f} s{speed}, "
        f"explaining {t.get('explain', 0):.1f} s; {result.partitions_scored} of {result.partitions} "
        "partition(s) scored in this run"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the worklist (see the module docstring for exit statuses)."""
    from cds_plugin.errors import CdsPluginError, FhirInputError
    from cds_plugin.model.artifacts import ModelLoadError
    from cds_plugin.population.manifest import UsageError
    from cds_plugin.population.pipeline import WorklistConfig, run_worklist
    from cds_plugin.sandbox.keys import KeyFileError
    from cds_plugin.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s", stream=sys.stderr)
    settings = Settings.load()
    from_server = args.source.startswith(("http://", "https://"))
    try:
        if args.workers is not None and args.workers < 1:
            raise ValueError("--workers must be at least 1")
        if args.workers is not None and args.scheduler:
            raise ValueError("--workers and --scheduler exclude each other (the cluster has its workers)")
        if not from_server and (args.group or args.types or args.since or args.client_id or args.token_url):
            raise ValueError("--group, --type, --since and authorization apply to a FHIR server URL only")
        config = WorklistConfig(
            source=args.source,
            out=args.out,
            workers=args.workers or os.cpu_count() or 1,
            scheduler=args.scheduler,
            explain_top=args.explain_top,
            model=args.model or settings.model_path or None,
            partition_mb=args.partition_mb,
            export=_export_request(args),
            authorizer=_authorizer(args) if from_server else None,
            allow_http=settings.fhir_allow_http,
        )
    except (ValueError, KeyFileError) as exc:
        print(f"cds-plugin worklist: error: {exc}", file=sys.stderr)
        return 2
    try:
        with RichReporter() as reporter:
            result = run_worklist(config, reporter)
    except KeyboardInterrupt:
        print(
            "cds-plugin worklist: interrupted; finished partitions are kept: rerun the same command "
            "to continue",
            file=sys.stderr,
        )
        return 130
    except (UsageError, FhirInputError) as exc:
        print(f"cds-plugin worklist: error: {exc.message}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"cds-plugin worklist: error: {exc}", file=sys.stderr)
        return 2
    except CdsPluginError as exc:  # the server refused, a worker kept dying, a file became unreadable
        print(f"cds-plugin worklist: error: {exc.message}", file=sys.stderr)
        return 1
    print(_summary(result))
    return 0
