"""Service factories: the Pipecat STT, LLM, TTS, VAD and turn strategies, from settings.

Each provider is reached only through Pipecat's own service class, configured from
:class:`~backtalk.config.Settings` (keys, models, voices, and base URLs so that any
OpenAI-compatible server or a local fake can stand in).
"""

from __future__ import annotations

import asyncio
import functools
import json

from loguru import logger
from openai import APITimeoutError
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InterruptionFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.turns.user_start import (
    ExternalUserTurnStartStrategy,
    TranscriptionUserTurnStartStrategy,
    VADUserTurnStartStrategy,
)
from pipecat.turns.user_stop import SpeechTimeoutUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import EagerUserTurnStrategies, UserTurnStrategies
from pipecat.utils.types import assert_given

from backtalk.agent.reconnect import DeepgramKeyHint
from backtalk.agent.turns import (
    BargeInUserTurnStartStrategy,
    OutputAudioGate,
    PrescoringSmartTurnAnalyzer,
    RescoringTurnAnalyzerUserTurnStopStrategy,
    SpeechOnsetVADAnalyzer,
    TranscriptFinalizeFrame,
)
from backtalk.config import Settings
from backtalk.processors.citations import strip_citations

__all__ = [
    "BargeInDeepgramSTTService",
    "BargeInDeepgramTTSService",
    "DirectBodyOpenAILLMService",
    "UncompressedDeepgramFluxSTTService",
    "UncompressedDeepgramTTSService",
    "listen_without_compression",
    "make_llm",
    "make_stt",
    "make_tts",
    "make_turn_strategies",
    "make_vad",
]


#: How long, seconds after the user's speech ends, the turn may wait for the final
#: transcript. Pipecat's default for Deepgram (0.35 s) is close to Nova's median
#: finalisation time (~0.25 s): when a turn has two utterances and the second one's
#: final arrives later than that, the turn ends with only the first one's text and the
#: user's last sentence is dropped (seen in the barge-in tests with a 0.25 s fake
#: finalisation). 1.0 s only matters when the final is late; it costs nothing otherwise.
STT_FINAL_WAIT_S = 1.0


#: The Deepgram SDK's generated ``/v1/listen`` clients (Nova; Pipecat's Flux service
#: opens its own websocket).
_LISTEN_CLIENT_MODULES = ("deepgram.listen.v1.client", "deepgram.listen.v1.raw_client")


def listen_without_compression() -> None:
    """Open Deepgram Nova's listen websocket without permessage-deflate.

    The Deepgram SDK connects with the ``websockets`` library's default, which offers
    permessage-deflate; when the server accepts it, the client zlib-compresses every
    20 ms PCM frame of the microphone, and PCM barely compresses. Measured against a
    server that accepts it: streaming the microphone took 10.1 ms of event-loop CPU per
    second of audio with it and 9.0 ms without (``benchmarks/stt_send.py``; medians of
    five noisy rounds), and a process holding 8-16 conversations used ~5 % less CPU
    (``benchmarks/VOICE.md``, section 4). Pipecat's own audio websockets turn it off
    the same way (``AWSTranscribeSTTService``: ``compression=None``).

    The SDK has no option for it. This wraps the connect function its generated
    listen clients call (the module attribute the SDK's own
    ``deepgram.transport.install_transport`` replaces) to pass ``compression=None``.
    It is process-wide and idempotent, and leaves a custom transport installed with
    ``install_transport`` alone.
    """
    import importlib

    from websockets import connect as asyncio_connect
    from websockets.legacy.client import connect as legacy_connect

    for name in _LISTEN_CLIENT_MODULES:
        module = importlib.import_module(name)
        connect = getattr(module, "websockets_client_connect", None)
        if connect is legacy_connect or connect is asyncio_connect:
            module.websockets_client_connect = functools.partial(connect, compression=None)


class _UncompressedWebsocket:
    """For Pipecat ``WebsocketService`` subclasses: connect without permessage-deflate.

    Audio travels these sockets as raw PCM, which barely compresses: with compression
    negotiated, one side deflates and the other inflates every message for nothing.
    """

    async def _websocket_connect(self, uri: str, **kwargs):
        kwargs.setdefault("compression", None)
        return await super()._websocket_connect(uri, **kwargs)  # type: ignore[misc]


class UncompressedDeepgramFluxSTTService(
    DeepgramKeyHint, _UncompressedWebsocket, DeepgramFluxSTTService
):
    """``DeepgramFluxSTTService`` whose ``/v2/listen`` websocket is not compressed.

    A refused key is also logged naming ``DEEPGRAM_API_KEY`` (:mod:`backtalk.agent.reconnect`).
    """


