"""Pipecat frame processors meant for reuse in any Pipecat app.

The RAG context processor needs only Pipecat and a :class:`Retriever`; nothing here
imports Backtalk's agent, settings or database code. Pipecat itself is imported only
when a processor is first used, so the retrieval records stay cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backtalk.processors.retrieval import RetrievedChunk as RetrievedChunk
from backtalk.processors.retrieval import Retriever as Retriever
from backtalk.processors.retrieval import format_timestamp as format_timestamp
from backtalk.processors.retrieval import youtube_link as youtube_link

if TYPE_CHECKING:
    from backtalk.processors.citations import CitationProcessor as CitationProcessor
    from backtalk.processors.citations import RetrievalResultFrame as RetrievalResultFrame
    from backtalk.processors.citations import strip_citations as strip_citations
    from backtalk.processors.rag import RAGContextProcessor as RAGContextProcessor
    from backtalk.processors.rag import RAGStats as RAGStats
    from backtalk.processors.rag import render_retrieval_message as render_retrieval_message

__all__ = [
    "CitationProcessor",
    "RAGContextProcessor",
    "RetrievalResultFrame",
    "RAGStats",
    "RetrievedChunk",
    "Retriever",
    "format_timestamp",
    "render_retrieval_message",
    "strip_citations",
    "youtube_link",
]

_LAZY = {
    "CitationProcessor": "backtalk.processors.citations",
    "RetrievalResultFrame": "backtalk.processors.citations",
    "strip_citations": "backtalk.processors.citations",
    "RAGContextProcessor": "backtalk.processors.rag",
    "RAGStats": "backtalk.processors.rag",
    "render_retrieval_message": "backtalk.processors.rag",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
