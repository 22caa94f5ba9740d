"""A throwaway PostgreSQL cluster for the test session, so the README's `python -m pytest` runs what CI runs.

A pytest plugin (tests/conftest.py names it in `pytest_plugins`). When CDS_PLUGIN_TEST_POSTGRES_URL is
not set and PostgreSQL's server programs are found (`initdb` and `pg_ctl` under
/usr/lib/postgresql/*/bin, as Debian installs them, or on PATH), the first test that needs PostgreSQL
starts a cluster with `.ci/postgres start` and sets CDS_PLUGIN_TEST_POSTGRES_URL to it; the session
stops and deletes it at the end. Lazily, so a run without postgres tests pays nothing. Without the
programs, or when the cluster does not start, `session_postgres_url` gives the reason, and
tests.helpers.databases skips every postgres test with it, in one line of pytest's summary, or fails
them under CDS_PLUGIN_REQUIRE_POSTGRES=1 (CI).

The cluster's folder is a fresh one in /tmp, not pytest's tmp_path: as root, .ci/postgres gives the
cluster to the `postgres` user, who cannot enter root's pytest folders.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "postgres"
POSTGRES_URL_ENV = "CDS_PLUGIN_TEST_POSTGRES_URL"
#: Where Debian puts each PostgreSQL version's server programs (they are not on PATH there).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_PROGRAMS = ("initdb", "pg_ctl")


def server_bin_dir() -> Path | None:
    """The folder holding initdb and pg_ctl: the newest Debian version's, else PATH's; None without both."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for folder in sorted(glob.glob(DEBIAN_BIN_GLOB), key=version, reverse=True):
        if all(os.access(Path(folder) / p, os.X_OK) for p in SERVER_PROGRAMS):
            return Path(folder)
    found = [shutil.which(p) for p in SERVER_PROGRAMS]
    if all(found) and len({Path(str(f)).resolve().parent for f in found}) == 1:
        return Path(str(found[0])).resolve().parent
    return None


@dataclass
class _Cluster:
    """The session's cluster: its folder and URL once started, or why it could not be."""

    directory: Path | None = None
    url: str | None = None
    problem: str | None = None
    tried: bool = False


_cluster = _Cluster()


def _start() -> None:
    _cluster.tried = True
    if server_bin_dir() is None:
        _cluster.problem = (
            "no PostgreSQL for the postgres tests: no initdb and pg_ctl on PATH or under "
            f"{DEBIAN_BIN_GLOB} (install PostgreSQL, or set {POSTGRES_URL_ENV} to a server)"
        )
        return
    directory = Path(tempfile.mkdtemp(prefix="cds-plugin-pg."))
    try:
        result = subprocess.run(
            [str(SCRIPT), "start", str(directory)], capture_output=True, text=True, timeout=180
        )
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess([], 1, "", "timed out after 180 s")
    url = result.stdout.strip()
    if result.returncode != 0 or not url:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        _cluster.problem = f"no PostgreSQL for the postgres tests: the cluster did not start: {last}"
        subprocess.run([str(SCRIPT), "stop", str(directory)], capture_output=True, timeout=60)
        return
    _cluster.directory, _cluster.url = directory, url
    os.environ[POSTGRES_URL_ENV] = url  # for what reads the variable itself, and for servers started later


def session_postgres_url() -> tuple[str | None, str | None]:
    """(URL, None) of the session's server, starting the throwaway cluster on first use; (None, why) when
    there is none. CDS_PLUGIN_TEST_POSTGRES_URL, when given, is used as it is."""
    given = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if given:
        return given, None
    if not _cluster.tried:
        _start()
    return _cluster.url, _cluster.problem


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Skips of postgres tests carry this file as their place, so the summary folds those with one reason
    into one line (pytest folds skips by place and reason, and a skip in a fixture takes the test's)."""
    report = yield
    if report.skipped and isinstance(report.longrepr, tuple) and item.get_closest_marker("postgres"):
        _, _, reason = report.longrepr
        report.longrepr = (__file__, None, reason)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop and delete the cluster this session started (a given server is left alone)."""
    if _cluster.directory is None:
        return
    if os.environ.get(POSTGRES_URL_ENV) == _cluster.url:
        del os.environ[POSTGRES_URL_ENV]
    subprocess.run([str(SCRIPT), "stop", str(_cluster.directory)], capture_output=True, timeout=120)
    _cluster.directory = _cluster.url = None
