"""A Python stand-in for a Pipecat browser client over SmallWebRTC.

:class:`SmallWebRTCClient` does what Pipecat's JS client SDK (``startBotAndConnect``
with ``SmallWebRTCTransport``, as in Backtalk's page and Pipecat's prebuilt UI) does
in a browser (read from ``pipecat-ai-prebuilt``'s bundled JS client and from
Pipecat's ``runner/run.py`` and ``transports/smallwebrtc/``), against any server with
Pipecat's session routes (``backtalk talk``, Pipecat's dev runner):

1. ``POST /start`` with ``{"transport": "webrtc", "createDailyRoom": false,
   "enableDefaultIceServers": ..., }`` → ``{"sessionId": ..., "iceConfig"?: ...}``;
2. a peer connection with, in this order, an ``audio`` transceiver (``sendrecv``,
   the microphone), a ``video`` transceiver (``sendrecv``, no camera) and an ordered
   data channel labelled ``chat``. Pipecat maps transceivers by index: 0 is the
   microphone / the bot's voice, 1 the camera;
3. ``POST /sessions/{sessionId}/api/offer`` with ``{"sdp", "type": "offer",
   "pc_id": null, "restart_pc": false}`` → ``{"sdp", "type": "answer", "pc_id"}``.
   The JS client waits for ICE gathering (``waitForICEGathering: true``), and so
   does aiortc, so every host candidate is in the offer and no ``PATCH`` (trickle
   ICE) is needed;
4. once the data channel opens: ``"ping: <ms>"`` every second (the server treats
   the peer as gone 3 s after the last ping, once it has seen one) and the RTVI
   ``client-ready`` message; the bot answers ``bot-ready``.

The microphone (:class:`Microphone`) sends 20 ms frames of 16 kHz mono PCM16 at
real-time pace, forever: digital silence, or a clip given to :meth:`Microphone.play`.
The loudspeaker (:class:`Loudspeaker`) reads the bot's audio track and records when
it was audible.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from av import AudioFrame

__all__ = ["Clip", "Loudspeaker", "Microphone", "SmallWebRTCClient", "load_wav"]

#: Microphone frame length, seconds (what browsers send over WebRTC).
FRAME_S = 0.02
#: Microphone sample rate, Hz (aiortc's Opus encoder resamples to 48 kHz).
MIC_SAMPLE_RATE = 16000
#: Peak (PCM16) above which a received frame of the bot's voice counts as audible.
#: Opus-coded digital silence decodes to values within a few units of zero; the
#: fake TTS tone peaks at 8000.
AUDIBLE_PEAK = 500
#: RTVI protocol version the bundled prebuilt JS client (pipecat-ai-prebuilt 1.3.0)
#: announces in ``client-ready``.
RTVI_CLIENT_VERSION = "2.1.0"
#: Seconds between data-channel keep-alive pings (as the JS client).
PING_INTERVAL_S = 1.0


def load_wav(path: str | Path, sample_rate: int = MIC_SAMPLE_RATE) -> bytes:
    """PCM16 mono samples of a WAV file.

    Raises:
        ValueError: the file is not 16-bit mono at ``sample_rate`` Hz.
    """
    with wave.open(str(path)) as w:
        if (w.getnchannels(), w.getsampwidth(), w.getframerate()) != (1, 2, sample_rate):
            raise ValueError(f"{path}: need 16-bit mono {sample_rate} Hz")
        return w.readframes(w.getnframes())


@dataclass
class Clip:
    """A clip the microphone plays; times are ``time.monotonic()``, set as it is sent.

    Parameters:
        pcm: PCM16 mono samples at :data:`MIC_SAMPLE_RATE`.
        started_at: When its first frame was handed to the encoder.
        ended_at: When its last frame was handed to the encoder.
    """

    pcm: bytes
    started_at: float | None = None
    ended_at: float | None = None
    _sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Microphone(AudioStreamTrack):
    """An always-open microphone: 20 ms frames at real-time pace, silence between clips."""

    def __init__(self, sample_rate: int = MIC_SAMPLE_RATE) -> None:
        super().__init__()
        self._rate = sample_rate
        self._samples = int(sample_rate * FRAME_S)
        self._clips: list[Clip] = []
        self._start: float | None = None
        self._timestamp = 0
        self.frames_sent = 0

    def play(self, pcm: bytes) -> Clip:
        """Queue ``pcm`` (PCM16 mono at the microphone's rate) after any queued clip."""
        clip = Clip(pcm)
        self._clips.append(clip)
        return clip

    async def recv(self) -> AudioFrame:
        """The next 20 ms frame, no earlier than its real-time due time."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            self._timestamp += self._samples
            wait = self._start + self._timestamp / self._rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        nbytes = 2 * self._samples
        chunk = b""
        if self._clips:
            clip = self._clips[0]
            if clip.started_at is None:
                clip.started_at = time.monotonic()
            chunk = clip.pcm[clip._sent : clip._sent + nbytes]
            clip._sent += len(chunk)
            if clip._sent >= len(clip.pcm):
                clip.ended_at = time.monotonic()
                clip.done.set()
                self._clips.pop(0)
        chunk = chunk.ljust(nbytes, b"\0")
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(chunk)
        frame.pts = self._timestamp
        frame.sample_rate = self._rate
        frame.time_base = fractions.Fraction(1, self._rate)
        self.frames_sent += 1
        return frame


@dataclass(frozen=True, slots=True)
class Heard:
    """One received frame of the bot's voice.

    Parameters:
        t: ``time.monotonic()`` when it was received.
        seconds: Its duration.
        peak: Its peak absolute sample value (PCM16).
    """

    t: float
    seconds: float
    peak: int

    @property
    def audible(self) -> bool:
        return self.peak > AUDIBLE_PEAK


class Loudspeaker:
    """Reads the bot's audio track for as long as it lives and records what it heard."""

    def __init__(self) -> None:
        self.frames: list[Heard] = []
        self.sample_rates: set[int] = set()
        self._task: asyncio.Task | None = None

    def attach(self, track: MediaStreamTrack) -> None:
        """Start reading ``track`` (the remote audio track)."""
        self._task = asyncio.create_task(self._read(track), name="loudspeaker")

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                samples = frame.to_ndarray()
                self.sample_rates.add(frame.sample_rate)
                self.frames.append(
                    Heard(
                        time.monotonic(),
                        frame.samples / frame.sample_rate,
                        int(np.abs(samples.astype(np.int32)).max()) if samples.size else 0,
                    )
                )

    @property
    def attached(self) -> bool:
        return self._task is not None

    def audible_seconds(self, since: float = 0.0) -> float:
        """Seconds of audible bot audio received after ``since``."""
        return sum(h.seconds for h in list(self.frames) if h.t >= since and h.audible)

    def first_audible_at(self, since: float = 0.0) -> float | None:
        """When the first audible frame after ``since`` arrived (None: not yet)."""
        return next((h.t for h in list(self.frames) if h.t >= since and h.audible), None)

    def last_audible_at(self) -> float | None:
        """When the latest audible frame arrived (None: never)."""
        return next((h.t for h in reversed(list(self.frames)) if h.audible), None)

    def quiet_for(self, seconds: float) -> bool:
        """Whether frames keep arriving and none was audible in the last ``seconds``."""
        if not self.frames:
            return False
        now = time.monotonic()
        last = self.last_audible_at()
        return self.frames[-1].t > now - 0.5 and (last is None or now - last >= seconds)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class SmallWebRTCClient:
    """Connects to a Pipecat dev runner the way its prebuilt browser UI does.

    Args:
        base_url: The runner, e.g. ``http://localhost:7860``.
        microphone: The track to send as the microphone.
        start_path / start_body / headers: The session start request (default: the
            prebuilt UI's ``POST /start``; ``backtalk serve``: ``/api/sessions`` with
            ``{"videos": [...]}`` and an ``Authorization`` header).

    Attributes:
        start_response: JSON answer of ``POST /start``.
        offer_request / answer: JSON of the SDP offer sent and the answer received.
        messages: ``(time.monotonic(), parsed JSON)`` of each data-channel message received.
        loudspeaker: What the bot said.
    """

    def __init__(
        self,
        base_url: str,
        microphone: Microphone,
        *,
        start_path: str = "/start",
        start_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.start_path = start_path
        self.start_body = start_body
        self.headers = headers or {}
        self.microphone = microphone
        self.loudspeaker = Loudspeaker()
        self.pc = RTCPeerConnection()
        self.start_response: dict[str, Any] | None = None
        self.offer_request: dict[str, Any] | None = None
        self.answer: dict[str, Any] | None = None
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.channel_open = asyncio.Event()
        self.channel = None
        self._ping_task: asyncio.Task | None = None

    @property
    def pc_id(self) -> str | None:
        return self.answer["pc_id"] if self.answer else None

    def rtvi_messages(self, type_: str, since: float = 0.0) -> list[tuple[float, dict[str, Any]]]:
        """``(time, message)`` of RTVI messages of one type the bot sent after ``since``
        (``bot-ready``, ``user-stopped-speaking``, ``user-transcription``...)."""
        return [
            (t, m)
            for t, m in list(self.messages)
            if t >= since and m.get("label") == "rtvi-ai" and m.get("type") == type_
        ]

    def send_client_message(self, type_: str, data: dict[str, Any]) -> None:
        """Send an RTVI ``client-message`` (what ``client.sendClientMessage`` does in JS)."""
        assert self.channel is not None and self.channel.readyState == "open"
        self.channel.send(
            json.dumps(
                {
                    "id": str(uuid.uuid4())[:8],
                    "label": "rtvi-ai",
                    "type": "client-message",
                    "data": {"t": type_, "d": data},
                }
            )
        )

    async def connect(self, *, timeout_s: float = 30.0, session_id: str | None = None) -> None:
        """Start a session (or join ``session_id``, already started), negotiate, and wait
        until the peer connection is connected."""
        pc = self.pc
        pc.addTransceiver(self.microphone, direction="sendrecv")
        pc.addTransceiver("video", direction="sendrecv")
        channel = pc.createDataChannel("chat", ordered=True)
        self.channel = channel

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not self.loudspeaker.attached:
                self.loudspeaker.attach(track)

        @channel.on("open")
        def on_open() -> None:
            self.channel_open.set()
            self._ping_task = asyncio.create_task(self._ping(channel), name="dc-ping")
            channel.send(
                json.dumps(
                    {
                        "id": str(uuid.uuid4())[:8],
                        "label": "rtvi-ai",
                        "type": "client-ready",
                        "data": {
                            "version": RTVI_CLIENT_VERSION,
                            "about": {"library": "backtalk-tests", "platform": "python"},
                        },
                    }
                )
            )

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            with contextlib.suppress(ValueError, TypeError):
                self.messages.append((time.monotonic(), json.loads(message)))

        await pc.setLocalDescription(await pc.createOffer())  # gathers host candidates
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s), headers=self.headers
        ) as http:
            # What the prebuilt UI posts (it also asks for Google's STUN server, which a
            # loopback test without network cannot use).
            if session_id is None:
                async with http.post(
                    f"{self.base_url}{self.start_path}",
                    json=self.start_body
                    or {
                        "createDailyRoom": False,
                        "enableDefaultIceServers": False,
                        "transport": "webrtc",
                    },
                ) as r:
                    r.raise_for_status()
                    self.start_response = await r.json()
                session_id = self.start_response["sessionId"]
            self.offer_request = {
                "sdp": pc.localDescription.sdp,
                "type": pc.localDescription.type,
                "pc_id": None,
                "restart_pc": False,
            }
            async with http.post(
                f"{self.base_url}/sessions/{session_id}/api/offer", json=self.offer_request
            ) as r:
                r.raise_for_status()
                self.answer = await r.json()
        await pc.setRemoteDescription(
            RTCSessionDescription(sdp=self.answer["sdp"], type=self.answer["type"])
        )
        deadline = time.monotonic() + timeout_s
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
                raise ConnectionError(f"peer connection {pc.connectionState}")
            await asyncio.sleep(0.02)

    async def _ping(self, channel) -> None:
        while channel.readyState == "open":
            channel.send(f"ping: {int(time.time() * 1000)}")
            await asyncio.sleep(PING_INTERVAL_S)

    async def close(self) -> None:
        """Hang up (like closing the browser tab) and stop reading."""
        if self._ping_task is not None:
            self._ping_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ping_task
        await self.pc.close()
        await self.loudspeaker.stop()
