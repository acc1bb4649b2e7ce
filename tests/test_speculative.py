"""Speculative retrieval: primed on interim transcripts, reused when the final turn matches."""

import asyncio

from pipecat.frames.frames import (
    InterimTranscriptionFrame,
    TranscriptionFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.tests.utils import SleepFrame, run_test
from retrievers import ListRetriever

from backtalk.processors.retrieval import RetrievedChunk
from backtalk.processors.speculative import (
    SpeculativeRetrievalTap,
    SpeculativeRetriever,
    normalize_query,
)

CHUNK = RetrievedChunk(text="t", start_s=0, end_s=30, video_title="v", video_key="k")


def test_normalisation_ignores_case_and_punctuation():
    assert normalize_query("What's the  Learning-Rate?") == normalize_query(
        "what's the learning rate"
    )


async def test_matching_final_query_reuses_the_speculative_result():
    inner = ListRetriever([CHUNK], delay_s=0.05)
    speculative = SpeculativeRetriever(inner)
    speculative.prefetch("what does he say about the learning rate", k=4)
    await asyncio.sleep(0.1)
    result = await speculative.retrieve("What does he say about the learning rate?", k=4)
    assert result == [CHUNK]
    assert inner.queries == ["what does he say about the learning rate"]
    assert (speculative.stats.hits, speculative.stats.ready_hits, speculative.stats.misses) == (
        1,
        1,
        0,
    )


async def test_a_different_final_query_is_retrieved_afresh():
    inner = ListRetriever([CHUNK], delay_s=0.05)
    speculative = SpeculativeRetriever(inner)
    speculative.prefetch("what does he say", k=4)
    await speculative.retrieve("what does he say about momentum", k=4)
    assert speculative.stats.misses == 1 and len(inner.queries) == 2


async def test_cancelling_a_wait_does_not_cancel_the_shared_retrieval():
    inner = ListRetriever([CHUNK], delay_s=0.2)
    speculative = SpeculativeRetriever(inner)
    speculative.prefetch("a question here", k=4)
    waiter = asyncio.create_task(speculative.retrieve("a question here", k=4))
    await asyncio.sleep(0.05)
    waiter.cancel()
    assert await speculative.retrieve("a question here", k=4) == [CHUNK]
    assert inner.cancelled == 0
    speculative.clear()


async def test_old_speculations_are_cancelled_beyond_the_limit():
    inner = ListRetriever([CHUNK], delay_s=1.0)
    speculative = SpeculativeRetriever(inner, max_pending=2)
    for text in ("one two three", "one two three four", "one two three four five"):
        speculative.prefetch(text, k=4)
        await asyncio.sleep(0.01)
    assert inner.cancelled == 1
    speculative.clear()
    await asyncio.sleep(0.01)
    assert inner.cancelled == 3


async def test_tap_prefetches_the_turn_so_far_and_passes_frames_on():
    inner = ListRetriever([CHUNK], delay_s=0.05)
    speculative = SpeculativeRetriever(inner)
    frames = [
        InterimTranscriptionFrame("what", "u", "t"),
        InterimTranscriptionFrame("what does he say", "u", "t"),
        TranscriptionFrame("What does he say about", "u", "t"),
        InterimTranscriptionFrame("the learning", "u", "t"),
        TranscriptionFrame("the learning rate?", "u", "t"),
        SleepFrame(sleep=0.1),
        UserStoppedSpeakingFrame(),
        InterimTranscriptionFrame("and momentum too", "u", "t"),
        SleepFrame(sleep=0.1),
    ]
    down, _ = await run_test(
        SpeculativeRetrievalTap(speculative, top_k=4),
        frames_to_send=frames,
        expected_down_frames=[
            InterimTranscriptionFrame,
            InterimTranscriptionFrame,
            TranscriptionFrame,
            InterimTranscriptionFrame,
            TranscriptionFrame,
            UserStoppedSpeakingFrame,
            InterimTranscriptionFrame,
        ],
    )
    assert inner.queries == [
        "what does he say",
        "What does he say about",
        "What does he say about the learning",
        "What does he say about the learning rate?",
        "and momentum too",
    ]
    # The pipeline ended: every speculative retrieval was cancelled and forgotten.
    assert speculative._pending == {}


async def test_a_fresh_retrieval_is_reused_by_a_later_prefetch_of_the_same_text():
    """Flux answers on its eager end of turn, then sends the same text as the final
    transcript: the tap's prefetch of it must not ask the embedder a second time."""
    inner = ListRetriever([CHUNK], delay_s=0.05)
    speculative = SpeculativeRetriever(inner)
    assert await speculative.retrieve("why does momentum help", k=4) == [CHUNK]
    speculative.prefetch("Why does momentum help?", k=4)
    assert await speculative.retrieve("why does momentum help", k=4) == [CHUNK]
    assert inner.queries == ["why does momentum help"]
    assert (speculative.stats.misses, speculative.stats.hits) == (1, 1)
    speculative.clear()


async def test_a_failed_retrieval_is_not_reused():
    inner = ListRetriever([CHUNK], error=RuntimeError("database unavailable"))
    speculative = SpeculativeRetriever(inner)
    speculative.prefetch("why does momentum help", k=4)
    await asyncio.sleep(0.01)
    inner.error = None
    assert await speculative.retrieve("why does momentum help", k=4) == [CHUNK]
    assert len(inner.queries) == 2 and speculative.stats.misses == 1
    speculative.clear()


async def test_a_turn_waiting_on_an_evicted_speculation_still_gets_its_result():
    inner = ListRetriever([CHUNK], delay_s=0.2)
    speculative = SpeculativeRetriever(inner, max_pending=1)
    speculative.prefetch("why does momentum help", k=4)
    waiter = asyncio.create_task(speculative.retrieve("why does momentum help", k=4))
    await asyncio.sleep(0.05)
    speculative.prefetch("something else entirely", k=4)  # evicts the one being awaited
    assert await waiter == [CHUNK]
    speculative.clear()
