"""A loopback Pipecat transport for end-to-end tests of the real voice pipeline.

:class:`LoopbackTransport` stands where Daily or SmallWebRTC would be:

* its input is a *microphone*: once a client connects it pushes 20 ms
  ``InputAudioRawFrame``\\ s at real-time pace, forever, through
  :meth:`BaseInputTransport.push_audio_frame` (the path real transports use, so the
  audio goes through the input transport's audio task). The test makes it say
  something with :meth:`LoopbackTransport.play` (a PCM16 mono WAV) or
  :meth:`LoopbackTransport.silence`; between those it sends digital silence, as a
  muted-but-open microphone does. Silero VAD, smart-turn and Deepgram therefore
  hear real speech, with real pauses;
* its output is a *loudspeaker*: ``write_audio_frame`` "plays" each frame by
  sleeping for the frame's duration and records what was written (bytes, sample
  rate, time, whether it was audible). Pipecat's own ``BaseOutputTransport``
  machinery emits ``BotStartedSpeakingFrame`` / ``BotStoppedSpeakingFrame``, handles
  interruptions, and so on;
* :meth:`LoopbackTransport.connect_client` / :meth:`~LoopbackTransport.disconnect_client`
  fire ``on_client_connected`` / ``on_client_disconnected`` like a browser joining
  and leaving.

Example::

    transport = LoopbackTransport()
    ...build a pipeline with transport.input() and transport.output(), run it...
    await transport.connect_client()
    await transport.play("question.wav")
    await transport.silence(1.0)
    await transport.disconnect_client()
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    ClientConnectedFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    OutputAudioRawFrame,
    StartFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import BaseTransport, TransportParams

__all__ = [
    "LoopbackInputTransport",
    "LoopbackOutputTransport",
    "LoopbackTransport",
    "WrittenAudio",
    "load_wav",
    "speech_onset_s",
]

#: Length of each microphone frame, seconds (what WebRTC clients send).
MIC_FRAME_S = 0.02
#: Peak amplitude (PCM16) above which a written output frame counts as audible.
AUDIBLE_PEAK = 100
#: RMS (PCM16) above which a 20 ms window of input speech counts as speech.
SPEECH_RMS = 500.0


def load_wav(path: str | Path, sample_rate: int = 16000) -> bytes:
    """PCM16 mono samples of a WAV file.

    Raises:
        ValueError: the file is not 16-bit mono at ``sample_rate``.
    """
    with wave.open(str(path)) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, sample_rate):
            raise ValueError(
                f"{path}: need 16-bit mono {sample_rate} Hz, got {w.getnchannels()} ch, "
                f"{8 * w.getsampwidth()} bit, {w.getframerate()} Hz"
            )
        return w.readframes(w.getnframes())


def speech_onset_s(pcm: bytes, sample_rate: int = 16000, threshold: float = SPEECH_RMS) -> float:
    """Offset, seconds, of the first 20 ms window of ``pcm`` louder than ``threshold`` RMS."""
    window = int(sample_rate * MIC_FRAME_S)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    for i in range(0, len(samples) - window + 1, window):
        if np.sqrt(np.mean(samples[i : i + window] ** 2)) > threshold:
            return i / sample_rate
    raise ValueError("no speech in the audio")


@dataclass(frozen=True, slots=True)
class WrittenAudio:
    """One audio frame the output transport played.

    Parameters:
        t: ``time.monotonic()`` when it started playing.
        nbytes: Its length in bytes.
        sample_rate: Its sample rate, Hz.
        audible: Whether its peak is above :data:`AUDIBLE_PEAK` (not silence).
        kind: The frame's class name (``TTSAudioRawFrame``, ``OutputAudioRawFrame``...).
    """

    t: float
    nbytes: int
    sample_rate: int
    audible: bool
    kind: str


class _Segment:
    """Audio queued on the microphone, and a future set once it has all been sent."""

    def __init__(self, pcm: bytes, done: asyncio.Future):
        self.pcm = pcm
        self.offset = 0
        self.done = done
        self.started_at: float | None = None


class LoopbackInputTransport(BaseInputTransport):
    """A microphone that never stops: real-time 20 ms frames of queued speech or silence."""

    def __init__(self, transport: LoopbackTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._segments: deque[_Segment] = deque()
        self._mic_task: asyncio.Task | None = None
        self.ready = asyncio.Event()
        #: Frames pushed so far.
        self.frames_sent = 0

    async def start(self, frame: StartFrame):
        """Start the input transport and make it ready to stream."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.ready.set()

    async def stop(self, frame: EndFrame):
        """Stop the microphone, then the base transport."""
        await self.stop_microphone()
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame):
        """Stop the microphone, then the base transport."""
        await self.stop_microphone()
        await super().cancel(frame)

    async def cleanup(self):
        """Release the microphone task."""
        await self.stop_microphone()
        await super().cleanup()

    # -- microphone -----------------------------------------------------------------------

    def start_microphone(self) -> None:
        """Start sending audio frames (silence until something is played)."""
        if self._mic_task is None:
            self._mic_task = self.create_task(self._microphone(), "microphone")

    async def stop_microphone(self) -> None:
        """Stop sending audio; anything still queued is abandoned."""
        if self._mic_task is not None:
            task, self._mic_task = self._mic_task, None
            await self.cancel_task(task)
        while self._segments:
            segment = self._segments.popleft()
            if not segment.done.done():
                segment.done.cancel()

    def enqueue(self, pcm: bytes) -> _Segment:
        """Queue ``pcm`` (16-bit mono at the input rate) after what is already queued."""
        if self._mic_task is None:
            raise RuntimeError("the microphone is off: connect a client first")
        segment = _Segment(pcm, asyncio.get_running_loop().create_future())
        self._segments.append(segment)
        return segment

    def _next_chunk(self, nbytes: int) -> bytes:
        chunk = bytearray()
        while len(chunk) < nbytes and self._segments:
            segment = self._segments[0]
            if segment.started_at is None:
                segment.started_at = time.monotonic()
            take = segment.pcm[segment.offset : segment.offset + nbytes - len(chunk)]
            chunk += take
            segment.offset += len(take)
            if segment.offset >= len(segment.pcm):
                self._segments.popleft()
                if not segment.done.done():
                    segment.done.set_result(segment.started_at)
        return bytes(chunk) + bytes(nbytes - len(chunk))

    async def _microphone(self) -> None:
        rate = self.sample_rate
        nbytes = int(rate * MIC_FRAME_S) * 2 * self._params.audio_in_channels
        next_at = time.monotonic()
        while True:
            # Keep to the wall clock: after a stall (a busy event loop) the frames that
            # are due go out back to back, as a network jitter buffer would deliver them.
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = InputAudioRawFrame(
                audio=self._next_chunk(nbytes),
                sample_rate=rate,
                num_channels=self._params.audio_in_channels,
            )
            await self.push_audio_frame(frame)
            self.frames_sent += 1
            next_at += MIC_FRAME_S