class UncompressedDeepgramTTSService(_UncompressedWebsocket, DeepgramTTSService):
    """``DeepgramTTSService`` whose ``/v1/speak`` websocket is not compressed."""


class BargeInDeepgramTTSService(DeepgramKeyHint, UncompressedDeepgramTTSService):
    """Deepgram TTS that tells Deepgram to stop (``Clear``) whenever the user cuts the bot off.

    Pipecat sends ``{"type": "Clear"}`` on an interruption only while an audio context
    is still open. Aura synthesises faster than the bot speaks, so by the time a user
    interrupts, the answer's context has usually been flushed (``Flushed`` received)
    and Pipecat sends nothing: measured over WebRTC, no ``Clear`` on any interruption
    (issue 14). This service sends one for every interruption that arrives while the
    bot is speaking and that Pipecat did not already clear, so Deepgram drops any text
    or audio still in flight (a ``Speak`` sent just before) and answers ``Cleared``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._bot_speaking = False
        self._cleared = False
        #: ``Clear`` messages this service added to Pipecat's.
        self.extra_clears = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Follow the bot's speech; after Pipecat's interruption handling, clear if it did not."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, InterruptionFrame):
            self._cleared = False
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame) and self._bot_speaking and not self._cleared:
            await self._send_clear()

    async def on_audio_context_interrupted(self, context_id: str):
        """Pipecat's own ``Clear`` (an audio context was still open)."""
        self._cleared = True
        await super().on_audio_context_interrupted(context_id)

    async def _send_clear(self) -> None:
        if not self._websocket:
            return
        try:
            await self._websocket.send(json.dumps({"type": "Clear"}))
            self.extra_clears += 1
        except Exception as e:  # the socket closing mid-interruption: nothing to clear
            logger.warning(f"{self}: could not send Clear ({type(e).__name__})")


class BargeInDeepgramSTTService(DeepgramKeyHint, DeepgramSTTService):
    """Deepgram Nova that also finalizes on :class:`~backtalk.agent.turns.TranscriptFinalizeFrame`.

    Pipecat's service sends Deepgram's ``Finalize`` when the VAD reports the user
    stopped (0.2 s after the last sound). While the bot speaks, Backtalk's barge-in
    decision asks for it after 0.1 s of quiet instead: a "yeah" is then known for a
    backchannel, and the bot resumes, 0.1 s sooner. The request is the same one
    Pipecat makes (``request_finalize`` then ``send_finalize``), so the final comes back
    marked finalized; a later VAD stop's ``Finalize`` finds nothing left and is answered
    with an empty result, which Pipecat ignores.

    Reconnecting after a dropped socket, and giving up on a refused key or a flapping
    socket, are Pipecat's (:mod:`backtalk.agent.reconnect`); a refused key is also
    logged naming ``DEEPGRAM_API_KEY`` (:class:`~backtalk.agent.reconnect.DeepgramKeyHint`).
    """

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Finalize on request; everything else as Pipecat's Deepgram service does."""
        if isinstance(frame, TranscriptFinalizeFrame):
            if self._connection:
                from deepgram.listen.v1.types import ListenV1Finalize

                self.request_finalize()
                await self._connection.send_finalize(ListenV1Finalize(type="Finalize"))
            return
        await super().process_frame(frame, direction)


def _deepgram(settings: Settings, backup: bool) -> tuple[str, str | None]:
    """Deepgram's key and base URL, or the backup's (falling back to the first's key)."""
    key = settings.secret("deepgram_api_key") or ""
    if not backup:
        return key, settings.deepgram_base_url
    return settings.secret("backup_deepgram_api_key") or key, settings.backup_deepgram_base_url


