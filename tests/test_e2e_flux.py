"""End-to-end tests of the real voice pipeline in Deepgram Flux mode, on real speech.

Like :mod:`test_e2e_voice` (whose helpers and fixtures this module uses), everything
Backtalk ships runs unchanged — ``Settings`` from the environment with
``BACKTALK_STT_SERVICE=deepgram_flux``, the ``backtalk ingest`` CLI, the real
conversation under Pipecat's ``WorkerRunner`` — and only the edges are stand-ins: the
loopback fakes (the fake Deepgram's ``/v2/listen`` speaks Flux's wire protocol to
Pipecat's unchanged ``DeepgramFluxSTTService``) and the loopback transport.

In Flux mode Flux decides when the user's turn ends. Backtalk asks for *eager* end of
turn: on Flux's ``EagerEndOfTurn`` Pipecat's ``EagerUserTurnStrategies`` runs the
turn speculatively — the RAG processor retrieves and the LLM is asked — and the
LLM service holds the response until ``EndOfTurn`` confirms the turn (or drops it on
``TurnResumed``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import test_e2e_voice
from conftest import AUDIO
from fakes import FakeDeepgram, FakeOpenAI
from test_e2e_voice import (
    BARGE_IN_BOUND_S,
    Q1_TEXT,
    Q1_WAV,
    TTS_SECS_PER_CHAR,
    TURN_TIMEOUT_S,
    bot_answering_momentum,
    ingest_lecture,
    last_user_text,
    running_conversation,
    speech_bursts,
    wait_greeted,
    wait_until,
)
from transports import MIC_FRAME_S, load_wav

from backtalk.config import Settings
from backtalk.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# The fixtures of test_e2e_voice: the fake OpenAI, and the environment pointing the
# real Settings at the fakes and the test database (with this module's fake Deepgram).
fake_openai = test_e2e_voice.fake_openai
services_env = test_e2e_voice.services_env

#: Seconds of silence after the user's speech before the fake Flux sends
#: ``EndOfTurn``. The fake's default (0.45 s, 0.2 s after ``EagerEndOfTurn``) is
#: realistic, but the speculative turn (retrieval, then the chat request) must be
#: seen to start inside that gap, which a loaded 2-core machine does not guarantee
#: in 0.2 s. A wider gap makes the order of events deterministic; nothing is timed.
FLUX_EOT_DELAY_S = 2.0

#: q1 cut in two (between "say" and "about" as far as the fake is concerned: it
#: transcribes each stretch of speech as the next queued text).
Q1_PARTS = ("What does the speaker say", "about choosing the learning rate?")
#: The user's pause mid-question: longer than the eager delay (0.25 s), so Flux sends
#: ``EagerEndOfTurn`` and Backtalk starts answering; shorter than
#: ``FLUX_EOT_DELAY_S``, so the turn is not over and Flux sends ``TurnResumed``.
MID_QUESTION_PAUSE_S = 1.0

ANSWER = "The speaker says to start small, around zero point zero one, about four minutes in."
PARTIAL_ANSWER = "He says a lot of things; which part do you mean?"


@pytest.fixture
def fake_deepgram() -> FakeDeepgram:
    with FakeDeepgram(
        tts_secs_per_char=TTS_SECS_PER_CHAR, flux_eot_delay_s=FLUX_EOT_DELAY_S
    ) as fake:
        yield fake


@pytest.fixture
def flux_env(monkeypatch, services_env) -> Settings:
    monkeypatch.setenv("BACKTALK_STT_SERVICE", "deepgram_flux")
    settings = Settings()
    assert settings.stt_service == "deepgram_flux"
    return settings


class RequestLog:
    """The fake model: answers, and notes for each chat request when it arrived and
    which Flux events the fake Deepgram had sent by then (Updates left out)."""

    def __init__(self, fake_deepgram: FakeDeepgram):
        self._fake_deepgram = fake_deepgram
        self.requests: list[tuple[str, float, list[str]]] = []  # (question, t, events)

    def __call__(self, body: dict) -> str:
        question = last_user_text(body)
        flux = [e for e, _ in self._fake_deepgram.flux_events() if e != "Update"]
        self.requests.append((question, time.monotonic(), flux))
        return PARTIAL_ANSWER if question == Q1_PARTS[0] else ANSWER

    def about(self, question: str) -> list[tuple[float, list[str]]]:
        return [(t, events) for q, t, events in self.requests if q == question]


def named_events(fake: FakeDeepgram) -> list[tuple[str, str]]:
    """The Flux events the fake sent, without Updates."""
    return [(e, t) for e, t in fake.flux_events() if e != "Update"]


def assert_retrieved_before_the_question(request: dict) -> None:
    """The learning-rate passage is in the retrieval message right before the question."""
    rag = test_e2e_voice.assert_learning_rate_retrieved(request)
    assert request["messages"][-2]["content"] == rag


def q1_with_a_pause() -> tuple[bytes, float]:
    """q1's audio with :data:`MID_QUESTION_PAUSE_S` of silence inserted at its middle
    gap between words; and where its speech ends, seconds from its start."""
    pcm = load_wav(Q1_WAV)
    bursts = speech_bursts(Q1_WAV, min_gap_s=0.02)
    gaps = [(bursts[i][1], bursts[i + 1][0]) for i in range(len(bursts) - 1)]
    middle = len(pcm) / 2 / 16000 / 2
    end, start = min(gaps, key=lambda g: abs((g[0] + g[1]) / 2 - middle))
    cut = int((end + start) / 2 / MIC_FRAME_S) * int(16000 * MIC_FRAME_S) * 2
    pause = np.zeros(int(16000 * MID_QUESTION_PAUSE_S), dtype="<i2").tobytes()
    return pcm[:cut] + pause + pcm[cut:], bursts[-1][1] + MID_QUESTION_PAUSE_S


# -- 1. a spoken question, retrieved for on the eager end of turn ----------------------


async def test_flux_question_is_answered_with_retrieval_started_on_eager_end_of_turn(
    flux_env: Settings, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    log = RequestLog(fake_deepgram)
    fake_openai.reply = log
    ingest_lecture()

    async with running_conversation(flux_env, store) as s:
        await wait_greeted(s, fake_deepgram)
        user_stopped_at = await s.ask(fake_deepgram, Q1_WAV, Q1_TEXT)
        await wait_until(
            lambda: ("EndOfTurn", Q1_TEXT) in named_events(fake_deepgram),
            TURN_TIMEOUT_S,
            "Flux's EndOfTurn",
        )
        reply_at = await s.reply_heard(since=user_stopped_at)
        print(f"\nflux q1: user stopped speaking -> bot audio: {reply_at - user_stopped_at:.2f} s")
        conversation_id = await s.answer_stored(store, ANSWER)
        stats = s.conversation.stages.rag.stats
        turn_stopped_at = s.turns.first("UserStoppedSpeakingFrame", after=user_stopped_at)

    # Flux, not Nova, transcribed the turn: one turn, eager then final, same transcript.
    assert fake_deepgram.flux_connections >= 1 and fake_deepgram.listen_connections == 0
    # The microphone's 20 ms frames reached Flux as the 80 ms chunks Deepgram recommends
    # for it (Settings.audio_in_frame): 16 kHz PCM16 = 2560 bytes per message.
    assert set(fake_deepgram.flux_audio_messages) == {2560}
    offers = fake_deepgram.extension_offers  # no permessage-deflate on the audio sockets
    assert {path for path, _ in offers} == {"/v2/listen", "/v1/speak"}, offers
    assert not any("permessage-deflate" in offer for _, offer in offers), offers
    query = fake_deepgram.flux_queries[0]
    assert query["model"] == "flux-general-en" and float(query["eager_eot_threshold"]) == 0.5
    assert named_events(fake_deepgram) == [
        ("StartOfTurn", "What"),
        ("EagerEndOfTurn", Q1_TEXT),
        ("EndOfTurn", Q1_TEXT),
    ]

    # The turn was answered once, from a chat request made on the EagerEndOfTurn —
    # so after retrieval had run on the eager transcript — before Flux confirmed the
    # turn; the confirmed turn reused that response rather than asking again.
    [(asked_at, events_then)] = log.about(Q1_TEXT)
    assert events_then == ["StartOfTurn", "EagerEndOfTurn"]
    assert turn_stopped_at is not None and asked_at < turn_stopped_at
    assert stats.turns == 1 and stats.injected == 1 and stats.cancelled == 0
    request = next(r for r in fake_openai.chat_requests if last_user_text(r) == Q1_TEXT)
    assert_retrieved_before_the_question(request)
    assert request["messages"][-1]["content"] == Q1_TEXT

    # The answer was spoken and heard, and only once Flux had confirmed the turn.
    assert any("zero point zero one" in t for t in fake_deepgram.spoken_texts)
    assert s.output.first_audible_at(since=user_stopped_at) >= turn_stopped_at
    messages = store.conversation_messages(conversation_id)
    assert ("user", Q1_TEXT, False) in messages
    assert [c for r, c, _ in messages if r == "assistant"][-1] == ANSWER


# -- 2. the user resumes after the eager end of turn -------------------------------------


async def test_flux_turn_resumed_does_not_answer_the_partial_turn(
    flux_env: Settings, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    log = RequestLog(fake_deepgram)
    fake_openai.reply = log
    ingest_lecture()
    pcm, speech_end_s = q1_with_a_pause()

    async with running_conversation(flux_env, store) as s:
        await wait_greeted(s, fake_deepgram)
        for part in Q1_PARTS:
            fake_deepgram.queue_transcript(part)
        spoke_at = await s.transport.play_pcm(pcm)
        user_stopped_at = spoke_at + speech_end_s
        await wait_until(
            lambda: ("EndOfTurn", Q1_TEXT) in named_events(fake_deepgram),
            TURN_TIMEOUT_S,
            "Flux's EndOfTurn",
        )
        reply_at = await s.reply_heard(since=spoke_at)
        conversation_id = await s.answer_stored(store, ANSWER)
        stats = s.conversation.stages.rag.stats
        turn_stopped_at = s.turns.first("UserStoppedSpeakingFrame", after=spoke_at)

    # Flux predicted the end of the turn at the pause, then withdrew it.
    assert named_events(fake_deepgram) == [
        ("StartOfTurn", "What"),
        ("EagerEndOfTurn", Q1_PARTS[0]),
        ("TurnResumed", Q1_PARTS[0]),
        ("EagerEndOfTurn", Q1_TEXT),
        ("EndOfTurn", Q1_TEXT),
    ]
    partial = log.about(Q1_PARTS[0])
    print(
        f"\nflux resumed: speculative requests for the partial turn: {len(partial)}, "
        f"cancelled streams: {fake_openai.cancelled_streams}, rag stats: {stats}"
    )
    # Nothing was said until the whole turn was over, and what was said answers the
    # whole question: the partial turn's answer, if one was generated, was dropped.
    assert turn_stopped_at is not None and turn_stopped_at > user_stopped_at
    assert reply_at >= turn_stopped_at
    assert not any(PARTIAL_ANSWER[:20] in t for t in fake_deepgram.spoken_texts)
    assert any("zero point zero one" in t for t in fake_deepgram.spoken_texts)
    # The whole question was retrieved for and answered.
    [(asked_at, events_then)] = log.about(Q1_TEXT)
    assert events_then[-1] == "EagerEndOfTurn" and asked_at < turn_stopped_at
    request = next(r for r in fake_openai.chat_requests if last_user_text(r) == Q1_TEXT)
    assert_retrieved_before_the_question(request)
    # The conversation holds one user turn, the whole question, and its answer.
    messages = store.conversation_messages(conversation_id)
    assert [c for r, c, _ in messages if r == "user"] == [Q1_TEXT]
    assert [c for r, c, _ in messages if r == "assistant"][-1] == ANSWER
    assert not any(PARTIAL_ANSWER[:20] in c for _, c, _ in messages)


# -- 3. a backchannel while the bot speaks -----------------------------------------------


async def test_flux_backchannel_pauses_the_bot_and_it_goes_on(
    flux_env: Settings, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    """Flux's ``StartOfTurn`` over the bot pauses it; its ``Update`` "Yeah." resumes it."""
    assert flux_env.barge_in == "pause"
    async with bot_answering_momentum(flux_env, store, fake_openai, fake_deepgram) as s:
        stages = s.conversation.stages
        requests_before = len(fake_openai.chat_requests)
        said_at = await s.ask(fake_deepgram, AUDIO / "backchannel_yeah.wav", "Yeah.")
        await s.transport.silence(1.0)
        interrupted = s.turns.first("InterruptionFrame", after=said_at - 1.0) is not None
        await wait_until(lambda: not s.output.bot_speaking, 30, "the answer to end")
        answer_end = s.output.last_audible_at() + 0.05
        # Leave only once Flux has ended the "Yeah." turn: leaving while an eager end of
        # turn is unresolved leaves Pipecat's speculation timer running (see the report).
        await wait_until(
            lambda: ("EndOfTurn", "Yeah.") in named_events(fake_deepgram),
            TURN_TIMEOUT_S,
            "Flux's EndOfTurn for the backchannel",
        )
    # Flux heard "Yeah." as a turn; Backtalk paused the bot for it, and it went on where
    # it had paused: no interruption, nothing lost.
    assert stages.barge_in.decisions == ["backchannel"]
    (pause,) = [(a, b) for a, b in stages.audio_gate.pauses if a >= said_at - 1.0]
    assert pause[1] is not None
    print(f"\nflux backchannel: paused for {pause[1] - pause[0]:.2f} s")
    assert not interrupted
    assert fake_deepgram.clears == 0 and fake_openai.cancelled_streams == 0
    assert len(fake_openai.chat_requests) == requests_before
    played = test_e2e_voice.tts_seconds(s.output, s.answer_at, answer_end)
    made = test_e2e_voice.synthesised_seconds(fake_deepgram, test_e2e_voice.LONG_ANSWER)
    assert 0 <= played - made < 0.04 + 1e-6, (played, made)


