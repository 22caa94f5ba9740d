"""From the sandbox FHIR server's Bulk Data export to the worklist, end to end, checked against the Engine."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import json
import re
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cds_plugin.cli import main
from cds_plugin.fhir.ndjson import read_ndjson
from cds_plugin.population.authorization import StaticToken
from cds_plugin.population.bulk_client import ExportRequest
from cds_plugin.population.manifest import MANIFEST
from cds_plugin.population.pipeline import SilentReporter, WorklistConfig, run_worklist
from cds_plugin.population.worklist import COLUMNS
from cds_plugin.sandbox.fhir_server import FhirServer

TOKEN = "worklist-token"
TOP = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_model: Path, shared_cluster: str):
    """One `cds-plugin worklist URL ...` over the corpus served with a token; what it printed and wrote."""
    out = tmp_path_factory.mktemp("worklist")
    with FhirServer(corpus, token=TOKEN, export_delay_s=0.5, export_file_lines=400) as server:
        err, std = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            code = main(
                ["worklist", server.base_url, "--out", str(out), "--scheduler", shared_cluster,
                 "--token", TOKEN, "--explain-top", str(TOP), "--model", str(tiny_model)]
            )  # fmt: skip
        jobs_left = len(server.exports._jobs)
    return {
        "code": code,
        "out": out,
        "stdout": std.getvalue(),
        "stderr": err.getvalue(),
        "jobs_left": jobs_left,
    }


def test_the_run_succeeds_deletes_the_job_and_says_where_things_are(run) -> None:
    assert run["code"] == 0, run["stderr"]
    assert run["jobs_left"] == 0  # DELETE at the end
    assert "Dask dashboard: http://" in run["stderr"]
    assert str(run["out"] / "worklist.parquet") in run["stdout"]
    assert "Traceback" not in run["stderr"]


def test_rows_are_exactly_the_engines_suggestions(run, engine) -> None:
    rows = pq.read_table(run["out"] / "worklist.parquet").to_pylist()
    assert rows, "the tiny model suggests something for the corpus"
    records = {r.reference: r for r in read_ndjson(run["out"] / "export")}
    for reference, record in records.items():
        assessment = engine.assess(record)
        expected = {
            (c.kind, c.code): c.probability
            for c in assessment.considerations
            if c.probability >= c.threshold and not c.documented and abs(c.probability - c.threshold) > 1e-5
        }
        got = {(r["kind"], r["code"]): r["probability"] for r in rows if r["patient"] == reference}
        assert set(expected) <= set(got)
        assert len(got) - len(expected) <= sum(  # only borderline ones may differ
            1 for c in assessment.considerations if abs(c.probability - c.threshold) <= 1e-5
        )
        for key, probability in expected.items():
            assert got[key] == pytest.approx(probability, abs=1e-5)


def test_columns_ranks_and_evidence_on_the_top_rows(run) -> None:
    table = pq.read_table(run["out"] / "worklist.parquet")
    assert table.column_names == COLUMNS
    rows = table.to_pylist()
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["probability"] >= b["probability"] for a, b in itertools.pairwise(rows))
    assert all(r["probability"] >= r["threshold"] for r in rows)
    assert all(r["patient"].startswith("Patient/") and r["kind"] in ("diagnosis", "treatment") for r in rows)
    records = {r.reference: r for r in read_ndjson(run["out"] / "export")}
    for row in rows[:TOP]:
        references = records[row["patient"]].references()
        for k in (1, 2, 3):
            assert row[f"evidence_{k}_reference"] in references  # the patient's own resources
            assert isinstance(row[f"evidence_{k}_attribution"], float)
            assert row[f"evidence_{k}_what"]
            date = row[f"evidence_{k}_date"]
            assert date is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", date)
        scores = [abs(row[f"evidence_{k}_attribution"]) for k in (1, 2, 3)]
        assert scores == sorted(scores, reverse=True)
    assert all(row[f"evidence_{k}_reference"] is None for row in rows[TOP:] for k in (1, 2, 3))
    with (run["out"] / "worklist.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        assert sum(1 for _ in reader) == len(rows)


def test_every_patient_of_the_export_scored_once(run) -> None:
    patients = []
    for path in sorted((run["out"] / "parts").glob("patients-*.parquet")):
        patients += pq.read_table(path).column("patient").to_pylist()
    exported = {r.reference for r in read_ndjson(run["out"] / "export")}
    assert sorted(patients) == sorted(exported)


def test_report_is_self_contained_with_counts_histogram_and_filters(run) -> None:
    html = (run["out"] / "report.html").read_text()
    assert "<svg" in html and 'id="f-kind"' in html and "Counts per consideration" in html
    assert "What was not read, and why" in html
    # nothing is loaded from elsewhere: no external script, style sheet, image or font
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=\"(?!data:)", html)
    assert "@import" not in html and "url(" not in html
    assert "default-src 'none'" in html


def test_a_server_refusal_is_a_message_not_a_traceback(tmp_path: Path, corpus: Path, capsys) -> None:
    with FhirServer(corpus, token=TOKEN) as server:
        code = main(["worklist", server.base_url, "--out", str(tmp_path / "out"), "--token", "wrong"])
    err = capsys.readouterr().err
    assert code == 1
    assert "export kick-off: HTTP 401: error: a bearer token is required" in err
    assert "Traceback" not in err


class InterruptDownload(SilentReporter):
    """Ctrl-C (as the client sees it) once the first export file is on disk."""

    def advance(self, stage: str, amount: float = 1, description: str | None = None) -> None:
        if stage == "download" and amount == 1:
            raise KeyboardInterrupt


def test_an_interrupted_download_continues_with_the_same_job(
    tmp_path: Path, corpus: Path, tiny_model: Path, shared_cluster: str
) -> None:
    out = tmp_path / "out"
    with FhirServer(corpus, token=TOKEN, export_file_lines=400) as server:
        config = WorklistConfig(
            source=server.base_url,
            out=out,
            scheduler=shared_cluster,
            explain_top=0,
            model=str(tiny_model),
            authorizer=StaticToken(TOKEN),
            export=ExportRequest(types=("Patient", "Condition", "Observation")),
        )
        with pytest.raises(KeyboardInterrupt):
            run_worklist(config, InterruptDownload())
        export = json.loads((out / MANIFEST).read_text())["export"]
        assert len(export["files"]) == 1 and not export.get("complete")
        [first] = export["files"].values()
        first_mtime = (out / "export" / first["name"]).stat().st_mtime_ns
        result = run_worklist(config)
        again = json.loads((out / MANIFEST).read_text())["export"]
        assert again["status_url"] == export["status_url"]  # the same job, not a new export
        assert (out / "export" / first["name"]).stat().st_mtime_ns == first_mtime  # not fetched again
        assert again["complete"] and again["deleted"]
        assert result.patients == 24

        # the job is gone on the server (expired, deleted): a rerun starts a new export
        other = tmp_path / "other"
        with pytest.raises(KeyboardInterrupt):
            run_worklist(replace(config, out=other), InterruptDownload())
        status_url = json.loads((other / MANIFEST).read_text())["export"]["status_url"]
        server.exports.delete(status_url.rsplit("/", 1)[1])
        notes: list[str] = []

        class Notes(SilentReporter):
            def note(self, text: str) -> None:
                notes.append(text)

        assert run_worklist(replace(config, out=other), Notes()).patients == 24
        assert any("starting a new one" in n for n in notes)
        assert json.loads((other / MANIFEST).read_text())["export"]["status_url"] != status_url