def make_stt(settings: Settings, *, backup: bool = False) -> STTService:
    """Deepgram streaming STT with interim results.

    ``stt_service == "deepgram"``: Nova (``/v1/listen``); Backtalk's own turn
    strategies decide when the user is done. ``"deepgram_flux"``: Flux
    (``/v2/listen``) with eager end-of-turn, so the RAG processor retrieves on the
    speculative turn and drops it if the user resumes; Flux then also decides turn
    ends (its recommended strategies apply). ``BACKTALK_DEEPGRAM_BASE_URL`` (e.g.
    ``ws://127.0.0.1:8080``) replaces Deepgram's endpoint for both. Neither audio
    websocket is compressed (:func:`listen_without_compression`,
    :class:`UncompressedDeepgramFluxSTTService`). Nova is
    :class:`BargeInDeepgramSTTService`: it also finalizes when the barge-in decision
    asks (:class:`~backtalk.agent.turns.TranscriptFinalizeFrame`). ``backup``: the
    same with ``BACKTALK_BACKUP_DEEPGRAM_API_KEY`` / ``_BASE_URL``.
    """
    key, base_url = _deepgram(settings, backup)
    if settings.stt_service == "deepgram_flux":
        base = (base_url or "wss://api.deepgram.com").rstrip("/")
        return UncompressedDeepgramFluxSTTService(
            api_key=key,
            url=f"{base}/v2/listen",
            enable_eager_end_of_turn=True,
        )
    listen_without_compression()
    return BargeInDeepgramSTTService(
        api_key=key,
        base_url=base_url or "",
        ttfs_p99_latency=STT_FINAL_WAIT_S,
        settings=DeepgramSTTService.Settings(
            model=settings.stt_model,
            language=Language(settings.stt_language),
            interim_results=True,
            punctuate=True,
            smart_format=True,
        ),
    )


class DirectBodyOpenAILLMService(OpenAILLMService):
    """``OpenAILLMService``: the request body as-is, a bounded client and first token.

    It sends the messages and tools as the request body as-is, and bounds the
    client's timeout and retries and the wait for the first token (below).

    The ``openai`` SDK walks every request parameter against its TypedDict annotations
    before sending (``openai._utils._transform``); for chat messages that walk renames and
    converts nothing, but it costs ~0.2 ms per message on the event loop, on the turn's
    critical path: 10-18 ms for a 60-message conversation on this machine
    (``benchmarks/results/turn_latency.md``, "llm_request_sent"). The same Stainless-generated
    code and the same workaround (``extra_body``, which the SDK merges into the JSON
    untouched) are described in anthropic-sdk-python issue #1195.

    The request on the wire is the same JSON object: ``messages`` and ``tools`` keep their
    keys and order; any ``extra_body`` from ``Settings.extra`` still wins key by key.

    Bounded (reliability cases R9 and R10):

    * The ``AsyncOpenAI`` client Pipecat creates (:meth:`create_client`) gets
      ``http_timeout_s`` (the SDK's default is 600 s) and ``max_retries``: the SDK
      retries 408/409/429/5xx and connection errors with exponential backoff,
      honouring the server's ``Retry-After``.
    * With ``retry_on_timeout``, ``retry_timeout_secs`` bounds the wait for each
      attempt's first streamed chunk (SDK retries included), and the request is
      re-issued once, as in Pipecat. Pipecat's own bound ends when the response
      headers arrive, so a server that answers 200 and then withholds the tokens was
      waited for as long as the HTTP read timeout, and its re-issued request had no
      bound at all; here a second attempt without a first chunk in time raises
      :class:`TimeoutError`, which Pipecat reports as an ``ErrorFrame`` (see
      :mod:`backtalk.agent.recovery` for what the user hears).

    Args:
        http_timeout_s: The client's HTTP timeout, seconds (connect, and each read
            of the stream). None: the SDK's.
        max_retries: The SDK's retries of one request. None: the SDK's (2).
        **kwargs: As for ``OpenAILLMService`` (``retry_on_timeout``,
            ``retry_timeout_secs``, ``settings``, ...).
    """

    def __init__(
        self, *, http_timeout_s: float | None = None, max_retries: int | None = None, **kwargs
    ):
        # Set first: Pipecat's __init__ calls create_client.
        self._http_timeout_s = http_timeout_s
        self._max_retries = max_retries
        super().__init__(**kwargs)

    def create_client(
        self,
        api_key=None,
        base_url=None,
        organization=None,
        project=None,
        default_headers=None,
        **kwargs,
    ):
        """Pipecat's client (its connection limits), with our timeout and retries."""
        client = super().create_client(
            api_key=api_key,
            base_url=base_url,
            organization=organization,
            project=project,
            default_headers=default_headers,
            **kwargs,
        )
        options: dict = {}
        if self._http_timeout_s is not None:
            options["timeout"] = self._http_timeout_s
        if self._max_retries is not None:
            options["max_retries"] = self._max_retries
        return client.with_options(**options) if options else client

    def build_chat_completion_params(self, params_from_context) -> dict:
        """Pipecat's parameters, with ``messages``/``tools`` moved into ``extra_body``."""
        params = super().build_chat_completion_params(params_from_context)
        moved = {k: params[k] for k in ("messages", "tools") if isinstance(params.get(k), list)}
        if moved:
            params["messages"] = []  # required by the SDK's signature; replaced on merge
            params.pop("tools", None)
            self._merge_extra_body(params, moved)
        return params

    async def get_chat_completions(self, context):
        """The streamed completion, its first chunk within ``retry_timeout_secs``.

        Without ``retry_on_timeout``, Pipecat's. With it: one attempt, re-issued once if
        no chunk arrives in time.

        Raises:
            TimeoutError: the re-issued attempt produced no chunk in time either.
        """
        budget = self._retry_timeout_secs
        if not self._retry_on_timeout or budget is None:
            return await super().get_chat_completions(context)
        try:
            return await asyncio.wait_for(self._started_stream(context), timeout=budget)
        except (TimeoutError, APITimeoutError) as e:
            timed_out = isinstance(e, APITimeoutError)
            why = "the request timed out" if timed_out else f"no first token within {budget:g} s"
            logger.warning(f"{self}: {why}; re-issuing the request")
        try:
            return await asyncio.wait_for(self._started_stream(context), timeout=budget)
        except (TimeoutError, APITimeoutError) as e:
            raise TimeoutError(f"no first token within {budget:g} s, twice") from e

    async def _started_stream(self, context) -> _StartedStream:
        """Send the request (as Pipecat does) and wait for the stream's first chunk."""
        self._log_llm_response(context)
        params_from_context = await self.get_llm_adapter().get_llm_invocation_params(
            context,
            system_instruction=assert_given(self._settings.system_instruction),
            convert_developer_to_user=not self.supports_developer_role,
        )
        params = self.build_chat_completion_params(params_from_context)
        stream = await self._client.chat.completions.create(**params)
        return await _StartedStream.start(stream)


