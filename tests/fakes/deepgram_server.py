"""A fake Deepgram server: a test double speaking the real websocket wire protocols.

One server serves both websockets, like ``api.deepgram.com``:

* ``/v1/listen`` (nova streaming STT, used by ``DeepgramSTTService`` through the
  deepgram-sdk): a *scripted recogniser*. It cannot recognise speech; it detects
  speech by loudness and transcribes each utterance as the next text queued with
  :meth:`FakeDeepgram.queue_transcript`.
* ``/v1/speak`` (Aura streaming TTS, used by ``DeepgramTTSService``): answers each
  ``Speak`` with a PCM16 sine tone whose length is proportional to the text.

Example::

    with FakeDeepgram(transcripts=["what is a learning rate"]) as dg:
        stt = DeepgramSTTService(api_key="dg-test", base_url=dg.base_url)
        tts = DeepgramTTSService(api_key="dg-test", base_url=dg.base_url)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from ._thread_server import ThreadedAiohttpServer

#: Length, in seconds, of the analysis window of the recogniser.
WINDOW_S = 0.02
#: Seconds of trailing silence after which an utterance ends without a Finalize,
#: unless the client passes ``endpointing`` (ms, or ``false``) in the query.
DEFAULT_ENDPOINTING_S = 0.8
#: Speaking rate, in words per second, used to grow interim transcripts.
WORDS_PER_S = 2.5
#: Length, in seconds, of each binary audio message sent by ``/v1/speak``.
TTS_FRAME_S = 0.04
#: Frequency (Hz) and amplitude (PCM16 units) of the synthesised tone.
TTS_TONE_HZ = 220.0
TTS_TONE_AMPLITUDE = 8000

_MODEL_INFO = {"name": "general-nova-3", "version": "2025-01-01.0", "arch": "nova-3"}
_MODEL_UUID = "00000000-0000-4000-8000-000000000003"


def _query_dict(request: web.Request) -> dict[str, Any]:
    """Query parameters; a key given several times maps to a list of values."""
    out: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        out[key] = values[0] if len(values) == 1 else values
    return out


async def _send(ws: web.WebSocketResponse, message: dict[str, Any] | bytes) -> bool:
    """Send JSON or bytes; return False if the client has gone away."""
    try:
        if isinstance(message, bytes):
            await ws.send_bytes(message)
        else:
            await ws.send_str(json.dumps(message))
        return True
    except (ConnectionResetError, RuntimeError):
        return False


def _recorded(name: str, doc: str) -> property:
    """A read-only property giving a copy of ``self.<name>``, taken under the lock."""

    def get(self: FakeDeepgram) -> Any:
        with self._lock:
            value = getattr(self, name)
            return list(value) if isinstance(value, list | deque) else value

    return property(get, doc=doc)


class FakeDeepgram(ThreadedAiohttpServer):
    """Fake Deepgram ``/v1/listen`` and ``/v1/speak`` websockets (a loopback test double).

    Runs in a background thread, so it works from sync tests, async tests and
    benchmarks alike. The timing attributes may be changed while it runs.

    Args:
        transcripts: Texts of the next utterances the recogniser will "hear", in order.
        final_delay_s: Seconds between receiving ``Finalize`` and sending the final result.
        tts_first_audio_s: Seconds before the first audio of each TTS context (the first
            ``Speak`` after connecting, a ``Flush`` or a ``Clear``).
        tts_secs_per_char: Seconds of audio synthesised per character of text.
        speech_rms_threshold: RMS level (PCM16 units) above which a 20 ms window counts
            as speech.
        interim_every_s: Seconds of audio between interim results during an utterance.

    Attributes:
        base_url: ``"ws://127.0.0.1:PORT"``, for ``base_url=`` of both Pipecat services.

    Recorded state is exposed as read-only properties returning copies taken under a
    lock (safe to read from any thread): ``listen_connections``, ``speak_connections``,
    ``listen_queries``, ``listen_control``, ``audio_bytes_received``,
    ``speak_messages``, ``spoken_texts``, ``auth_headers``, ``clears``,
    ``unscripted_utterances`` and ``pending_transcripts``.
    """

    def __init__(
        self,
        *,
        transcripts: Iterable[str] = (),
        final_delay_s: float = 0.0,
        tts_first_audio_s: float = 0.0,
        tts_secs_per_char: float = 0.06,
        speech_rms_threshold: float = 500.0,
        interim_every_s: float = 0.3,
    ) -> None:
        super().__init__()
        self.final_delay_s = final_delay_s
        self.tts_first_audio_s = tts_first_audio_s
        self.tts_secs_per_char = tts_secs_per_char
        self.speech_rms_threshold = speech_rms_threshold
        self.interim_every_s = interim_every_s
        self._transcripts: deque[str] = deque(transcripts)
        self._sockets: set[web.WebSocketResponse] = set()
        self._reset_records()

    def _reset_records(self) -> None:
        self._listen_connections = 0
        self._speak_connections = 0
        self._listen_queries: list[dict] = []
        self._listen_control: list[dict] = []
        self._audio_bytes_received = 0
        self._speak_messages: list[dict] = []
        self._spoken_texts: list[str] = []
        self._auth_headers: list[str] = []
        self._clears = 0
        self._unscripted_utterances = 0

    # -- scripting and recorded state (thread-safe) -------------------------------------

    @property
    def base_url(self) -> str:
        """The websocket base URL, without a path."""
        return f"ws://127.0.0.1:{self.port}"

    def queue_transcript(self, text: str) -> None:
        """Make ``text`` the transcript of the next utterance the recogniser hears."""
        with self._lock:
            self._transcripts.append(text)

    def reset(self) -> None:
        """Forget recorded state and queued transcripts (open connections stay open)."""
        with self._lock:
            self._transcripts.clear()
            self._reset_records()

    pending_transcripts = _recorded("_transcripts", "Queued transcripts not yet used.")
    listen_connections = _recorded("_listen_connections", "Accepted /v1/listen sockets.")
    speak_connections = _recorded("_speak_connections", "Accepted /v1/speak sockets.")
    listen_queries = _recorded(
        "_listen_queries",
        "Query parameters of each /v1/listen connection (a repeated key maps to a list).",
    )
    listen_control = _recorded(
        "_listen_control", "JSON messages received on /v1/listen (Finalize, KeepAlive, ...)."
    )
    audio_bytes_received = _recorded("_audio_bytes_received", "Audio bytes on /v1/listen.")
    speak_messages = _recorded(
        "_speak_messages", "JSON messages received on /v1/speak (Speak, Flush, Clear, Close)."
    )
    spoken_texts = _recorded("_spoken_texts", "Text of every Speak message, in order.")
    auth_headers = _recorded(
        "_auth_headers", "Authorization header of every websocket attempt ('' if missing)."
    )
    clears = _recorded("_clears", "Clear messages received on /v1/speak.")
    unscripted_utterances = _recorded(
        "_unscripted_utterances",
        "Utterances that ended while no transcript was queued (transcribed as '').",
    )

    def _peek_transcript(self) -> str:
        with self._lock:
            return self._transcripts[0] if self._transcripts else ""

    def _pop_transcript(self) -> str:
        with self._lock:
            if self._transcripts:
                return self._transcripts.popleft()
            self._unscripted_utterances += 1
            return ""

    # -- server -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen)
        app.router.add_get("/v1/speak", self._speak)
        return app

    async def _on_shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutdown")

    async def _open(self, request: web.Request) -> web.WebSocketResponse:
        """Check ``Authorization: Token <key>`` and complete the websocket handshake."""
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self._auth_headers.append(auth)
        scheme, _, key = auth.partition(" ")
        if scheme not in ("Token", "Bearer") or not key.strip():
            body = {
                "err_code": "INVALID_AUTH",
                "err_msg": "Invalid credentials.",
                "request_id": str(uuid.uuid4()),
            }
            raise web.HTTPUnauthorized(text=json.dumps(body), content_type="application/json")
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        return ws

    async def _listen(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        query = _query_dict(request)
        with self._lock:
            self._listen_connections += 1
            self._listen_queries.append(query)
        recogniser = _Recogniser(self, query)
        tasks: set[asyncio.Task] = set()

        async def finalize_later() -> None:
            await asyncio.sleep(self.final_delay_s)
            await _send(ws, recogniser.finalize())

        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    with self._lock:
                        self._audio_bytes_received += len(msg.data)
                    for result in recogniser.feed(msg.data):
                        await _send(ws, result)
                elif msg.type == WSMsgType.TEXT:
                    control = json.loads(msg.data)
                    with self._lock:
                        self._listen_control.append(control)
                    kind = control.get("type")
                    if kind == "Finalize":
                        task = asyncio.create_task(finalize_later())
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif kind == "CloseStream":
                        await _send(ws, recogniser.metadata())
                        await ws.close()
                        break
        finally:
            for task in list(tasks):
                task.cancel()
            self._sockets.discard(ws)
        return ws

    async def _speak(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        with self._lock:
            self._speak_connections += 1
        synth = _Synthesiser(self, ws, int(request.query.get("sample_rate", 24000)))
        await _send(
            ws,
            {
                "type": "Metadata",
                "request_id": str(uuid.uuid4()),
                "model_name": request.query.get("model", "aura-2-helena-en"),
                "model_version": "2025-01-01.0",
                "model_uuid": _MODEL_UUID,
            },
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                kind = message.get("type")
                with self._lock:
                    self._speak_messages.append(message)
                    if kind == "Speak":
                        self._spoken_texts.append(message.get("text", ""))
                    elif kind == "Clear":
                        self._clears += 1
                if kind == "Speak":
                    synth.queue.put_nowait(("speak", message.get("text", "")))
                elif kind == "Flush":
                    synth.queue.put_nowait(("flush", None))
                elif kind == "Clear":
                    await synth.clear()
                elif kind == "Close":
                    await ws.close()
                    break
        finally:
            await synth.stop()
            self._sockets.discard(ws)
        return ws


class _Recogniser:
    """Per-connection state of the scripted recogniser on ``/v1/listen``.

    Time is measured in seconds of audio received, not wall-clock time.
    """

    def __init__(self, fake: FakeDeepgram, query: dict[str, Any]) -> None:
        self._fake = fake
        self._request_id = str(uuid.uuid4())
        self._interims = str(query.get("interim_results", "true")).lower() != "false"
        endpointing = str(query.get("endpointing", "")).lower()
        self._endpointing_s: float | None = (
            None
            if endpointing == "false"
            else int(endpointing) / 1000
            if endpointing.isdigit()
            else DEFAULT_ENDPOINTING_S
        )
        sample_rate = int(query.get("sample_rate", 16000))
        channels = int(query.get("channels", 1))
        self._window_bytes = max(2, round(sample_rate * WINDOW_S)) * 2 * channels
        self._buffer = bytearray()
        self._stream_s = 0.0  # audio received on this connection
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self._in_progress = False
        self._start_s = self._stream_s
        self._speech_s = 0.0
        self._silence_s = 0.0
        self._since_interim_s = 0.0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Consume PCM16 audio; return the results to send."""
        self._buffer += data
        out = []
        while len(self._buffer) >= self._window_bytes:
            window = np.frombuffer(self._buffer[: self._window_bytes], dtype="<i2")
            del self._buffer[: self._window_bytes]
            self._stream_s += WINDOW_S
            rms = float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))
            if rms > self._fake.speech_rms_threshold:
                if not self._in_progress:
                    self._reset_utterance()
                    self._in_progress = True
                    self._start_s = self._stream_s - WINDOW_S
                self._speech_s += WINDOW_S
                self._silence_s = 0.0
            elif self._in_progress:
                self._silence_s += WINDOW_S
            if not self._in_progress:
                continue
            self._since_interim_s += WINDOW_S
            if self._endpointing_s is not None and self._silence_s >= self._endpointing_s:
                out.append(self._final(from_finalize=False))
            elif self._interims and self._since_interim_s >= self._fake.interim_every_s:
                self._since_interim_s = 0.0
                words = self._fake._peek_transcript().split()
                n = min(len(words) - 1, int(self._speech_s * WORDS_PER_S))
                if n > 0:
                    out.append(self._results(" ".join(words[:n]), is_final=False))
        return out

    def finalize(self) -> dict[str, Any]:
        """The answer to a ``Finalize`` message."""
        return self._final(from_finalize=True)

    def _final(self, *, from_finalize: bool) -> dict[str, Any]:
        if not self._in_progress:
            return self._results("", is_final=True, from_finalize=from_finalize)
        text = self._fake._pop_transcript()
        result = self._results(text, is_final=True, speech_final=True, from_finalize=from_finalize)
        self._reset_utterance()
        return result

    def _results(
        self,
        text: str,
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> dict[str, Any]:
        start = self._start_s if self._in_progress else self._stream_s
        duration = round(self._stream_s - start, 3)
        words = text.split()
        step = duration / len(words) if words else 0.0
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": duration,
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text,
                        "confidence": 0.99 if words else 0.0,
                        "words": [
                            {
                                "word": w.strip(".,!?;:\"'").lower() or w,
                                "start": round(start + i * step, 3),
                                "end": round(start + (i + 1) * step, 3),
                                "confidence": 0.99,
                                "punctuated_word": w,
                            }
                            for i, w in enumerate(words)
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self._request_id,
                "model_uuid": _MODEL_UUID,
                "model_info": _MODEL_INFO,
            },
        }

    def metadata(self) -> dict[str, Any]:
        """The ``Metadata`` message sent in answer to ``CloseStream``."""
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self._request_id,
            "sha256": "0" * 64,
            "created": datetime.datetime.now(datetime.UTC).isoformat(),
            "duration": round(self._stream_s, 3),
            "channels": 1,
            "models": [_MODEL_UUID],
            "model_info": {_MODEL_UUID: _MODEL_INFO},
        }


