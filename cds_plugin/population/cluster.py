"""The Dask cluster a worklist runs on, and the worker plugin that loads the Engine once per worker.

By default a `LocalCluster` of worker processes on loopback, one thread each (torch gets one thread
too: the processes are the parallelism); with a scheduler address, the cluster already running there,
unchanged. Tasks never carry the model: `EnginePlugin` loads it when a worker starts (and again when
a killed worker is restarted by its nanny), and tasks find it with `worker_engine()`. On a cluster the
model folder, the export and the output folder must be at the same paths on every worker (a shared
file system), since tasks read and write files there. Local workers ignore SIGINT: on Ctrl-C the client
cancels the tasks and closes the cluster itself.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed import Client, LocalCluster, WorkerPlugin, get_worker

if TYPE_CHECKING:
    from cds_plugin.explain.engine import Engine

PLUGIN_NAME = "cds-plugin-engine"
DEFAULT_DASHBOARD = "127.0.0.1:8787"


class EnginePlugin(WorkerPlugin):
    """Loads the model on each worker as it starts; `torch_threads` torch threads per worker."""

    name = PLUGIN_NAME

    def __init__(
        self, model_path: str | None, torch_threads: int = 1, *, ignore_sigint: bool = False
    ) -> None:
        self.model_path = model_path
        self.torch_threads = torch_threads
        self.ignore_sigint = ignore_sigint
        self.engine: Engine | None = None

    def setup(self, worker: Any) -> None:
        import torch

        from cds_plugin.explain.engine import Engine

        if self.ignore_sigint and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # also in a worker the nanny restarted
        torch.set_num_threads(self.torch_threads)
        self.engine = Engine.load(self.model_path)

    def __getstate__(self) -> dict[str, Any]:
        # what travels to the scheduler and the workers: the path, never a loaded model
        state = dict(self.__dict__)
        state["engine"] = None
        return state


def worker_engine() -> Engine:
    """The Engine the plugin loaded on the worker running the current task."""
    plugin = get_worker().plugins.get(PLUGIN_NAME)
    engine = getattr(plugin, "engine", None)
    if engine is None:
        raise RuntimeError("the cds-plugin worker plugin is not set up on this worker")
    return engine


@dataclass
class Cluster:
    """A connected client, the LocalCluster it started (None for an existing scheduler), the dashboard."""

    client: Client
    local: LocalCluster | None
    dashboard: str | None

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> process id (tests kill one; the benchmark reads their memory)."""
        import os

        return self.client.run(os.getpid)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self.local is not None:
                # A worker with torch loaded can take longer to exit than the nanny waits (4 s) on a busy
                # machine; it is then killed, which is harmless here: every result is on disk already.
                nanny_log = logging.getLogger("distributed.nanny")
                level = nanny_log.level
                nanny_log.setLevel(logging.ERROR)
                try:
                    self.local.close()
                finally:
                    nanny_log.setLevel(level)


def open_cluster(
    workers: int | None,
    scheduler: str | None,
    *,
    model_path: str | None,
    dashboard_address: str = DEFAULT_DASHBOARD,
) -> Cluster:
    """Start (or connect to) the cluster and register the Engine plugin; returns once workers are ready."""
    if scheduler:
        client = Client(scheduler, timeout="30s")
        local = None
    else:
        with _sigint_ignored():
            local = LocalCluster(
                n_workers=workers or 1,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=dashboard_address,
                silence_logs=logging.WARNING,
            )
        client = Client(local)
    try:
        client.register_plugin(EnginePlugin(model_path, ignore_sigint=local is not None))
        dashboard = client.dashboard_link if _has_dashboard(client) else None
    except BaseException:
        client.close()
        if local is not None:
            local.close()
        raise
    return Cluster(client, local, dashboard)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start local workers with SIGINT ignored (inherited through exec): Ctrl-C in a terminal reaches the
    whole process group, and it is the client that cancels the tasks and closes its cluster, without a
    KeyboardInterrupt traceback from every worker. An existing cluster's workers are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _has_dashboard(client: Client) -> bool:
    try:
        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:  # an old scheduler without services info: still print the link
        return True
