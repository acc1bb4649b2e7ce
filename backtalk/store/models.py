"""SQLAlchemy 2.0 models of the store.

Tables follow the product's data model (``videos``, ``video_chunks``,
``conversations``, ``messages``) plus ``store_meta``, a key/value table that records
the one embedding model the store was built with. The schema itself is created by
the Alembic migrations in ``backtalk/store/migrations``; these classes only map it.

``video_chunks.embedding`` is created without a dimension; the first ingest fixes it
to the embedder's dimension (``vector(N)``) and builds the HNSW index (cosine
distance) — see :meth:`backtalk.store.repo.Store.bind_embedder`.
"""

from __future__ import annotations

from datetime import datetime

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ApiKey",
    "Base",
    "Collection",
    "CollectionVideo",
    "Conversation",
    "Message",
    "StoreMeta",
    "Video",
    "VideoChunk",
]


class Base(DeclarativeBase):
    """Declarative base of all Backtalk tables."""


class StoreMeta(Base):
    """One row per store-wide fact, e.g. ``embedding_model``."""

    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Video(Base):
    """An ingested video.

    Parameters:
        key: Stable name used on the command line: the YouTube id for YouTube
            videos, or the given/derived id for caption files.
        youtube_id: The 11-character YouTube id, when known (enables deep links).
        duration_s: Length of the transcript, seconds (end of the last segment).
        transcript_hash: SHA-256 of the normalised segments and chunking parameters;
            an unchanged hash makes a re-ingest a no-op.
        embedding_model: The model that embedded this video's chunks.
    """

    __tablename__ = "videos"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    youtube_id: Mapped[str | None] = mapped_column(String(11), index=True)
    source: Mapped[str] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    duration_s: Mapped[float] = mapped_column(Float)
    transcript_hash: Mapped[str] = mapped_column(String(64))
    embedding_model: Mapped[str] = mapped_column(Text)
    ingested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    chunks: Mapped[list[VideoChunk]] = relationship(
        back_populates="video", cascade="all, delete-orphan", passive_deletes=True
    )


class VideoChunk(Base):
    """A time window of a video's transcript and its embedding.

    Parameters:
        ordinal: 0-based position of the chunk in the video.
        start_s / end_s: The window, seconds from the start of the video.
        embedding: ``vector(N)``, N fixed per store by the embedder.
    """

    __tablename__ = "video_chunks"
    __table_args__ = (UniqueConstraint("video_id", "ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_id: Mapped[int] = mapped_column(ForeignKey("videos.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    embedding = mapped_column(VECTOR())

    video: Mapped[Video] = relationship(back_populates="chunks")


class Conversation(Base):
    """One voice session.

    Parameters:
        video_keys: Comma-separated keys of the videos the session is about.
        api_key_id: The API key that started it (``backtalk serve``); None for
            ``backtalk talk`` and servers without authentication.
    """

    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_keys: Mapped[str] = mapped_column(Text)
    transport: Mapped[str | None] = mapped_column(String(32))
    persona: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    api_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )

    messages: Mapped[list[Message]] = relationship(
        back_populates="conversation", cascade="all, delete-orphan", passive_deletes=True
    )


class Message(Base):
    """One turn of a conversation, as it went into the LLM context.

    Parameters:
        role: ``user`` or ``assistant``.
        interrupted: True when the user barged in before the assistant finished.
        citations: The checked citations the assistant made in this turn, as the
            client received them (:meth:`backtalk.processors.citations.Citation.message`),
            or None.
    """

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    interrupted: Mapped[bool] = mapped_column(default=False)
    citations: Mapped[list[dict] | None] = mapped_column(JSONB, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Collection(Base):
    """A named group of videos (``backtalk talk --collection NAME``)."""

    __tablename__ = "collections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class CollectionVideo(Base):
    """Membership of a video in a collection."""

    __tablename__ = "collection_videos"

    collection_id: Mapped[int] = mapped_column(
        ForeignKey("collections.id", ondelete="CASCADE"), primary_key=True
    )
    video_id: Mapped[int] = mapped_column(
        ForeignKey("videos.id", ondelete="CASCADE"), primary_key=True
    )


class ApiKey(Base):
    """An API key of ``backtalk serve``; only its SHA-256 is stored.

    Parameters:
        name: What the key is for (shown by ``backtalk keys list``).
        prefix: The key's first characters, to recognise it in listings.
        key_hash: Hex SHA-256 of the whole key.
        revoked_at: When it was revoked; a revoked key authenticates nothing.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