class _Synthesiser:
    """Per-connection speech generator on ``/v1/speak``.

    A worker task turns queued ``Speak``/``Flush`` items into audio and ``Flushed``
    messages, so the socket keeps being read (and ``Clear`` handled) meanwhile.
    """

    def __init__(self, fake: FakeDeepgram, ws: web.WebSocketResponse, sample_rate: int) -> None:
        self._fake = fake
        self._ws = ws
        self._sample_rate = sample_rate
        self._samples_sent = 0  # keeps the tone's phase continuous
        self._flushes = 0
        self._clears = 0
        self._new_context = True
        self.queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
        self._worker = asyncio.create_task(self._work())

    async def _work(self) -> None:
        while True:
            kind, text = await self.queue.get()
            if kind == "flush":
                await _send(self._ws, {"type": "Flushed", "sequence_id": self._flushes})
                self._flushes += 1
                self._new_context = True
                continue
            if self._new_context:
                self._new_context = False
                await asyncio.sleep(self._fake.tts_first_audio_s)
            total = round(len(text or "") * self._fake.tts_secs_per_char * self._sample_rate)
            frame = max(1, round(TTS_FRAME_S * self._sample_rate))
            for offset in range(0, total, frame):
                if not await _send(self._ws, self._tone(min(frame, total - offset))):
                    return
                await asyncio.sleep(0)  # let Clear/Close be read between frames

    def _tone(self, n: int) -> bytes:
        t = (self._samples_sent + np.arange(n)) / self._sample_rate
        self._samples_sent += n
        wave = TTS_TONE_AMPLITUDE * np.sin(2 * np.pi * TTS_TONE_HZ * t)
        return wave.astype("<i2").tobytes()

    async def clear(self) -> None:
        """Drop pending text and audio at once, then acknowledge with ``Cleared``."""
        await self.stop()
        self.queue = asyncio.Queue()
        self._new_context = True
        await _send(self._ws, {"type": "Cleared", "sequence_id": self._clears})
        self._clears += 1
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Stop generating."""
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
