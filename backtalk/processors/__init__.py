"""Pipecat frame processors meant for reuse in any Pipecat app.

The RAG context processor needs only Pipecat and a :class:`Retriever`; nothing here
imports Backtalk's agent, settings or database code.
"""

from backtalk.processors.rag import RAGContextProcessor as RAGContextProcessor
from backtalk.processors.rag import RAGStats as RAGStats
from backtalk.processors.rag import render_retrieval_message as render_retrieval_message
from backtalk.processors.retrieval import RetrievedChunk as RetrievedChunk
from backtalk.processors.retrieval import Retriever as Retriever
from backtalk.processors.retrieval import format_timestamp as format_timestamp
from backtalk.processors.retrieval import youtube_link as youtube_link

__all__ = [
    "RAGContextProcessor",
    "RAGStats",
    "RetrievedChunk",
    "Retriever",
    "format_timestamp",
    "render_retrieval_message",
    "youtube_link",
]