class LoopbackOutputTransport(BaseOutputTransport):
    """A loudspeaker: plays audio in real time and records every frame written."""

    def __init__(self, transport: LoopbackTransport, params: TransportParams, **kwargs):
        super().__init__(params, **kwargs)
        self._transport = transport
        self._play_until = 0.0
        self.ready = asyncio.Event()
        #: Every frame written, in order.
        self.written: list[WrittenAudio] = []
        #: ``(time.monotonic(), "started" | "stopped")`` of the bot's speech, as
        #: Pipecat's output transport reported it.
        self.speaking_events: list[tuple[float, str]] = []

    async def start(self, frame: StartFrame):
        """Start the output transport and its media sender."""
        await super().start(frame)
        await self.set_transport_ready(frame)
        self.ready.set()

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        """Play ``frame``: record it, then take as long as it lasts."""
        now = time.monotonic()
        samples = np.frombuffer(frame.audio, dtype="<i2")
        audible = bool(samples.size) and int(np.abs(samples.astype(np.int32)).max()) > AUDIBLE_PEAK
        self.written.append(
            WrittenAudio(now, len(frame.audio), frame.sample_rate, audible, type(frame).__name__)
        )
        duration = len(frame.audio) / (frame.sample_rate * 2 * frame.num_channels)
        # A sound card plays continuously: a late write does not make later audio late.
        self._play_until = max(self._play_until, now) + duration
        await asyncio.sleep(self._play_until - now)
        return True

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Note the bot's speaking state as it passes, then push on."""
        if direction == FrameDirection.DOWNSTREAM:
            if isinstance(frame, BotStartedSpeakingFrame):
                self.speaking_events.append((time.monotonic(), "started"))
            elif isinstance(frame, BotStoppedSpeakingFrame):
                self.speaking_events.append((time.monotonic(), "stopped"))
        await super().push_frame(frame, direction)

    # -- what was played ------------------------------------------------------------------

    def audible_bytes(self, since: float = 0.0) -> int:
        """Bytes of audible (non-silent) audio that started playing at or after ``since``."""
        return sum(w.nbytes for w in self.written if w.audible and w.t >= since)

    def last_audible_at(self) -> float | None:
        """When the last audible frame started playing, or None."""
        return next((w.t for w in reversed(self.written) if w.audible), None)

    def first_audible_at(self, since: float = 0.0) -> float | None:
        """When the first audible frame at or after ``since`` started playing, or None."""
        return next((w.t for w in self.written if w.audible and w.t >= since), None)

    @property
    def bot_speaking(self) -> bool:
        """Whether the last speaking event was ``started``."""
        return bool(self.speaking_events) and self.speaking_events[-1][1] == "started"


