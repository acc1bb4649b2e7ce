"""Reliability cases R5, R6, R7 and R11: Deepgram's websockets fail mid-call.

The real Pipecat Deepgram services, built by Backtalk's ``make_stt``/``make_tts``,
against the loopback fake Deepgram (``tests/fakes/deepgram_server.py``), whose fault
knobs drop a socket (1006 abort, 1011 close), refuse handshakes (401/403) or accept and
close connections at once. R5 and R11 run the whole conversation of
``tests/test_e2e_voice.py`` on real speech: the user notices that the question asked
after the fault is transcribed and answered out loud, in full. R6 and R7 run the STT
service alone: it must stop trying, and say why.

What Pipecat does and what Backtalk adds: ``backtalk/agent/reconnect.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import wave
from collections.abc import AsyncIterator, Iterator

import pytest
import test_e2e_voice as e2e
from fakes import FakeDeepgram, FakeOpenAI
from fakes.deepgram_server import NET_0001
from loguru import logger
from pipecat.frames.frames import EndFrame, ErrorFrame, InputAudioRawFrame, TranscriptionFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.workers.runner import WorkerRunner
from processes import wait_until
from test_e2e_voice import (
    Q1_TEXT,
    Q1_WAV,
    Q2_TEXT,
    Q2_WAV,
    TURN_TIMEOUT_S,
    ingest_lecture,
    last_user_text,
    request_for,
    running_conversation,
    synthesised_seconds,
    tts_seconds,
    wait_greeted,
)

from backtalk.agent.reconnect import DEEPGRAM_KEY_ENV_VAR
from backtalk.agent.services import make_stt
from backtalk.config import Settings
from backtalk.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# The conversation's fixtures (fakes, settings from the environment), shared.
fake_openai = e2e.fake_openai
fake_deepgram = e2e.fake_deepgram
services_env = e2e.services_env

#: The catalogue's bound on a reconnect (R5): ≥ 4 s of backoff plus the handshake.
RECONNECT_BOUND_S = 10.0
#: Pipecat's first reconnect backoff (``exponential_backoff_time``'s minimum), seconds:
#: waiting a little longer shows that no further attempt is made.
FIRST_BACKOFF_S = 4.0
#: A key distinctive enough to find in any log line.
LEAK_KEY = "dg-LEAKCHECK-3f9a7c1e"

Q1_ANSWER = "After the reconnect: he says to start small, about four minutes in."
Q2_ANSWER = (
    "Momentum keeps the direction of the last steps. It smooths the zigzags in a "
    "narrow valley. He sets beta to about zero point nine."
)
LONG_ANSWER = (
    "The speaker says to start with a small learning rate. Too large a rate makes the "
    "loss jump around instead of going down. Too small a rate makes training crawl. "
    "He suggests trying a few values on a log scale. Then he picks the largest one that "
    "still trains smoothly. He shows this about four minutes in."
)


def scripted_model(body: dict) -> str:
    """The fake model: a long answer about the learning rate, a short one about momentum."""
    return Q2_ANSWER if "momentum" in last_user_text(body).lower() else LONG_ANSWER


@contextlib.contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line (DEBUG and up) while the block runs."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        yield lines
    finally:
        logger.remove(sink)


@contextlib.asynccontextmanager
async def running_stt(fake: FakeDeepgram) -> AsyncIterator[tuple[FrameProcessor, list]]:
    """Backtalk's STT service on its own in a running pipeline, pointed at ``fake``.

    Yields the service and the ``ErrorFrame``\\ s it reported, with whether it was
    still usable after each.
    """
    settings = Settings(deepgram_api_key=LEAK_KEY, deepgram_base_url=fake.base_url)
    stt = make_stt(settings)
    errors: list[tuple[ErrorFrame, bool]] = []

    @stt.event_handler("on_error")
    async def on_error(_processor, error: ErrorFrame):
        errors.append((error, stt.is_usable))

    worker = PipelineWorker(
        Pipeline([stt]),
        params=PipelineParams(audio_in_sample_rate=16000),
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run(), name="stt-runner")
    try:
        yield stt, errors
    finally:
        await worker.queue_frame(EndFrame())
        try:
            await asyncio.wait_for(task, 10)
        finally:
            if not task.done():
                task.cancel()


# -- R5: the STT socket drops mid-call -----------------------------------------------------


@pytest.mark.parametrize("code", [1006, 1011], ids=["abort-1006", "close-1011"])
async def test_R5_stt_socket_drop_reconnects(
    code: int, services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    fake_openai.reply = Q1_ANSWER
    ingest_lecture()
    async with running_conversation(Settings(), store) as s:
        stt = dict(s.conversation.stages.stages)["stt"]
        errors: list[tuple[ErrorFrame, bool]] = []

        @stt.event_handler("on_error")
        async def on_error(_processor, error: ErrorFrame):
            errors.append((error, stt.is_usable))

        await wait_greeted(s, fake_deepgram)
        assert fake_deepgram.listen_connections == 1
        assert fake_deepgram.drop("/v1/listen", code=code) == 1
        dropped_at = time.monotonic()
        await wait_until(
            lambda: fake_deepgram.listen_connections >= 2, 3 * RECONNECT_BOUND_S, "a reconnect"
        )
        reconnect_s = time.monotonic() - dropped_at
        print(f"\nR5 ({code}): listen socket back {reconnect_s:.2f} s after the drop")

        # The user asks after the reconnect: transcribed, answered, and heard.
        stopped_at = await s.ask(fake_deepgram, Q1_WAV, Q1_TEXT)
        await wait_until(request_for(fake_openai, Q1_TEXT), TURN_TIMEOUT_S, "the q1 request")
        await s.reply_heard(since=stopped_at, what="the answer after the reconnect")

    assert reconnect_s <= RECONNECT_BOUND_S
    assert fake_deepgram.listen_connections == 2  # one reconnect, no storm
    # The drop was reported, as an error the service recovers from.
    assert errors and all(usable for _, usable in errors), errors
    assert not any(e.category is not None and e.category.is_permanent for e, _ in errors)
    assert stt.is_usable
    assert any(t.strip() == Q1_ANSWER for t in fake_deepgram.spoken_texts)
    assert (
        tts_seconds(s.output, stopped_at, time.monotonic())
        >= synthesised_seconds(fake_deepgram, Q1_ANSWER) - 0.05
    )


# -- R6: a refused key ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_R6_stt_bad_key_is_unusable_without_retries(status: int):
    with FakeDeepgram() as fake, captured_logs() as logs:
        fake.refuse(10, status=status, path="/v1/listen")
        async with running_stt(fake) as (stt, errors):
            await wait_until(lambda: not stt.is_usable, 10, "the STT to be unusable")
            # Longer than the first backoff: a retry would have happened by now.
            await asyncio.sleep(FIRST_BACKOFF_S + 1)
            attempts = fake.connection_attempts("/v1/listen")

    assert attempts == 1
    assert fake.listen_connections == 0
    # Unusable with the first (and only) error, which is permanent.
    assert len(errors) == 1, errors
    error, usable_after = errors[0]
    assert not usable_after and error.category.is_permanent
    text = "\n".join(logs)
    hints = [line for line in logs if DEEPGRAM_KEY_ENV_VAR in line]
    assert len(hints) == 1 and f"HTTP {status}" in hints[0], hints
    assert LEAK_KEY not in text
    assert LEAK_KEY not in str(error.error) and LEAK_KEY not in repr(error.exception)


# -- R7: a flapping socket ----------------------------------------------------------------


async def test_R7_stt_flapping_gives_up():
    with FakeDeepgram() as fake, captured_logs() as logs:
        fake.flap(10, after_s=0.3, path="/v1/listen")  # never stays up
        async with running_stt(fake) as (stt, errors):
            await wait_until(lambda: not stt.is_usable, 60, "the STT to give up")
            gave_up_at = time.monotonic()
            attempts_at_give_up = fake.connection_attempts("/v1/listen")
            # No storm afterwards: nothing more within another backoff.
            await asyncio.sleep(FIRST_BACKOFF_S + 1)
            attempts = fake.connection_attempts("/v1/listen")
        print(f"\nR7: gave up after {attempts} connections ({time.monotonic() - gave_up_at:.1f} s)")

    assert attempts == attempts_at_give_up == fake.listen_connections == 3
    assert attempts <= 4
    # Three reported drops, each recoverable, then a permanent error: given up.
    drops = [e for e, usable in errors if usable]
    assert len(drops) == 3, errors
    final, usable_after = errors[-1]
    assert not usable_after and "3 times in a row" in final.error
    assert not any(DEEPGRAM_KEY_ENV_VAR in line for line in logs)  # not a key problem


# -- R8: a long silence ----------------------------------------------------------------------

#: Deepgram closes a listen socket that receives nothing for 10 s (NET-0001).
DEEPGRAM_IDLE_CLOSE_S = 10.0


async def test_R8_the_fake_deepgram_closes_an_idle_socket_as_deepgram_does():
    """The check below can fail: a client that sends nothing is closed with NET-0001."""
    import aiohttp

    with FakeDeepgram(listen_idle_close_s=0.5) as fake:
        async with aiohttp.ClientSession() as http:
            url = f"{fake.base_url}/v1/listen?model=nova-3"
            async with http.ws_connect(url, headers={"Authorization": "Token dg-test"}) as ws:
                msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (1011, NET_0001)
        assert fake.idle_closes == 1


async def test_R8_long_silence_keepalive_holds_the_socket_open():
    """No audio for longer than Deepgram's idle limit: Pipecat's KeepAlive (every 5 s)
    keeps the listen socket open; no reconnect."""
    with FakeDeepgram(listen_idle_close_s=DEEPGRAM_IDLE_CLOSE_S) as fake:
        async with running_stt(fake) as (stt, errors):
            await wait_until(lambda: fake.listen_connections == 1, 10, "the listen socket")
            await asyncio.sleep(DEEPGRAM_IDLE_CLOSE_S + 2)
            keepalives = [c for c in fake.listen_control if c.get("type") == "KeepAlive"]
            open_now = fake.open_sockets("/v1/listen")
    assert fake.idle_closes == 0
    assert open_now == 1 and fake.listen_connections == 1
    assert len(keepalives) >= 2
    assert not errors and stt.is_usable


@pytest.mark.skipif(
    not os.environ.get("BACKTALK_REAL_DEEPGRAM"),
    reason="opt-in, needs Deepgram: BACKTALK_REAL_DEEPGRAM=1 DEEPGRAM_API_KEY=... "
    "./run test tests/test_reliability_deepgram.py -k real",
)
async def test_R8_real_deepgram_60_s_of_silence_then_speech_is_transcribed():
    """Against the real Deepgram: 60 s without audio, then q1 is transcribed."""
    settings = Settings()
    assert settings.deepgram_api_key, "set DEEPGRAM_API_KEY"
    stt = make_stt(settings.model_copy(update={"deepgram_base_url": None}))
    transcripts: list[str] = []

    class Collect(FrameProcessor):
        async def process_frame(self, frame, direction):
            await super().process_frame(frame, direction)
            if isinstance(frame, TranscriptionFrame):
                transcripts.append(frame.text)
            await self.push_frame(frame, direction)

    worker = PipelineWorker(
        Pipeline([stt, Collect()]),
        params=PipelineParams(audio_in_sample_rate=16000),
        idle_timeout_secs=None,
        enable_rtvi=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(60)
        assert stt.is_usable
        with wave.open(str(Q1_WAV)) as w:
            rate, pcm = w.getframerate(), w.readframes(w.getnframes())
        chunk = int(rate * 0.02) * 2
        for i in range(0, len(pcm), chunk):
            await worker.queue_frame(InputAudioRawFrame(pcm[i : i + chunk], rate, 1))
            await asyncio.sleep(0.02)
        silence = bytes(chunk)
        for _ in range(100):  # 2 s of silence for the final
            await worker.queue_frame(InputAudioRawFrame(silence, rate, 1))
            await asyncio.sleep(0.02)
        await wait_until(lambda: transcripts, 10, "a transcript")
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(task, 10)
    assert "learning rate" in " ".join(transcripts).lower()


# -- R11: the TTS socket drops ----------------------------------------------------------------


@pytest.mark.parametrize("when", ["between-replies", "mid-reply"])
async def test_R11_tts_socket_drop_next_reply_heard_in_full(
    when: str, services_env, fake_openai: FakeOpenAI, fake_deepgram: FakeDeepgram, store: Store
):
    fake_openai.reply = scripted_model
    fake_openai.token_interval_s = 0.05  # the reply streams, sentence by sentence
    ingest_lecture()
    async with running_conversation(Settings(), store) as s:
        tts = dict(s.conversation.stages.stages)["tts"]
        await wait_greeted(s, fake_deepgram)
        lost_s = None
        if when == "mid-reply":
            stopped_at = await s.ask(fake_deepgram, Q1_WAV, Q1_TEXT)
            await s.answer_started(since=stopped_at, what="the long answer")
        assert fake_deepgram.speak_connections == 1
        assert fake_deepgram.drop("/v1/speak", code=1006) == 1
        dropped_at = time.monotonic()
        sent_before_drop = " ".join(t.strip() for t in fake_deepgram.spoken_texts)
        await wait_until(lambda: fake_deepgram.speak_connections >= 2, 15, "a TTS reconnect")
        reconnect_s = time.monotonic() - dropped_at
        if when == "mid-reply":
            await wait_until(lambda: not s.output.bot_speaking, 15, "the long answer to end")
            # The whole answer would have been this long (sentences never sent count).
            lost_s = len(LONG_ANSWER) * e2e.TTS_SECS_PER_CHAR - tts_seconds(
                s.output, stopped_at, time.monotonic()
            )

        # The next reply, after the reconnect: all of it is played.
        asked_at = await s.ask(fake_deepgram, Q2_WAV, Q2_TEXT)
        await wait_until(request_for(fake_openai, Q2_TEXT), TURN_TIMEOUT_S, "the q2 request")
        await s.reply_heard(since=asked_at, what="the reply after the reconnect")
        played_s = tts_seconds(s.output, asked_at, time.monotonic())
    expected_s = synthesised_seconds(fake_deepgram, Q2_ANSWER)
    print(
        f"\nR11 ({when}): TTS socket back {reconnect_s:.2f} s after the drop; next reply "
        f"{played_s:.2f} of {expected_s:.2f} s played"
        + (f"; the reply in flight lost {lost_s:.2f} s" if lost_s is not None else "")
    )

    assert reconnect_s <= RECONNECT_BOUND_S
    assert fake_deepgram.speak_connections == 2
    assert tts.is_usable
    if when == "mid-reply":
        # The drop came while the answer was still streaming to Deepgram, and at most
        # one sentence of it went unheard.
        assert not sent_before_drop.endswith(LONG_ANSWER.split(". ")[-1]), sent_before_drop
        longest_sentence_s = max(len(t) for t in LONG_ANSWER.split(". ")) * e2e.TTS_SECS_PER_CHAR
        assert lost_s <= longest_sentence_s
    # Every sentence of the next reply was sent to Deepgram and played in full.
    spoken = " ".join(t.strip() for t in fake_deepgram.spoken_texts)
    assert Q2_ANSWER in spoken, fake_deepgram.spoken_texts
    assert played_s >= expected_s - 0.05
