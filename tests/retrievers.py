"""Retrievers for processor tests: a fixed list of chunks, with optional delay or error."""

from __future__ import annotations

import asyncio

__all__ = ["ListRetriever"]


class ListRetriever:
    """A retriever over a fixed list; records its queries."""

    def __init__(self, chunks=(), delay_s=0.0, error=None):
        self.chunks = list(chunks)
        self.delay_s = delay_s
        self.error = error
        self.queries = []
        self.cancelled = 0

    async def retrieve(self, query, *, k):
        self.queries.append(query)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error:
            raise self.error
        return self.chunks[:k]
