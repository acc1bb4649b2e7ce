"""All SQL Backtalk runs: video upserts, listing, vector search, conversations.

Writes of one video happen in one transaction under a per-video advisory lock, so a
concurrent reader sees the complete old version or the complete new one, and two
concurrent ingests of the same video serialise instead of colliding.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Connection, Engine, Select, delete, func, insert, select, text, update
from sqlalchemy import null as sa_null
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from backtalk.errors import EmbedderMismatchError, StoreError
from backtalk.processors.retrieval import RetrievedChunk
from backtalk.store.models import (
    ApiKey,
    Collection,
    CollectionVideo,
    Conversation,
    Message,
    StoreMeta,
    Video,
    VideoChunk,
)

__all__ = [
    "EMBEDDER_LOCK",
    "KEY_PREFIX",
    "VIDEO_LOCK",
    "ApiKeyInfo",
    "ChunkRow",
    "ConversationRecord",
    "ConversationSummary",
    "MessageRecord",
    "Store",
    "StoredChunk",
    "VideoInfo",
    "VideoRow",
    "around_statement",
    "search_statement",
]

_META_MODEL = "embedding_model"
_META_DIMENSIONS = "embedding_dimensions"
#: Advisory locks (``pg_advisory_xact_lock(hashtext(...))``) a video write holds: the
#: store-wide one while the embedding model is checked (and fixed by a first ingest),
#: then the video's own, :data:`VIDEO_LOCK` formatted with its key.
EMBEDDER_LOCK = "backtalk:embedder"
VIDEO_LOCK = "video:{key}"


@dataclass(frozen=True, slots=True)
class VideoRow:
    """What the store records about a video (see :class:`~backtalk.store.models.Video`)."""

    key: str
    title: str
    source: str
    duration_s: float
    transcript_hash: str
    youtube_id: str | None = None
    url: str | None = None
    channel: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A chunk to store: its text and time window in seconds."""

    text: str
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """A stored video, as ``backtalk videos`` lists it."""

    id: int
    key: str
    title: str
    youtube_id: str | None
    channel: str | None
    duration_s: float
    chunks: int
    ingested_at: datetime
    embedding_model: str


#: Every API key starts with this, so a leaked one is easy to recognise (and scan for).
KEY_PREFIX = "bt_"


def hash_key(key: str) -> str:
    """Hex SHA-256 of an API key: what the store keeps instead of the key.

    A plain hash is enough for keys of 256 random bits (``secrets.token_urlsafe(32)``);
    slow password hashes exist for guessable secrets.
    """
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    """An API key as ``backtalk keys list`` shows it (never the key itself).

    Parameters:
        id: ``api_keys.id``.
        name: What it is for.
        prefix: Its first characters.
        created_at / revoked_at: When it was made, and revoked (None: valid).
    """

    id: int
    name: str
    prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredChunk:
    """A stored chunk of a video's transcript (``GET /api/videos/{key}/chunks``).

    Parameters:
        ordinal: 0-based position in the video.
        start_s / end_s: The window, seconds from the start of the video.
        text: The transcript text.
    """

    ordinal: int
    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One saved conversation, as a history list shows it.

    Parameters:
        id: ``conversations.id``.
        video_keys: The videos it was about.
        persona: The persona it started with.
        started_at / ended_at: When it ran (``ended_at`` None while live or if the
            process died).
        messages: How many messages it holds.
        preview: Its first user message ('' if none).
    """

    id: int
    video_keys: list[str]
    persona: str | None
    started_at: datetime
    ended_at: datetime | None
    messages: int
    preview: str


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One saved message.

    Parameters:
        role: ``user`` or ``assistant``.
        content: What was said (for the assistant: what went into the context).
        interrupted: The user cut the assistant off.
        created_at: When it was saved.
        citations: The assistant's checked citations, as sent to the client.
    """

    role: str
    content: str
    interrupted: bool
    created_at: datetime
    citations: list[dict]


