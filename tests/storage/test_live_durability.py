"""Feedback durability with the real server (`cds-plugin serve`: gunicorn, 2 workers, the shipped model).

A 200 on feedback means the items are committed: they survive the server being SIGKILLed right after the
answer, and many clients sending at once (with duplicates) get each item stored exactly once. One server
per backend (SQLite file; PostgreSQL when CDS_PLUGIN_TEST_POSTGRES_URL names one): the concurrency test
runs first, the kill test last (it ends the server).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from cds_plugin.storage.database import Database, feedback
from tests.helpers.databases import BACKENDS, backend_url
from tests.helpers.live_server import LiveServer, start_server

SERVICE = "diagnosis-considerations"
TS = "2026-11-29T10:00:00Z"

pytestmark = pytest.mark.timeout(240)


@dataclass
class Backend:
    name: str
    url: str
    data_dir: Path
    server: LiveServer

    def feedback_url(self) -> str:
        return f"{self.server.base}/cds-services/{SERVICE}/feedback"

    def rows_per_card(self) -> Counter[str]:
        """What is in the database, read through a fresh engine (as after a restart)."""
        db = Database(self.url)
        try:
            with db.engine.connect() as conn:
                return Counter(conn.execute(sa.select(feedback.c.card_uuid)).scalars())
        finally:
            db.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    data_dir = tmp_path_factory.mktemp(f"live-{request.param}")
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{data_dir / 'cds_plugin.sqlite3'}"  # the server's default location
            env = {}
        else:
            url = stack.enter_context(backend_url(request.param, data_dir))
            env = {"CDS_PLUGIN_DATABASE_URL": url}
        server = start_server(
            data_dir, env={"CDS_PLUGIN_JWT_REQUIRED": "false", **env}, workers=2, ready_s=180
        )
        stack.callback(server.kill)  # before the PostgreSQL schema is dropped
        yield Backend(request.param, url, data_dir, server)


def item(card: str) -> dict:
    """The feedback item for `card`: the same card always gives the same item (so one row per card)."""
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": f"{card}-s"}],
        "outcomeTimestamp": TS,
    }


def post(session: requests.Session, backend: Backend, cards: list[str]) -> int:
    resp = session.post(backend.feedback_url(), json={"feedback": [item(c) for c in cards]}, timeout=60)
    return resp.status_code


def test_concurrent_clients_with_duplicates_store_each_item_exactly_once(backend: Backend) -> None:
    """16 clients x 25 posts against 2 workers; every post repeats a card all clients send at that step
    and, every other post, one of its own earlier cards: nothing lost, nothing stored twice."""
    clients, posts = 16, 25
    run = uuid.uuid4().hex[:8]
    acknowledged: set[str] = set()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(n: int) -> None:
        session = requests.Session()
        barrier.wait()
        for i in range(posts):
            cards = [f"{run}-c{n}-{i}", f"{run}-shared-{i}"]
            if i % 2:
                cards.append(f"{run}-c{n}-{i - 1}")  # resent: the client did not trust the first answer
            status = post(session, backend, cards)
            with lock:
                statuses[status] += 1
                if status == 200:
                    acknowledged.update(cards)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    elapsed = time.monotonic() - started
    assert statuses == {200: clients * posts}, statuses
    stored = backend.rows_per_card()
    mine = {card: n for card, n in stored.items() if card.startswith(run)}
    assert set(mine) == acknowledged  # nothing lost, nothing that was not sent
    assert set(mine.values()) == {1}, {c: n for c, n in mine.items() if n != 1}  # nothing twice
    assert len(mine) == clients * posts + posts
    print(f"{backend.name}: {clients * posts} posts in {elapsed:.1f} s")


def test_acknowledged_feedback_survives_sigkill_right_after_the_200(backend: Backend) -> None:
    """Clients keep posting; the moment one more post is answered 200, the whole server (arbiter and
    workers) is SIGKILLed. Every acknowledged item is in the database, once; nothing unsent is."""
    run = uuid.uuid4().hex[:8]
    acknowledged: set[str] = set()
    sent: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            cards = [f"{run}-bg{n}-{i}", f"{run}-bg{n}-{i}-b"]
            with lock:
                sent.update(cards)
            try:
                status = post(session, backend, cards)
            except requests.RequestException:  # the server died under this request: not acknowledged
                return
            if status == 200:
                with lock:
                    acknowledged.update(cards)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    last = [f"{run}-last-{k}" for k in range(5)]
    sent.update(last)
    resp = requests.post(backend.feedback_url(), json={"feedback": [item(c) for c in last]}, timeout=60)
    backend.server.kill()  # at once: no shutdown code, no chance to flush anything
    stop.set()
    assert resp.status_code == 200
    acknowledged.update(last)
    for t in threads:
        t.join(timeout=60)

    stored = backend.rows_per_card()
    mine = {card: n for card, n in stored.items() if card.startswith(run)}
    assert acknowledged - set(mine) == set()  # every acknowledged item survived
    assert set(mine) <= sent
    assert set(mine.values()) == {1}
    assert len(acknowledged) > len(last)  # the background clients did get answers before the kill
