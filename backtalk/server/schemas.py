"""The JSON shapes of the server's API (pydantic models; FastAPI documents them at /docs).

Times are ISO 8601 with a time zone; positions in a video are seconds from its start.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from backtalk.store.repo import ConversationRecord

__all__ = [
    "ChunkOut",
    "ChunksOut",
    "CollectionOut",
    "CollectionsOut",
    "ConfigOut",
    "ConversationOut",
    "ConversationSummaryOut",
    "ConversationsOut",
    "IngestRequest",
    "JobOut",
    "JobResponse",
    "MessageOut",
    "SessionRequest",
    "SessionStarted",
    "VideoOut",
    "VideosOut",
]


class _Out(BaseModel):
    """A response shape read from one of the store's records (same field names)."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def of(cls, record: object) -> Self:
        """The API shape of a store record (:class:`~backtalk.store.VideoInfo`, ...)."""
        return cls.model_validate(record, from_attributes=True)


class VideoOut(_Out):
    """A video in the library.

    Parameters:
        key: The library's name for it: the YouTube id, or a caption file's id.
        title: Its title.
        youtube_id: The 11-character YouTube id, or None for a caption file not
            linked to YouTube.
        channel: The channel, when known.
        duration_s: Length of its transcript, seconds.
        chunks: Transcript chunks stored for it.
        ingested_at: When it was (last) ingested.
    """

    key: str
    title: str
    youtube_id: str | None
    channel: str | None
    duration_s: float
    chunks: int
    ingested_at: datetime


class VideosOut(BaseModel):
    """The library, oldest ingest first."""

    videos: list[VideoOut]


class ConfigOut(BaseModel):
    """What the page opens on.

    Parameters:
        videos: The videos ``backtalk talk`` was started with ([] for ``serve``).
        persona: The persona to start with.
        personas: Every persona the bot can take.
    """

    videos: list[VideoOut]
    persona: str
    personas: list[str]


class IngestRequest(BaseModel):
    """``POST /api/videos``: add a YouTube video to the library."""

    input: str = Field(description="A YouTube URL (any form) or an 11-character video id.")


class JobOut(BaseModel):
    """An ingest job and its progress.

    Parameters:
        id: The job's id.
        input: What was asked for.
        key: The video's key once the input is parsed.
        status: ``queued``, ``running``, ``done`` or ``failed``.
        stage: ``fetch`` (the transcript from YouTube), ``embed`` (``done`` of
            ``total`` chunks) or ``store`` (writing to Postgres); the CLI's stages.
        done / total: Progress within the stage.
        error: Why it failed, with what to do (the CLI's message).
        video: The video, once done.
    """

    id: str
    input: str
    key: str | None
    status: Literal["queued", "running", "done", "failed"]
    stage: Literal["fetch", "embed", "store"] | None = None
    done: int = 0
    total: int | None = None
    error: str | None = None
    video: VideoOut | None = None


class JobResponse(BaseModel):
    """A job, wrapped."""

    job: JobOut


class ChunkOut(_Out):
    """One chunk of a transcript: ``text`` spoken from ``start_s`` to ``end_s`` seconds."""

    ordinal: int
    start_s: float
    end_s: float
    text: str


class ChunksOut(BaseModel):
    """A video's transcript, chunk by chunk."""

    video: VideoOut
    chunks: list[ChunkOut]


class CollectionOut(BaseModel):
    """A named group of videos (their keys)."""

    name: str
    videos: list[str]


class CollectionsOut(BaseModel):
    """Every collection, by name."""

    collections: list[CollectionOut]


class _ConversationOut(_Out):
    """What a saved conversation's summary and full record share."""

    id: int
    video_keys: list[str]
    persona: str | None
    started_at: datetime
    ended_at: datetime | None


class ConversationSummaryOut(_ConversationOut):
    """A saved conversation, as a history list shows it."""

    messages: int
    preview: str = Field(description="The first thing the user said.")


class ConversationsOut(BaseModel):
    """Saved conversations, newest first."""

    conversations: list[ConversationSummaryOut]


class MessageOut(_Out):
    """One message of a saved conversation.

    Parameters:
        citations: The assistant's checked citations, in the RTVI ``citation``
            message's shape (``video_key``, ``seconds``, ``timestamp``, ``url``, ...).
    """

    role: str
    content: str
    interrupted: bool
    created_at: datetime
    citations: list[dict]


class ConversationOut(_ConversationOut):
    """A saved conversation with its messages, oldest first."""

    messages: list[MessageOut]

    @classmethod
    def of(cls, record: ConversationRecord) -> Self:
        """The API shape of a saved conversation."""
        shared = _ConversationOut.of(record.summary).model_dump()
        return cls.model_validate({**shared, "messages": record.messages}, from_attributes=True)


class SessionRequest(BaseModel):
    """``POST /api/sessions``: what the conversation is about.

    Parameters:
        videos: Keys of the videos to talk about (default: the ones ``talk`` opened).
        persona: The persona to start with (default: the server's).
        transport: ``webrtc`` (the page, any Pipecat WebRTC client) or ``daily`` (a
            private Daily room; needs ``DAILY_API_KEY`` on the server).
    """

    model_config = ConfigDict(extra="ignore")
    videos: list[str] | None = None
    persona: str | None = None
    transport: Literal["webrtc", "daily"] = "webrtc"


class SessionStarted(BaseModel):
    """A started session: an offer URL (WebRTC), or a private Daily room and token.

    WebRTC waits for its offer at ``offerUrl``; Daily's bot is joining ``dailyRoom``,
    where the user joins with ``dailyToken`` (the user's own, non-owner token of a
    private room). The shape of Pipecat's runner ``/start`` response (camelCase), so
    that the Pipecat client SDK's ``startBotAndConnect`` works against it.
    """

    model_config = ConfigDict(populate_by_name=True)
    sessionId: str  # noqa: N815 (Pipecat's client SDK reads these names)
    offerUrl: str | None = None  # noqa: N815
    dailyRoom: str | None = None  # noqa: N815
    dailyToken: str | None = None  # noqa: N815
