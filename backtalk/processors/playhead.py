"""Where the user is in the video, and retrieval that uses it.

A page that plays the video beside the conversation knows the playhead; a question
such as "what did she just say?" or "can you explain this part?" is about the
passage under it, which a similarity search over the whole video cannot find (the
question shares no words with it). :class:`Playhead` keeps the last position the
client reported; :class:`PlayheadRetriever` wraps any
:class:`~backtalk.processors.retrieval.Retriever` and combines the two:

* every question is searched by similarity, as without a playhead;
* when the question refers to the present moment (:func:`refers_to_playhead`: "this
  part", "just now", "what she said there", ...) and a position is known, the chunks
  under the playhead and up to ``before_s`` seconds before it come first, marked with
  ``playhead_s``, and the similar chunks fill the remaining places (duplicates
  dropped). A question about something else ("why does momentum help?") is answered
  from the search alone, wherever the player is.

The RAG processor keeps playhead chunks whatever their similarity score and tells the
LLM where the user is (``playhead="03:40"`` on those excerpts).

This module imports only the standard library and :mod:`backtalk.processors.retrieval`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from backtalk.processors.retrieval import RetrievedChunk, Retriever

__all__ = [
    "Playhead",
    "PlayheadPosition",
    "PlayheadRetriever",
    "TimeIndex",
    "merge_playhead",
    "refers_to_playhead",
]

#: How far back "just now" reaches by default, seconds: about one chunk (45 s target).
DEFAULT_BEFORE_S = 30.0
#: A position reported longer ago than this (seconds, wall clock) with the player
#: paused is still where the user is; while playing it is extrapolated. A position
#: older than this while *playing* means the page stopped reporting: not trusted.
STALE_WHILE_PLAYING_S = 10.0

_CUES = re.compile(
    r"""\b(?:
      (?:this|that)\s+(?:part|bit|section|point|moment|scene|slide|segment|clip|example
                         |sentence|line|passage|step|diagram|picture|graph|one)
    | just\s+(?:now|said|say|says|mention|mentioned|explain|explained|show|showed|described
                |talked|talking|did)
    | right\s+(?:now|here|there)
    | (?:say|said|says|saying|mean|means|meant|talking\s+about|doing|showing)\s+(?:there|here)
    | at\s+this\s+(?:point|moment|time|stage)
    | (?:is|was|'s)\s+(?:she|he|they|the\s+speaker|the\s+presenter)\s+(?:saying|talking|doing
                                                                       |showing|explaining)
    | where\s+(?:i\s+am|we\s+are)
    | what\s+i'?m\s+(?:watching|seeing|looking\s+at)
    )\b""",
    re.IGNORECASE | re.VERBOSE,
)


def refers_to_playhead(text: str) -> bool:
    """Whether a question is about the moment being watched ("what did she just say?").

    A deliberately narrow list of deictic phrases (this/that part, just now, right
    here, what is she saying, ...): a false positive only adds the passage under the
    playhead to the excerpts, a false negative falls back to the similarity search.

    Args:
        text: The user's words.
    """
    return _CUES.search(text) is not None


@dataclass(frozen=True, slots=True)
class PlayheadPosition:
    """The player's position as last reported.

    Parameters:
        video_key: The video on the player (the store's key).
        seconds: Position, seconds from the start of the video.
        playing: Whether it was playing.
        reported_at: ``time.monotonic()`` when it was reported.
    """

    video_key: str
    seconds: float
    playing: bool
    reported_at: float


class Playhead:
    """The last position the client reported, extrapolated while the video plays.

    Updated from the page's ``player-position`` messages (on play, pause, seek, about
    once a second while playing, and when the user starts talking).
    """

    def __init__(self) -> None:
        self._last: PlayheadPosition | None = None

    def update(
        self, video_key: str, seconds: float, *, playing: bool, now: float | None = None
    ) -> None:
        """Record a reported position.

        Args:
            video_key: The video on the player.
            seconds: Position, seconds (negative values are clamped to 0).
            playing: Whether it is playing.
            now: ``time.monotonic()`` of the report (default: now).
        """
        self._last = PlayheadPosition(
            video_key=video_key,
            seconds=max(0.0, float(seconds)),
            playing=bool(playing),
            reported_at=time.monotonic() if now is None else now,
        )

    def position(self, now: float | None = None) -> tuple[str, float] | None:
        """``(video_key, seconds)`` now, or None if unknown or stale.

        While playing, the position advances with the wall clock from the last report;
        a playing position not refreshed for :data:`STALE_WHILE_PLAYING_S` is stale.

        Args:
            now: ``time.monotonic()`` (default: now).
        """
        last = self._last
        if last is None:
            return None
        if not last.playing:
            return last.video_key, last.seconds
        elapsed = (time.monotonic() if now is None else now) - last.reported_at
        if elapsed > STALE_WHILE_PLAYING_S:
            return None
        return last.video_key, last.seconds + max(0.0, elapsed)


class TimeIndex(Protocol):
    """Finds chunks by time (implemented by :class:`backtalk.store.PgVectorRetriever`)."""

    async def around(
        self, video_key: str, seconds: float, *, before_s: float
    ) -> Sequence[RetrievedChunk]:
        """Chunks overlapping ``[seconds - before_s, seconds]``, latest first."""
        ...


def merge_playhead(
    at_playhead: Sequence[RetrievedChunk],
    similar: Sequence[RetrievedChunk],
    *,
    k: int,
    playhead_s: float,
    max_playhead: int = 2,
) -> list[RetrievedChunk]:
    """Playhead chunks first (latest first, at most ``max_playhead``), then similar ones.

    Args:
        at_playhead: Chunks around the playhead, latest first.
        similar: Chunks by similarity, best first.
        k: Chunks to return at most.
        playhead_s: The playhead, seconds (recorded on the playhead chunks).
        max_playhead: Playhead chunks kept at most.

    Returns:
        Up to ``k`` chunks; playhead ones carry ``playhead_s``.
    """
    chosen = [replace(c, playhead_s=playhead_s) for c in at_playhead[: min(k, max_playhead)]]
    seen = {(c.video_key, c.start_s) for c in chosen}
    for chunk in similar:
        if len(chosen) >= k:
            break
        if (chunk.video_key, chunk.start_s) not in seen:
            seen.add((chunk.video_key, chunk.start_s))
            chosen.append(chunk)
    return chosen


class PlayheadRetriever:
    """A retriever that answers "what did she just say?" from the playhead.

    Implements :class:`~backtalk.processors.retrieval.Retriever`; see the module
    docstring for how similarity and the playhead are combined.

    Args:
        retriever: The similarity retriever (any :class:`Retriever`).
        index: Finds chunks by time (:class:`TimeIndex`).
        playhead: Where the user is.
        before_s: How far back "just now" reaches, seconds.
        max_playhead: Playhead chunks given at most.
    """

    def __init__(
        self,
        retriever: Retriever,
        index: TimeIndex,
        playhead: Playhead,
        *,
        before_s: float = DEFAULT_BEFORE_S,
        max_playhead: int = 2,
    ):
        self._retriever = retriever
        self._index = index
        self.playhead = playhead
        self._before_s = before_s
        self._max_playhead = max_playhead

    @property
    def inner(self) -> Retriever:
        """The similarity retriever this one wraps."""
        return self._retriever

    async def retrieve(self, query: str, *, k: int) -> list[RetrievedChunk]:
        """Similar chunks, with the playhead's first when the question is about it.

        Args:
            query: The user's words.
            k: Chunks wanted.

        Raises:
            Whatever the wrapped retriever or the index raise.
        """
        position = self.playhead.position()
        if position is None or not refers_to_playhead(query):
            return list(await self._retriever.retrieve(query, k=k))
        key, seconds = position
        similar, around = await asyncio.gather(
            self._retriever.retrieve(query, k=k),
            self._index.around(key, seconds, before_s=self._before_s),
        )
        return merge_playhead(
            around, similar, k=k, playhead_s=seconds, max_playhead=self._max_playhead
        )
