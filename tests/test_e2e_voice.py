"""End-to-end tests of the real voice pipeline, on real speech.

Everything Backtalk ships runs unchanged: ``Settings`` from the environment, the
``backtalk ingest`` CLI, ``AgentResources.open`` and ``build_conversation`` (Silero
VAD, smart-turn v3, the Deepgram STT/TTS and OpenAI LLM service classes, speculative
retrieval, the RAG processor over a real embedded Postgres + pgvector, the prompt
guard, citations, the conversation recorder) under Pipecat's ``WorkerRunner``. Only
the edges are stand-ins: the cloud services are the loopback fakes of
:mod:`fakes` (real wire protocols), and the transport is
:class:`transports.LoopbackTransport` — a real-time microphone that plays the WAV
fixtures and keeps sending silence between them, and a real-time loudspeaker that
records what the bot says.

Timings printed with ``-s``: the turn latency (end of the user's speech to the bot's
first audible audio) of each question, and how long the bot kept talking over a
barge-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import AUDIO, TRANSCRIPTS
from fakes import FakeDeepgram, FakeOpenAI
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.workers.runner import WorkerRunner
from transports import MIC_FRAME_S, SPEECH_RMS, LoopbackTransport, load_wav
from typer.testing import CliRunner

from backtalk.agent.audio import transport_params
from backtalk.agent.bot import AgentResources, Conversation, TalkSession, build_conversation
from backtalk.cli import app
from backtalk.config import Settings
from backtalk.processors.rag import RETRIEVAL_TAG
from backtalk.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LECTURE = TRANSCRIPTS / "gradient_descent_lecture.json"
LECTURE_TITLE = "Gradient descent lecture"
Q1_WAV = AUDIO / "q1_what_is_learning_rate.wav"
Q1_TEXT = "What does the speaker say about choosing the learning rate?"
Q2_WAV = AUDIO / "q2_why_momentum.wav"
Q2_TEXT = "Why does momentum help gradient descent?"
BARGE_IN_WAV = AUDIO / "barge_in_wait.wav"
BARGE_IN_TEXT = "Wait, stop. Go back to the part about local minima."
#: How the scripted recogniser transcribes ``barge_in_wait.wav``. The fake gives each
#: utterance the next queued text when Pipecat sends ``Finalize`` (on every VAD stop),
#: and the speaker pauses ~0.3 s after "Wait, stop." — longer than VAD ``stop_secs``
#: (0.2 s) — so there are two utterances, as a real recogniser would report them.
BARGE_IN_PARTS = ("Wait, stop.", "Go back to the part about local minima.")
#: The same with ``BACKTALK_BARGE_IN=pause`` on Nova: while it decides speech over the
#: bot, Backtalk asks Deepgram to finalize after 0.1 s of quiet, so "Wait," (then a
#: 0.34 s pause) is an utterance of its own.
BARGE_IN_PARTS_PAUSED = ("Wait,", "stop.", "Go back to the part about local minima.")

#: The learning-rate passage of the lecture, seconds (3:34-4:33; fixtures README).
LEARNING_RATE_SPAN = (214.0, 273.0)

#: Seconds of fake speech per character of text. The fake's default (0.06) makes the
#: greeting ~6 s long; the tests need not sit through that.
TTS_SECS_PER_CHAR = 0.02

#: Upper bound for anything that should happen; polled, never slept for.
TURN_TIMEOUT_S = 12.0

#: How long the bot may keep talking after the user starts to talk over it, measured
#: from the first speech in ``barge_in_wait.wav`` (its "Wait,", 0.04 s in), by
#: ``BACKTALK_BARGE_IN``:
#:
#: * ``pause`` (the default): the bot's audio pauses after two Silero windows (64 ms)
#:   of speech: "Wait," is confidently speech from its second window, so the pause
#:   falls ~0.1 s after its first sound, plus the 32 ms input frame being filled and
#:   the chunk being written (Pipecat lets it finish, 40 ms) ≈ 0.2 s; with slack for a
#:   loaded 2-core machine (the microphone's frames then reach the VAD late): 0.6 s.
#: * ``vad`` (Pipecat's default): "Wait," lasts only 0.16 s, less than Silero's
#:   ``start_secs`` (0.2 s) plus its volume check, so the VAD confirms speech on
#:   "stop.", which starts 0.48 s after "Wait,": 0.48 + 0.2 s, plus the analysis
#:   window, the interruption's trip and the chunk being written ≈ 0.75 s; with slack:
#:   1.0 s. Observed 0.66-0.80 s.
BARGE_IN_BOUND_S = {"pause": 0.6, "vad": 1.0}


async def wait_until(predicate: Callable[[], object], timeout: float, what: str = "") -> object:
    """Poll ``predicate`` every 20 ms until it returns something truthy.

    Returns:
        The truthy value.

    Raises:
        AssertionError: after ``timeout`` seconds, naming ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


