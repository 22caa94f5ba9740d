"""Storage tests run against every backend: `database_url` (sqlite, postgresql) and a migrated `db`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cds_plugin.storage.database import Database
from tests.helpers.databases import database_url  # noqa: F401  (a fixture)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:  # noqa: F811
    database = Database(database_url)
    database.migrate()
    yield database
    database.dispose()
