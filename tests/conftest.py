"""Shared fixtures: a real embedded Postgres + pgvector, fresh databases, settings.

One embedded server (the ``pgserver`` wheel the product ships) runs for the whole
session; each test gets its own database cloned from a migrated template, so tests
never see each other's rows. The server is stopped at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pgserver
import psycopg
import pytest
from sqlalchemy import URL

from backtalk.store import Store, make_engine, migrate
from backtalk.store.engine import _with_driver

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures"
TRANSCRIPTS = FIXTURES / "transcripts"
AUDIO = FIXTURES / "audio"

TEMPLATE_DB = "backtalk_template"
#: Provider settings a developer may have in their shell or .env must not leak into tests.
_ISOLATED_ENV = (
    "DATABASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "DEEPGRAM_API_KEY",
    "DAILY_API_KEY",
    "DAILY_ROOM_URL",
)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in _ISOLATED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("BACKTALK_"):
            monkeypatch.delenv(name, raising=False)
    # Settings read .env from the working directory: run each test in an empty one.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BACKTALK_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[pgserver.PostgresServer]:
    """The embedded Postgres 16 + pgvector, for the whole test session."""
    pgdata = Path(tempfile.mkdtemp(prefix="backtalk-test-pg-"))
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE_DB}")
        engine = make_engine(_with_driver(server.get_uri(TEMPLATE_DB)))
        migrate(engine)
        engine.dispose()
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(pgdata, ignore_errors=True)


@contextmanager
def scratch_database(
    server: pgserver.PostgresServer, *, prefix: str = "t", migrated: bool = True
) -> Iterator[str]:
    """URL of a new database on ``server`` (a copy of the migrated template, or with no
    schema at all); dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = server.get_uri()
    template = f" TEMPLATE {TEMPLATE_DB}" if migrated else ""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}{template}")
    try:
        yield server.get_uri(name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(pg_server: pgserver.PostgresServer) -> Iterator[str]:
    """URL of a fresh, migrated, empty database; dropped after the test."""
    with scratch_database(pg_server) as url:
        yield url


@pytest.fixture
def db_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point ``DATABASE_URL`` (so the CLI and agent) at the test database."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return database_url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A :class:`Store` on the test database."""
    engine = make_engine(_with_driver(database_url))
    try:
        yield Store(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def local_embedder():
    """The WordLlama embedder, loaded once."""
    from backtalk.store import LocalEmbedder

    return LocalEmbedder()


def sqlalchemy_url(database_url: str) -> URL:
    """The psycopg-3 SQLAlchemy URL of a test database."""
    return _with_driver(database_url)


def stop_postgres(server: pgserver.PostgresServer) -> None:
    """Stop the embedded Postgres, as an outage would (fast shutdown: connections drop)."""
    from pgserver import _commands

    _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def start_postgres(server: pgserver.PostgresServer) -> None:
    """Start the embedded Postgres again, on the same socket (so the same URLs work)."""
    with server._lock:
        server.ensure_postgres_running()
