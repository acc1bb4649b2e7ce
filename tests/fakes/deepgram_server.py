"""A fake Deepgram server: a test double speaking the real websocket wire protocols.

One server serves both websockets, like ``api.deepgram.com``:

* ``/v1/listen`` (nova streaming STT, used by ``DeepgramSTTService`` through the
  deepgram-sdk): a *scripted recogniser*. It cannot recognise speech; it detects
  speech by loudness and transcribes each utterance as the next text queued with
  :meth:`FakeDeepgram.queue_transcript`.
* ``/v2/listen`` (Flux conversational STT, used by ``DeepgramFluxSTTService`` and the
  deepgram-sdk's ``listen.v2``): the same scripted recogniser, speaking Flux's
  turn-based protocol (``Connected``, then ``TurnInfo`` messages whose ``event`` is
  ``StartOfTurn``, ``Update``, ``EagerEndOfTurn``, ``TurnResumed`` or ``EndOfTurn``),
  following Deepgram's documented Flux state machine; see :class:`_FluxRecogniser`.
* ``/v1/speak`` (Aura streaming TTS, used by ``DeepgramTTSService``): answers each
  ``Speak`` with a PCM16 sine tone whose length is proportional to the text.

Example::

    with FakeDeepgram(transcripts=["what is a learning rate"]) as dg:
        stt = DeepgramSTTService(api_key="dg-test", base_url=dg.base_url)
        flux = DeepgramFluxSTTService(api_key="dg-test", url=f"{dg.base_url}/v2/listen")
        tts = DeepgramTTSService(api_key="dg-test", base_url=dg.base_url)
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from ._thread_server import ThreadedAiohttpServer

#: Length, in seconds, of the analysis window of the recogniser.
WINDOW_S = 0.02
#: Deepgram's close reason for an idle listen socket (docs: "Recovering From Connection
#: Errors & Timeouts When Live Streaming Audio").
NET_0001 = "NET-0001: did not receive audio data or a text message within the timeout window"
#: Seconds of trailing silence after which an utterance ends without a Finalize,
#: unless the client passes ``endpointing`` (ms, or ``false``) in the query.
DEFAULT_ENDPOINTING_S = 0.8
#: Speaking rate, in words per second, used to grow interim transcripts.
WORDS_PER_S = 2.5
#: Seconds of audio between Flux ``Update`` messages ("approximately every 0.25 seconds
#: of transcribed audio", https://developers.deepgram.com/docs/flux/state).
FLUX_UPDATE_S = 0.25
#: Flux's defaults for ``eot_threshold`` and ``eot_timeout_ms`` (Pipecat's
#: ``DeepgramFluxSTTSettings`` documents the same values).
DEFAULT_EOT_THRESHOLD = 0.7
DEFAULT_EOT_TIMEOUT_MS = 5000
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
    """Fake Deepgram ``/v1/listen``, ``/v2/listen`` and ``/v1/speak`` websockets (a loopback
    test double).

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
        flux_eager_eot_delay_s: Flux: seconds of silence after speech before
            ``EagerEndOfTurn`` (when the client sets ``eager_eot_threshold``); also the
            pause that ends a segment of speech (see :class:`_FluxRecogniser`).
        flux_eot_delay_s: Flux: seconds of silence after speech before ``EndOfTurn``.

    The Flux delays are measured from the end of speech, in audio received. Deepgram
    does not publish one median for either; its Flux quickstart quotes "~260ms
    end-of-turn detection", and third-party Flux documentation (Telnyx) says an eager
    end of turn at thresholds 0.3-0.5 saves "~150-250 ms" over waiting for
    ``EndOfTurn``. The defaults (0.25 s and 0.45 s) put ``EagerEndOfTurn`` 0.2 s
    before ``EndOfTurn``.

    Attributes:
        base_url: ``"ws://127.0.0.1:PORT"``, for ``base_url=`` of both Pipecat services.

    Recorded state is exposed as read-only properties returning copies taken under a
    lock (safe to read from any thread): ``listen_connections``, ``speak_connections``,
    ``listen_queries``, ``listen_control``, ``listen_log``, ``audio_bytes_received``,
    ``speak_messages``, ``spoken_texts``, ``auth_headers``, ``extension_offers``, ``clears``,
    ``unscripted_utterances`` and ``pending_transcripts``; for ``/v2/listen``:
    ``flux_connections``, ``flux_queries``, ``flux_control``, ``flux_sent``,
    ``flux_audio_bytes_received`` and ``flux_audio_messages``.

    Faults (none by default; ``path`` is ``"/v1/listen"``, ``"/v2/listen"`` or
    ``"/v1/speak"``): :meth:`drop` closes the open sockets of a path now, or after
    their next N messages, with a close code (1011) or with none at all (1006: the
    TCP connection is aborted); :meth:`refuse` answers the next N handshakes with
    HTTP 401 (or another status) and Deepgram's ``dg-error`` header; :meth:`flap`
    accepts the next N connections and closes them (1011) T seconds later.
    :meth:`connection_attempts` counts handshakes per path, refused ones included.
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
        flux_eager_eot_delay_s: float = 0.25,
        flux_eot_delay_s: float = 0.45,
        listen_idle_close_s: float | None = None,
    ) -> None:
        super().__init__()
        #: Deepgram's NET-0001 rule on /v1/listen: a socket that receives neither audio
        #: nor a text message (KeepAlive) for this long is closed with 1011 (Deepgram:
        #: 10 s). None: never.
        self.listen_idle_close_s = listen_idle_close_s
        self.final_delay_s = final_delay_s
        self.tts_first_audio_s = tts_first_audio_s
        self.tts_secs_per_char = tts_secs_per_char
        self.speech_rms_threshold = speech_rms_threshold
        self.interim_every_s = interim_every_s
        self.flux_eager_eot_delay_s = flux_eager_eot_delay_s
        self.flux_eot_delay_s = flux_eot_delay_s
        self._transcripts: deque[str] = deque(transcripts)
        self._sockets: set[web.WebSocketResponse] = set()
        #: Open sockets by path, each with the messages it may still receive before
        #: it is dropped (None: no drop armed) and the close code to drop it with.
        self._open_sockets: dict[web.WebSocketResponse, list] = {}
        self._refusals: dict[str | None, list] = {}  # path (None: any) -> [n, status]
        self._flaps: dict[str | None, list] = {}  # path (None: any) -> [n, after_s]
        self._fault_tasks: set[asyncio.Task] = set()
        self._reset_records()

    def _reset_records(self) -> None:
        self._listen_connections = 0
        self._speak_connections = 0
        self._listen_queries: list[dict] = []
        self._listen_control: list[dict] = []
        self._audio_bytes_received = 0
        self._listen_log: list[tuple[str, int | str]] = []
        self._speak_messages: list[dict] = []
        self._spoken_texts: list[str] = []
        self._auth_headers: list[str] = []
        self._extension_offers: list[tuple[str, str]] = []
        self._clears = 0
        self._unscripted_utterances = 0
        self._flux_connections = 0
        self._flux_queries: list[dict] = []
        self._flux_control: list[dict] = []
        self._flux_sent: list[dict] = []
        self._flux_audio_messages: list[int] = []
        self._attempts: dict[str, int] = {}
        self._idle_closes = 0

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

    def connection_attempts(self, path: str) -> int:
        """Websocket handshakes attempted on ``path``, refused ones included."""
        with self._lock:
            return self._attempts.get(path, 0)

    def open_sockets(self, path: str | None = None) -> int:
        """Websockets open now (on ``path``, or on any): accepted and not yet closed."""
        with self._lock:
            return sum(1 for state in self._open_sockets.values() if path in (None, state[0]))

    def refuse(self, n: int = 1, *, status: int = 401, path: str | None = None) -> None:
        """Refuse the next ``n`` handshakes (on ``path``, or on any) with HTTP ``status``
        (401 or 403) and a ``dg-error`` header, as Deepgram does."""
        with self._lock:
            self._refusals[path] = [n, status]

    def flap(self, n: int = 1, *, after_s: float = 0.2, path: str | None = None) -> None:
        """Accept the next ``n`` connections (on ``path``, or any), then close each
        with 1011 ``after_s`` seconds later."""
        with self._lock:
            self._flaps[path] = [n, after_s]

    def drop(self, path: str, *, code: int = 1011, after_messages: int = 0) -> int:
        """Drop the open sockets of ``path``: now, or once each has received
        ``after_messages`` more messages. ``code`` 1006 aborts the TCP connection
        without a close frame (what a network failure looks like); any other code
        is sent in a close frame. Returns how many sockets were armed or dropped."""
        with self._lock:
            targets = [ws for ws, state in self._open_sockets.items() if state[0] == path]
            for ws in targets:
                self._open_sockets[ws][1:3] = [after_messages, code]
        if after_messages == 0 and self._loop is not None:
            # Not waited for: the close handshake needs the client's loop, which may
            # be the caller's.
            for ws in targets:
                asyncio.run_coroutine_threadsafe(self._close(ws, code), self._loop)
        return len(targets)

    async def _close(self, ws: web.WebSocketResponse, code: int) -> None:
        with self._lock:
            state = self._open_sockets.get(ws)
        if state is None:
            return
        if code == 1006:
            transport = state[3].transport
            if transport is not None:
                transport.abort()
        else:
            await ws.close(code=code, message=b"fake fault")

    def _close_later(self, ws: web.WebSocketResponse, after_s: float) -> None:
        async def close() -> None:
            await asyncio.sleep(after_s)
            await self._close(ws, 1011)

        task = asyncio.create_task(close())
        self._fault_tasks.add(task)
        task.add_done_callback(self._fault_tasks.discard)

    def _forget(self, ws: web.WebSocketResponse) -> None:
        self._sockets.discard(ws)
        with self._lock:
            self._open_sockets.pop(ws, None)

    async def _count_message(self, ws: web.WebSocketResponse) -> bool:
        """Count a message received on ``ws``; drop it if a drop is due. True if dropped."""
        with self._lock:
            state = self._open_sockets.get(ws)
            if state is None or state[1] is None:
                return False
            state[1] -= 1
            due, code = state[1] <= 0, state[2]
        if due:
            await self._close(ws, code)
        return due

    def _take_fault(self, faults: dict[str | None, list], path: str) -> list | None:
        for key in (path, None):
            fault = faults.get(key)
            if fault and fault[0] > 0:
                fault[0] -= 1
                return fault
        return None

    pending_transcripts = _recorded("_transcripts", "Queued transcripts not yet used.")
    listen_connections = _recorded("_listen_connections", "Accepted /v1/listen sockets.")
    idle_closes = _recorded("_idle_closes", "/v1/listen sockets closed for NET-0001 (idle).")
    speak_connections = _recorded("_speak_connections", "Accepted /v1/speak sockets.")
    listen_queries = _recorded(
        "_listen_queries",
        "Query parameters of each /v1/listen connection (a repeated key maps to a list).",
    )
    listen_control = _recorded(
        "_listen_control", "JSON messages received on /v1/listen (Finalize, KeepAlive, ...)."
    )
    audio_bytes_received = _recorded("_audio_bytes_received", "Audio bytes on /v1/listen.")
    listen_log = _recorded(
        "_listen_log",
        "/v1/listen messages in arrival order: ('audio', bytes) or ('control', type).",
    )
    speak_messages = _recorded(
        "_speak_messages", "JSON messages received on /v1/speak (Speak, Flush, Clear, Close)."
    )
    spoken_texts = _recorded("_spoken_texts", "Text of every Speak message, in order.")
    auth_headers = _recorded(
        "_auth_headers", "Authorization header of every websocket attempt ('' if missing)."
    )
    extension_offers = _recorded(
        "_extension_offers",
        "(path, Sec-WebSocket-Extensions header) of every websocket attempt ('' if none).",
    )
    clears = _recorded("_clears", "Clear messages received on /v1/speak.")
    unscripted_utterances = _recorded(
        "_unscripted_utterances",
        "Utterances that ended while no transcript was queued (transcribed as '').",
    )

    flux_connections = _recorded("_flux_connections", "Accepted /v2/listen sockets.")
    flux_queries = _recorded(
        "_flux_queries",
        "Query parameters of each /v2/listen connection (a repeated key maps to a list).",
    )
    flux_control = _recorded(
        "_flux_control",
        "JSON messages received on /v2/listen (CloseStream, Configure, ForceEndTurn, ...).",
    )
    flux_sent = _recorded(
        "_flux_sent",
        "JSON messages sent on /v2/listen (Connected, TurnInfo, ...), in order, all sockets.",
    )
    flux_audio_messages = _recorded(
        "_flux_audio_messages", "Size in bytes of each audio message on /v2/listen, in order."
    )

    @property
    def flux_audio_bytes_received(self) -> int:
        """Audio bytes on /v2/listen."""
        return sum(self.flux_audio_messages)

    def flux_events(self) -> list[tuple[str, str]]:
        """``(event, transcript)`` of every ``TurnInfo`` sent on ``/v2/listen``, in order,
        leaving out ``Update``\\ s with an empty transcript (those between turns)."""
        return [
            (m["event"], m["transcript"])
            for m in self.flux_sent
            if m["type"] == "TurnInfo" and (m["event"] != "Update" or m["transcript"])
        ]

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
        app.router.add_get("/v2/listen", self._flux)
        app.router.add_get("/v1/speak", self._speak)
        return app

    async def _on_shutdown(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutdown")

    async def _open(self, request: web.Request) -> web.WebSocketResponse:
        """Check ``Authorization: Token <key>`` and complete the websocket handshake."""
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self._attempts[request.path] = self._attempts.get(request.path, 0) + 1
            refusal = self._take_fault(self._refusals, request.path)
            flap = self._take_fault(self._flaps, request.path)
            self._auth_headers.append(auth)
            self._extension_offers.append(
                (request.path, request.headers.get("Sec-WebSocket-Extensions", ""))
            )
        scheme, _, key = auth.partition(" ")
        if refusal is not None or scheme not in ("Token", "Bearer") or not key.strip():
            status = refusal[1] if refusal is not None else 401
            body = {
                "err_code": "INVALID_AUTH" if status == 401 else "FORBIDDEN",
                "err_msg": "Invalid credentials." if status == 401 else "Forbidden.",
                "request_id": str(uuid.uuid4()),
            }
            # An injected refusal also carries Deepgram's reason header.
            headers = {"dg-error": body["err_msg"]} if refusal is not None else None
            error = web.HTTPUnauthorized if status == 401 else web.HTTPForbidden
            raise error(text=json.dumps(body), content_type="application/json", headers=headers)
        ws = web.WebSocketResponse(timeout=1.0)
        await ws.prepare(request)
        self._sockets.add(ws)
        with self._lock:
            self._open_sockets[ws] = [request.path, None, 1011, request]
        if flap is not None:
            self._close_later(ws, flap[1])
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
            while True:
                try:
                    msg = await ws.receive(timeout=self.listen_idle_close_s)
                except TimeoutError:
                    with self._lock:
                        self._idle_closes += 1
                    await ws.close(code=1011, message=NET_0001.encode())
                    break
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                    break
                if await self._count_message(ws):
                    break
                if msg.type == WSMsgType.BINARY:
                    with self._lock:
                        self._audio_bytes_received += len(msg.data)
                        self._listen_log.append(("audio", len(msg.data)))
                    for result in recogniser.feed(msg.data):
                        await _send(ws, result)
                elif msg.type == WSMsgType.TEXT:
                    control = json.loads(msg.data)
                    with self._lock:
                        self._listen_control.append(control)
                        self._listen_log.append(("control", str(control.get("type"))))
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
            self._forget(ws)
        return ws

    async def _flux(self, request: web.Request) -> web.WebSocketResponse:
        ws = await self._open(request)
        query = _query_dict(request)
        with self._lock:
            self._flux_connections += 1
            self._flux_queries.append(query)
        recogniser = _FluxRecogniser(self, query)

        async def send(messages: list[dict[str, Any]]) -> None:
            for message in messages:
                with self._lock:
                    self._flux_sent.append(message)
                await _send(ws, message)

        try:
            await send([recogniser.connected()])
            async for msg in ws:
                if await self._count_message(ws):
                    break
                if msg.type == WSMsgType.BINARY:
                    with self._lock:
                        self._flux_audio_messages.append(len(msg.data))
                    await send(recogniser.feed(msg.data))
                    continue
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    control = json.loads(msg.data)
                    kind = control.get("type") if isinstance(control, dict) else None
                except json.JSONDecodeError:
                    control, kind = {"unparsable": msg.data}, None
                with self._lock:
                    self._flux_control.append(control)
                if kind == "CloseStream":
                    # Flux decodes the audio received, sends its Updates, and closes:
                    # no EndOfTurn, no metadata (developers.deepgram.com/docs/flux/close-stream).
                    # (Flux closes without a status code; aiohttp always sends one: 1000.)
                    await send(recogniser.close_stream())
                    await ws.close()
                    break
                if kind == "Configure":
                    await send([recogniser.configure(control)])
                elif kind == "ForceEndTurn":
                    await send(recogniser.force_end_turn())
                else:  # e.g. Nova's KeepAlive/Finalize: not part of the Flux protocol
                    await send([recogniser.error(f"Unknown or unparsable message: {msg.data}")])
                    await ws.close()
                    break
        finally:
            self._forget(ws)
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
                if await self._count_message(ws):
                    break
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
            self._forget(ws)
        return ws


class _SpeechWindows:
    """Cuts a connection's PCM16 audio into 20 ms windows and tells which are speech.

    Shared by both recognisers: a window is speech when its RMS level is above
    ``speech_rms_threshold``. Time is measured in seconds of audio received, not
    wall-clock time.
    """

    def __init__(self, fake: FakeDeepgram, query: dict[str, Any]) -> None:
        self._fake = fake
        sample_rate = int(query.get("sample_rate", 16000))
        channels = int(query.get("channels", 1))
        self._window_bytes = max(2, round(sample_rate * WINDOW_S)) * 2 * channels
        self._buffer = bytearray()
        self.stream_s = 0.0  # audio received on this connection, seconds

    def feed(self, data: bytes) -> Iterator[bool]:
        """Consume audio; yield, per complete window, whether it is speech.

        ``stream_s`` is already advanced past the window when it is yielded.
        """
        self._buffer += data
        while len(self._buffer) >= self._window_bytes:
            window = np.frombuffer(self._buffer[: self._window_bytes], dtype="<i2")
            del self._buffer[: self._window_bytes]
            self.stream_s += WINDOW_S
            rms = float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))
            yield rms > self._fake.speech_rms_threshold


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
        self._windows = _SpeechWindows(fake, query)
        self._reset_utterance()

    @property
    def _stream_s(self) -> float:
        return self._windows.stream_s

    def _reset_utterance(self) -> None:
        self._in_progress = False
        self._start_s = self._stream_s
        self._speech_s = 0.0
        self._silence_s = 0.0
        self._since_interim_s = 0.0

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Consume PCM16 audio; return the results to send."""
        out = []
        for loud in self._windows.feed(data):
            if loud:
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
                # Words *finished* so far; an interim never holds the whole utterance.
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


class _FluxRecogniser:
    """Per-connection state of the scripted Flux recogniser on ``/v2/listen``.

    Follows Deepgram's Flux state machine (https://developers.deepgram.com/docs/flux/state)::

        Initial --StartOfTurn--> TurnOngoing --EagerEndOfTurn--> AwaitingEnd
        AwaitingEnd --TurnResumed--> TurnOngoing;  TurnOngoing|AwaitingEnd --EndOfTurn--> Initial

    * a turn starts (``StartOfTurn``) on the first speech window, with the first word
      of the queued text: Flux guarantees a non-empty StartOfTurn transcript, so speech
      with nothing queued starts no turn (it is counted in ``unscripted_utterances``);
    * ``Update`` every :data:`FLUX_UPDATE_S` of audio, in and between turns (empty
      transcript), unless a state change was sent meanwhile; during speech its
      transcript grows at :data:`WORDS_PER_S` (a prefix of the queued text, never the
      whole of it);
    * a pause of ``flux_eager_eot_delay_s`` ends a *segment* of speech, which takes
      the next queued text; with ``eager_eot_threshold`` set, ``EagerEndOfTurn`` is
      sent then, with the turn's whole transcript;
    * speech after an ``EagerEndOfTurn`` sends ``TurnResumed`` and continues the turn:
      its next segment takes the next queued text, and the turn's transcript is the
      segments' texts joined by spaces;
    * a pause of ``flux_eot_delay_s`` (or ``eot_timeout_ms``, if shorter) sends
      ``EndOfTurn`` with the same transcript as the ``EagerEndOfTurn`` before it, and
      ``turn_index`` increments; ``eot_threshold`` ≥ 1 suppresses this natural end
      (only the timeout or ``ForceEndTurn`` end the turn then).

    Time is measured in seconds of audio received, not wall-clock time.
    """

    def __init__(self, fake: FakeDeepgram, query: dict[str, Any]) -> None:
        self._fake = fake
        self._request_id = str(uuid.uuid4())
        self._sequence_id = 0
        self._model = str(query.get("model", "flux-general-en"))
        hints = query.get("language_hint", [])
        self._language_hints = [hints] if isinstance(hints, str) else list(hints)
        keyterms = query.get("keyterm", [])
        self._keyterms = [keyterms] if isinstance(keyterms, str) else list(keyterms)
        eager = query.get("eager_eot_threshold")
        self.eager_eot_threshold: float | None = float(eager) if eager is not None else None
        self.eot_threshold = float(query.get("eot_threshold", DEFAULT_EOT_THRESHOLD))
        self.eot_timeout_ms = int(query.get("eot_timeout_ms", DEFAULT_EOT_TIMEOUT_MS))
        self._windows = _SpeechWindows(fake, query)
        self._turn_index = 0
        self._turn_start_s = 0.0  # audio_window_start: where the turn's audio began
        self._last_end_s = 0.0  # audio_window_end of the last TurnInfo sent
        self._since_update_s = 0.0
        self._new_turn()

    @property
    def _stream_s(self) -> float:
        return self._windows.stream_s

    def _new_turn(self) -> None:
        self._state = "Initial"  # or "TurnOngoing", "AwaitingEnd"
        self._segments: list[tuple[str, float, float]] = []  # (text, start_s, end_s)
        self._speaking = False  # a segment is open (speech, no long pause since)
        self._segment_start_s = 0.0
        self._speech_s = 0.0  # speech in the open segment
        self._silence_s = 0.0  # since the last speech window

    # -- timing -------------------------------------------------------------------------

    def _delays(self) -> tuple[float, float, str]:
        """(pause ending a segment, pause ending the turn, EndOfTurn trigger)."""
        timeout_s = self.eot_timeout_ms / 1000
        model_s = self._fake.flux_eot_delay_s if self.eot_threshold < 1.0 else float("inf")
        eot_s, trigger = (model_s, "model") if model_s <= timeout_s else (timeout_s, "timeout")
        return min(self._fake.flux_eager_eot_delay_s, eot_s), eot_s, trigger

    def _confidence(self) -> float:
        """``end_of_turn_confidence``: low while speaking, rising with the pause so
        that it crosses ``eager_eot_threshold`` at the eager delay and
        ``eot_threshold`` at the end-of-turn delay."""
        if self._state == "Initial" and not self._speaking:
            return 0.01
        eager_s, eot_s = self._fake.flux_eager_eot_delay_s, self._fake.flux_eot_delay_s
        eot = min(self.eot_threshold, 0.99)
        eager = min(self.eager_eot_threshold or eot / 2, eot)
        s = self._silence_s
        if s <= eager_s:
            value = 0.01 + (eager - 0.01) * s / max(eager_s, 1e-9)
        elif s <= eot_s:
            value = eager + (eot - eager) * (s - eager_s) / max(eot_s - eager_s, 1e-9)
        else:
            value = eot
        return round(min(max(value, 0.01), 0.99), 3)

    # -- transcript ---------------------------------------------------------------------

    def _open_segment_words(self) -> list[str]:
        """Words heard so far of the open segment: words *begun* at WORDS_PER_S (so
        the first comes with the first speech), never the whole text unless it is
        one word."""
        words = self._fake._peek_transcript().split()
        n = min(max(1, len(words) - 1), int(self._speech_s * WORDS_PER_S) + 1)
        return words[:n]

    def _words(self) -> list[dict[str, Any]]:
        out = []
        segments = list(self._segments)
        if self._speaking:
            text = " ".join(self._open_segment_words())
            segments.append((text, self._segment_start_s, self._stream_s))
        for text, start, end in segments:
            words = text.split()
            step = (end - start) / len(words) if words else 0.0
            out += [
                {
                    "word": w,
                    "confidence": 0.99,
                    "start": round(start + i * step, 3),
                    "end": round(start + (i + 1) * step, 3),
                }
                for i, w in enumerate(words)
            ]
        return out

    def _turn_info(self, event: str, **extra: Any) -> dict[str, Any]:
        words = self._words()
        self._last_end_s = self._stream_s
        self._since_update_s = 0.0
        message = {
            "type": "TurnInfo",
            "request_id": self._request_id,
            "sequence_id": self._next_sequence_id(),
            "event": event,
            "turn_index": self._turn_index,
            "audio_window_start": round(self._turn_start_s, 3),
            "audio_window_end": round(self._stream_s, 3),
            "transcript": " ".join(w["word"] for w in words),
            "words": words,
            "end_of_turn_confidence": self._confidence(),
            **extra,
        }
        if self._model == "flux-general-multi":
            message["languages"] = ["en"] if words else []
            if self._language_hints:
                message["languages_hinted"] = self._language_hints
        return message

    def _next_sequence_id(self) -> int:
        sequence_id, self._sequence_id = self._sequence_id, self._sequence_id + 1
        return sequence_id

    # -- events -------------------------------------------------------------------------

    def connected(self) -> dict[str, Any]:
        """The first message of every connection."""
        return {
            "type": "Connected",
            "request_id": self._request_id,
            "sequence_id": self._next_sequence_id(),
        }

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Consume PCM16 audio; return the messages to send."""
        out: list[dict[str, Any]] = []
        for loud in self._windows.feed(data):
            self._since_update_s += WINDOW_S
            sent = len(out)
            if loud:
                self._on_speech(out)
            else:
                self._on_silence(out)
            if len(out) == sent and self._since_update_s >= FLUX_UPDATE_S - 1e-9:
                out.append(self._turn_info("Update"))
        return out

    def _on_speech(self, out: list[dict[str, Any]]) -> None:
        if self._state == "AwaitingEnd":
            self._state = "TurnOngoing"
            out.append(self._turn_info("TurnResumed"))
        if not self._speaking:
            self._speaking = True
            self._segment_start_s = self._stream_s - WINDOW_S
            self._speech_s = 0.0
        self._speech_s += WINDOW_S
        self._silence_s = 0.0
        if self._state == "Initial" and self._open_segment_words():
            self._state = "TurnOngoing"
            out.append(self._turn_info("StartOfTurn"))

    def _on_silence(self, out: list[dict[str, Any]]) -> None:
        if not self._speaking and self._state == "Initial":
            return
        self._silence_s += WINDOW_S
        segment_pause_s, eot_s, trigger = self._delays()
        if self._speaking and self._silence_s >= segment_pause_s - 1e-9:
            self._close_segment()
            if self._state == "Initial" and self._segments:  # queued after speech began
                self._state = "TurnOngoing"
                out.append(self._turn_info("StartOfTurn"))
            if self._state == "Initial":
                return  # speech without words: no turn
            if (
                self.eager_eot_threshold is not None
                and self._state == "TurnOngoing"
                and self._silence_s < eot_s - 1e-9
            ):
                self._state = "AwaitingEnd"
                out.append(self._turn_info("EagerEndOfTurn"))
        if self._state != "Initial" and not self._speaking and self._silence_s >= eot_s - 1e-9:
            out.append(self._end_of_turn(trigger))

    def _close_segment(self) -> None:
        """The open segment ends: it takes the next queued text."""
        self._speaking = False
        text = self._fake._pop_transcript()
        end_s = self._stream_s - self._silence_s
        if text:
            self._segments.append((text, self._segment_start_s, end_s))

    def _end_of_turn(self, trigger: str) -> dict[str, Any]:
        message = self._turn_info("EndOfTurn", trigger=trigger)
        self._turn_index += 1
        self._turn_start_s = self._stream_s
        self._new_turn()
        return message

    # -- control messages ---------------------------------------------------------------

    def force_end_turn(self) -> list[dict[str, Any]]:
        """``ForceEndTurn``: end the turn now on what was heard (nothing if none)."""
        if self._speaking:
            self._close_segment()
        if self._state == "Initial" and not self._segments:
            self._new_turn()
            return []
        out = []
        if self._state == "Initial":
            out.append(self._turn_info("StartOfTurn"))
        out.append(self._end_of_turn("manual"))
        return out

    def configure(self, message: dict[str, Any]) -> dict[str, Any]:
        """``Configure``: apply new thresholds/keyterms; answer ``ConfigureSuccess``."""
        thresholds = message.get("thresholds") or {}
        if "eager_eot_threshold" in thresholds:
            value = thresholds["eager_eot_threshold"]
            self.eager_eot_threshold = float(value) if value is not None else None
        if thresholds.get("eot_threshold") is not None:
            self.eot_threshold = float(thresholds["eot_threshold"])
        if thresholds.get("eot_timeout_ms") is not None:
            self.eot_timeout_ms = int(thresholds["eot_timeout_ms"])
        if "keyterms" in message:
            self._keyterms = list(message["keyterms"] or [])
        reply: dict[str, Any] = {
            "type": "ConfigureSuccess",
            "request_id": self._request_id,
            "sequence_id": self._next_sequence_id(),
            "thresholds": {
                "eager_eot_threshold": self.eager_eot_threshold,
                "eot_threshold": self.eot_threshold,
                "eot_timeout_ms": self.eot_timeout_ms,
            },
            "keyterms": self._keyterms,
        }
        if "numerals" in message:
            reply["numerals"] = message["numerals"]
        if "language_hints" in message:
            self._language_hints = list(message["language_hints"] or [])
            reply["language_hints"] = self._language_hints
        return reply

    def close_stream(self) -> list[dict[str, Any]]:
        """``CloseStream``: an ``Update`` for audio not yet reported; no EndOfTurn."""
        if self._stream_s > self._last_end_s + 1e-9:
            return [self._turn_info("Update")]
        return []

    def error(self, description: str) -> dict[str, Any]:
        """The fatal ``Error`` sent before closing on a message Flux cannot parse."""
        return {
            "type": "Error",
            "sequence_id": self._next_sequence_id(),
            "code": "UNPARSABLE_CLIENT_MESSAGE",
            "description": description,
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
