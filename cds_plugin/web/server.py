"""Production serving with gunicorn: workers, threads, bind and timeout from the settings.

No preload: each worker builds its own app, so heavy objects (the model) load once per worker and no
torch state is shared across a fork. Each worker uses `torch_threads` threads (default 1): several
workers each using all cores oversubscribe the CPU and make explanations many times slower.
"""

from __future__ import annotations

import os
from typing import Any

from gunicorn.app.base import BaseApplication

from cds_plugin.settings import Settings


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
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from cds_plugin.web.app import create_app

        return create_app(self.settings)


def serve(settings: Settings) -> None:
    GunicornServer(settings).run()
