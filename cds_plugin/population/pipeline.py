"""A worklist run from source to report: export, grouping, scoring, explanations, outputs; resumable.

    result = run_worklist(WorklistConfig(source="export/", out=Path("out"), workers=2))

Stages, each recorded in the manifest as its tasks finish (cds_plugin.population.manifest):

1. a FHIR server URL as source: Bulk Data export into DIR/export (cds_plugin.population.bulk_client);
2. grouping by patient: a partitioned shuffle into DIR/groups (cds_plugin.population.grouping);
3. scoring: one task per partition into DIR/parts (cds_plugin.population.scoring);
4. integrated-gradients evidence for the top N rows, a task per partition holding some of them;
5. DIR/worklist.parquet, DIR/worklist.csv and DIR/report.html, rebuilt from the parts on every run.

A rerun into the same DIR skips what the manifest lists as finished. Ctrl-C cancels the tasks; what
they leave behind is not in the manifest and is removed when the next run starts.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from distributed import Future, as_completed
from distributed.scheduler import KilledWorker

from cds_plugin.errors import CdsPluginError
from cds_plugin.fhir.limits import DEFAULT_MAX_BYTES
from cds_plugin.population.authorization import Authorizer
from cds_plugin.population.bulk_client import (
    BulkDataClient,
    ExportRequest,
    JobGoneError,
    error_messages,
)
from cds_plugin.population.cluster import DEFAULT_DASHBOARD, Cluster, open_cluster
from cds_plugin.population.grouping import (
    MEDICATIONS_FILE,
    SplitResult,
    medication_map,
    partition_of,
    pieces_of,
    split_file,
)
from cds_plugin.population.manifest import (
    EXPORT,
    EXPORT_ERRORS,
    GROUPS,
    PARTS,
    RunState,
    UsageError,
    WorklistError,
)
from cds_plugin.population.report import Unread, render_report
from cds_plugin.population.scoring import (
    explain_partition,
    patients_file,
    peak_rss_bytes,
    score_file,
    score_partition,
)
from cds_plugin.population.source import Source, list_source
from cds_plugin.population.worklist import (
    patients_table,
    ranked_rows,
    top_keys,
    with_evidence,
    write_outputs,
)

REPORT = "report.html"
MiB = 1024 * 1024


class Reporter(Protocol):
    """Where a run tells what it does: notes, and progress per stage (export, download, group, score,
    explain). The command line draws rich progress bars; tests record or interrupt."""

    def note(self, text: str) -> None: ...

    def begin(self, stage: str, description: str, total: float | None) -> None: ...

    def advance(self, stage: str, amount: float = 1, description: str | None = None) -> None: ...

    def end(self, stage: str) -> None: ...


class SilentReporter:
    def note(self, text: str) -> None:
        pass

    def begin(self, stage: str, description: str, total: float | None) -> None:
        pass

    def advance(self, stage: str, amount: float = 1, description: str | None = None) -> None:
        pass

    def end(self, stage: str) -> None:
        pass


@dataclass
class WorklistConfig:
    """One run's inputs (see `cds-plugin worklist --help` for their meaning)."""

    source: str
    out: Path
    workers: int | None = None
    scheduler: str | None = None
    explain_top: int = 50
    model: str | None = None
    partition_mb: float = 8.0
    export: ExportRequest = field(default_factory=ExportRequest)
    authorizer: Authorizer | None = None
    allow_http: bool = False
    dashboard_address: str = DEFAULT_DASHBOARD
    max_line_bytes: int = DEFAULT_MAX_BYTES

    @property
    def from_server(self) -> bool:
        return self.source.startswith(("http://", "https://"))


@dataclass
class WorklistResult:
    """What a run produced and how long each stage took (seconds; 0 for a stage with nothing to do)."""

    out: Path
    worklist: Path
    csv: Path
    report: Path
    patients: int
    unreadable: int
    rows: int
    explained: int
    partitions: int
    partitions_scored: int  # in this run (the rest came from the manifest)
    splits_done: int  # grouping tasks run in this run
    unread_resources: int
    problems: list[Unread]
    dashboard: str | None
    timings: dict[str, float]
    worker_peak_rss: dict[str, int]  # worker address -> bytes


