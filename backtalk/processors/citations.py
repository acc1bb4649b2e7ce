"""Citations the listener hears and the client can click.

The LLM marks each moment it uses with a tag the user never hears::

    Momentum is like a ball rolling downhill, about six minutes in <cite v="GDlecture01" t="371"/>.

* :data:`strip_citations` removes the tags from the text sent to TTS (a Pipecat text
  transform, built with Pipecat's own ``replace_text``), so only the spoken phrase
  ("about six minutes in") is heard.
* :class:`CitationProcessor`, placed between the LLM and the TTS, reads the tags from
  the streamed LLM text, checks each one against the time windows of the chunks
  retrieved for the turn (:class:`RetrievalResultFrame`), drops any that fall outside
  them, and sends each valid one to the client as an RTVI server message::

    {"type": "citation", "video_id": "GDlecture01", "video_key": "GDlecture01",
     "title": "Gradient Descent, Explained Simply", "seconds": 371,
     "timestamp": "06:11", "url": "https://youtu.be/GDlecture01?t=371",
     "start_s": 359.5, "end_s": 400.0}

  (``video_id`` and ``url`` are null for videos that are not on YouTube; ``start_s``
  and ``end_s`` are the window of the transcript chunk the moment falls in.) The RTVI
  envelope is ``{"label": "rtvi-ai", "type": "server-message", "data": {...}}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import (
    DataFrame,
    Frame,
    InterruptionFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.processors.frameworks.rtvi.frames import RTVIServerMessageFrame
from pipecat.utils.text.transforms import replace_text

from backtalk.processors.retrieval import RetrievedChunk, format_timestamp, youtube_link

__all__ = [
    "CITATION_PATTERN",
    "Citation",
    "CitationProcessor",
    "RetrievalResultFrame",
    "remove_citation_tags",
    "strip_citations",
]

#: ``<cite t="SECONDS"/>`` or ``<cite v="VIDEO" t="SECONDS"/>`` (attributes in any order).
CITATION_PATTERN = re.compile(r"<cite\b([^<>]{0,200}?)/?>")
_ATTRIBUTE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')

_TAG_WITH_SPACE = re.compile(r"[ \t]*" + CITATION_PATTERN.pattern)


def remove_citation_tags(text: str) -> str:
    """``text`` without its ``<cite .../>`` tags (and the spaces before them).

    Args:
        text: An answer as the LLM wrote it.
    """
    return _TAG_WITH_SPACE.sub("", text)


#: A Pipecat text transform that removes citation tags before speech:
#: ``DeepgramTTSService(text_transforms=[("*", strip_citations)])``.
strip_citations = replace_text([(_TAG_WITH_SPACE.pattern, "")])


@dataclass
class RetrievalResultFrame(DataFrame):
    """What the RAG processor retrieved for a turn.

    Sent downstream ahead of the turn's context, so later processors (citations, a
    UI) can use it.

    Parameters:
        query: The retrieval query.
        chunks: The chunks given to the LLM (empty when none, or retrieval failed).
    """

    query: str = ""
    chunks: Sequence[RetrievedChunk] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Citation:
    """A checked citation.

    Parameters:
        chunk: The retrieved chunk the moment falls in.
        seconds: The cited moment, seconds from the start of the video.
    """

    chunk: RetrievedChunk
    seconds: int

    def message(self) -> dict:
        """The RTVI server-message payload for the client (see the module docstring)."""
        youtube_id = self.chunk.youtube_id
        return {
            "type": "citation",
            "video_id": youtube_id,
            "video_key": self.chunk.video_key,
            "title": self.chunk.video_title,
            "seconds": self.seconds,
            "timestamp": format_timestamp(self.seconds),
            "url": youtube_link(youtube_id, self.seconds) if youtube_id else None,
            "start_s": self.chunk.start_s,
            "end_s": self.chunk.end_s,
        }


class CitationProcessor(FrameProcessor):
    """Validates the LLM's citation tags and announces the valid ones to the client.

    Place it between the LLM and the TTS. All frames pass through unchanged; for
    each complete ``<cite .../>`` tag in a response it pushes an
    ``RTVIServerMessageFrame`` if the cited second lies within one of the turn's
    retrieved chunks (± ``tolerance_s``), and drops it otherwise — a model that
    invents a moment is never shown as a source.

    Events:
        on_citation(processor, citation: Citation): a valid citation was sent.
        on_citation_dropped(processor, tag: str): a tag outside the retrieved chunks.

    Args:
        tolerance_s: Slack around each chunk's window, seconds.
        **kwargs: Passed to :class:`FrameProcessor`.
    """

    def __init__(self, *, tolerance_s: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self._tolerance_s = tolerance_s
        self._chunks: list[RetrievedChunk] = []
        self._buffer = ""
        self._sent: set[tuple[str, int]] = set()
        self.valid = 0
        self.dropped = 0
        self._register_event_handler("on_citation")
        self._register_event_handler("on_citation_dropped")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Track retrieved chunks and scan LLM text for citation tags."""
        await super().process_frame(frame, direction)
        if isinstance(frame, RetrievalResultFrame):
            self._chunks = list(frame.chunks)
        elif isinstance(frame, LLMFullResponseStartFrame | InterruptionFrame):
            self._buffer = ""
            self._sent.clear()
        await self.push_frame(frame, direction)
        if isinstance(frame, LLMTextFrame):
            await self._scan(frame.text)

    def check(self, tag: str) -> Citation | None:
        """The citation a tag makes, or None if it names no retrieved moment.

        Args:
            tag: A full ``<cite .../>`` tag.
        """
        match = CITATION_PATTERN.fullmatch(tag.strip())
        if not match:
            return None
        attributes = dict(_ATTRIBUTE.findall(match.group(1)))
        try:
            seconds = int(float(attributes.get("t", "")))
        except ValueError:
            return None
        video = attributes.get("v")
        for chunk in self._chunks:
            if video and video not in (chunk.video_key, chunk.youtube_id):
                continue
            if chunk.start_s - self._tolerance_s <= seconds <= chunk.end_s + self._tolerance_s:
                return Citation(chunk=chunk, seconds=seconds)
        return None

    async def _scan(self, text: str) -> None:
        self._buffer += text
        last_end = 0
        for match in CITATION_PATTERN.finditer(self._buffer):
            last_end = match.end()
            citation = self.check(match.group(0))
            if citation is None:
                self.dropped += 1
                logger.debug(f"{self}: dropped a citation outside the retrieved chunks")
                await self._call_event_handler("on_citation_dropped", match.group(0))
                continue
            key = (citation.chunk.video_key, citation.seconds)
            if key in self._sent:
                continue
            self._sent.add(key)
            self.valid += 1
            await self.push_frame(RTVIServerMessageFrame(data=citation.message()))
            await self._call_event_handler("on_citation", citation)
        # Keep only what may still be the start of a tag split across tokens.
        rest = self._buffer[last_end:]
        start = rest.rfind("<")
        self._buffer = rest[start:] if start != -1 and ">" not in rest[start:] else ""
