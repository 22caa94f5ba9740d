"""Production serving with gunicorn: workers, threads, bind and timeout from the settings.

No preload: each worker builds its own app, so heavy objects (the model) load once per worker and no
torch state is shared across a fork. Each worker uses `torch_threads` threads (default 1): several
workers each using all cores oversubscribe the CPU and make explanations many times slower.

Metrics: every worker is a process of its own, so prometheus_client runs in multi-process mode. The
arbiter points PROMETHEUS_MULTIPROC_DIR at an emptied folder before any worker forks (prometheus_client
reads the variable when first imported, so nothing here imports it before), each worker writes its
values there and `/metrics` sums them over all workers (cds_plugin.metrics).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from cds_plugin.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # not imported from cds_plugin.metrics: see above


def _set_worker_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


class GunicornServer(BaseApplication):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": s.bind,
            "workers": s.workers,
            "threads": s.threads,
            "worker_class": "gthread" if s.threads > 1 else "sync",
            "timeout": s.timeout_s,
            "graceful_timeout": s.timeout_s,
            "preload_app": False,
            "accesslog": None,  # our own call log has what is needed, without query strings
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "limit_request_line": 8190,
            "post_fork": lambda _server, _worker: _set_worker_threads(s.torch_threads),
            "child_exit": _child_exit,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from cds_plugin.web.app import create_app

        return create_app(self.settings)


def _child_exit(_server: Any, worker: Any) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from cds_plugin import metrics  # the variable is set by now: multi-process values

        metrics.worker_exited(worker.pid)


def prepare_metrics_dir(settings: Settings) -> str | None:
    """Before workers fork: an empty folder for the workers' metric files, named by PROMETHEUS_MULTIPROC_DIR.

    The operator's PROMETHEUS_MULTIPROC_DIR (e.g. a tmpfs) is used when set, else `data_dir/metrics`.
    Files of an earlier run are removed: their processes are gone and Prometheus handles counter resets.
    """
    if not settings.metrics_enabled:
        return None
    path = Path(os.environ.get(MULTIPROC_ENV) or Path(settings.data_dir) / "metrics").resolve()
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


def serve(settings: Settings) -> None:
    prepare_metrics_dir(settings)
    GunicornServer(settings).run()
