"""The video library: Postgres + pgvector through SQLAlchemy, and the embedders."""

from __future__ import annotations

from backtalk.config import Settings
from backtalk.store.embedders import Embedder as Embedder
from backtalk.store.embedders import LocalEmbedder as LocalEmbedder
from backtalk.store.embedders import OpenAIEmbedder as OpenAIEmbedder
from backtalk.store.embedders import make_embedder as make_embedder
from backtalk.store.engine import make_async_engine as make_async_engine
from backtalk.store.engine import make_engine as make_engine
from backtalk.store.engine import make_retrieval_engine as make_retrieval_engine
from backtalk.store.engine import migrate as migrate
from backtalk.store.engine import resolve_url as resolve_url
from backtalk.store.repo import ChunkRow as ChunkRow
from backtalk.store.repo import Store as Store
from backtalk.store.repo import VideoInfo as VideoInfo
from backtalk.store.repo import VideoRow as VideoRow
from backtalk.store.retriever import PgVectorRetriever as PgVectorRetriever

__all__ = [
    "ChunkRow",
    "embedder_for",
    "library_for",
    "Embedder",
    "LocalEmbedder",
    "OpenAIEmbedder",
    "PgVectorRetriever",
    "Store",
    "VideoInfo",
    "VideoRow",
    "make_async_engine",
    "make_embedder",
    "make_engine",
    "make_retrieval_engine",
    "migrate",
    "open_store",
    "resolve_url",
]


def library_for(settings: Settings) -> Store:
    """The library the settings name: ``DATABASE_URL``, or the embedded Postgres.

    Raises:
        StoreError: the database cannot be reached or migrated.
    """
    return open_store(settings.secret("database_url"), settings.data_dir)


def embedder_for(settings: Settings) -> Embedder:
    """The embedder ``BACKTALK_EMBEDDER`` names, configured from the settings.

    Raises:
        ConfigError: unknown embedder, or ``openai`` without a key.
    """
    return make_embedder(
        settings.embedder,
        openai_api_key=settings.secret("openai_api_key"),
        openai_base_url=settings.openai_base_url,
        openai_model=settings.openai_embedding_model,
    )


def open_store(database_url: str | None, data_dir) -> Store:
    """Connect to (or start) the database and migrate its schema.

    Args:
        database_url: ``DATABASE_URL`` or None for the embedded Postgres.
        data_dir: ``BACKTALK_DATA_DIR``.

    Returns:
        A ready :class:`Store`.

    Raises:
        StoreError: the database cannot be reached or migrated.
    """
    engine = make_engine(resolve_url(database_url, data_dir))
    migrate(engine)
    return Store(engine)
