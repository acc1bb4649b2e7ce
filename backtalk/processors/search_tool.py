"""Retrieval as a tool: the LLM calls ``search_video`` when it needs the transcript.

The alternative to per-turn injection (:class:`~backtalk.processors.RAGContextProcessor`).
Injection costs no extra LLM round trip; the tool lets the model skip retrieval for
small talk but adds a round trip (tool call, then the answer) when it does search.

Usage in any Pipecat app::

    tool = register_search_tool(llm, retriever)
    context = LLMContext(tools=ToolsSchema(standard_tools=[tool]))
"""

from __future__ import annotations

from collections.abc import Sequence

from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.services.llm_service import FunctionCallParams, LLMService

from backtalk.processors.citations import RetrievalResultFrame
from backtalk.processors.rag import render_retrieval_message
from backtalk.processors.retrieval import RetrievedChunk, Retriever

__all__ = ["SEARCH_TOOL_NAME", "register_search_tool"]

SEARCH_TOOL_NAME = "search_video"


def register_search_tool(
    llm: LLMService,
    retriever: Retriever,
    *,
    top_k: int = 4,
    min_score: float | None = None,
    timeout_s: float = 2.0,
) -> FunctionSchema:
    """Register ``search_video(query)`` on ``llm`` and return its schema.

    The handler retrieves ``top_k`` chunks (dropping those below ``min_score``),
    sends a :class:`~backtalk.processors.citations.RetrievalResultFrame` downstream
    (so citations can be checked), and returns the excerpts in the same delimited,
    escaped form the injection mode uses. A failure returns a short note instead of
    raising, so the model can say it could not look it up.

    Args:
        llm: The LLM service.
        retriever: Where chunks come from.
        top_k: Chunks per search.
        min_score: Similarity floor, or None.
        timeout_s: Seconds the function call may take (Pipecat cancels it after).

    Returns:
        The schema to put in the context's ``ToolsSchema``.
    """

    async def search_video(params: FunctionCallParams) -> None:
        query = str(params.arguments.get("query", "")).strip()
        chunks: Sequence[RetrievedChunk] | None
        try:
            chunks = list(await retriever.retrieve(query, k=top_k)) if query else []
        except Exception as exc:  # the conversation must go on without the library
            logger.warning(f"search_video failed ({type(exc).__name__})")
            chunks = None
        if chunks is not None and min_score is not None:
            chunks = [c for c in chunks if c.score >= min_score]
        await params.llm.push_frame(RetrievalResultFrame(query=query, chunks=list(chunks or [])))
        await params.result_callback({"excerpts": render_retrieval_message(chunks)["content"]})

    llm.register_function(SEARCH_TOOL_NAME, search_video, timeout_secs=timeout_s)
    return FunctionSchema(
        name=SEARCH_TOOL_NAME,
        description=(
            "Search the transcript of the video(s) in this conversation. Call it before "
            "answering anything about the video's content; not needed for greetings or "
            "small talk. Returns excerpts with their start and end times."
        ),
        properties={
            "query": {
                "type": "string",
                "description": "What to look for, as a self-contained question or phrase.",
            }
        },
        required=["query"],
    )
