"""Speculative retrieval: start retrieving while the user is still speaking.

Streaming STT sends interim transcriptions long before the user's turn ends (the VAD
silence, the turn model, the final transcript). :class:`SpeculativeRetrievalTap`,
placed between the STT and the user context aggregator, starts a retrieval for the
turn's text so far on each interim and final transcription.
:class:`SpeculativeRetriever` wraps the real retriever and keeps those retrievals by
normalised query; when the RAG processor asks for the turn's final query and it
matches one already started, the result is reused (usually already done, so the
turn waits for nothing); otherwise it retrieves afresh::

    speculative = SpeculativeRetriever(retriever)
    pipeline = Pipeline([transport.input(), stt, SpeculativeRetrievalTap(speculative), user,
                         RAGContextProcessor(speculative), llm, tts, transport.output(),
                         assistant])

Speculative retrievals only read; nothing speculative reaches the conversation.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from backtalk.processors.retrieval import RetrievedChunk, Retriever

__all__ = ["SpeculativeRetrievalTap", "SpeculativeRetriever", "SpeculativeStats", "normalize_query"]

_NON_WORD = re.compile(r"[^\w']+")


def normalize_query(text: str) -> str:
    """Lower-case words only, so "What is it?" and "what is it" match."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


@dataclass
class SpeculativeStats:
    """Counters of speculative retrieval.

    Parameters:
        started: Speculative retrievals started.
        hits: Turn queries served by a speculative retrieval.
        ready_hits: Hits whose result was already there when the turn asked.
        misses: Turn queries that had to be retrieved afresh.
    """

    started: int = 0
    hits: int = 0
    ready_hits: int = 0
    misses: int = 0


class SpeculativeRetriever:
    """A :class:`~backtalk.processors.retrieval.Retriever` that can be primed early.

    Args:
        retriever: The real retriever.
        max_pending: Speculative retrievals kept; the oldest is cancelled beyond it.
    """

    def __init__(self, retriever: Retriever, *, max_pending: int = 8):
        self._retriever = retriever
        self._max_pending = max_pending
        self._pending: OrderedDict[tuple[str, int], asyncio.Task] = OrderedDict()
        self.stats = SpeculativeStats()

    def prefetch(self, query: str, *, k: int) -> None:
        """Start retrieving ``query`` in the background unless already started.

        Args:
            query: The turn's text so far.
            k: Chunks, as the RAG processor will ask.
        """
        key = (normalize_query(query), k)
        if not key[0] or self._usable(self._pending.get(key)):
            return
        self._start(key, query, k)
        self.stats.started += 1

    async def retrieve(self, query: str, *, k: int) -> Sequence[RetrievedChunk]:
        """The speculative result for ``query`` if one was started, else a fresh one.

        A fresh retrieval is kept like a speculative one, so a later prefetch of the
        same text (the final transcript of a turn already answered on Flux's eager end
        of turn) reuses it instead of asking the embedder again. A failed retrieval is
        not reused.
        """
        key = (normalize_query(query), k)
        task = self._pending.get(key)
        if not self._usable(task):
            self.stats.misses += 1
            task = self._start(key, query, k)
        else:
            self.stats.hits += 1
            if task.done():
                self.stats.ready_hits += 1
        # Shielded: the RAG processor cancelling its wait (timeout, interruption) must
        # not cancel a retrieval another request may still use.
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                # Evicted by newer speculations (or cleared) while this turn waited.
                return await self._retriever.retrieve(query, k=k)
            raise

    @staticmethod
    def _usable(task: asyncio.Task | None) -> bool:
        if task is None or task.cancelled():
            return False
        return not (task.done() and task.exception() is not None)

    def _start(self, key: tuple[str, int], query: str, k: int) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(
            self._retriever.retrieve(query, k=k), name=f"speculative-retrieval:{key[0][:40]}"
        )
        # A failed retrieval is reported to whoever awaits it; unawaited, it is dropped.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._pending[key] = task
        self._pending.move_to_end(key)
        while len(self._pending) > self._max_pending:
            _, oldest = self._pending.popitem(last=False)
            oldest.cancel()
        return task

    def clear(self) -> None:
        """Cancel and forget every speculative retrieval."""
        for task in self._pending.values():
            task.cancel()
        self._pending.clear()


class SpeculativeRetrievalTap(FrameProcessor):
    """Primes a :class:`SpeculativeRetriever` from interim and final transcriptions.

    Place it between the STT and the user context aggregator. It passes every frame
    on unchanged. For each transcription it prefetches the user turn's text so far
    (the turn's final transcripts plus the latest interim), which is what the user
    aggregator will put in the context if the turn ends now. The turn's text is reset
    when the turn ends (``UserStoppedSpeakingFrame``).

    Args:
        retriever: Shared with the RAG processor.
        top_k: The RAG processor's ``top_k``.
        min_words: Interims shorter than this are not worth a retrieval.
        **kwargs: Passed to :class:`FrameProcessor`.
    """

    def __init__(
        self, retriever: SpeculativeRetriever, *, top_k: int = 4, min_words: int = 3, **kwargs
    ):
        super().__init__(**kwargs)
        self._retriever = retriever
        self._top_k = top_k
        self._min_words = min_words
        self._finals: list[str] = []

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Prefetch on transcriptions; pass every frame on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, TranscriptionFrame) and frame.text.strip():
            self._finals.append(frame.text.strip())
            self._retriever.prefetch(" ".join(self._finals), k=self._top_k)
        elif isinstance(frame, InterimTranscriptionFrame) and frame.text.strip():
            text = " ".join([*self._finals, frame.text.strip()])
            if len(text.split()) >= self._min_words:
                self._retriever.prefetch(text, k=self._top_k)
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._finals = []
        elif isinstance(frame, EndFrame | CancelFrame):
            self._retriever.clear()
        await self.push_frame(frame, direction)