class _StartedStream:
    """A chat completion stream whose first chunk has been read; iterates from it."""

    _END = object()

    def __init__(self, stream, chunks, first):
        self._stream = stream
        self._chunks = chunks
        self._first = first

    @classmethod
    async def start(cls, stream) -> _StartedStream:
        """Read the first chunk of ``stream``; closes it if that fails or is cancelled."""
        chunks = stream.__aiter__()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            first = cls._END
        except BaseException:
            await cls(stream, chunks, cls._END).close()
            raise
        return cls(stream, chunks, first)

    def __aiter__(self):
        return self._iterate()

    async def _iterate(self):
        if self._first is self._END:
            return
        yield self._first
        async for chunk in self._chunks:
            yield chunk

    async def close(self) -> None:
        """Close the SDK's iterator and stream (releases the HTTP connection)."""
        if hasattr(self._chunks, "aclose"):
            await self._chunks.aclose()
        await self._stream.close()


def make_llm(
    settings: Settings, system_instruction: str, *, backup: bool = False
) -> OpenAILLMService:
    """OpenAI chat completions, streaming, bounded in time, tokens and retries.

    The client times out after ``llm_timeout_s`` and retries ``llm_max_retries``
    times (the SDK's backoff, honouring ``Retry-After``); a request without a first
    token in ``llm_first_token_s`` is re-issued once (reliability case R9,
    :class:`DirectBodyOpenAILLMService`).

    Args:
        settings: Model, key, ``OPENAI_BASE_URL``, answer length, timeouts and retries.
        system_instruction: The persona and grounding rules.
        backup: The backup LLM instead (``BACKTALK_BACKUP_LLM_BASE_URL``, its key, or
            ``OPENAI_API_KEY``, and its model, or ``llm_model``).
    """
    key = settings.secret("openai_api_key") or ""
    base_url, model = settings.openai_base_url, settings.llm_model
    if backup:
        key = settings.secret("backup_llm_api_key") or key
        base_url, model = settings.backup_llm_base_url, settings.backup_llm_model or model
    return DirectBodyOpenAILLMService(
        api_key=key,
        base_url=base_url,
        settings=OpenAILLMService.Settings(
            model=model,
            system_instruction=system_instruction,
            max_completion_tokens=settings.llm_max_tokens,
        ),
        http_timeout_s=settings.llm_timeout_s,
        max_retries=settings.llm_max_retries,
        retry_timeout_secs=settings.llm_first_token_s,
        retry_on_timeout=True,
    )


