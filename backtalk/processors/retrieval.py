"""The retriever protocol the RAG processor depends on, and its result record.

Any object with an ``async retrieve(query, *, k)`` method returning
:class:`RetrievedChunk` records can feed :class:`~backtalk.processors.RAGContextProcessor`;
Backtalk's own is :class:`backtalk.store.PgVectorRetriever`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["RetrievedChunk", "Retriever", "format_timestamp", "youtube_link"]


def format_timestamp(seconds: float) -> str:
    """``mm:ss`` (or ``h:mm:ss`` from one hour), as video players show positions.

    Args:
        seconds: Offset into the video, seconds (fractions are truncated).
    """
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def youtube_link(youtube_id: str, seconds: float) -> str:
    """A deep link that starts playback at ``seconds``: ``https://youtu.be/ID?t=N``.

    Args:
        youtube_id: 11-character YouTube id.
        seconds: Offset, seconds (truncated to whole seconds, as YouTube expects).
    """
    return f"https://youtu.be/{youtube_id}?t={max(0, int(seconds))}"


@dataclass(frozen=True, slots=True)
class RetrievedChunk:
    """One transcript passage returned by a retriever.

    Parameters:
        text: The transcript text of the chunk (untrusted data, never instructions).
        start_s: Start of the chunk, seconds from the start of the video.
        end_s: End of the chunk, seconds from the start of the video.
        video_title: Title of the video the chunk comes from.
        video_key: The store's name for the video (YouTube id or caption-file id).
        youtube_id: The 11-character YouTube id, if the video is on YouTube.
        score: Cosine similarity to the query, -1..1 (higher is closer); 0 for a
            chunk chosen by time.
        playhead_s: Set on a chunk chosen because it lies under the user's playhead
            (:mod:`backtalk.processors.playhead`): the playhead, seconds. None for a
            chunk chosen by similarity.
    """

    text: str
    start_s: float
    end_s: float
    video_title: str
    video_key: str
    youtube_id: str | None = None
    score: float = 0.0
    playhead_s: float | None = None

    @property
    def link(self) -> str | None:
        """``https://youtu.be/ID?t=N`` at the chunk's start, or None off YouTube."""
        return youtube_link(self.youtube_id, self.start_s) if self.youtube_id else None


@runtime_checkable
class Retriever(Protocol):
    """Finds the transcript chunks most relevant to a query."""

    async def retrieve(self, query: str, *, k: int) -> Sequence[RetrievedChunk]:
        """Return up to ``k`` chunks, most relevant first.

        Args:
            query: What the user asked, as text.
            k: Maximum number of chunks.

        Returns:
            Chunks ordered by decreasing relevance; may be empty.
        """
        ...
