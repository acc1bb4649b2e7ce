"""What was heard is what is remembered: the assistant context after an interruption.

:class:`~backtalk.processors.heard_text.HeardTextProcessor` in front of Pipecat's own
``LLMAssistantAggregator`` (the pair Backtalk's pipeline ends with), fed the frames the
output transport pushes on: a TTS context's sentence texts (let through before their
audio, as Pipecat does for TTS services without word timestamps) and its audio
chunks, each pushed once it has been played. The context the aggregator writes is
checked after an interruption and after an answer heard to the end.
"""

from __future__ import annotations

import pytest
from pipecat.frames.frames import (
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.utils.text.base_text_aggregator import TextType

from backtalk.processors.citations import remove_citation_tags
from backtalk.processors.heard_text import HeardTextProcessor

pytestmark = pytest.mark.unit

RATE = 24000
CHUNK_S = 0.04
SENTENCES = ["Momentum helps because it remembers the last steps.", "It is like a heavy ball."]


def sentence(text: str) -> TTSTextFrame:
    frame = TTSTextFrame(text, text_type=TextType.SENTENCE)
    frame.append_to_context = True
    return frame


def played(seconds: float) -> list[TTSAudioRawFrame]:
    """Chunks of audio as the output transport pushes them on after playing them."""
    n = round(seconds / CHUNK_S)
    return [TTSAudioRawFrame(b"\x01\x00" * int(RATE * CHUNK_S), RATE, 1) for _ in range(n)]


def answer(played_s: float, *, finished: bool) -> list:
    frames = [LLMFullResponseStartFrame(), TTSStartedFrame(), *map(sentence, SENTENCES)]
    # The LLM is long done: its end frame comes out ahead of most of the audio.
    frames += [*played(played_s), LLMFullResponseEndFrame()]
    if finished:
        frames += [*played(0.02 * sum(len(s) + 1 for s in SENTENCES) - played_s), TTSStoppedFrame()]
    return frames


async def context_after(frames: list, heard: HeardTextProcessor) -> list[dict]:
    context = LLMContext()
    _, assistant = LLMContextAggregatorPair(context)
    await run_test(Pipeline([heard, assistant]), frames_to_send=frames, start_timeout=5)
    return context.get_messages()


async def test_an_interrupted_answer_is_remembered_as_far_as_it_was_played():
    # 0.02 s of speech per character: 0.6 s played is the first 30 characters.
    heard = HeardTextProcessor(secs_per_char=0.02)
    frames = [*answer(0.6, finished=False), SleepFrame(sleep=0.3), InterruptionFrame()]
    messages = await context_after(frames, heard)
    assert messages == [{"role": "assistant", "content": "Momentum helps because it"}]
    assert heard.dropped_words == len(" ".join(SENTENCES).split()) - 4


async def test_an_answer_heard_to_the_end_is_remembered_whole_and_calibrates_the_voice():
    heard = HeardTextProcessor(secs_per_char=0.2)  # a wrong guess: five times too slow
    messages = await context_after(answer(0.3, finished=True), heard)
    assert messages == [{"role": "assistant", "content": " ".join(SENTENCES)}]
    # The finished context measured the voice: seconds played per spoken character.
    assert heard.secs_per_char == pytest.approx(0.02, rel=0.03)  # to a chunk of audio


async def test_markup_the_tts_does_not_say_takes_no_time():
    heard = HeardTextProcessor(secs_per_char=0.02, spoken_text=remove_citation_tags)
    cited = sentence('About four minutes in <cite t="240"/>, he says start small.')
    frames = [
        LLMFullResponseStartFrame(),
        TTSStartedFrame(),
        cited,
        *played(0.02 * len("About four minutes in, he says")),
        SleepFrame(sleep=0.3),
        InterruptionFrame(),
    ]
    messages = await context_after(frames, heard)
    assert messages[0]["content"].startswith("About four minutes in")
    assert messages[0]["content"].endswith("he says")