def make_tts(settings: Settings, *, backup: bool = False) -> DeepgramTTSService:
    """Deepgram Aura streaming TTS (``/v1/speak`` websocket), without citation tags.

    Citation tags are removed from the text before it is spoken; the websocket is
    opened without compression (:class:`UncompressedDeepgramTTSService`), and every
    interruption of the bot's speech clears Deepgram (:class:`BargeInDeepgramTTSService`).
    A dropped socket is reconnected at once by Pipecat; a refused key makes the service
    unusable and is logged naming ``DEEPGRAM_API_KEY`` (:mod:`backtalk.agent.reconnect`).
    ``backup``: the same with ``BACKTALK_BACKUP_DEEPGRAM_API_KEY`` / ``_BASE_URL``.
    """
    key, base_url = _deepgram(settings, backup)
    kwargs = {"base_url": base_url} if base_url else {}
    return BargeInDeepgramTTSService(
        api_key=key,
        settings=DeepgramTTSService.Settings(voice=settings.tts_voice),
        text_transforms=[("*", strip_citations)],
        **kwargs,
    )


def make_vad(settings: Settings) -> SpeechOnsetVADAnalyzer:
    """Silero VAD (ONNX model bundled with Pipecat; runs on the CPU, offline).

    :class:`~backtalk.agent.turns.SpeechOnsetVADAnalyzer`: Pipecat's Silero analyzer,
    which also reports the length of the current run of speech windows, for the
    barge-in decision.
    """
    return SpeechOnsetVADAnalyzer(
        params=VADParams(
            confidence=settings.vad_confidence,
            start_secs=settings.vad_start_secs,
            stop_secs=settings.vad_stop_secs,
        )
    )


def make_turn_strategies(
    settings: Settings,
    *,
    vad: SpeechOnsetVADAnalyzer | None = None,
    gate: OutputAudioGate | None = None,
) -> UserTurnStrategies:
    """When a user turn starts (and what speech over the bot does) and when it ends.

    Start, ``barge_in == "pause"`` (the default): first
    :class:`~backtalk.agent.turns.BargeInUserTurnStartStrategy` — while the bot speaks,
    the user's first ``barge_in_onset_s`` of speech pause its audio (``gate``, read
    from ``vad``), backchannels resume it, other words interrupt it. When the bot is
    silent, a transcribed word starts the turn (Nova), or Flux's ``StartOfTurn`` does:
    noise after a question does not cancel its answer. ``"vad"``: Pipecat's defaults,
    any speech the VAD confirms (or a transcription) starts the turn and interrupts.

    Stop: ``smart_turn`` — smart-turn v3 scores the audio 0.13 s into the silence,
    while the VAD waits out its ``stop_secs``
    (:class:`~backtalk.agent.turns.PrescoringSmartTurnAnalyzer`, with ``vad``), and,
    while it says unfinished, again every 64 ms of silence up to
    ``smart_turn_rescore_s``
    (:class:`~backtalk.agent.turns.RescoringTurnAnalyzerUserTurnStopStrategy`); the
    turn ends at the VAD stop on a "finished", or after ``smart_turn_stop_secs`` of
    silence.
    ``speech_timeout`` — a fixed ``turn_speech_timeout_s`` of silence. Flux
    (``stt_service == "deepgram_flux"``): Flux's own turn events, answered on its eager
    end of turn (Pipecat's ``EagerUserTurnStrategies``).

    Args:
        settings: Turn detection and barge-in settings.
        vad: The VAD the user aggregator runs (its speech runs time the pause).
        gate: The output transport's audio gate (what pauses the bot).
    """
    barge_in = (
        [
            BargeInUserTurnStartStrategy(
                vad=vad,
                gate=gate,
                onset_s=settings.barge_in_onset_s,
                interruption_s=settings.barge_in_speech_s,
                resume_without_words_s=settings.barge_in_resume_s,
            )
        ]
        if settings.barge_in == "pause"
        else []
    )
    if settings.stt_service == "deepgram_flux":
        flux = EagerUserTurnStrategies()
        flux.start = [*barge_in, ExternalUserTurnStartStrategy()]
        return flux
    if settings.turn_stop_strategy == "speech_timeout":
        stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=settings.turn_speech_timeout_s)
    else:
        params = SmartTurnParams(stop_secs=settings.smart_turn_stop_secs)
        stop = RescoringTurnAnalyzerUserTurnStopStrategy(
            turn_analyzer=(
                PrescoringSmartTurnAnalyzer(vad=vad, params=params)
                if vad is not None
                else LocalSmartTurnAnalyzerV3(params=params)
            ),
            rescore_until_s=settings.smart_turn_rescore_s,
        )
    if barge_in:
        start = [*barge_in, TranscriptionUserTurnStartStrategy()]
    else:
        start = [VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()]
    return UserTurnStrategies(start=start, stop=[stop])