def speech_bursts(path: Path, min_gap_s: float = 0.1) -> list[tuple[float, float]]:
    """``(start, end)`` seconds of each stretch of speech in a WAV fixture.

    Speech is a 20 ms window louder than :data:`transports.SPEECH_RMS` (the fake
    recogniser's threshold); stretches closer than ``min_gap_s`` are merged.
    """
    samples = np.frombuffer(load_wav(path), dtype="<i2").astype(np.float64)
    n = int(16000 * MIC_FRAME_S)
    windows = samples[: len(samples) // n * n].reshape(-1, n)
    loud = np.sqrt((windows**2).mean(axis=1)) > SPEECH_RMS
    bursts: list[list[float]] = []
    for i in np.flatnonzero(loud):
        start, end = i * MIC_FRAME_S, (i + 1) * MIC_FRAME_S
        if bursts and start - bursts[-1][1] < min_gap_s:
            bursts[-1][1] = end
        else:
            bursts.append([start, end])
    return [(a, b) for a, b in bursts]


def speech_span(path: Path) -> tuple[float, float]:
    """(first, last) second of speech in a WAV fixture."""
    bursts = speech_bursts(path)
    return bursts[0][0], bursts[-1][1]


def ingest_lecture() -> None:
    """Ingest the lecture with the real CLI (settings from the environment)."""
    result = CliRunner().invoke(app, ["ingest", str(LECTURE), "--title", LECTURE_TITLE])
    assert result.exit_code == 0, result.output


def user_texts(request: dict) -> list[str]:
    """Text of each user-role message of a chat request."""
    out = []
    for message in request["messages"]:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append(content or "")
    return out


def last_user_text(request: dict) -> str:
    """The last user-role message of a chat request ("" if none)."""
    texts = user_texts(request)
    return texts[-1] if texts else ""


def retrieval_message(request: dict) -> str | None:
    """The user-role retrieval message of a chat request, if any."""
    return next((t for t in user_texts(request) if f"<{RETRIEVAL_TAG}>" in t), None)


_EXCERPT = re.compile(
    r'<excerpt [^>]*start_seconds="(\d+)" end_seconds="(\d+)">\n(.*?)\n</excerpt>', re.S
)


def excerpts(message: str) -> list[tuple[int, int, str]]:
    """(start_s, end_s, text) of every excerpt in a retrieval message."""
    return [(int(a), int(b), text) for a, b, text in _EXCERPT.findall(message)]


def request_for(fake: FakeOpenAI, question: str) -> Callable[[], dict | None]:
    """A predicate: the first chat request whose last user message is ``question``."""
    return lambda: next((r for r in fake.chat_requests if last_user_text(r) == question), None)


class FrameEvents(BaseObserver):
    """Records when frames of the given types are pushed (``time.monotonic()``)."""

    def __init__(self, *types: type[Frame]):
        super().__init__(observe_every_push=False)
        self.types = types
        self.events: list[tuple[float, str]] = []

    async def on_push_frame(self, data: FramePushed):
        if isinstance(data.frame, self.types):
            self.events.append((time.monotonic(), type(data.frame).__name__))

    def after(self, t: float, name: str) -> list[float]:
        """Times of the ``name`` frames at or after ``t``."""
        return [at for at, n in self.events if n == name and at >= t]

    def first(self, name: str, after: float) -> float | None:
        """Time of the first ``name`` frame at or after ``after``."""
        return next(iter(self.after(after, name)), None)


class TurnEvents(FrameEvents):
    """Records when user turns start and stop, and interruptions."""

    def __init__(self):
        super().__init__(UserStartedSpeakingFrame, UserStoppedSpeakingFrame, InterruptionFrame)


class MicrophoneAudioReach(BaseObserver):
    """Records which processors the user's audio frames are pushed to (every push)."""

    def __init__(self):
        super().__init__(observe_every_push=True)
        self.receivers: set[str] = set()

    async def on_push_frame(self, data: FramePushed):
        if isinstance(data.frame, InputAudioRawFrame):
            self.receivers.add(data.destination.name.split("#")[0])


@dataclass
class Session:
    """A running conversation and its edges."""

    transport: LoopbackTransport
    conversation: Conversation
    resources: AgentResources
    turns: TurnEvents
    #: When the answer under test began to play (``bot_answering_momentum``).
    answer_at: float = 0.0

    @property
    def output(self):
        """The loudspeaker."""
        return self.transport.output()

    async def answer_started(self, since: float, what: str = "the answer") -> float:
        """Wait until the bot's audio after ``since`` is heard; when it began."""
        return await wait_until(
            lambda: self.output.first_audible_at(since=since), TURN_TIMEOUT_S, f"{what}'s audio"
        )

    async def barge_in(
        self, fake_deepgram: FakeDeepgram, parts: tuple[str, ...] = BARGE_IN_PARTS
    ) -> tuple[float, float]:
        """Talk over the bot: "Wait, stop. Go back to the part about local minima."

        ``parts``: how the scripted recogniser transcribes its utterances.
        Returns the times of the user's first word and last sound.
        """
        (onset, _), *_, (_, end) = speech_bursts(BARGE_IN_WAV)
        for part in parts:
            fake_deepgram.queue_transcript(part)
        started = await self.transport.play(BARGE_IN_WAV)
        return started + onset, started + end

    async def reply_heard(self, since: float, what: str = "the reply") -> float:
        """Wait for the bot's audio after ``since`` and for it to end; when it began."""
        reply_at = await wait_until(
            lambda: self.output.first_audible_at(since=since), TURN_TIMEOUT_S, f"{what}'s audio"
        )
        await wait_until(lambda: not self.output.bot_speaking, 15, f"{what} to end")
        return reply_at

    async def answer_stored(self, store: Store, answer: str) -> int:
        """Wait until ``answer`` is saved as the bot's message; the conversation's id."""
        conversation_id = self.conversation.recorder.conversation_id
        await wait_until(
            lambda: ("assistant", answer, False) in store.conversation_messages(conversation_id),
            5,
            "the answer to be stored",
        )
        return conversation_id

    async def ask(self, fake_deepgram: FakeDeepgram, wav: Path, *texts: str) -> float:
        """Say ``wav`` (transcribed as ``texts``); return when the speech ended."""
        for text in texts:
            fake_deepgram.queue_transcript(text)
        _, end = speech_span(wav)
        return await self.transport.play(wav) + end


def timeline(s: Session, since: float) -> list[tuple[float, str]]:
    """What happened after ``since``: audible output runs, bot and user turn events."""
    events = [(t, e) for t, e in s.turns.events if t >= since]
    events += [(t, f"bot {e}") for t, e in s.output.speaking_events if t >= since]
    run: list[float] | None = None
    for w in s.output.written:
        if w.t < since or not w.audible:
            continue
        if run and w.t - run[1] < 0.1:
            run[1] = w.t
        else:
            if run:
                events.append((run[0], f"audio until +{run[1] + 0.04 - since:.2f}"))
            run = [w.t, w.t]
    if run:
        events.append((run[0], f"audio until +{run[1] + 0.04 - since:.2f}"))
    return [(round(float(t - since), 2), e) for t, e in sorted(events)]


@contextlib.asynccontextmanager
async def running_conversation(
    settings: Settings, store: Store, observers: list[BaseObserver] | None = None
) -> AsyncIterator[Session]:
    """Build the real conversation on a loopback transport, run it, connect a client;
    afterwards disconnect, and check that nothing is left running."""
    resources = AgentResources.open(settings)
    runner_task: asyncio.Task | None = None
    transport = LoopbackTransport(transport_params(settings))
    turns = TurnEvents()
    try:
        conversation = await build_conversation(
            transport,
            TalkSession(videos=store.list_videos()),
            resources,
            transport_name="test",
            observers=[turns, *(observers or [])],
            idle_timeout_secs=None,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(conversation.worker)
        runner_task = asyncio.create_task(runner.run(), name="e2e-runner")
        await transport.connect_client()
        yield Session(transport, conversation, resources, turns)
        # The user leaves: the bot's handler cancels the worker and the runner ends.
        await transport.disconnect_client()
        await asyncio.wait_for(asyncio.shield(runner_task), 10)
        await conversation.recorder.finish()
    finally:
        if runner_task is not None and not runner_task.done():
            runner_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner_task
        await resources.close()
        resources.store.engine.dispose()
    # Nothing of the conversation outlives it (pipeline, services, speculative work).
    current = asyncio.current_task()
    await wait_until(
        lambda: not [t for t in asyncio.all_tasks() if t is not current and not t.done()],
        5,
        "the conversation's tasks to finish",
    )


@pytest.fixture
def fake_openai() -> FakeOpenAI:
    with FakeOpenAI(reply="The video covers that.") as fake:
        yield fake


@pytest.fixture
def fake_deepgram() -> FakeDeepgram:
    with FakeDeepgram(tts_secs_per_char=TTS_SECS_PER_CHAR) as fake:
        yield fake


@pytest.fixture
def services_env(monkeypatch, db_env, fake_openai, fake_deepgram) -> None:
    """Point the real ``Settings`` at the fakes and the test database."""
    monkeypatch.setenv("DEEPGRAM_API_KEY", "dg-test")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    monkeypatch.setenv("BACKTALK_DEEPGRAM_BASE_URL", fake_deepgram.base_url)
    monkeypatch.setenv("BACKTALK_EMBEDDER", "local")


async def wait_greeted(s: Session, fake_deepgram: FakeDeepgram) -> str:
    """Wait until the greeting was synthesised, played, and finished; return its text."""
    greeting = await wait_until(
        lambda: next((t for t in fake_deepgram.spoken_texts if LECTURE_TITLE in t), None),
        10,
        "the greeting to be synthesised",
    )
    await wait_until(lambda: s.output.audible_bytes() > 0, 10, "the greeting's audio")
    await wait_until(lambda: not s.output.bot_speaking, 15, "the greeting to end")
    return greeting


def assert_learning_rate_retrieved(request: dict) -> str:
    """The chat request carries a retrieval message with the learning-rate passage."""
    rag = retrieval_message(request)
    assert rag is not None, request["messages"]
    lo, hi = LEARNING_RATE_SPAN
    hits = [(a, b, text) for a, b, text in excerpts(rag) if a < hi and b > lo]
    assert hits, f"no excerpt overlaps {LEARNING_RATE_SPAN}: {[e[:2] for e in excerpts(rag)]}"
    assert any("learning rate" in text.lower() for _, _, text in hits)
    return rag


# -- 1. a spoken question, answered from the transcript ---------------------------------


async def test_spoken_question_is_answered_from_the_transcript(
    services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    answer = "The speaker says to start small, around zero point zero one, about four minutes in."
    fake_openai.reply = answer
    ingest_lecture()
    audio_reach = MicrophoneAudioReach()

    async with running_conversation(Settings(), store, [audio_reach]) as s:
        greeting = await wait_greeted(s, fake_deepgram)

        # q1 sounds unfinished to smart-turn, so the turn ends after its 3 s stop_secs.
        user_stopped_at = await s.ask(fake_deepgram, Q1_WAV, Q1_TEXT)
        request = await wait_until(
            request_for(fake_openai, Q1_TEXT), TURN_TIMEOUT_S, "the chat request for q1"
        )
        reply_at = await s.reply_heard(since=user_stopped_at)
        print(f"\nq1: user stopped speaking -> bot audio: {reply_at - user_stopped_at:.2f} s")
        conversation_id = await s.answer_stored(store, answer)

    # The fakes were really hit, and the greeting named the video.
    assert fake_deepgram.listen_connections >= 1
    # The microphone's 20 ms frames reached Deepgram regrouped into 32 ms messages
    # (Settings.audio_in_frame): 512 samples of 16 kHz PCM16 = 1024 bytes each.
    audio = [n for kind, n in fake_deepgram.listen_log if kind == "audio"]
    assert set(audio) == {1024}, sorted(set(audio))
    # Neither audio websocket offered permessage-deflate: the client would otherwise
    # compress every message of microphone PCM (and inflate every chunk of speech).
    offers = fake_deepgram.extension_offers
    assert {path for path, _ in offers} == {"/v1/listen", "/v1/speak"}, offers
    assert not any("permessage-deflate" in offer for _, offer in offers), offers
    assert fake_openai.chat_requests
    assert LECTURE_TITLE in greeting

    # One user-role message of quoted transcript, holding the learning-rate passage.
    rag = assert_learning_rate_retrieved(request)
    # Transcript text never rides in a system or developer message.
    for message in request["messages"]:
        if message.get("role") in ("system", "developer"):
            content = str(message.get("content"))
            assert "<excerpt" not in content and "learning rate" not in content.lower()
    # The retrieval message sits right before the question, which comes last.
    assert [m["role"] for m in request["messages"][-2:]] == ["user", "user"]
    assert request["messages"][-2]["content"] == rag
    assert request["messages"][-1]["content"] == Q1_TEXT

    # The answer was spoken.
    assert any("zero point zero one" in t for t in fake_deepgram.spoken_texts)
    assert s.output.audible_bytes(since=user_stopped_at) > 0

    # The microphone's audio reached the STT and the user aggregator (VAD, turn model)
    # and went no further: 50 frames a second through the rest of the pipeline (and
    # every observer at each hop) would be CPU spent per conversation for nothing.
    assert {"BargeInDeepgramSTTService", "LLMUserAggregator"} <= audio_reach.receivers
    assert not audio_reach.receivers & {
        "RAGContextProcessor",
        "DirectBodyOpenAILLMService",
        "PromptLeakGuard",
        "CitationProcessor",
        "BargeInDeepgramTTSService",
        "LoopbackOutputTransport",
        "HeardTextProcessor",
        "LLMAssistantAggregator",
    }, audio_reach.receivers

    # And the conversation was recorded.
    assert [c[0] for c in store.conversations()] == [conversation_id]
    messages = store.conversation_messages(conversation_id)
    assert ("user", Q1_TEXT, False) in messages
    assert ("assistant", answer, False) in messages


# -- 2. barge-in -----------------------------------------------------------------------

LONG_ANSWER = (
    "Momentum helps because it remembers the direction of the last few steps. "
    "The speaker compares it to a heavy ball rolling down the hill, which keeps going "
    "through small bumps instead of stopping at each one. "
    "In narrow valleys plain gradient descent zigzags from wall to wall, and momentum "
    "averages those zigzags out so the steps point along the valley floor. "
    "He sets beta to about zero point nine, which means each step keeps most of the "
    "previous velocity and adds a little of the new gradient. "
    "That way the ball speeds up on long gentle slopes and slows down when the slope "
    "keeps changing sign. "
    "He also says momentum is one of the two ideas inside Adam, which he covers a "
    "little later in the video."
)
SHORT_ANSWER = "Sure. About five minutes in, he says local minima are rarer than people fear."
STOP_ANSWER = "Okay, stopping."


def scripted_model(body: dict) -> str:
    """The fake model: long about momentum, short about local minima, brief otherwise."""
    question = last_user_text(body).lower()
    if "momentum" in question:
        return LONG_ANSWER
    return SHORT_ANSWER if "local minima" in question else STOP_ANSWER


@contextlib.asynccontextmanager
async def bot_answering_momentum(
    settings: Settings, store: Store, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram
) -> AsyncIterator:
    """A conversation in which the bot is speaking its long answer about momentum.

    The answer (~130 tokens, 50 ms apart) is still streaming and being spoken when the
    body of the ``async with`` runs.
    """
    fake_openai.reply = scripted_model
    fake_openai.token_interval_s = 0.05
    ingest_lecture()
    async with running_conversation(settings, store) as s:
        await wait_greeted(s, fake_deepgram)
        q2_stopped_at = await s.ask(fake_deepgram, Q2_WAV, Q2_TEXT)
        await wait_until(request_for(fake_openai, Q2_TEXT), TURN_TIMEOUT_S, "the q2 request")
        reply_at = await s.answer_started(since=q2_stopped_at, what="the q2 answer")
        print(f"\nq2: user stopped speaking -> bot audio: {reply_at - q2_stopped_at:.2f} s")
        assert s.output.bot_speaking
        s.answer_at = reply_at
        yield s


def tts_seconds(output, since: float, until: float) -> float:
    """Seconds of the bot's synthesised speech the loudspeaker played in ``[since, until)``."""
    return sum(
        w.nbytes / (2 * w.sample_rate)
        for w in output.written
        if w.kind == "TTSAudioRawFrame" and w.audible and since <= w.t < until
    )


def synthesised_seconds(fake_deepgram: FakeDeepgram, text: str) -> float:
    """Seconds of speech the fake TTS made for the sentences of ``text`` it was sent."""
    rate = 24000
    return sum(
        round(len(t) * TTS_SECS_PER_CHAR * rate) / rate
        for t in fake_deepgram.spoken_texts
        if t.strip() and t.strip() in text
    )


@pytest.mark.parametrize("mode", ["pause", "vad"], ids=["pause", "vad"])
async def test_user_barges_in_while_the_bot_is_speaking(
    mode: str,
    monkeypatch,
    services_env,
    fake_openai: FakeOpenAI,
    fake_deepgram: FakeDeepgram,
    store: Store,
):
    monkeypatch.setenv("BACKTALK_BARGE_IN", mode)
    settings = Settings()
    assert settings.barge_in == mode
    bound = BARGE_IN_BOUND_S[mode]

    async with bot_answering_momentum(settings, store, fake_openai, fake_deepgram) as s:
        stages = s.conversation.stages
        answer_at = s.answer_at
        # The user lets it talk for a moment, then talks over it.
        await s.transport.silence(1.5)
        parts = BARGE_IN_PARTS_PAUSED if mode == "pause" else BARGE_IN_PARTS
        barge_onset_at, barge_stopped_at = await s.barge_in(fake_deepgram, parts)

        # The barge-in is then answered as a normal turn.
        try:
            request = await wait_until(
                lambda: next(
                    (r for r in fake_openai.chat_requests if "local minima" in last_user_text(r)),
                    None,
                ),
                TURN_TIMEOUT_S,
                "the request answering the barge-in",
            )
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nrequests' last user messages: "
                f"{[last_user_text(r) for r in fake_openai.chat_requests]}\n"
                f"recogniser: pending {fake_deepgram.pending_transcripts}, "
                f"unscripted {fake_deepgram.unscripted_utterances}, "
                f"control {[m.get('type') for m in fake_deepgram.listen_control]}\n"
                f"timeline: {timeline(s, barge_onset_at)}"
            ) from None
        answer_heard_at = await s.reply_heard(since=barge_stopped_at, what="the barge-in answer")
        print(f"barge-in: user stopped -> bot audio: {answer_heard_at - barge_stopped_at:.2f} s")
        conversation_id = await s.answer_stored(store, SHORT_ANSWER)

    interrupted_at = s.turns.first("InterruptionFrame", after=barge_onset_at)
    assert interrupted_at is not None
    if mode == "pause":
        # The bot's audio paused at the output transport on the user's first syllable:
        # at most the chunk being written when it paused was played after it.
        gate = stages.audio_gate
        pause_at, resume_at = next((a, b) for a, b in gate.pauses if a >= barge_onset_at)
        quiet_at = pause_at
        after_pause = [w for w in s.output.written if w.audible and pause_at < w.t < interrupted_at]
        assert len(after_pause) <= 1, after_pause
        # It never resumed: the words that followed made it an interruption, and the
        # gate let audio through again only after the output transport had dropped the
        # answer's (dropping the chunk it held).
        assert stages.barge_in.decisions[-1] == "interruption"
        assert resume_at is not None and resume_at >= interrupted_at
        print(f"barge-in: paused {pause_at - barge_onset_at:.3f} s after the first sound")
    else:
        quiet_at = next(
            (t for t, e in s.output.speaking_events if e == "stopped" and t >= barge_onset_at), None
        )
        assert quiet_at is not None
        assert stages.audio_gate is None
    talked_over = [
        w.t - barge_onset_at
        for w in s.output.written
        if w.audible and barge_onset_at <= w.t <= quiet_at
    ]
    print(f"barge-in: bot quiet {quiet_at - barge_onset_at:.2f} s after the user began ({mode})")
    print("barge-in timeline (s from the user's first word):", timeline(s, barge_onset_at))
    assert quiet_at - barge_onset_at < bound
    assert max(talked_over, default=0.0) < bound
    # ...and stayed quiet until the user's turn ended: nothing of the interrupted
    # answer was played after it stopped.
    turn_ended_at = s.turns.first("UserStoppedSpeakingFrame", after=barge_onset_at)
    assert turn_ended_at is not None
    late = [
        round(w.t - barge_onset_at, 2)
        for w in s.output.written
        if w.audible and quiet_at + 0.1 < w.t < turn_ended_at
    ]
    assert not late, f"bot audio after the interruption, before the user's turn ended: {late}"

    # The LLM stream and the speech in progress were abandoned, and Deepgram was told to
    # stop (Clear), even if its audio for the answer had all arrived already.
    assert fake_openai.cancelled_streams >= 1
    assert fake_deepgram.clears >= 1

    # What the user asked reached the model as the turn's last message (the whole
    # barge-in, or its second sentence when smart-turn ended a turn after "Wait, stop."),
    # and was answered from the video.
    assert fake_deepgram.pending_transcripts == [] and fake_deepgram.unscripted_utterances == 0
    assert request["messages"][-1]["content"] in (BARGE_IN_TEXT, BARGE_IN_PARTS[-1], parts[-1])
    assert retrieval_message(request) is not None
    assert any("local minima are rarer" in t for t in fake_deepgram.spoken_texts)

    # What was heard is what is remembered: the interrupted answer is in the model's
    # context, and stored, as the words the loudspeaker had played when the bot went
    # quiet — Deepgram gives no word times, so cut by the audio played (the greeting
    # calibrated the voice's seconds per character): to within a word and a chunk.
    played_s = tts_seconds(s.output, answer_at, quiet_at + 0.05)
    heard = [
        m["content"]
        for m in request["messages"]
        if m.get("role") == "assistant" and str(m.get("content", "")).startswith("Momentum")
    ]
    assert len(heard) == 1, request["messages"]
    (content,) = heard
    assert LONG_ANSWER.startswith(content.rstrip()) and len(content) < len(LONG_ANSWER)
    expected_chars = played_s / TTS_SECS_PER_CHAR
    print(f"heard: {len(content)} characters for {played_s:.2f} s played ({expected_chars:.0f})")
    assert abs(len(content.rstrip()) - expected_chars) <= 16, (content, played_s)
    messages = store.conversation_messages(conversation_id)
    momentum = [(c, i) for r, c, i in messages if r == "assistant" and c.startswith("Momentum")]
    assert momentum == [(content.rstrip(), True)] or momentum == [(content, True)], messages
    assert ("assistant", SHORT_ANSWER, False) in messages
    user_said = [c for r, c, _ in messages if r == "user"]
    assert user_said[0] == Q2_TEXT and " ".join(user_said[1:]).endswith(BARGE_IN_PARTS[-1])


# -- 3. retrieval times out --------------------------------------------------------------


async def test_turn_is_answered_when_retrieval_times_out(
    monkeypatch, services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    # Embeddings come from the (fake) OpenAI endpoint: instant while ingesting and
    # warming up, then far slower than the 0.3 s retrieval budget. (Not just 2 s:
    # speculative retrieval starts on q1's final transcript, about 3 s before
    # smart-turn ends the turn, and would be done by then.)
    monkeypatch.setenv("BACKTALK_EMBEDDER", "openai")
    monkeypatch.setenv("BACKTALK_RETRIEVAL_TIMEOUT_S", "0.3")
    fake_openai.reply = "I can't look that up right now, sorry."
    ingest_lecture()
    settings = Settings()
    assert settings.embedder == "openai" and settings.retrieval_timeout_s == 0.3

    async with running_conversation(settings, store) as s:
        fake_openai.embedding_delay_s = 8.0
        embeddings_before = len(fake_openai.embedding_requests)
        await wait_greeted(s, fake_deepgram)

        user_stopped_at = await s.ask(fake_deepgram, Q1_WAV, Q1_TEXT)
        request = await wait_until(
            request_for(fake_openai, Q1_TEXT), TURN_TIMEOUT_S, "the chat request for q1"
        )
        await wait_until(
            lambda: s.output.first_audible_at(since=user_stopped_at),
            TURN_TIMEOUT_S,
            "the reply's audio",
        )
        stats = s.conversation.stages.rag.stats

    # Retrieval was attempted against the slow endpoint, and given up on.
    assert len(fake_openai.embedding_requests) > embeddings_before
    assert stats.timeouts == 1 and stats.failures == 0 and stats.injected == 0
    # The turn went on with a note instead of excerpts.
    rag = retrieval_message(request)
    assert rag is not None
    assert "could not be searched" in rag
    assert "<excerpt" not in rag
    assert request["messages"][-1] == {"role": "user", "content": Q1_TEXT}
    assert any("look that up" in t for t in fake_deepgram.spoken_texts)


# -- 4. backchannels do not cut the bot off ---------------------------------------------

BACKCHANNELS = [
    (AUDIO / "backchannel_yeah.wav", "Yeah."),
    (AUDIO / "backchannel_mmhm.wav", "Mm-hm."),
    (AUDIO / "backchannel_right.wav", "Right."),
]


@pytest.mark.parametrize("mode", ["pause", "vad"], ids=["pause", "vad"])
async def test_backchannels_while_the_bot_speaks_do_not_interrupt_it(
    mode: str,
    monkeypatch,
    services_env,
    fake_openai: FakeOpenAI,
    fake_deepgram: FakeDeepgram,
    store: Store,
):
    # By default "yeah", "mm-hm", "right" pause the bot and it goes on where it paused;
    # with Pipecat's VAD interruptions (BACKTALK_BARGE_IN=vad) the same audio cuts it off.
    monkeypatch.setenv("BACKTALK_BARGE_IN", mode)
    settings = Settings()
    async with bot_answering_momentum(settings, store, fake_openai, fake_deepgram) as s:
        stages = s.conversation.stages
        answer_at = s.answer_at
        requests_before = len(fake_openai.chat_requests)
        said_at = []
        for wav, text in BACKCHANNELS:  # "yeah", "mm-hm", "right" while it talks
            if not s.output.bot_speaking:
                break
            said_at.append(await s.ask(fake_deepgram, wav, text) - 1.0)
            await s.transport.silence(0.6)
        await wait_until(lambda: not s.output.bot_speaking, 30, "the answer to end")
        answer_end = s.output.last_audible_at() + 0.05
        interrupted = s.turns.first("InterruptionFrame", said_at[0]) is not None
        if mode == "pause":
            # Then a question: what does the model's context hold?
            asked_at = await s.ask(fake_deepgram, Q1_WAV, Q1_TEXT)
            follow_up = await wait_until(
                request_for(fake_openai, Q1_TEXT), TURN_TIMEOUT_S, "the follow-up request"
            )
            await s.reply_heard(since=asked_at, what="the follow-up answer")
            conversation_id = s.conversation.recorder.conversation_id
    if mode == "vad":
        assert interrupted
        return
    # Each backchannel paused the bot and it went on: no interruption, no Clear, no
    # cancelled stream, no new request.
    assert len(said_at) == len(BACKCHANNELS)
    assert stages.barge_in.decisions == ["backchannel"] * len(BACKCHANNELS)
    pauses = [(a, b) for a, b in stages.audio_gate.pauses if a >= said_at[0]]
    assert len(pauses) == len(BACKCHANNELS) and all(b is not None for _, b in pauses), pauses
    print("backchannel pauses (s):", [round(b - a, 2) for a, b in pauses])
    assert not interrupted
    assert fake_deepgram.clears == 0 and fake_openai.cancelled_streams == 0
    assert len(fake_openai.chat_requests) == requests_before + 1  # the follow-up
    # The whole answer was played, each pause resuming where it paused: exactly the
    # audio the TTS made for it, none lost, none played twice (to the last, padded chunk).
    played = tts_seconds(s.output, answer_at, answer_end)
    made = synthesised_seconds(fake_deepgram, LONG_ANSWER)
    assert 0 <= played - made < 0.04 + 1e-6, (played, made)
    # The backchannels never reached the model: the follow-up's context holds the whole
    # answer (it was all heard) and none of them.
    user = user_texts(follow_up)
    assert not [t for t in user if any(b.strip(".") in t for _, b in BACKCHANNELS)], user
    assistant = [m["content"] for m in follow_up["messages"] if m.get("role") == "assistant"]
    assert assistant[-1] == LONG_ANSWER
    messages = store.conversation_messages(conversation_id)
    assert [c for r, c, _ in messages if r == "user"] == [Q2_TEXT, Q1_TEXT]