def run_worklist(config: WorklistConfig, reporter: Reporter | None = None) -> WorklistResult:
    """Run (or continue) a worklist into `config.out`; raises WorklistError (or another CdsPluginError)."""
    reporter = reporter or SilentReporter()
    if config.explain_top < 0:
        raise UsageError("--explain-top must be 0 or more")
    if config.partition_mb <= 0:
        raise UsageError("--partition-mb must be positive")
    out = Path(config.out).resolve()
    state = RunState.open(out)
    try:
        return _run(config, out, state, reporter)
    finally:
        state.close()


def _run(config: WorklistConfig, out: Path, state: RunState, reporter: Reporter) -> WorklistResult:
    timings: dict[str, float] = {}
    export_errors: list[str] = []
    started = time.perf_counter()
    if config.from_server:
        folder, export_errors = _fetch_export(config, state, out, reporter)
        timings["export"] = round(time.perf_counter() - started, 3)
    else:
        folder = Path(config.source)
    source = list_source(folder)
    from cds_plugin.explain.engine import Engine

    model_version = Engine.load(config.model).version  # fails here, not on every worker
    state.pin("model_version", model_version, "model")
    state.pin("source", {"location": config.source, "fingerprint": source.fingerprint()}, "source")
    _forget_missing(state, out)
    removed = state.remove_untrusted()
    if removed:
        reporter.note(f"removed {removed} unfinished file(s) of an interrupted run")
    state.save()

    cluster = _OnDemand(config, reporter)
    try:
        if "partitions" not in state.data:
            workers = cluster.get().workers if config.scheduler else (config.workers or 1)
            wanted = -(-source.estimated_bytes() // int(config.partition_mb * MiB))
            state.data["partitions"] = max(wanted, 2 * workers, 1)
            state.save()
        partitions = int(state.data["partitions"])
        if not state.data.get("grouped") or len(state.scored) < partitions:
            cluster.get()  # started before the clock: start-up is not grouping time
        t0 = time.perf_counter()
        splits_done = _group(cluster, source, state, out, partitions, config, reporter)
        timings["group"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        scored_now, first = _score(cluster, state, out, partitions, config, reporter)
        timings["score"] = round(time.perf_counter() - t1, 3)
        if first is not None:
            timings["first_partition"] = round(first - t0, 3)
        table = ranked_rows(out / PARTS, range(partitions))
        missing = _unexplained(state, top_keys(table, config.explain_top))
        if missing:
            cluster.get()
        t2 = time.perf_counter()
        _explain(cluster, state, out, partitions, missing, config, reporter)
        timings["explain"] = round(time.perf_counter() - t2, 3)
        peaks = cluster.get().client.run(peak_rss_bytes) if cluster.started else {}
    finally:
        cluster.close()
    t3 = time.perf_counter()
    result = _outputs(config, state, out, source, table, export_errors, model_version)
    timings["outputs"] = round(time.perf_counter() - t3, 3)
    result.partitions = partitions
    result.partitions_scored = scored_now
    result.splits_done = splits_done
    result.dashboard = cluster.dashboard
    result.timings = timings
    result.worker_peak_rss = peaks
    return result


class _OnDemand:
    """The Dask cluster, started the first time a stage has work for it: a finished run reruns without."""

    def __init__(self, config: WorklistConfig, reporter: Reporter) -> None:
        self.config = config
        self.reporter = reporter
        self._cluster: Cluster | None = None
        self.dashboard: str | None = None

    @property
    def started(self) -> bool:
        return self._cluster is not None

    def get(self) -> Cluster:
        if self._cluster is None:
            config = self.config
            self._cluster = open_cluster(
                config.workers,
                config.scheduler,
                model_path=config.model,
                dashboard_address=config.dashboard_address,
            )
            self.dashboard = self._cluster.dashboard
            if self.dashboard:
                self.reporter.note(f"Dask dashboard: {self.dashboard}")
        return self._cluster

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()


# --- stage 1: export -------------------------------------------------------------------------------


def _fetch_export(
    config: WorklistConfig, state: RunState, out: Path, reporter: Reporter
) -> tuple[Path, list[str]]:
    export = state.export
    request = {"base": config.source.rstrip("/"), **config.export.to_json()}
    if export.get("request") not in (None, request):
        raise UsageError(
            f"{out} holds an export with other parameters; use another --out folder, or empty this one"
        )
    folder = out / EXPORT
    if export.get("complete"):
        return folder, list(export.get("errors", []))
    client = BulkDataClient(config.source, config.authorizer, allow_http=config.allow_http)
    reporter.begin("export", "export: waiting for the server", None)

    def progress(text: str | None) -> None:
        reporter.advance("export", 0, f"export: {text}" if text else "export: in progress")

    manifest = None
    if export.get("status_url"):
        try:
            manifest = client.wait(export["status_url"], progress)
        except JobGoneError:
            reporter.note("the server no longer has the interrupted export job; starting a new one")
    if manifest is None:
        shutil.rmtree(folder, ignore_errors=True)
        export.clear()
        export.update(request=request, status_url=client.kick_off(config.export), files={})
        state.save()
        manifest = client.wait(export["status_url"], progress)
    reporter.end("export")
    folder.mkdir(parents=True, exist_ok=True)
    export["transaction_time"] = manifest.transaction_time
    files: dict[str, Any] = export.setdefault("files", {})
    todo = [item for item in manifest.output if not (folder / _local_name(item.type, item.index)).exists()
            or str(item.index) not in files]  # fmt: skip
    reporter.begin("download", f"download: {len(todo)} file(s)", len(todo))
    for item in todo:
        name = _local_name(item.type, item.index)
        size = client.download(item, folder / name, with_token=manifest.requires_token)
        files[str(item.index)] = {"name": name, "type": item.type, "bytes": size}
        state.save()
        reporter.advance("download", 1)
    reporter.end("download")
    errors: list[str] = []
    if manifest.errors:
        errors_dir = out / EXPORT_ERRORS
        errors_dir.mkdir(exist_ok=True)
        for item in manifest.errors:
            path = errors_dir / f"OperationOutcome.{item.index:04d}.ndjson"
            client.download(item, path, with_token=manifest.requires_token)
            errors.extend(error_messages(path))
        reporter.note(f"the server reported {len(errors)} problem(s) with the export (see report.html)")
    export.update(complete=True, errors=errors)
    state.save()
    try:
        client.delete(export["status_url"])
        export["deleted"] = True
    except CdsPluginError as exc:
        reporter.note(f"warning: the export job could not be deleted on the server: {exc.message}")
    state.save()
    return folder, errors


def _local_name(rtype: str, index: int) -> str:
    # our own name (never a name from the server's URL): the type and the position in the manifest
    return f"{rtype}.{index:04d}.ndjson"


# --- bookkeeping ---------------------------------------------------------------------------------------


def _forget_missing(state: RunState, out: Path) -> None:
    """Drop manifest entries whose files were removed since (their work is then done again)."""
    splits = state.splits
    missing = [key for key in splits if not (out / GROUPS / key).is_dir()]
    if any(key.startswith("src-") for key in missing):
        for key in [k for k in splits if k.startswith("med-")]:
            splits.pop(key)  # stage 2 depends on every stage-1 task
    for key in missing:
        splits.pop(key, None)
    if missing:
        state.data["grouped"] = False
    scored = state.scored
    for key in list(scored):
        p = int(key)
        if not (score_file(str(out / PARTS), p).exists() and patients_file(str(out / PARTS), p).exists()):
            scored.pop(key)
    state.data["explained"] = [e for e in state.explained if (out / PARTS / e["file"]).exists()]


def _gather(
    cluster: Cluster,
    futures: dict[Future, Any],
    on_done: Callable[[Any, Any], None],
) -> None:
    """Wait for the futures, calling `on_done(tag, result)` as each finishes; cancel the rest on failure
    or Ctrl-C."""
    try:
        for future in as_completed(list(futures)):
            try:
                value = future.result()
            except KilledWorker as exc:
                raise WorklistError(
                    f"workers died running {futures[future]!s} several times ({exc}); out of memory? "
                    "try a smaller --partition-mb"
                ) from None
            on_done(futures[future], value)
    except BaseException:
        cluster.client.cancel(list(futures))
        raise


# --- stage 2: grouping ----------------------------------------------------------------------------------


def _group(
    cluster: _OnDemand,
    source: Source,
    state: RunState,
    out: Path,
    partitions: int,
    config: WorklistConfig,
    reporter: Reporter,
) -> int:
    if state.data.get("grouped"):
        return 0
    groups = str(out / GROUPS)
    client = cluster.get().client
    pending = [(f"src-{i:05d}", f) for i, f in enumerate(source.files) if f"src-{i:05d}" not in state.splits]
    reporter.begin("group", "grouping by patient", len(source.files))
    reporter.advance("group", len(source.files) - len(pending))

    def done(key: str, result: SplitResult) -> None:
        state.splits[key] = result.to_json()
        state.save()
        reporter.advance("group", 1)

    futures = {
        client.submit(
            split_file,
            f.path,
            os.path.relpath(f.path, source.folder),
            key,
            groups,
            partitions,
            max_bytes=config.max_line_bytes,
            key=f"group-{key}-{uuid.uuid4().hex[:6]}",
            pure=False,
        ): key
        for key, f in pending
    }
    _gather(cluster.get(), futures, done)
    stage1 = [SplitResult.from_json(v) for k, v in sorted(state.splits.items()) if k.startswith("src-")]
    aside = [r for r in stage1 if r.set_aside and f"med-{r.key[4:]}" not in state.splits]
    if aside:
        mapping = client.scatter(medication_map(groups, stage1), broadcast=True)
        futures = {
            client.submit(
                split_file,
                str(Path(groups) / r.folder / MEDICATIONS_FILE),
                f"Medications of {r.key}",
                f"med-{r.key[4:]}",
                groups,
                partitions,
                medication_map=mapping,
                max_bytes=config.max_line_bytes,
                key=f"group-med-{r.key[4:]}-{uuid.uuid4().hex[:6]}",
                pure=False,
            ): f"med-{r.key[4:]}"
            for r in aside
        }

        def done_medications(key: str, result: SplitResult) -> None:
            state.splits[key] = result.to_json()
            state.save()

        _gather(cluster.get(), futures, done_medications)
    state.data["grouped"] = True
    state.save()
    reporter.end("group")
    return len(pending) + len(aside)


def _results(state: RunState) -> list[SplitResult]:
    return [SplitResult.from_json(v) for _, v in sorted(state.splits.items())]


# --- stage 3: scoring ---------------------------------------------------------------------------------


def _score(
    cluster: _OnDemand,
    state: RunState,
    out: Path,
    partitions: int,
    config: WorklistConfig,
    reporter: Reporter,
) -> tuple[int, float | None]:
    groups, parts = str(out / GROUPS), str(out / PARTS)
    results = _results(state)
    pending = [p for p in range(partitions) if str(p) not in state.scored]
    if not pending:
        return 0, None
    reporter.begin("score", "scoring partitions", partitions)
    reporter.advance("score", partitions - len(pending))
    first: list[float] = []

    def done(partition: int, summary: dict[str, Any]) -> None:
        state.scored[str(partition)] = summary
        state.save()
        if not first:
            first.append(time.perf_counter())
        reporter.advance("score", 1)

    futures = {
        cluster.get().client.submit(
            score_partition,
            p,
            pieces_of(p, groups, results),
            parts,
            config.max_line_bytes,
            key=f"score-{p:05d}-{uuid.uuid4().hex[:6]}",
            pure=False,
        ): p
        for p in pending
    }
    _gather(cluster.get(), futures, done)
    reporter.end("score")
    return len(pending), (first[0] if first else None)


# --- stage 4: explanations ------------------------------------------------------------------------------


def _unexplained(state: RunState, wanted: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The top rows that have no explanation yet (and were not found unexplainable before)."""
    done_keys = {tuple(k) for e in state.explained for k in e["keys"]}
    tried = {tuple(k) for k in state.data.get("unexplainable", [])}
    return [k for k in wanted if k not in done_keys and k not in tried]


def _explain(
    cluster: _OnDemand,
    state: RunState,
    out: Path,
    partitions: int,
    missing: list[tuple[str, str, str]],
    config: WorklistConfig,
    reporter: Reporter,
) -> None:
    if not missing:
        return
    by_partition: dict[int, list[tuple[str, str, str]]] = {}
    for key in missing:
        by_partition.setdefault(partition_of(key[0], partitions), []).append(key)
    groups, parts = str(out / GROUPS), str(out / PARTS)
    results = _results(state)
    reporter.begin("explain", f"explaining {len(missing)} of the top {config.explain_top} rows", len(missing))

    def done(partition: int, summary: dict[str, Any]) -> None:
        state.explained.append({"partition": partition, "file": summary["file"], "keys": summary["keys"]})
        explained = {tuple(k) for k in summary["keys"]}
        failed = [list(k) for k in by_partition[partition] if k not in explained]
        state.data.setdefault("unexplainable", []).extend(failed)  # not retried on a rerun
        state.save()
        reporter.advance("explain", len(by_partition[partition]))

    futures = {
        cluster.get().client.submit(
            explain_partition,
            p,
            pieces_of(p, groups, results),
            rows,
            parts,
            config.max_line_bytes,
            key=f"explain-{p:05d}-{uuid.uuid4().hex[:6]}",
            pure=False,
        ): p
        for p, rows in sorted(by_partition.items())
    }
    _gather(cluster.get(), futures, done)
    reporter.end("explain")


# --- stage 5: outputs -----------------------------------------------------------------------------------


def _problems(state: RunState, source: Source, export_errors: list[str]) -> list[Unread]:
    splits = list(state.splits.values())
    scored = list(state.scored.values())
    examples = [f"{name}, line {line}: {reason}" for s in splits for name, line, reason in s["examples"]]
    not_used: Counter[str] = Counter()
    no_patient: Counter[str] = Counter()
    orphans: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    unreadable: Counter[str] = Counter()
    for s in splits:
        not_used.update(s["not_used"])
        no_patient.update(s["no_patient"])
    for s in scored:
        orphans.update(s["orphans"])
        skipped.update(s["skipped_in_records"])
        unreadable.update(s["unreadable_reasons"])

    def listing(counter: Counter[str]) -> list[str]:
        return [f"{what}: {n}" for what, n in counter.most_common()]

    return [
        Unread("malformed NDJSON lines (file, line: why)", sum(s["malformed"] for s in splits), examples),
        Unread(
            "files not opened (a resource type the model does not use)",
            len(source.not_read),
            [f"{os.path.relpath(f.path, source.folder)} ({f.type})" for f in source.not_read],
            resources=False,
        ),
        Unread("resources of types the model does not use", sum(not_used.values()), listing(not_used)),
        Unread(
            "resources that name no patient (no literal Patient reference)",
            sum(no_patient.values()),
            listing(no_patient),
        ),
        Unread("resources of a patient that is not in the export", sum(orphans.values()), listing(orphans)),
        Unread(
            "Medications no MedicationRequest of the export references",
            sum(s["unreferenced"] for s in splits),
        ),
        Unread(
            "resources skipped while reading a patient's record (why)",
            sum(skipped.values()),
            listing(skipped),
        ),
        Unread(
            "patients whose record could not be read (why)",
            sum(unreadable.values()),
            listing(unreadable),
            resources=False,
        ),
        Unread(
            "problems the server reported in the export's error files",
            len(export_errors),
            export_errors,
            resources=False,
        ),
    ]


def _outputs(
    config: WorklistConfig,
    state: RunState,
    out: Path,
    source: Source,
    table: Any,
    export_errors: list[str],
    model_version: str,
) -> WorklistResult:
    partitions = int(state.data["partitions"])
    final = with_evidence(table, [out / PARTS / e["file"] for e in state.explained], config.explain_top)
    parquet, csv = write_outputs(final, out)
    people = patients_table(out / PARTS, range(partitions))
    statuses = Counter(people["status"].to_pylist())
    explained = sum(1 for v in final["evidence_1_reference"].to_pylist() if v)
    problems = _problems(state, source, export_errors)
    unread_resources = sum(p.count for p in problems if p.resources)
    summary = {
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "model_version": model_version,
        "source": config.source if config.from_server else Path(config.source).name,
        "patients": statuses.get("scored", 0),
        "rows": final.num_rows,
        "patients_with_rows": len(set(final["patient"].to_pylist())),
        "explained": explained,
        "explain_top": config.explain_top,
        "unreadable": statuses.get("unreadable", 0),
        "unread_resources": unread_resources,
    }
    html = render_report(final, summary, problems)
    report = out / REPORT
    tmp = report.with_name(f".tmp-{REPORT}")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, report)
    return WorklistResult(
        out=out,
        worklist=parquet,
        csv=csv,
        report=report,
        patients=statuses.get("scored", 0),
        unreadable=statuses.get("unreadable", 0),
        rows=final.num_rows,
        explained=explained,
        partitions=partitions,
        partitions_scored=0,
        splits_done=0,
        unread_resources=unread_resources,
        problems=problems,
        dashboard=None,
        timings={},
        worker_peak_rss={},
    )