# -- 4. a real barge-in while the bot speaks ----------------------------------------------


async def test_flux_user_barges_in_while_the_bot_is_speaking(
    flux_env: Settings, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    """ "Wait, stop. Go back to..." over the answer pauses the bot at once, then stops it.

    Flux's ``StartOfTurn`` (or the local VAD's first syllable) pauses the bot; the
    ``Update`` "Wait," is no backchannel, so the user's turn starts and interrupts.
    """
    async with bot_answering_momentum(flux_env, store, fake_openai, fake_deepgram) as s:
        stages = s.conversation.stages
        await s.transport.silence(1.0)
        onset_at, barge_stopped_at = await s.barge_in(fake_deepgram)

        await wait_until(
            lambda: any("local minima" in last_user_text(r) for r in fake_openai.chat_requests),
            TURN_TIMEOUT_S,
            "the request answering the barge-in",
        )
        await s.reply_heard(since=barge_stopped_at, what="the barge-in answer")

    # The bot paused soon after the user began, and never went on with that answer.
    interrupted_at = s.turns.first("InterruptionFrame", after=onset_at)
    assert interrupted_at is not None
    pause_at, resume_at = next((a, b) for a, b in stages.audio_gate.pauses if a >= onset_at)
    print(f"\nflux barge-in: paused {pause_at - onset_at:.3f} s after the first sound")
    assert pause_at - onset_at < BARGE_IN_BOUND_S["pause"]
    assert resume_at is not None and resume_at >= interrupted_at
    after_pause = [w for w in s.output.written if w.audible and pause_at < w.t < interrupted_at]
    assert len(after_pause) <= 1, after_pause
    assert stages.barge_in.decisions[-1] == "interruption"
    # The momentum answer's stream and speech were abandoned; the barge-in was answered.
    assert fake_openai.cancelled_streams >= 1
    assert fake_deepgram.clears >= 1
    assert "local minima are rarer" in " ".join(fake_deepgram.spoken_texts)
