"""Database engines: any Postgres with pgvector, or an embedded one.

``DATABASE_URL`` unset → an embedded Postgres 16 with pgvector (the ``pgserver``
wheel) is started on demand in ``<BACKTALK_DATA_DIR>/pg``, listening on a Unix
socket only. It stops when the last Backtalk process using it exits.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from backtalk.errors import ConfigError, StoreError

__all__ = [
    "MIGRATION_LOCK",
    "embedded_url",
    "make_async_engine",
    "make_engine",
    "make_retrieval_engine",
    "migrate",
    "resolve_url",
]

logger = logging.getLogger("backtalk.store")

_MIGRATIONS = Path(__file__).parent / "migrations"
#: HNSW candidate list for library-wide searches (pgvector's default is 40). See
#: benchmarks/results/retrieval.md: at 100k chunks 100 lifts recall@5 from 0.75 to 0.84
#: for ~+2-4 ms p95. Scoped searches (the agent's) are exact and unaffected.
HNSW_EF_SEARCH = 100
#: Session settings for every connection: bound a runaway statement (ms), keep the
#: first connection attempt short so a dead database fails fast, and search the HNSW
#: index with :data:`HNSW_EF_SEARCH` (``backtalk search`` and host apps' library-wide
#: retrievers as well as the agent).
_CONNECT_ARGS = {
    "connect_timeout": 5,
    "options": f"-c statement_timeout=30000 -c hnsw.ef_search={HNSW_EF_SEARCH}",
}


def embedded_url(pgdata: Path) -> URL:
    """Start (or attach to) the embedded Postgres in ``pgdata`` and return its URL.

    Args:
        pgdata: Folder of the cluster; created and initialised on first use.

    Returns:
        A ``postgresql+psycopg`` URL over the cluster's Unix socket.

    Raises:
        StoreError: if the server cannot start (the message includes its log path).
    """
    import pgserver  # imported here: starting a server is not free, and is optional

    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:  # pgserver raises bare subprocess errors
        raise StoreError(
            f"The embedded Postgres in {pgdata} did not start ({type(exc).__name__}). "
            f"See {pgdata / 'log'}; or set DATABASE_URL to use another Postgres."
        ) from exc
    return _with_driver(server.get_uri())


_URL_SHAPE = "postgresql://USER:PASSWORD@HOST:PORT/DBNAME"


def _with_driver(url: str) -> URL:
    # Messages never quote the URL: it may hold a password.
    try:
        parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    except (ArgumentError, ValueError):
        raise ConfigError(f"DATABASE_URL is not a database URL; expected {_URL_SHAPE}.") from None
    if parsed.drivername in ("postgresql", "postgresql+psycopg2", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.split("+")[0] != "postgresql":
        raise ConfigError(
            f"DATABASE_URL names a {parsed.get_backend_name()!r} database; Backtalk needs "
            f"Postgres with pgvector: {_URL_SHAPE}."
        )
    return parsed


def resolve_url(database_url: str | None, data_dir: Path) -> URL:
    """The URL to use: ``database_url`` when given, else the embedded server's.

    Args:
        database_url: ``DATABASE_URL`` (``postgres://``, ``postgresql://`` or with a
            driver), or None.
        data_dir: ``BACKTALK_DATA_DIR``; the embedded cluster lives in ``data_dir/pg``.

    Returns:
        A SQLAlchemy URL with the psycopg 3 driver.

    Raises:
        ConfigError: ``database_url`` is not a Postgres URL (the message does not
            quote it: it may hold a password).
        StoreError: the embedded server did not start.
    """
    if database_url:
        return _with_driver(database_url)
    return embedded_url(data_dir / "pg")


def make_engine(url: URL) -> Engine:
    """A synchronous engine for the CLI and ingest (pre-ping, short connect timeout).

    Args:
        url: From :func:`resolve_url`.
    """
    return create_engine(url, pool_pre_ping=True, connect_args=_CONNECT_ARGS)


def make_async_engine(url: URL, *, pool_timeout_s: float = 0.5, pool_size: int = 5) -> AsyncEngine:
    """An asyncio engine for retrieval on the voice path.

    ``pool_timeout_s`` is kept at about the retrieval budget, so callers waiting for
    a connection give up with the budget rather than after SQLAlchemy's default 30 s
    (reliability case L2).

    Args:
        url: From :func:`resolve_url`.
        pool_timeout_s: Seconds to wait for a pooled connection.
        pool_size: Connections kept open.
    """
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=pool_timeout_s,
        pool_size=pool_size,
        connect_args=_CONNECT_ARGS,
    )


def make_retrieval_engine(
    url: URL, *, pool_timeout_s: float = 0.5, pool_size: int = 5
) -> AsyncEngine:
    """An asyncio engine tuned for the one read-only search each turn makes.

    :func:`make_async_engine` pings each connection on checkout, opens a transaction
    and rolls it back on return: four round trips to Postgres for one SELECT. Here the
    connection runs in autocommit with no ping and no reset, so a search is one round
    trip (measured 2.16 → 1.27 ms per retrieval on the embedded server,
    ``benchmarks/VOICE.md``). A connection that died is detected by the query itself:
    that turn goes on without retrieved context, and SQLAlchemy replaces the pool's
    connections for the next one.

    Args:
        url: From :func:`resolve_url`.
        pool_timeout_s: Seconds to wait for a pooled connection (≈ the retrieval budget).
        pool_size: Connections kept open.
    """
    return create_async_engine(
        url,
        pool_pre_ping=False,
        pool_reset_on_return=None,
        isolation_level="AUTOCOMMIT",
        pool_timeout=pool_timeout_s,
        pool_size=pool_size,
        connect_args=_CONNECT_ARGS,
    )


#: The advisory lock (``pg_advisory_xact_lock(hashtext(...))``) under which the schema
#: is migrated, so that processes starting at once on a new database take turns.
MIGRATION_LOCK = "backtalk:migrate"


def migrate(engine: Engine) -> None:
    """Bring the schema up to the newest Alembic revision (no-op when current).

    Runs in one transaction holding :data:`MIGRATION_LOCK`: two processes starting
    at once on an empty database (two ``backtalk ingest`` in two terminals) take
    turns, and the second finds the schema current, instead of both running
    ``CREATE EXTENSION``/``CREATE TABLE`` and one failing on a unique violation
    (reliability case I3).

    Args:
        engine: A synchronous engine.

    Raises:
        StoreError: if the database cannot be reached or refuses the migration.
    """
    from alembic import command  # imported on use: alembic takes ~0.2 s to import
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.begin() as connection:
            connection.execute(
                text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": MIGRATION_LOCK}
            )
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
    except Exception as exc:
        raise StoreError(
            f"Could not prepare the database schema ({type(exc).__name__}: {exc})."
        ) from exc
