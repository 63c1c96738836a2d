"""Fixtures for every test: a throw-away PostgreSQL server (gateway/testing/postgres.py).

``postgres`` is one server for the whole session; ``pg_url`` a fresh database on it
for one test (dropped after). Without the server binaries these fixtures fail, never
skip: ``make test`` installs them (scripts/ensure_postgres.sh).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from gateway.testing.postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """postgresql://yrd@127.0.0.1:<port>/<a new database for this test>."""
    stem = re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)