class LoopbackTransport(BaseTransport):
    """A test transport: a never-silent microphone in, a recording loudspeaker out.

    Args:
        params: Defaults to audio in and out enabled, sample rates from the pipeline
            (``PipelineParams``: 16 kHz in, 24 kHz out).
        client: What ``on_client_connected`` / ``on_client_disconnected`` receive.

    Events:
        on_client_connected(transport, client)
        on_client_disconnected(transport, client)
    """

    def __init__(
        self,
        params: TransportParams | None = None,
        *,
        client: object = "loopback-client",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._params = params or TransportParams(audio_in_enabled=True, audio_out_enabled=True)
        self._client = client
        self._input: LoopbackInputTransport | None = None
        self._output: LoopbackOutputTransport | None = None
        self.connected = False
        self._register_event_handler("on_client_connected")
        self._register_event_handler("on_client_disconnected")

    def input(self) -> LoopbackInputTransport:
        """The microphone side."""
        if self._input is None:
            self._input = LoopbackInputTransport(self, self._params, name=self._input_name)
        return self._input

    def output(self) -> LoopbackOutputTransport:
        """The loudspeaker side."""
        if self._output is None:
            self._output = LoopbackOutputTransport(self, self._params, name=self._output_name)
        return self._output

    def get_client_id(self, client: object) -> str:
        """The client's id (its string form)."""
        return str(client)

    # -- the client -----------------------------------------------------------------------

    async def connect_client(self, timeout: float = 20.0) -> None:
        """A client joins: wait until the pipeline has started, open the microphone,
        and fire ``on_client_connected``."""
        await asyncio.wait_for(
            asyncio.gather(self.input().ready.wait(), self.output().ready.wait()), timeout
        )
        self.connected = True
        self.input().start_microphone()
        await self._call_event_handler("on_client_connected", self._client)
        await self.input().push_frame(ClientConnectedFrame())

    async def disconnect_client(self, timeout: float = 10.0) -> None:
        """The client leaves: close the microphone, fire ``on_client_disconnected``
        and wait for its handlers to finish."""
        if not self.connected:
            return
        self.connected = False
        if self._input is not None:
            await self._input.stop_microphone()
        await self._call_event_handler("on_client_disconnected", self._client)
        await self.wait_for_event_handlers(timeout)

    async def wait_for_event_handlers(self, timeout: float = 10.0) -> None:
        """Wait for the event-handler tasks this transport started."""
        tasks = [task for _, task in self._event_tasks]
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout)

    async def play(self, path: str | Path) -> float:
        """Say the WAV file into the microphone, at real-time pace.

        Returns once its last frame was sent.

        Args:
            path: 16-bit mono WAV at the input sample rate.

        Returns:
            ``time.monotonic()`` when its first frame was sent.
        """
        return await self.play_pcm(load_wav(path, self.input().sample_rate))

    async def play_pcm(self, pcm: bytes) -> float:
        """Like :meth:`play`, for raw PCM16 mono samples."""
        return await self.input().enqueue(pcm).done

    def start_playing(self, path: str | Path) -> asyncio.Future:
        """Queue a WAV file on the microphone and return at once.

        Returns:
            A future resolved (with the time its first frame was sent) once it has
            all been sent.
        """
        return self.input().enqueue(load_wav(path, self.input().sample_rate)).done

    async def silence(self, seconds: float) -> None:
        """Keep the microphone open, silent, for ``seconds`` (after anything queued)."""
        rate = self.input().sample_rate
        await self.play_pcm(bytes(int(rate * seconds) * 2))
