"""Command line: `cds-plugin serve | train | evaluate | assess | explain | worklist | sandbox ...`."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from cds_plugin import __version__
from cds_plugin.settings import Settings, SettingsError

#: Loggers that follow CDS_PLUGIN_LOG_LEVEL; every other library logs warnings and errors only: at
#: DEBUG, urllib3 logs each request line (patient ids in FHIR queries) and numba floods the log.
OWN_LOGGERS = ("cds_plugin", "gunicorn.error", "werkzeug")


def _configure_logging(level: str) -> None:
    chosen = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(
        level=max(chosen, logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(chosen)


class _RedactTokens(logging.Filter):
    """The development server logs request lines; explanation links carry a token in the query."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                re.sub(r"token=[^&\s\"]+", "token=REDACTED", a) if isinstance(a, str) else a
                for a in record.args
            )
        return True


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

        logging.getLogger("werkzeug").addFilter(_RedactTokens())
        host, _, port = settings.bind.rpartition(":")
        create_app(settings).run(host=host or "127.0.0.1", port=int(port), debug=False, threaded=True)
        return 0
    from cds_plugin.web.server import serve

    serve(settings)
    return 0


def _torch_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_train(args: argparse.Namespace) -> int:
    import json

    from cds_plugin.model.training import TrainConfig, train

    _configure_logging("INFO")
    _torch_threads(args.threads)
    config = TrainConfig.tiny() if args.tiny else TrainConfig()
    for name in (
        "seed",
        "limit_patients",
        "finetune_epochs",
        "pretrain_epochs",
        "max_facts",
        "batch_size",
        "labels_file",
        "split_salt",
        "fold",
        "balance_sex",
        "care_plan_activities",
        "coded_reasons",
    ):
        value = getattr(args, name)
        if value is not None:
            setattr(config, name, value)
    if args.pooling:
        import dataclasses

        config.network = dataclasses.replace(config.network, pooling=args.pooling)
    from cds_plugin.errors import CdsPluginError

    try:
        meta = train(args.data, args.out, config, progress=not args.quiet)
    except (CdsPluginError, ValueError) as exc:
        print(f"cds-plugin train: {exc}", file=sys.stderr)
        return 2
    summary = {k: meta[k] for k in ("model_version", "patients", "situations", "temperature", "timings")}
    summary["labels"] = json.loads((Path(args.out) / "labels.json").read_text())["labels"].__len__()
    summary["best_val_score"] = meta["finetune"]["best_val_score"]
    print(json.dumps(summary, indent=2))
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    """The label space as a table, with training counts when a data folder is given."""
    from rich.console import Console
    from rich.table import Table

    from cds_plugin.model.label_space import LabelFileError, LabelSpace

    try:
        labels = LabelSpace.from_file(args.file)
    except LabelFileError as exc:
        print(f"cds-plugin: {exc}", file=sys.stderr)
        return 1
    counts: dict[int, tuple[int, int]] = {}
    if args.data:
        from cds_plugin.model.label_space import training_counts

        counts = training_counts(labels, args.data, progress=not args.quiet)
    table = Table(title=f"{len(labels)} considerations ({len(labels.excluded)} exclusions: --excluded)")
    for column in ("kind", "code", "display", "members", "sexes", "ages"):
        table.add_column(column)
    if counts:
        table.add_column("patients", justify="right")
        table.add_column("positives", justify="right")
    for i, label in enumerate(labels):
        row = [
            label.kind,
            label.code,
            label.display,
            ", ".join(label.codes),
            "/".join(label.sexes),
            f"{label.min_age:g}-{label.max_age:g}",
        ]
        if counts:
            row += [str(n) for n in counts.get(i, (0, 0))]
        table.add_row(*row)
    console = Console(width=args.width)
    console.print(table)
    if args.excluded:
        excluded = Table(title="excluded")
        for column in ("kind", "codes", "display", "reason"):
            excluded.add_column(column)
        for e in labels.excluded:
            excluded.add_row(e.kind, ", ".join(e.codes), e.display, e.reason)
        console.print(excluded)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from cds_plugin.model.evaluation import (
        evaluate_folds,
        evaluate_model,
        render_folds,
        render_gaps,
        render_table,
    )

    _configure_logging("WARNING")
    _torch_threads(args.threads)
    from cds_plugin.errors import CdsPluginError

    try:
        if len(args.model) > 1:
            if args.split != "validation":
                raise ValueError(
                    "several models are a cross-validation: each is scored on its validation split"
                )
            report = evaluate_folds(
                args.model, args.data, progress=not args.quiet, gap_resamples=args.gap_resamples
            )
        else:
            report = evaluate_model(
                args.model[0],
                args.data,
                split=args.split,
                progress=not args.quiet,
                gap_resamples=args.gap_resamples,
            )
    except (CdsPluginError, ValueError) as exc:
        print(f"cds-plugin evaluate: {exc}", file=sys.stderr)
        return 2
    print(render_table(report))
    print()
    if "folds" in report:
        print(render_folds(report))
        print()
    print(render_gaps(report))
    print(json.dumps(report["meta"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


def _as_of(value: str | None):  # type: ignore[no-untyped-def]
    if value is None:
        return None
    from datetime import date, datetime

    try:
        return datetime.fromisoformat(value) if "T" in value else date.fromisoformat(value)
    except ValueError as exc:
        raise SystemExit(f"cds-plugin: --as-of: not an ISO date or date-time: {value!r}") from exc


def _as_of_line(record, as_of: str | None) -> str:  # type: ignore[no-untyped-def]
    """The reference time and where it came from (the rule: docs/fhir-input.md, "Reference time")."""
    line = f"as of {record.reference_time:%Y-%m-%d %H:%M} UTC"
    if as_of is None:
        line += " (now, as a hook would be; --as-of for another time)"
    if record.data_until is not None:
        line += f"; the data ends {record.data_until:%Y-%m-%d}"
    return line


def _record_notes(record) -> list[str]:  # type: ignore[no-untyped-def]
    """What the CDS services would make of this record beyond the ratings (docs/cards.md)."""
    from cds_plugin.fhir import unread

    notes = []
    lost = unread.could_not_read_sentence(record)
    if lost:
        notes.append(lost)
    if record.deceased:
        notes.append("the patient is deceased at the reference time: the services offer no considerations")
    elif unread.clinical_facts(record) == 0:
        notes.append(
            f"0 clinical facts read from {record.resources} resources: the services offer no "
            "considerations (a rating from age and sex alone)"
        )
    return notes


def cmd_assess(args: argparse.Namespace) -> int:
    import json

    from cds_plugin.errors import CdsPluginError
    from cds_plugin.explain.engine import Engine

    _configure_logging("WARNING")
    engine = Engine.load(args.model)
    try:
        assessment = engine.assess(args.bundle, as_of=_as_of(args.as_of))
    except CdsPluginError as exc:
        print(f"cds-plugin: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(assessment.to_json(), indent=2))
        return 0
    print(f"model {assessment.model_version}, {_as_of_line(assessment.record, args.as_of)}")
    for note in _record_notes(assessment.record):
        print(f"note: {note}")
    for title, items in (("Diagnoses", assessment.diagnoses), ("Treatments", assessment.treatments)):
        print(f"\n{title} (top {args.top}; * = above threshold, d = already documented)")
        for c in items[: args.top]:
            flag = ("*" if c.above_threshold else " ") + ("d" if c.documented else " ")
            print(f"  {flag} {c.probability:6.3f}  (thr {c.threshold:.2f})  {c.display}  [{c.code}]")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from cds_plugin.errors import CdsPluginError
    from cds_plugin.explain.engine import Engine

    _configure_logging("WARNING")
    engine = Engine.load(args.model)
    try:
        explanation = engine.explain(args.bundle, args.code, method=args.method, as_of=_as_of(args.as_of))
    except CdsPluginError as exc:
        print(f"cds-plugin: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(explanation.dumps(), end="")
        return 0
    t = explanation.target
    print(f"{t.display} [{t.code}]: probability {explanation.probability:.3f}")
    print(
        f"model {explanation.model_version}, method {explanation.method}, as of {explanation.reference_time}"
    )
    if explanation.f_x is not None and explanation.f_baseline is not None:
        error = explanation.completeness_error
        print(
            f"scores add up to F(x) - F(baseline) = {explanation.f_x:.3f} - {explanation.f_baseline:.3f}"
            + (f" (completeness error {error:.2%})" if error is not None else "")
        )
    if not explanation.label_specific:
        print("the same for every consideration: what the model looked at, not why it rated this one")
    unit = "probability" if explanation.score_unit == "probability" else "relevance"
    print(f"\ntop {args.top} resources ({unit}, share of total)")
    for e in explanation.top(args.top):
        print(f"  {e.score:+8.4f}  {e.share:6.1%}  {e.display}  [{e.reference}]")
    for warning in explanation.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _method_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """`METHOD.NAME=VALUE` options -> {method: {name: value}}; the value is read as JSON when it parses
    (numbers, true/false, null), else kept as text (`integrated_gradients.baseline=zero`)."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise SystemExit(
                f"--setting {item!r}: expected METHOD.NAME=VALUE, e.g. integrated_gradients.steps=16"
            )
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(method, {})[name] = value
    return out


def cmd_evaluate_explanations(args: argparse.Namespace) -> int:
    import json

    from cds_plugin.explain.faithfulness import DEFAULT_METHODS, evaluate_explanations, render_markdown

    _configure_logging("INFO")
    _torch_threads(args.threads)
    methods = tuple(m for m in args.methods.split(",") if m) if args.methods else DEFAULT_METHODS
    report = evaluate_explanations(
        args.model,
        args.data,
        limit=args.limit,
        methods=methods,
        targets_per_patient=args.targets,
        settings=_method_settings(args.setting or []),
        progress=not args.quiet,
        log=logging.getLogger("cds_plugin.explain").info,
    )
    print(render_markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
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

    train = sub.add_parser("train", help="train a model on a folder of per-patient FHIR bundles")
    train.add_argument(
        "--data",
        required=True,
        help="folder of per-patient FHIR bundles (.json, .json.gz) and/or Bulk Data NDJSON exports",
    )
    train.add_argument("--out", required=True, help="folder to write the model to")
    train.add_argument("--labels", dest="labels_file", help="label file (default: the package's labels.toml)")
    train.add_argument("--seed", type=int)
    train.add_argument("--limit-patients", type=int, dest="limit_patients")
    train.add_argument("--finetune-epochs", type=int, dest="finetune_epochs")
    train.add_argument("--pretrain-epochs", type=int, dest="pretrain_epochs", help="0 skips pretraining")
    train.add_argument("--max-facts", type=int, dest="max_facts", help="facts per record, most recent first")
    train.add_argument("--batch-size", type=int, dest="batch_size")
    train.add_argument(
        "--split-salt",
        dest="split_salt",
        help="draws another validation split (default: the shipped model's); for repeated validation",
    )
    train.add_argument(
        "--fold",
        type=int,
        help="validation is fold K of 5 (default 0, the shipped split); train 0-4 for cross-validation",
    )
    train.add_argument(
        "--pooling",
        choices=("max", "mean"),
        help="the attention states' pooling (default max; docs/model-card.md)",
    )
    train.add_argument(
        "--balance-sex",
        action="store_true",
        default=None,
        dest="balance_sex",
        help="weigh each label's positives so both sexes count alike in fine-tuning (docs/model-card.md)",
    )
    train.add_argument(
        "--care-plan-activities",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="care_plan_activities",
        help="each coded care-plan activity a position of its own (default: on; docs/model-card.md)",
    )
    train.add_argument(
        "--coded-reasons",
        action=argparse.BooleanOptionalAction,
        default=None,
        dest="coded_reasons",
        help="each coded reason of an encounter or procedure a position of its own (default: on)",
    )
    train.add_argument("--tiny", action="store_true", help="a tiny configuration that trains in seconds")
    train.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    labels = sub.add_parser("labels", help="print the label space (considerations and exclusions)")
    labels.add_argument("--file", help="label file (default: the package's labels.toml)")
    labels.add_argument("--data", help="training data folder: add patient and positive-example counts")
    labels.add_argument("--excluded", action="store_true", help="also list the excluded codes and reasons")
    labels.add_argument("--width", type=int, default=200, help="table width in characters")
    labels.add_argument("--quiet", action="store_true", help="no progress bar")
    labels.set_defaults(func=cmd_labels)

    evaluate = sub.add_parser("evaluate", help="evaluate a model beside prevalence and logistic regression")
    evaluate.add_argument(
        "--model",
        required=True,
        action="append",
        help="model folder; given once per fold (`train --fold K`), the folds' validation examples are "
        "pooled into one cross-validated report",
    )
    evaluate.add_argument("--data", required=True, help="folder of FHIR bundles and/or NDJSON exports")
    evaluate.add_argument("--split", choices=("validation", "all"), default="validation")
    evaluate.add_argument("--json", help="write the full report here")
    evaluate.add_argument(
        "--gap-resamples",
        type=int,
        default=200,
        help="patient-bootstrap resamples for the subgroup-gap intervals (0: skip them)",
    )
    evaluate.add_argument("--threads", type=int)
    evaluate.add_argument("--quiet", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    assess = sub.add_parser("assess", help="rate every diagnosis and treatment of the model for one patient")
    assess.add_argument("bundle", help="a FHIR bundle, resource, prefetch object or NDJSON file")
    assess.add_argument("--as-of", dest="as_of", help="reference date (ISO), facts after it are ignored")
    assess.add_argument("--model", help="model folder (default: the model shipped in the package)")
    assess.add_argument("--top", type=int, default=10)
    assess.add_argument("--json", action="store_true")
    assess.set_defaults(func=cmd_assess)

    explain = sub.add_parser("explain", help="which FHIR resources moved one consideration, and by how much")
    explain.add_argument("bundle", help="a FHIR bundle, resource, prefetch object or NDJSON file")
    explain.add_argument("--code", required=True, help="the label to explain: code or kind:code")
    explain.add_argument(
        "--method",
        default="integrated_gradients",
        help="integrated_gradients (default), attention, attention_gradient, shap",
    )
    explain.add_argument("--model", help="model folder (default: the model shipped in the package)")
    explain.add_argument("--as-of", dest="as_of", help="reference date (ISO), facts after it are ignored")
    explain.add_argument("--top", type=int, default=10)
    explain.add_argument("--json", action="store_true", help="the whole explanation as versioned JSON")
    explain.set_defaults(func=cmd_explain)

    evaluate_explanations = sub.add_parser(
        "evaluate-explanations", help="faithfulness of the explanation methods on validation patients"
    )
    evaluate_explanations.add_argument("--model", required=True, help="model folder")
    evaluate_explanations.add_argument("--data", required=True, help="folder of FHIR bundles")
    evaluate_explanations.add_argument("--json", help="write the full report here")
    evaluate_explanations.add_argument("--limit", type=int, help="validation patients at most")
    evaluate_explanations.add_argument("--methods", help="comma-separated (default: all built-in methods)")
    evaluate_explanations.add_argument("--targets", type=int, default=1, help="top labels per patient")
    evaluate_explanations.add_argument(
        "--setting",
        action="append",
        metavar="METHOD.NAME=VALUE",
        help="a method setting, repeatable (e.g. integrated_gradients.baseline=zero)",
    )
    evaluate_explanations.add_argument("--threads", type=int)
    evaluate_explanations.add_argument("--quiet", action="store_true")
    evaluate_explanations.set_defaults(func=cmd_evaluate_explanations)

    from cds_plugin.population import command as worklist_command

    worklist = sub.add_parser(
        "worklist",
        help="score a population (Bulk Data NDJSON or a FHIR server) into a ranked, explained worklist",
    )
    worklist_command.add_arguments(worklist)
    worklist.set_defaults(func=worklist_command.run)

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
    from cds_plugin.sandbox import commands as sandbox_commands

    call = sandbox_sub.add_parser("call", help="call a CDS service like an EHR and check its answer")
    sandbox_commands.add_call_arguments(call)
    call.set_defaults(func=sandbox_commands.run_call)
    keys = sandbox_sub.add_parser("keys", help="make a client signing key and print its JWK Set")
    sandbox_commands.add_keys_arguments(keys)
    keys.set_defaults(func=sandbox_commands.run_keys)
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
