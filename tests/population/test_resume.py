"""Resuming and surviving failures: a rerun redoes nothing finished, an interrupted run continues, a
SIGKILLed worker costs nothing but time, Ctrl-C leaves nothing a rerun trusts wrongly, and a folder
holding another run is refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cds_plugin.population.manifest import MANIFEST, UsageError
from cds_plugin.population.pipeline import SilentReporter, WorklistConfig, run_worklist

ROOT = Path(__file__).resolve().parents[2]
PARTITION_MB = 0.5  # the 4 MB corpus export in about 8 partitions
#: the Ctrl-C test cuts the export finer, so that work is left when its first partition is scored
SMALL_PARTITION_MB = 0.05
TOP = 4


def config(
    source: Path, out: Path, model: Path, scheduler: str, partition_mb: float = PARTITION_MB
) -> WorklistConfig:
    return WorklistConfig(
        source=str(source),
        out=out,
        scheduler=scheduler,
        explain_top=TOP,
        model=str(model),
        partition_mb=partition_mb,
        dashboard_address=":0",
    )


def worklist(out: Path) -> list[dict]:
    return pq.read_table(out / "worklist.parquet").to_pylist()


def assert_same_worklist(got: list[dict], expected: list[dict]) -> None:
    """Row for row the same; attributions within 1e-6, because a partition rescored in another worker
    process sums its integrated-gradients batches in another floating-point order (about 1e-10 apart)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key.endswith("_attribution") and a[key] is not None and b[key] is not None:
                assert abs(a[key] - b[key]) < 1e-6, (key, a[key], b[key])
            else:
                assert a[key] == b[key], (key, a[key], b[key])


def scored_patients(out: Path) -> list[str]:
    refs: list[str] = []
    for path in sorted((out / "parts").glob("patients-*.parquet")):
        refs += pq.read_table(path).column("patient").to_pylist()
    return refs


@pytest.fixture(scope="module")
def clean(tmp_path_factory, export_dir: Path, tiny_model: Path, shared_cluster: str):
    out = tmp_path_factory.mktemp("clean")
    result = run_worklist(config(export_dir, out, tiny_model, shared_cluster))
    return result, worklist(out)


