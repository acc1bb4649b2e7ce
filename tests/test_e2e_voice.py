"""End-to-end tests of the real voice pipeline, on real speech.

Everything Backtalk ships runs unchanged: ``Settings`` from the environment, the
ingest CLI, ``AgentResources``/``build_conversation`` (Silero VAD, smart-turn v3,
Deepgram STT/TTS and OpenAI LLM service classes, the RAG processor over a real
embedded Postgres + pgvector, the conversation recorder) under Pipecat's
``WorkerRunner``. Only the edges are stand-ins: the cloud services are the loopback
fakes of :mod:`tests.fakes` (real wire protocols), and the transport is
:class:`tests.transports.LoopbackTransport`, a real-time microphone playing the
WAV fixtures and a real-time loudspeaker that records what the bot says.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from backtalk.agent.bot import AgentResources, Conversation, TalkSession, build_conversation
from backtalk.cli import app
from backtalk.config import Settings
from backtalk.processors.rag import RETRIEVAL_TAG
from backtalk.store import Store
from pipecat.workers.runner import WorkerRunner

from conftest import AUDIO, TRANSCRIPTS
from fakes import FakeDeepgram, FakeOpenAI, FakeReply
from transports import LoopbackTransport, load_wav, speech_onset_s

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LECTURE = TRANSCRIPTS / "gradient_descent_lecture.json"
LECTURE_TITLE = "Gradient descent lecture"
Q1_WAV = AUDIO / "q1_what_is_learning_rate.wav"
Q1_TEXT = "What does the speaker say about choosing the learning rate?"
Q2_WAV = AUDIO / "q2_why_momentum.wav"
Q2_TEXT = "Why does momentum help gradient descent?"
BARGE_IN_WAV = AUDIO / "barge_in_wait.wav"
BARGE_IN_TEXT = "Wait, stop. Go back to the part about local minima."

#: The learning-rate passage of the lecture, seconds (3:34-4:33; fixtures README).
LEARNING_RATE_SPAN = (214.0, 273.0)

#: Seconds of fake synthesised speech per character (the fake's default is 0.06, which
#: makes the greeting ~6 s long; the tests do not need to listen to that much).
TTS_SECS_PER_CHAR = 0.02

#: Barge-in bound: after the user's speech begins, the bot may still be audible for
#: Silero's ``start_secs`` (0.2 s of speech before it reports the user started) plus
#: its 32 ms analysis window, the interruption's trip through the pipeline (a few
#: ms), the 40 ms chunk the output is writing when the interruption lands (Pipecat
#: lets it finish), plus slack for a loaded 2-core CI machine where the event loop
#: also runs ONNX inference: 1.0 s. Anything longer means the bot talks over the user.
BARGE_IN_MAX_OVERLAP_S = 1.0

#: Generous upper bounds for things that should happen; never slept for.
TURN_TIMEOUT_S = 12.0


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


def wav_speech_span(path: Path) -> tuple[float, float]:
    """(first, last) second of speech in a WAV fixture (20 ms RMS windows)."""
    pcm = load_wav(path)
    onset = speech_onset_s(pcm)
    end = len(pcm) / 2 / 16000 - speech_onset_s(_reversed_pcm(pcm))
    return onset, end


def _reversed_pcm(pcm: bytes) -> bytes:
    import numpy as np

    return np.frombuffer(pcm, dtype="<i2")[::-1].tobytes()


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
    return user_texts(request)[-1]


def retrieval_message(request: dict) -> str | None:
    """The user-role retrieval message of a chat request, if any."""
    return next((t for t in user_texts(request) if f"<{RETRIEVAL_TAG}>" in t), None)


_EXCERPT = re.compile(
    r'<excerpt [^>]*start_seconds="(\d+)" end_seconds="(\d+)">\n(.*?)\n</excerpt>', re.S
)


def excerpts(message: str) -> list[tuple[int, int, str]]:
    """(start_s, end_s, text) of every excerpt in a retrieval message."""
    return [(int(a), int(b), text) for a, b, text in _EXCERPT.findall(message)]


@dataclass
class Session:
    """A running conversation and its edges."""

    transport: LoopbackTransport
    conversation: Conversation
    resources: AgentResources
    runner_task: asyncio.Task

    @property
    def output(self):
        return self.transport.output()


@contextlib.asynccontextmanager
async def running_conversation(settings: Settings, store: Store, observers=()) -> AsyncIterator[Session]:
    """Build the real conversation on a loopback transport, run it, and tear it all down."""
    resources = AgentResources.open(settings)
    runner_task: asyncio.Task | None = None
    transport = LoopbackTransport()
    try:
        conversation = await build_conversation(
            transport,
            TalkSession(videos=store.list_videos()),
            resources,
            transport_name="test",
            idle_timeout_secs=None,
            observers=observers,
        )
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(conversation.worker)
        runner_task = asyncio.create_task(runner.run(), name="e2e-runner")
        session = Session(transport, conversation, resources, runner_task)
        await transport.connect_client()
        yield session
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


def pipeline_threads() -> set[str]:
    return {t.name for t in threading.enumerate()}


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


async def wait_greeted(s: Session, fake_deepgram: FakeDeepgram) -> None:
    """Wait until the greeting was synthesised, played, and finished."""
    await wait_until(
        lambda: any(LECTURE_TITLE in t for t in fake_deepgram.spoken_texts), 10, "greeting TTS"
    )
    await wait_until(lambda: s.output.audible_bytes() > 0, 10, "greeting audio")
    await wait_until(lambda: not s.output.bot_speaking, 15, "greeting to end")


async def test_spoken_question_is_answered_from_the_transcript(
    services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    answer = (
        "The speaker says to start small, around zero point zero one, "
        "about four minutes in."
    )
    fake_openai.reply = answer
    ingest_lecture()
    settings = Settings()

    async with running_conversation(settings, store) as s:
        await wait_greeted(s, fake_deepgram)
        greeting = next(t for t in fake_deepgram.spoken_texts if LECTURE_TITLE in t)

        fake_deepgram.queue_transcript(Q1_TEXT)
        onset, speech_end = wav_speech_span(Q1_WAV)
        started = await s.transport.play(Q1_WAV)
        user_stopped_at = started + speech_end

        request = await wait_until(
            lambda: next(
                (r for r in fake_openai.chat_requests if last_user_text(r) == Q1_TEXT), None
            ),
            TURN_TIMEOUT_S,
            "the chat request for q1",
        )
        reply_audio_at = await wait_until(
            lambda: s.output.first_audible_at(since=user_stopped_at),
            TURN_TIMEOUT_S,
            "the reply's audio",
        )
        latency = reply_audio_at - user_stopped_at
        print(f"\nq1: user stopped speaking -> bot audio: {latency:.2f} s")

        await wait_until(lambda: not s.output.bot_speaking, 15, "the reply to end")
        conv_id = s.conversation.recorder.conversation_id
        await wait_until(
            lambda: [m for m in store.conversation_messages(conv_id) if m[0] == "assistant"],
            5,
            "the assistant message to be stored",
        )

    # The fakes were really hit.
    assert fake_deepgram.listen_connections >= 1
    assert fake_openai.chat_requests
    assert LECTURE_TITLE in greeting

    # Retrieval: one user-role message of quoted transcript, with the learning-rate passage.
    rag = retrieval_message(request)
    assert rag is not None, request["messages"]
    found = excerpts(rag)
    lo, hi = LEARNING_RATE_SPAN
    hits = [(a, b, text) for a, b, text in found if a < hi and b > lo]
    assert hits, f"no excerpt overlaps {LEARNING_RATE_SPAN}: {[(a, b) for a, b, _ in found]}"
    assert any("learning rate" in text.lower() for _, _, text in hits)
    # Transcript text never rides in a system/developer message.
    for message in request["messages"]:
        if message.get("role") in ("system", "developer"):
            assert "<excerpt" not in str(message.get("content"))
            assert "learning rate" not in str(message.get("content")).lower()
    roles = [m["role"] for m in request["messages"]]
    assert roles[-2:] == ["user", "user"]
    assert request["messages"][-1]["content"] == Q1_TEXT

    # The reply was spoken.
    assert any("zero point zero one" in t for t in fake_deepgram.spoken_texts)
    assert s.output.audible_bytes(since=user_stopped_at) > 0

    # And the conversation was recorded.
    conversations = store.conversations()
    assert [c[0] for c in conversations] == [conv_id]
    messages = store.conversation_messages(conv_id)
    assert ("user", Q1_TEXT, False) in messages
    assert ("assistant", answer, False) in messages


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
#: How the scripted recogniser transcribes ``barge_in_wait.wav``: the user pauses for
#: 0.3 s after "Wait, stop." (longer than VAD ``stop_secs``), so Silero reports two
#: stretches of speech, Pipecat sends Deepgram a ``Finalize`` after each, and a real
#: recogniser would return one final transcript for each.
BARGE_IN_PARTS = ("Wait, stop.", "Go back to the part about local minima.")
assert " ".join(BARGE_IN_PARTS) == BARGE_IN_TEXT


def scripted_model(body: dict) -> str:
    """The fake model: long about momentum, short about local minima, brief otherwise."""
    question = last_user_text(body).lower()
    if "momentum" in question:
        return LONG_ANSWER
    return SHORT_ANSWER if "local minima" in question else STOP_ANSWER


async def test_user_barges_in_while_the_bot_is_speaking(
    services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    # A long answer that is still streaming (~130 tokens, 50 ms apart) when the user
    # interrupts, and still being spoken.
    fake_openai.reply = scripted_model
    fake_openai.token_interval_s = 0.05
    ingest_lecture()
    settings = Settings()

    import sys; sys.path.insert(0, "/tmp/dbg"); from dbg_observer import DbgObserver; dbg = DbgObserver()
    async with running_conversation(settings, store, [dbg]) as s:
        await wait_greeted(s, fake_deepgram)

        fake_deepgram.queue_transcript(Q2_TEXT)
        _, q2_end = wav_speech_span(Q2_WAV)
        q2_stopped_at = await s.transport.play(Q2_WAV) + q2_end
        await wait_until(
            lambda: any(last_user_text(r) == Q2_TEXT for r in fake_openai.chat_requests),
            TURN_TIMEOUT_S,
            "the chat request for q2",
        )
        reply_audio_at = await wait_until(
            lambda: s.output.first_audible_at(since=q2_stopped_at),
            TURN_TIMEOUT_S,
            "the q2 reply's audio",
        )
        print(f"\nq2: user stopped speaking -> bot audio: {reply_audio_at - q2_stopped_at:.2f} s")
        assert s.output.bot_speaking

        # The user talks over the bot.
        for part in BARGE_IN_PARTS:
            fake_deepgram.queue_transcript(part)
        barge_onset, barge_end = wav_speech_span(BARGE_IN_WAV)
        barge_started = await s.transport.play(BARGE_IN_WAV)
        barge_onset_at = barge_started + barge_onset
        barge_stopped_at = barge_started + barge_end

        # The barge-in is answered as a normal turn.
        request = await wait_until(
            lambda: next(
                (r for r in fake_openai.chat_requests if last_user_text(r) == BARGE_IN_PARTS[-1] or last_user_text(r) == BARGE_IN_TEXT),
                None,
            ),
            TURN_TIMEOUT_S,
            "the chat request for the barge-in",
        )
        second_reply_at = await wait_until(
            lambda: s.output.first_audible_at(since=barge_stopped_at),
            TURN_TIMEOUT_S,
            "the barge-in reply's audio",
        )
        print(
            f"barge-in: user stopped speaking -> bot audio: {second_reply_at - barge_stopped_at:.2f} s"
        )
        await wait_until(lambda: not s.output.bot_speaking, 15, "the second reply to end")
        conv_id = s.conversation.recorder.conversation_id
        await wait_until(
            lambda: any(
                m == ("assistant", SHORT_ANSWER, False)
                for m in store.conversation_messages(conv_id)
            ),
            5,
            "the answer to be stored",
        )

    # The answer being spoken stopped soon after the user started talking.
    stopped_at = next(
        (t for t, e in s.output.speaking_events if e == "stopped" and t >= barge_onset_at), None
    )
    assert stopped_at is not None
    talked_over = [
        w.t - barge_onset_at
        for w in s.output.written
        if w.audible and barge_onset_at <= w.t <= stopped_at
    ]
    print(
        f"barge-in: bot went quiet {stopped_at - barge_onset_at:.2f} s after the user began"
        f" (last audible frame at +{max(talked_over, default=0):.2f} s)"
    )
    print("speaking events after barge-in:", [(round(t - barge_onset_at, 2), e) for t, e in s.output.speaking_events if t >= barge_onset_at])
    for t, e, c in dbg.events:
        if t >= barge_onset_at - 0.5: print(f"DBG {t - barge_onset_at:+.3f} {e} {c}")
    runs = []
    for w in s.output.written:
        if w.t >= barge_onset_at - 0.2 and w.audible:
            if runs and w.t - runs[-1][1] < 0.1: runs[-1][1] = w.t
            else: runs.append([w.t, w.t])
    print("AUDIBLE RUNS", [(round(a - barge_onset_at, 2), round(b - barge_onset_at + 0.04, 2)) for a, b in runs])
    assert talked_over, "the bot had stopped before the user spoke: not a barge-in"
    assert stopped_at - barge_onset_at < BARGE_IN_MAX_OVERLAP_S
    assert max(talked_over) < BARGE_IN_MAX_OVERLAP_S

    # The LLM stream and the speech in progress were abandoned.
    assert fake_openai.cancelled_streams >= 1
    assert fake_deepgram.clears >= 1

    # The next turn was answered normally: everything the user said reached the model.
    assert fake_deepgram.pending_transcripts == [] and fake_deepgram.unscripted_utterances == 0
    said = [t for t in user_texts(request) if f"<{RETRIEVAL_TAG}>" not in t]
    print("user messages:", said)
    assert " ".join(said[said.index(Q2_TEXT) + 1 :]) == BARGE_IN_TEXT
    assert retrieval_message(request) is not None
    assert any("local minima are rarer" in t for t in fake_deepgram.spoken_texts)
    assert s.output.audible_bytes(since=barge_stopped_at) > 0

    # The interrupted answer is stored as interrupted, with only what was said.
    messages = store.conversation_messages(conv_id)
    print("stored:", messages)
    momentum = [(c, i) for r, c, i in messages if r == "assistant" and c.startswith("Momentum")]
    assert len(momentum) == 1
    content, interrupted = momentum[0]
    assert interrupted
    assert len(content) < len(LONG_ANSWER) and LONG_ANSWER.startswith(content.rstrip())
    assert ("assistant", SHORT_ANSWER, False) in messages
    user_said = [c for r, c, _ in messages if r == "user"]
    assert user_said[0] == Q2_TEXT and " ".join(user_said[1:]) == BARGE_IN_TEXT


async def test_turn_is_answered_when_retrieval_times_out(
    monkeypatch, services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    # Embeddings come from the (fake) OpenAI endpoint: instant while ingesting and
    # warming up, then slower than the retrieval budget.
    monkeypatch.setenv("BACKTALK_EMBEDDER", "openai")
    monkeypatch.setenv("BACKTALK_RETRIEVAL_TIMEOUT_S", "0.3")
    fake_openai.reply = "I can't look that up right now, sorry."
    ingest_lecture()
    settings = Settings()
    assert settings.embedder == "openai" and settings.retrieval_timeout_s == 0.3

    async with running_conversation(settings, store) as s:
        fake_openai.embedding_delay_s = 2.0
        embeddings_before = len(fake_openai.embedding_requests)
        await wait_greeted(s, fake_deepgram)

        fake_deepgram.queue_transcript(Q1_TEXT)
        _, speech_end = wav_speech_span(Q1_WAV)
        user_stopped_at = await s.transport.play(Q1_WAV) + speech_end
        request = await wait_until(
            lambda: next(
                (r for r in fake_openai.chat_requests if last_user_text(r) == Q1_TEXT), None
            ),
            TURN_TIMEOUT_S,
            "the chat request for q1",
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