@dataclass(frozen=True, slots=True)
class ConversationRecord:
    """A saved conversation with its messages, oldest first."""

    summary: ConversationSummary
    messages: list[MessageRecord]


def around_statement(
    video_key: str,
    seconds: float,
    *,
    before_s: float,
    video_ids: Sequence[int] | None = None,
) -> Select:
    """The chunks of a video that overlap ``[seconds - before_s, seconds]``, in order.

    This is what "what did she just say?" refers to: the passage under the playhead
    and what came just before it.

    Args:
        video_key: The video being watched (``videos.key``).
        seconds: The playhead, seconds from the start of the video.
        before_s: How far back "just now" reaches, seconds.
        video_ids: If given, the video must be one of these (a session's scope).

    Returns:
        A select yielding ``text, start_s, end_s, title, key, youtube_id, distance``
        (``distance`` is NULL: these chunks are chosen by time, not similarity).
    """
    stmt = (
        select(
            VideoChunk.text,
            VideoChunk.start_s,
            VideoChunk.end_s,
            Video.title,
            Video.key,
            Video.youtube_id,
            sa_null().label("distance"),
        )
        .join(Video, Video.id == VideoChunk.video_id)
        .where(
            Video.key == video_key,
            VideoChunk.start_s <= seconds,
            VideoChunk.end_s >= seconds - before_s,
        )
        .order_by(VideoChunk.start_s.desc())
    )
    if video_ids is not None:
        stmt = stmt.where(VideoChunk.video_id.in_(list(video_ids)))
    return stmt


def search_statement(
    query_embedding: np.ndarray | Sequence[float], *, k: int, video_ids: Sequence[int] | None
) -> Select:
    """The top-``k`` cosine search, library-wide or scoped to some videos.

    Library-wide, ``ORDER BY embedding <=> q`` is served by the HNSW index.
    Scoped to videos, the order key is ``(embedding <=> q) + 0`` so the planner cannot
    pick the HNSW index: pgvector 0.6 filters *after* the index scan (no iterative
    scans), which can return fewer than ``k`` rows; an exact scan of the scoped
    videos' rows (btree on ``video_id``) is both complete and fast at that size.

    Args:
        query_embedding: Vector of the store's dimension.
        k: Rows to return.
        video_ids: ``videos.id`` values to search in, or None for all.

    Returns:
        A select yielding ``text, start_s, end_s, title, key, youtube_id, distance``.
    """
    distance = VideoChunk.embedding.cosine_distance(query_embedding)
    stmt = (
        select(
            VideoChunk.text,
            VideoChunk.start_s,
            VideoChunk.end_s,
            Video.title,
            Video.key,
            Video.youtube_id,
            distance.label("distance"),
        )
        .join(Video, Video.id == VideoChunk.video_id)
        .limit(k)
    )
    if video_ids is None:
        return stmt.order_by(distance)
    return stmt.where(VideoChunk.video_id.in_(list(video_ids))).order_by(distance + 0)


def rows_to_chunks(rows: Sequence) -> list[RetrievedChunk]:
    """Map rows of :func:`search_statement` to :class:`RetrievedChunk`."""
    return [
        RetrievedChunk(
            text=row.text,
            start_s=row.start_s,
            end_s=row.end_s,
            video_title=row.title,
            video_key=row.key,
            youtube_id=row.youtube_id,
            score=1.0 - float(row.distance) if row.distance is not None else 0.0,
        )
        for row in rows
    ]