class InterruptAfter(SilentReporter):
    """Ctrl-C (as the client process sees it) after `n` partitions finish."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def advance(self, stage: str, amount: float = 1, description: str | None = None) -> None:
        if stage == "score" and amount == 1:
            self.seen += 1
            if self.seen == self.n:
                raise KeyboardInterrupt


def test_clean_run_scores_every_patient_once(clean, patient_refs: set[str]) -> None:
    result, rows = clean
    assert result.partitions >= 8
    assert result.partitions_scored == result.partitions
    assert sorted(scored_patients(result.out)) == sorted(patient_refs)
    assert result.patients == len(patient_refs)
    assert sum(1 for r in rows if r["evidence_1_reference"]) == TOP
    assert any(
        p.what.startswith("files not opened") and p.count == 1 for p in result.problems
    )  # the Claim file


def test_rerun_redoes_nothing(clean, export_dir: Path, tiny_model: Path, shared_cluster: str) -> None:
    result, rows = clean
    parts = {p.name: p.stat().st_mtime_ns for p in (result.out / "parts").iterdir()}
    again = run_worklist(config(export_dir, result.out, tiny_model, shared_cluster))
    assert (again.splits_done, again.partitions_scored) == (0, 0)
    assert again.worker_peak_rss == {} and again.dashboard is None  # no cluster needed at all
    assert {p.name: p.stat().st_mtime_ns for p in (result.out / "parts").iterdir()} == parts
    assert worklist(result.out) == rows


def test_interrupted_run_continues_where_it_stopped(
    clean, tmp_path: Path, export_dir: Path, tiny_model: Path, shared_cluster: str
) -> None:
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_worklist(config(export_dir, out, tiny_model, shared_cluster), InterruptAfter(3))
    manifest = json.loads((out / MANIFEST).read_text())
    done = set(manifest["scored"])
    assert len(done) >= 3 and not (out / "worklist.parquet").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "parts").iterdir() if p.name.startswith("score-")}
    # what an interrupted task could leave: files the manifest does not list
    (out / "parts" / "score-00999.parquet").write_bytes(b"not trusted")
    (out / "parts" / ".tmp-score-00001.parquet-0000").write_bytes(b"half written")
    (out / "groups" / ".tmp-src-00000-abcd").mkdir()
    result = run_worklist(config(export_dir, out, tiny_model, shared_cluster))
    assert result.splits_done == 0
    assert result.partitions_scored == result.partitions - len(done)
    for name, mtime in kept.items():
        if int(name[6:11]) in {int(k) for k in done}:
            assert (out / "parts" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    names = {p.name for p in (out / "parts").iterdir()} | {p.name for p in (out / "groups").iterdir()}
    assert not {n for n in names if n.startswith(".tmp-") or n == "score-00999.parquet"}
    assert_same_worklist(worklist(out), clean[1])


def test_a_folder_holding_another_run_is_refused(
    clean, tmp_path: Path, export_dir: Path, tiny_model: Path, shared_cluster: str
) -> None:
    result, _ = clean
    other = tmp_path / "other-export"
    shutil.copytree(export_dir, other)
    with pytest.raises(UsageError, match="another source"):
        run_worklist(config(other, result.out, tiny_model, shared_cluster))
    copy = tmp_path / "copy"
    shutil.copytree(result.out, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["model_version"] = "some-other-model"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UsageError, match="another model"):
        run_worklist(config(export_dir, copy, tiny_model, shared_cluster))


def test_sigkill_of_a_worker_mid_run_still_scores_every_patient_once(
    clean, tmp_path: Path, export_dir: Path, tiny_model: Path, patient_refs: set[str], shared_cluster: str
) -> None:
    from distributed import Client

    client = Client(shared_cluster)
    killed: list[tuple[str, int, tuple]] = []

    class KillOne(SilentReporter):
        """On the first finished partition, SIGKILL a worker that is running a task."""

        def advance(self, stage: str, amount: float = 1, description: str | None = None) -> None:
            if stage != "score" or amount != 1 or killed:
                return
            busy = {w: tasks for w, tasks in client.processing().items() if tasks}
            if busy:
                worker, tasks = next(iter(busy.items()))
                pid = client.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed.append((worker, pid, tuple(tasks)))

    try:
        out = tmp_path / "out"
        result = run_worklist(config(export_dir, out, tiny_model, shared_cluster), KillOne())
    finally:
        client.close()
    assert killed, "no worker was busy when the first partition finished"
    assert any(key.startswith("score-") for key in killed[0][2])  # a scoring task was lost with it
    assert sorted(scored_patients(out)) == sorted(patient_refs)
    assert result.partitions_scored == result.partitions
    assert_same_worklist(worklist(out), clean[1])


def test_ctrl_c_on_the_command_line_then_rerun(
    clean, tmp_path: Path, export_dir: Path, tiny_model: Path, shared_cluster: str
) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "cds_plugin.cli", "worklist", str(export_dir), "--out", str(out),
        "--workers", "2", "--model", str(tiny_model), "--explain-top", str(TOP),
        "--partition-mb", str(SMALL_PARTITION_MB),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a session of its own, so the signal goes to every process of it, as a terminal's Ctrl-C does
    # and SIGINT at its default, as in a terminal's foreground job: a child inherits an ignored SIGINT,
    # and earlier tests in this process may have left it ignored (Python then installs no handler)
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if json.loads((out / MANIFEST).read_text()).get("scored"):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        assert process.poll() is None, "the run ended before it could be interrupted"
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, err.decode()
    assert b"rerun the same command to continue" in err
    assert not (out / "worklist.parquet").exists()
    done = json.loads((out / MANIFEST).read_text())["scored"]
    assert done
    result = run_worklist(config(export_dir, out, tiny_model, shared_cluster, SMALL_PARTITION_MB))
    assert result.partitions_scored == result.partitions - len(done)
    assert_same_worklist(worklist(out), clean[1])
