"""The pgvector retriever the voice agent hands to the RAG processor."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncEngine

from backtalk.processors.retrieval import RetrievedChunk
from backtalk.store.embedders import Embedder
from backtalk.store.repo import around_statement, rows_to_chunks, search_statement

__all__ = ["PgVectorRetriever"]


class PgVectorRetriever:
    """Embeds a query and returns the closest chunks from Postgres + pgvector.

    Implements :class:`backtalk.processors.Retriever`.

    Args:
        engine: An asyncio engine (:func:`backtalk.store.engine.make_async_engine`).
        embedder: The store's embedder (same model as the stored vectors).
        video_ids: ``videos.id`` values to search in (a session's videos), or None
            for the whole library.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        *,
        video_ids: Sequence[int] | None = None,
    ):
        self._engine = engine
        self._embedder = embedder
        self._video_ids = list(video_ids) if video_ids is not None else None

    async def retrieve(self, query: str, *, k: int) -> list[RetrievedChunk]:
        """Top-``k`` chunks for ``query``, most similar first.

        Args:
            query: The user's words.
            k: Maximum chunks.

        Returns:
            Chunks with cosine similarity in ``score``.

        Raises:
            EmbeddingError: the embedder failed.
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        vector = (await self._embedder.aembed([query]))[0]
        async with self._engine.connect() as conn:
            result = await conn.execute(search_statement(vector, k=k, video_ids=self._video_ids))
            rows = result.all()
        return rows_to_chunks(rows)

    async def around(
        self, video_key: str, seconds: float, *, before_s: float
    ) -> list[RetrievedChunk]:
        """The chunks under and just before a playhead, latest first (no embedding).

        Implements :class:`backtalk.processors.playhead.TimeIndex`.

        Args:
            video_key: The video being watched; ignored (``[]``) if it is outside
                this retriever's videos.
            seconds: The playhead, seconds from the start of the video.
            before_s: How far back to reach, seconds.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the database failed.
        """
        stmt = around_statement(video_key, seconds, before_s=before_s, video_ids=self._video_ids)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return rows_to_chunks(rows)

    async def warm_up(self) -> None:
        """Open a pooled connection and run one search before the first turn.

        The first turn then pays no connection set-up (about 5-20 ms on the embedded
        server).
        """
        await self.retrieve("warm up", k=1)

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._engine.dispose()
