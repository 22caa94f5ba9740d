"""Work done after a hook call has been answered (integrated gradients for the explanation page).

It must never slow the calls themselves: one thread per worker process, running at the lowest CPU
priority (on Linux `nice` is per thread, so the request threads of every worker win the cores), and a
bounded backlog: under sustained load, work beyond `max_pending` is skipped rather than queued without
end (an unbounded queue holds every patient record it was given, so memory would grow with the load).
Skipped work is not lost for the clinician: the explanation page computes what is missing when opened.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: Outcomes reported to `on_outcome`: the job ran, was skipped (backlog full or off), or raised.
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
_STOP: Any = object()


class BackgroundQueue:
    """A bounded FIFO of jobs run by one low-priority daemon thread, started on first use."""

    def __init__(
        self,
        max_pending: int,
        *,
        nice: int = 19,
        on_outcome: Callable[[str], None] | None = None,
        name: str = "after-response",
    ) -> None:
        self.max_pending = max_pending
        self.nice = nice
        self.on_outcome = on_outcome or (lambda _outcome: None)
        self.name = name
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._pending = 0  # queued + running
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def submit(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Queue `fn(*args)`; False (and a "skipped" outcome) when the backlog is full or disabled."""
        with self._lock:
            if self._pending >= self.max_pending:
                accepted = False
            else:
                self._pending += 1
                accepted = True
                self._ensure_thread()
        if not accepted:
            self.on_outcome(SKIPPED)
            return False
        self._jobs.put((fn, args))
        return True

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is queued or running (tests, orderly shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drop the queued jobs and let the running one finish (at exit: a thread killed inside torch
        aborts the process)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is None or not thread.is_alive():
            return
        while True:
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
            self.on_outcome(SKIPPED)
        self._jobs.put(_STOP)
        thread.join(timeout)

    def _ensure_thread(self) -> None:
        # a thread does not survive fork: a worker forked from a parent that used the queue starts anew
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            if self._thread is None:
                atexit.register(self.close)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at normal priority
            log.info("background thread runs at normal priority (%s)", type(exc).__name__)
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args = job
            outcome = DONE
            try:
                fn(*args)
            except Exception as exc:
                outcome = FAILED
                log.warning("background job failed: %s", type(exc).__name__)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
            self.on_outcome(outcome)
