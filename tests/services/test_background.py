"""The after-response queue: bounded (skips, never grows without end), lowest priority, counts outcomes."""

from __future__ import annotations

import os
import threading

from cds_plugin.services.background import DONE, FAILED, SKIPPED, BackgroundQueue


def test_jobs_beyond_the_backlog_are_skipped_not_queued():
    outcomes: list[str] = []
    release = threading.Event()
    q = BackgroundQueue(max_pending=2, on_outcome=outcomes.append)
    ran: list[int] = []
    assert q.submit(lambda: (release.wait(10), ran.append(1)))
    assert q.submit(ran.append, 2)
    assert not q.submit(ran.append, 3)  # full: one running, one queued
    assert q.pending == 2 and outcomes == [SKIPPED]
    release.set()
    assert q.wait_idle(10)
    assert ran == [1, 2] and outcomes == [SKIPPED, DONE, DONE]
    assert q.submit(ran.append, 4) and q.wait_idle(10) and ran == [1, 2, 4]  # room again


def test_a_failing_job_is_counted_and_the_thread_goes_on():
    outcomes: list[str] = []
    q = BackgroundQueue(max_pending=4, on_outcome=outcomes.append)
    q.submit(lambda: 1 / 0)
    done = []
    q.submit(done.append, "next")
    assert q.wait_idle(10)
    assert outcomes == [FAILED, DONE] and done == ["next"]


def test_zero_pending_means_off():
    outcomes: list[str] = []
    q = BackgroundQueue(max_pending=0, on_outcome=outcomes.append)
    assert not q.submit(print, "never")
    assert outcomes == [SKIPPED] and q.pending == 0


def test_the_worker_thread_runs_at_the_lowest_priority():
    seen: list[int] = []
    q = BackgroundQueue(max_pending=1, nice=19)
    q.submit(lambda: seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    assert q.wait_idle(10)
    assert seen == [19]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) != 19  # only that thread


def test_close_drops_the_queue_and_lets_the_running_job_finish():
    outcomes: list[str] = []
    release = threading.Event()
    q = BackgroundQueue(max_pending=3, on_outcome=outcomes.append)
    finished = []
    started = threading.Event()
    q.submit(lambda: (started.set(), release.wait(10), finished.append("running")))
    q.submit(finished.append, "queued")
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    q.close(timeout=10)
    assert finished == ["running"] and sorted(outcomes) == [DONE, SKIPPED] and q.pending == 0
