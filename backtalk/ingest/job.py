"""The ingest job: sources → segments → chunks → embeddings → one transaction per video."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from backtalk.config import Settings
from backtalk.errors import BacktalkError, CaptionFileError, TranscriptUnavailableError
from backtalk.ingest.captions import read_caption_file
from backtalk.ingest.chunking import Chunk, chunk_segments
from backtalk.ingest.segments import Segment, clean_title
from backtalk.ingest.sources import CaptionFileSource, Source, YouTubeSource
from backtalk.ingest.youtube import YouTubeProxy, fetch_youtube_transcript
from backtalk.store.embedders import Embedder
from backtalk.store.repo import ChunkRow, Store, VideoRow

__all__ = [
    "IngestOutcome",
    "IngestReport",
    "ProgressHook",
    "ingest_sources",
    "ingest_with_settings",
    "youtube_proxy",
]

logger = logging.getLogger("backtalk.ingest")

Status = Literal["added", "updated", "unchanged", "present", "failed", "skipped"]
#: ``progress(key, stage, done, total)``; stage is ``fetch``, ``embed`` or ``store``.
ProgressHook = Callable[[str, str, int, int], None]
#: Texts per embedding call: progress moves in steps this size and memory stays
#: bounded on 10-hour transcripts. (OpenAI allows up to 2048 per request.)
EMBED_BATCH = 256


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """What happened to one source.

    Parameters:
        source: The input.
        status: ``added``/``updated`` (written), ``unchanged`` (same transcript already
            stored: no embedding calls; or stored by another process while this one
            was embedding it: nothing written twice), ``present`` (already in the
            library, not re-fetched), ``failed`` (see ``error``), ``skipped`` (batch
            stopped early).
        title: The video's title, when known.
        chunks: Chunks stored for it.
        error: Why it failed or was skipped.
    """

    source: Source
    status: Status
    title: str | None = None
    chunks: int = 0
    error: BacktalkError | None = None


@dataclass
class IngestReport:
    """Outcomes of a batch, in input order."""

    outcomes: list[IngestOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[IngestOutcome]:
        """Outcomes that failed or were skipped."""
        return [o for o in self.outcomes if o.status in ("failed", "skipped")]

    @property
    def ok(self) -> bool:
        """True when every source is in the library now."""
        return not self.failed


@dataclass(frozen=True, slots=True)
class _Fetched:
    segments: list[Segment]
    video: dict


def _fetch(source: Source, languages: Sequence[str], proxy: YouTubeProxy | None) -> _Fetched:
    if isinstance(source, YouTubeSource):
        t = fetch_youtube_transcript(source.video_id, languages=languages, proxy=proxy)
        return _Fetched(
            t.segments,
            {
                "key": source.key,
                "youtube_id": t.video_id,
                "source": "youtube",
                "url": f"https://www.youtube.com/watch?v={t.video_id}",
                "title": t.title,
                "channel": t.channel,
                "language": t.language_code,
            },
        )
    assert isinstance(source, CaptionFileSource)
    return _Fetched(
        read_caption_file(source.path),
        {
            "key": source.key,
            "youtube_id": source.youtube_id,
            "source": "file",
            "url": (
                f"https://www.youtube.com/watch?v={source.youtube_id}"
                if source.youtube_id
                else None
            ),
            "title": source.title,
            "channel": None,
            "language": None,
        },
    )


def _transcript_hash(chunks: Sequence[Chunk], video: dict, model: str) -> str:
    payload = json.dumps(
        [model, video["title"], [(c.text, round(c.start_s, 3), round(c.end_s, 3)) for c in chunks]],
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def ingest_sources(
    sources: Sequence[Source],
    *,
    store: Store,
    embedder: Embedder,
    languages: Sequence[str] = ("en",),
    proxy: YouTubeProxy | None = None,
    chunk_target_s: float = 45.0,
    chunk_max_s: float = 60.0,
    skip_present: bool = False,
    progress: ProgressHook | None = None,
) -> IngestReport:
    """Ingest videos into the library, one transaction per video.

    Each video is fetched, chunked and embedded *before* its transaction opens, then
    written with its old chunks replaced, so the library never holds half a video
    and never duplicates one. A video whose transcript is unchanged costs no
    embedding calls. A failure affects only its own video, except when YouTube
    blocks this IP: then the rest of the batch is skipped rather than hammering it.

    Args:
        sources: Parsed inputs (:func:`backtalk.ingest.sources.parse_source`).
        store: The library.
        embedder: Must match the store's embedding model.
        languages: Preferred YouTube caption languages, in order.
        proxy: YouTube proxy settings.
        chunk_target_s: Preferred chunk length, seconds.
        chunk_max_s: Longest chunk, seconds.
        skip_present: Leave videos already in the library as they are, without
            fetching (``backtalk talk`` uses this).
        progress: Called as work advances.

    Returns:
        One outcome per source.

    Raises:
        EmbedderMismatchError: the library was built with another embedding model
            (checked before any fetch).
        StoreError: the database cannot be reached.
    """
    store.check_embedder(embedder.model, embedder.dimensions)
    present = set(store.find_videos([s.key for s in sources])) if skip_present else set()
    report = IngestReport()
    stop: TranscriptUnavailableError | None = None
    for source in sources:
        if stop is not None:
            report.outcomes.append(IngestOutcome(source, "skipped", error=stop))
            continue
        if source.key in present:
            report.outcomes.append(IngestOutcome(source, "present"))
            continue
        try:
            outcome = _ingest_one(
                source, store, embedder, languages, proxy, chunk_target_s, chunk_max_s, progress
            )
        except TranscriptUnavailableError as exc:
            logger.info("No transcript for %s: %s", exc.video_id, type(exc.__cause__).__name__)
            outcome = IngestOutcome(source, "failed", error=exc)
            if exc.stop_batch:
                stop = exc
        except BacktalkError as exc:
            outcome = IngestOutcome(source, "failed", error=exc)
        report.outcomes.append(outcome)
    return report


def youtube_proxy(settings: Settings) -> YouTubeProxy:
    """The YouTube proxy the settings name (none, a URL, or Webshare credentials)."""
    return YouTubeProxy(
        url=settings.secret("youtube_proxy_url"),
        webshare_username=settings.secret("webshare_proxy_username"),
        webshare_password=settings.secret("webshare_proxy_password"),
    )


def ingest_with_settings(
    settings: Settings,
    store: Store,
    sources: Sequence[Source],
    *,
    embedder: Embedder,
    languages: Sequence[str] | None = None,
    skip_present: bool = False,
    progress: ProgressHook | None = None,
) -> IngestReport:
    """:func:`ingest_sources` with languages, proxy and chunking from the settings.

    What the CLI's ``ingest``/``talk`` and the server's ``POST /api/videos`` run.

    Args:
        settings: Caption languages, YouTube proxy, chunk lengths.
        store: The library.
        embedder: The library's embedder.
        sources: Parsed inputs.
        languages: Caption languages overriding ``settings.transcript_languages``.
        skip_present: Leave videos already in the library as they are.
        progress: Called as work advances.

    Raises:
        The errors of :func:`ingest_sources`.
    """
    return ingest_sources(
        sources,
        store=store,
        embedder=embedder,
        languages=languages or settings.transcript_languages,
        proxy=youtube_proxy(settings),
        chunk_target_s=settings.chunk_target_s,
        chunk_max_s=settings.chunk_max_s,
        skip_present=skip_present,
        progress=progress,
    )


def _ingest_one(
    source: Source,
    store: Store,
    embedder: Embedder,
    languages: Sequence[str],
    proxy: YouTubeProxy | None,
    target_s: float,
    max_s: float,
    progress: ProgressHook | None,
) -> IngestOutcome:
    def report(stage: str, done: int, total: int) -> None:
        if progress is not None:
            progress(source.key, stage, done, total)

    report("fetch", 0, 1)
    fetched = _fetch(source, languages, proxy)
    chunks = chunk_segments(fetched.segments, target_s=target_s, max_s=max_s)
    # Titles reach the LLM's instructions and the listener's ears: cleaned like text.
    title = clean_title(fetched.video["title"]) or _fallback_title(source)
    channel = clean_title(fetched.video["channel"]) if fetched.video["channel"] else None
    fetched.video.update(title=title, channel=channel or None)
    if not chunks:
        error: BacktalkError = (
            TranscriptUnavailableError(source.key, "The transcript has no speech.", "")
            if isinstance(source, YouTubeSource)
            else CaptionFileError(source.given, "the captions contain no speech")
        )
        return IngestOutcome(source, "failed", title, error=error)
    digest = _transcript_hash(chunks, fetched.video, embedder.model)
    previous = store.transcript_hash(source.key)
    if previous == digest:
        report("store", 1, 1)
        return IngestOutcome(source, "unchanged", title, len(chunks))
    texts = [c.text for c in chunks]
    parts = []
    batch = getattr(embedder, "max_batch", EMBED_BATCH)
    for start in range(0, len(texts), batch):
        report("embed", start, len(texts))
        parts.append(embedder.embed(texts[start : start + batch]))
    report("embed", len(texts), len(texts))
    embeddings = np.concatenate(parts)
    duration = max(c.end_s for c in chunks)
    written = store.replace_video(
        VideoRow(transcript_hash=digest, duration_s=duration, **fetched.video),
        [ChunkRow(c.text, c.start_s, c.end_s) for c in chunks],
        embeddings,
        embedding_model=embedder.model,
        skip_if_current=True,
    )
    report("store", 1, 1)
    if written is None:  # another process stored this very transcript meanwhile
        return IngestOutcome(source, "unchanged", title, len(chunks))
    return IngestOutcome(source, "updated" if previous else "added", title, len(chunks))


def _fallback_title(source: Source) -> str:
    if isinstance(source, YouTubeSource):
        return f"YouTube video {source.video_id}"
    return source.key
