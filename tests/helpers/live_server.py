"""Start the real server (`cds-plugin serve`, gunicorn or --dev) as a subprocess on a free loopback port.

Used wherever a test needs a real process: to kill it, to read its logs, to reach it over HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    proc: subprocess.Popen
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def workers(self) -> set[int]:
        """The pids of the gunicorn workers (children of the arbiter) right now."""
        pid = self.proc.pid
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the whole process group), SIGKILL after 20 s."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the arbiter and every worker at once: no shutdown code runs."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)


def start_server(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, workers: int = 2, ready_s: float = 90
) -> LiveServer:
    """Start `cds-plugin serve *args` with its data in `data_dir`; wait until /readyz answers 200."""
    port = free_port()
    environ = {
        **os.environ,
        "CDS_PLUGIN_BIND": f"127.0.0.1:{port}",
        "CDS_PLUGIN_DATA_DIR": str(data_dir),
        "CDS_PLUGIN_WORKERS": str(workers),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    log_path = data_dir / "server.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cds_plugin.cli", "serve", *args],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LiveServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {server.log()[-4000:]}")
        try:
            if requests.get(server.base + "/readyz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.kill()
    pytest.fail(f"server did not become ready within {ready_s:.0f} s")