class Store:
    """The video library in Postgres + pgvector.

    Args:
        engine: A synchronous engine whose schema is migrated
            (:func:`backtalk.store.engine.migrate`).
    """

    def __init__(self, engine: Engine):
        self.engine = engine

    def ping(self) -> str | None:
        """None when the database answers a query now; else why not (for ``/readyz``)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return f"The database does not answer ({type(exc).__name__})."
        return None

    # -- embedding model -------------------------------------------------------------

    def embedder_info(self) -> tuple[str, int] | None:
        """``(model, dimensions)`` the store was built with, or None if still empty."""
        with self.engine.connect() as conn:
            meta = dict(conn.execute(select(StoreMeta.key, StoreMeta.value)).all())
        if _META_MODEL not in meta:
            return None
        return meta[_META_MODEL], int(meta[_META_DIMENSIONS])

    def check_embedder(self, model: str, dimensions: int) -> None:
        """Refuse an embedder other than the one the store was built with.

        Args:
            model: The embedder's model id.
            dimensions: Its vector length.

        Raises:
            EmbedderMismatchError: naming both models and dimensions.
        """
        info = self.embedder_info()
        if info is not None and info != (model, dimensions):
            raise EmbedderMismatchError(info[0], info[1], model, dimensions)

    def _bind_embedder(self, conn: Connection, model: str, dimensions: int) -> bool:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": EMBEDDER_LOCK})
        meta = dict(conn.execute(select(StoreMeta.key, StoreMeta.value)).all())
        if _META_MODEL in meta:
            if (meta[_META_MODEL], int(meta[_META_DIMENSIONS])) != (model, dimensions):
                raise EmbedderMismatchError(
                    meta[_META_MODEL], int(meta[_META_DIMENSIONS]), model, dimensions
                )
            return False
        # First ingest: fix the vector dimension. The caller builds the HNSW index
        # (cosine) *after* inserting the first video: one build over N rows is 5-12x
        # faster than N inserts into an empty graph (benchmarks/results/ingest.md).
        conn.execute(text("DELETE FROM video_chunks"))
        conn.execute(
            text(f"ALTER TABLE video_chunks ALTER COLUMN embedding TYPE vector({int(dimensions)})")
        )
        conn.execute(
            insert(StoreMeta),
            [
                {"key": _META_MODEL, "value": model},
                {"key": _META_DIMENSIONS, "value": str(dimensions)},
            ],
        )
        return True

    # -- videos ----------------------------------------------------------------------

    def transcript_hash(self, key: str) -> str | None:
        """The stored transcript hash of video ``key``, or None if absent."""
        with self.engine.connect() as conn:
            return conn.execute(select(Video.transcript_hash).where(Video.key == key)).scalar()

    def replace_video(
        self,
        video: VideoRow,
        chunks: Sequence[ChunkRow],
        embeddings: np.ndarray,
        *,
        embedding_model: str,
        skip_if_current: bool = False,
    ) -> int | None:
        """Insert or replace a video and all its chunks, in one transaction.

        The transaction holds a per-video advisory lock, so two processes writing the
        same video take turns; readers see the old version until it commits. Chunk
        keys ``(video_id, ordinal)`` are positions in ``chunks``, written after the
        video's old chunks are deleted, so one write cannot repeat a key.

        Args:
            video: The video's metadata.
            chunks: Its chunks, in order (``ordinal`` = position).
            embeddings: ``(len(chunks), dimensions)`` float32, one row per chunk.
            embedding_model: The embedder's model id, checked against the store's.
            skip_if_current: Write nothing if, once the video's lock is held, the store
                already has this ``transcript_hash`` for it (another process stored
                the same transcript meanwhile).

        Returns:
            The video's ``videos.id``; None when ``skip_if_current`` found it current.

        Raises:
            EmbedderMismatchError: the store holds another model's vectors.
            StoreError: the database failed; nothing was written.
        """
        if len(chunks) != len(embeddings):
            raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
        values = {
            "key": video.key,
            "youtube_id": video.youtube_id,
            "source": video.source,
            "url": video.url,
            "title": video.title,
            "channel": video.channel,
            "language": video.language,
            "duration_s": video.duration_s,
            "transcript_hash": video.transcript_hash,
            "embedding_model": embedding_model,
        }
        try:
            with self.engine.begin() as conn:
                first = self._bind_embedder(conn, embedding_model, int(embeddings.shape[1]))
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                    {"k": VIDEO_LOCK.format(key=video.key)},
                )
                if skip_if_current:
                    stored = conn.execute(
                        select(Video.transcript_hash).where(Video.key == video.key)
                    ).scalar()
                    if stored == video.transcript_hash:
                        return None
                upsert = pg_insert(Video).values(**values)
                upsert = upsert.on_conflict_do_update(
                    index_elements=[Video.key],
                    set_={**values, "ingested_at": func.now()},
                ).returning(Video.id)
                video_id = conn.execute(upsert).scalar_one()
                conn.execute(delete(VideoChunk).where(VideoChunk.video_id == video_id))
                if chunks:
                    conn.execute(
                        insert(VideoChunk),
                        [
                            {
                                "video_id": video_id,
                                "ordinal": i,
                                "text": chunk.text,
                                "start_s": chunk.start_s,
                                "end_s": chunk.end_s,
                                "embedding": embeddings[i],
                            }
                            for i, chunk in enumerate(chunks)
                        ],
                    )
                if first:
                    conn.execute(
                        text(
                            "CREATE INDEX IF NOT EXISTS video_chunks_embedding_hnsw "
                            "ON video_chunks USING hnsw (embedding vector_cosine_ops)"
                        )
                    )
        except EmbedderMismatchError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"Could not store {video.key}: {type(exc).__name__}.") from exc
        return video_id

    def list_videos(self, keys: Sequence[str] | None = None) -> list[VideoInfo]:
        """Videos, oldest ingest first, with their chunk counts.

        Args:
            keys: Only these keys; None for the whole library.
        """
        counts = (
            select(VideoChunk.video_id, func.count().label("n"))
            .group_by(VideoChunk.video_id)
            .subquery()
        )
        stmt = (
            select(Video, func.coalesce(counts.c.n, 0))
            .outerjoin(counts, counts.c.video_id == Video.id)
            .order_by(Video.ingested_at, Video.id)
        )
        if keys is not None:
            stmt = stmt.where(Video.key.in_(list(keys)))
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        return [
            VideoInfo(
                id=video.id,
                key=video.key,
                title=video.title,
                youtube_id=video.youtube_id,
                channel=video.channel,
                duration_s=video.duration_s,
                chunks=int(n),
                ingested_at=video.ingested_at,
                embedding_model=video.embedding_model,
            )
            for video, n in rows
        ]

    def find_videos(self, keys: Sequence[str]) -> dict[str, VideoInfo]:
        """Look videos up by key (YouTube id or caption-file id).

        Args:
            keys: Keys to find.

        Returns:
            ``{key: VideoInfo}`` for the keys that exist.
        """
        return {v.key: v for v in self.list_videos(keys)}

    def chunks(self, key: str) -> list[StoredChunk]:
        """The transcript of video ``key``, chunk by chunk in order ([] if absent)."""
        stmt = (
            select(VideoChunk.ordinal, VideoChunk.start_s, VideoChunk.end_s, VideoChunk.text)
            .join(Video, Video.id == VideoChunk.video_id)
            .where(Video.key == key)
            .order_by(VideoChunk.ordinal)
        )
        with self.engine.connect() as conn:
            return [StoredChunk(*row) for row in conn.execute(stmt)]

    def chunks_around(
        self, video_key: str, seconds: float, *, before_s: float
    ) -> list[RetrievedChunk]:
        """Chunks under and just before the playhead (see :func:`around_statement`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(around_statement(video_key, seconds, before_s=before_s)).all()
        return rows_to_chunks(rows)

    def remove_video(self, key: str) -> bool:
        """Delete a video and its chunks. Returns False if it was not there."""
        with self.engine.begin() as conn:
            result = conn.execute(delete(Video).where(Video.key == key))
        return result.rowcount > 0

    def search(
        self, query_embedding: np.ndarray, *, k: int, video_ids: Sequence[int] | None = None
    ) -> list[RetrievedChunk]:
        """Top-``k`` chunks by cosine similarity (see :func:`search_statement`)."""
        with self.engine.connect() as conn:
            rows = conn.execute(search_statement(query_embedding, k=k, video_ids=video_ids)).all()
        return rows_to_chunks(rows)

    # -- collections -----------------------------------------------------------------

    def add_to_collection(self, name: str, video_ids: Sequence[int]) -> None:
        """Create collection ``name`` if needed and add videos to it (idempotent)."""
        with self.engine.begin() as conn:
            collection_id = conn.execute(
                pg_insert(Collection)
                .values(name=name)
                .on_conflict_do_update(index_elements=[Collection.name], set_={"name": name})
                .returning(Collection.id)
            ).scalar_one()
            if video_ids:
                conn.execute(
                    pg_insert(CollectionVideo)
                    .values([{"collection_id": collection_id, "video_id": v} for v in video_ids])
                    .on_conflict_do_nothing()
                )

    def collections(self) -> dict[str, list[str]]:
        """``{collection name: [video keys]}``, by name."""
        stmt = (
            select(Collection.name, Video.key)
            .outerjoin(CollectionVideo, CollectionVideo.collection_id == Collection.id)
            .outerjoin(Video, Video.id == CollectionVideo.video_id)
            .order_by(Collection.name, Video.id)
        )
        result: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for name, key in conn.execute(stmt):
                result.setdefault(name, [])
                if key is not None:
                    result[name].append(key)
        return result

    def remove_collection(self, name: str) -> bool:
        """Delete a collection (its videos stay in the library)."""
        with self.engine.begin() as conn:
            return conn.execute(delete(Collection).where(Collection.name == name)).rowcount > 0

    # -- conversations ---------------------------------------------------------------

    def start_conversation(
        self, video_keys: Sequence[str], *, transport: str | None, persona: str | None
    ) -> int:
        """Record a new conversation and return its id."""
        with self.engine.begin() as conn:
            return conn.execute(
                conversation_start(video_keys, transport=transport, persona=persona)
            ).scalar_one()

    def conversations(self) -> list[tuple[int, str, int]]:
        """``(id, video_keys, message count)`` of every conversation, oldest first."""
        stmt = (
            select(Conversation.id, Conversation.video_keys, func.count(Message.id))
            .outerjoin(Message, Message.conversation_id == Conversation.id)
            .group_by(Conversation.id)
            .order_by(Conversation.id)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).all())

    def conversation_messages(self, conversation_id: int) -> list[tuple[str, str, bool]]:
        """``(role, content, interrupted)`` of a conversation's messages, in order."""
        with self.engine.connect() as conn:
            return list(
                conn.execute(
                    select(Message.role, Message.content, Message.interrupted)
                    .where(Message.conversation_id == conversation_id)
                    .order_by(Message.id)
                ).all()
            )

    def conversation_summaries(
        self,
        *,
        video_key: str | None = None,
        conversation_id: int | None = None,
        api_key_id: int | None = None,
    ) -> list[ConversationSummary]:
        """Saved conversations, newest first.

        Args:
            video_key: Only conversations about this video.
            conversation_id: Only this conversation.
            api_key_id: Only conversations this API key started.
        """
        first_user = (
            select(Message.content)
            .where(Message.conversation_id == Conversation.id, Message.role == "user")
            .order_by(Message.id)
            .limit(1)
            .correlate(Conversation)
            .scalar_subquery()
        )
        stmt = (
            select(Conversation, func.count(Message.id), first_user)
            .outerjoin(Message, Message.conversation_id == Conversation.id)
            .group_by(Conversation.id)
            .order_by(Conversation.id.desc())
        )
        if video_key is not None:
            # video_keys is comma-separated; keys never contain commas.
            stmt = stmt.where(
                func.concat(",", Conversation.video_keys, ",").contains(f",{video_key},")
            )
        if conversation_id is not None:
            stmt = stmt.where(Conversation.id == conversation_id)
        if api_key_id is not None:
            stmt = stmt.where(Conversation.api_key_id == api_key_id)
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        return [
            ConversationSummary(
                id=c.id,
                video_keys=[k for k in c.video_keys.split(",") if k],
                persona=c.persona,
                started_at=c.started_at,
                ended_at=c.ended_at,
                messages=int(n),
                preview=preview or "",
            )
            for c, n, preview in rows
        ]

    def conversation(
        self, conversation_id: int, *, api_key_id: int | None = None
    ) -> ConversationRecord | None:
        """A saved conversation with its messages, or None if there is none by that id.

        Args:
            conversation_id: ``conversations.id``.
            api_key_id: If given, None unless this API key started the conversation.
        """
        summaries = self.conversation_summaries(
            conversation_id=conversation_id, api_key_id=api_key_id
        )
        if not summaries:
            return None
        stmt = (
            select(
                Message.role,
                Message.content,
                Message.interrupted,
                Message.created_at,
                Message.citations,
            )
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.id)
        )
        with self.engine.connect() as conn:
            messages = [
                MessageRecord(role, content, interrupted, created_at, citations or [])
                for role, content, interrupted, created_at, citations in conn.execute(stmt)
            ]
        return ConversationRecord(summary=summaries[0], messages=messages)

    # -- API keys --------------------------------------------------------------------

    def create_key(self, name: str) -> tuple[str, ApiKeyInfo]:
        """Make a new API key.

        Args:
            name: What it is for.

        Returns:
            ``(key, info)``: the key itself is returned only here, never stored.
        """
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            row = conn.execute(
                insert(ApiKey)
                .values(name=name, prefix=key[:10], key_hash=hash_key(key))
                .returning(
                    ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.created_at, ApiKey.revoked_at
                )
            ).one()
        return key, ApiKeyInfo(*row)

    def keys(self) -> list[ApiKeyInfo]:
        """Every API key, oldest first."""
        stmt = select(
            ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.created_at, ApiKey.revoked_at
        ).order_by(ApiKey.id)
        with self.engine.connect() as conn:
            return [ApiKeyInfo(*row) for row in conn.execute(stmt)]

    def revoke_key(self, key_id: int) -> ApiKeyInfo | None:
        """Revoke a key (idempotent). Returns it, or None if there is no such key."""
        with self.engine.begin() as conn:
            conn.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=func.now())
            )
        return next((k for k in self.keys() if k.id == key_id), None)

    def key_id(self, key: str) -> int | None:
        """The id of a valid (unrevoked) API key, or None."""
        stmt = select(ApiKey.id).where(
            ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()


def conversation_start(
    video_keys: Sequence[str],
    *,
    transport: str | None,
    persona: str | None,
    api_key_id: int | None = None,
):
    """The INSERT of a new conversation, returning its id."""
    return (
        insert(Conversation)
        .values(
            video_keys=",".join(video_keys),
            transport=transport,
            persona=persona,
            api_key_id=api_key_id,
        )
        .returning(Conversation.id)
    )


def message_insert(
    conversation_id: int,
    role: str,
    content: str,
    interrupted: bool = False,
    citations: Sequence[dict] | None = None,
):
    """The INSERT of one conversation message (run by sync or async callers)."""
    return insert(Message).values(
        conversation_id=conversation_id,
        role=role,
        content=content,
        interrupted=interrupted,
        citations=list(citations) if citations else None,
    )


def conversation_end(conversation_id: int):
    """The UPDATE that marks a conversation ended now."""
    return (
        update(Conversation).where(Conversation.id == conversation_id).values(ended_at=func.now())
    )
