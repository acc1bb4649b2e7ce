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
async def running_conversation(settings: Settings, store: Store) -> AsyncIterator[Session]:
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
