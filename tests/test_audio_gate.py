"""The bot's audio pauses and resumes at Pipecat's output transport, losing nothing.

:class:`~backtalk.agent.turns.OutputAudioGate` is installed on a real
``BaseOutputTransport`` (the loopback loudspeaker of :mod:`transports`, which plays each
chunk in real time and records it) exactly as Backtalk installs it on SmallWebRTC's or
Daily's, and TTS audio — a continuous tone — flows through Pipecat's media sender. The
assertions are about what was written relative to the moment the gate paused, and
about the audio itself, so they hold however busy the machine is.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.tests.utils import SleepFrame, run_test
from pipecat.transports.base_transport import TransportParams
from transports import LoopbackOutputTransport, LoopbackTransport

from backtalk.agent.turns import OutputAudioGate, install_output_audio_gate

pytestmark = pytest.mark.unit

RATE = 24000  # Pipecat's default output rate
CHUNK_S = 0.04  # the output transport's chunk: audio_out_10ms_chunks = 4


class RecordingLoudspeaker(LoopbackOutputTransport):
    """The loopback loudspeaker, also keeping the PCM it played."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pcm = bytearray()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self.pcm += frame.audio
        return await super().write_audio_frame(frame)


class RecordingTransport(LoopbackTransport):
    def output(self) -> RecordingLoudspeaker:
        if self._output is None:
            self._output = RecordingLoudspeaker(self, self._params, name=self._output_name)
        return self._output  # type: ignore[return-value]


def tone(seconds: float, start: int = 0) -> bytes:
    """A 220 Hz tone, continuing the phase of sample ``start``."""
    t = (start + np.arange(int(RATE * seconds))) / RATE
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def speech(seconds: float, start: int = 0) -> list:
    """One TTS context: started, the tone in 0.2 s frames, stopped."""
    audio = tone(seconds, start)
    step = int(RATE * 0.2) * 2
    frames = [TTSAudioRawFrame(audio[i : i + step], RATE, 1) for i in range(0, len(audio), step)]
    return [TTSStartedFrame(), *frames, TTSStoppedFrame()]


def loudspeaker() -> tuple[RecordingLoudspeaker, OutputAudioGate]:
    params = TransportParams(audio_out_enabled=True, audio_out_sample_rate=RATE)
    output = RecordingTransport(params).output()
    gate = install_output_audio_gate(output)
    assert gate is not None and params.audio_out_filter is gate
    return output, gate


async def when_written(output: RecordingLoudspeaker, n: int) -> None:
    while len([w for w in output.written if w.audible]) < n:
        await asyncio.sleep(0.005)


async def test_a_paused_answer_stops_within_a_chunk_and_resumes_where_it_paused():
    output, gate = loudspeaker()

    async def pause_and_resume():
        await when_written(output, 10)  # 0.4 s into the answer
        gate.pause()
        await asyncio.sleep(0.6)
        gate.resume()

    control = asyncio.create_task(pause_and_resume())
    await run_test(Pipeline([output]), frames_to_send=speech(1.6), start_timeout=5)
    await control

    ((paused_at, resumed_at),) = gate.pauses
    during = [w for w in output.written if w.audible and paused_at <= w.t < resumed_at]
    # The chunk being written when the pause came was the last one played until the
    # resume (Pipecat lets it finish); the next one waited in the gate.
    assert len(during) <= 1, during
    assert resumed_at - paused_at >= 0.6
    # Everything played, in order, once: the tone is continuous across the pause, so
    # any chunk lost, repeated or reordered would show.
    played = bytes(output.pcm).rstrip(b"\0")
    assert played == tone(1.6)[: len(played)] and len(played) >= len(tone(1.6)) - 4


class ReopensOnBotStopped(BaseObserver):
    """What the barge-in strategy does: reopen the gate when the bot is reported stopped."""

    def __init__(self, gate: OutputAudioGate):
        super().__init__()
        self.gate = gate

    async def on_push_frame(self, data: FramePushed):
        if isinstance(data.frame, BotStoppedSpeakingFrame):
            self.gate.reopen()


async def test_an_interruption_drops_the_held_chunk_and_the_next_answer_plays_whole():
    output, gate = loudspeaker()

    async def interrupt():
        await when_written(output, 10)  # 0.4 s into the answer
        gate.pause()
        await asyncio.sleep(0.2)
        gate.discard()  # the strategy's decision: a real interruption

    control = asyncio.create_task(interrupt())
    first, after = speech(1.6), speech(0.4, start=int(RATE * 7))
    frames = [*first, SleepFrame(sleep=1.0), InterruptionFrame(), SleepFrame(sleep=0.3), *after]
    await run_test(
        Pipeline([output]),
        frames_to_send=frames,
        observers=[ReopensOnBotStopped(gate)],
        start_timeout=5,
    )
    await control

    # The chunk the gate held when the interruption came was dropped, not played.
    assert gate.dropped == 1
    played = bytes(output.pcm).rstrip(b"\0")
    nxt = tone(0.4, start=int(RATE * 7))
    head, tail = played[: len(played) - len(nxt)], played[len(played) - len(nxt) :]
    # The interrupted answer stopped where it paused (0.4 s and at most the chunk being
    # written), and the next answer then played whole, from its start.
    assert head == tone(1.6)[: len(head)]
    assert 0.4 <= len(head) / (2 * RATE) <= 0.4 + 2 * CHUNK_S + 1e-9, len(head) / (2 * RATE)
    assert tail == nxt
