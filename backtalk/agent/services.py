"""Service factories: the Pipecat STT, LLM, TTS, VAD and turn strategies, from settings.

Each provider is reached only through Pipecat's own service class, configured from
:class:`~backtalk.config.Settings` (keys, models, voices, and base URLs so that any
OpenAI-compatible server or a local fake can stand in).
"""

from __future__ import annotations

import functools

from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    ProposedUserStartedSpeakingFrame,
)
from pipecat.services.deepgram.flux.stt import DeepgramFluxSTTService
from pipecat.services.deepgram.stt import DeepgramSTTService
from pipecat.services.deepgram.tts import DeepgramTTSService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start import (
    ExternalUserTurnStartStrategy,
    MinWordsUserTurnStartStrategy,
    TranscriptionUserTurnStartStrategy,
    VADUserTurnStartStrategy,
)
from pipecat.turns.user_stop import (
    SpeechTimeoutUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import EagerUserTurnStrategies, UserTurnStrategies

from backtalk.config import Settings
from backtalk.processors.citations import strip_citations

__all__ = [
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

#: Seconds without a first token before the chat request is re-issued once
#: (reliability case R9: a stalled request must not hold a spoken turn for long).
LLM_RETRY_TIMEOUT_S = 5.0


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


class UncompressedDeepgramFluxSTTService(_UncompressedWebsocket, DeepgramFluxSTTService):
    """``DeepgramFluxSTTService`` whose ``/v2/listen`` websocket is not compressed."""


class UncompressedDeepgramTTSService(_UncompressedWebsocket, DeepgramTTSService):
    """``DeepgramTTSService`` whose ``/v1/speak`` websocket is not compressed."""


def make_stt(settings: Settings) -> STTService:
    """Deepgram streaming STT with interim results.

    ``stt_service == "deepgram"``: Nova (``/v1/listen``); Backtalk's own turn
    strategies decide when the user is done. ``"deepgram_flux"``: Flux
    (``/v2/listen``) with eager end-of-turn, so the RAG processor retrieves on the
    speculative turn and drops it if the user resumes; Flux then also decides turn
    ends (its recommended strategies apply). ``BACKTALK_DEEPGRAM_BASE_URL`` (e.g.
    ``ws://127.0.0.1:8080``) replaces Deepgram's endpoint for both. Neither audio
    websocket is compressed (:func:`listen_without_compression`,
    :class:`UncompressedDeepgramFluxSTTService`).
    """
    if settings.stt_service == "deepgram_flux":
        base = (settings.deepgram_base_url or "wss://api.deepgram.com").rstrip("/")
        return UncompressedDeepgramFluxSTTService(
            api_key=settings.secret("deepgram_api_key") or "",
            url=f"{base}/v2/listen",
            enable_eager_end_of_turn=True,
        )
    listen_without_compression()
    return DeepgramSTTService(
        api_key=settings.secret("deepgram_api_key") or "",
        base_url=settings.deepgram_base_url or "",
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
    """``OpenAILLMService`` that sends the messages and tools as the request body as-is.

    The ``openai`` SDK walks every request parameter against its TypedDict annotations
    before sending (``openai._utils._transform``); for chat messages that walk renames and
    converts nothing, but it costs ~0.2 ms per message on the event loop, on the turn's
    critical path: 10-18 ms for a 60-message conversation on this machine
    (``benchmarks/results/turn_latency.md``, "llm_request_sent"). The same Stainless-generated
    code and the same workaround (``extra_body``, which the SDK merges into the JSON
    untouched) are described in anthropic-sdk-python issue #1195.

    The request on the wire is the same JSON object: ``messages`` and ``tools`` keep their
    keys and order; any ``extra_body`` from ``Settings.extra`` still wins key by key.
    """

    def build_chat_completion_params(self, params_from_context) -> dict:
        """Pipecat's parameters, with ``messages``/``tools`` moved into ``extra_body``."""
        params = super().build_chat_completion_params(params_from_context)
        moved = {k: params[k] for k in ("messages", "tools") if isinstance(params.get(k), list)}
        if moved:
            params["messages"] = []  # required by the SDK's signature; replaced on merge
            params.pop("tools", None)
            self._merge_extra_body(params, moved)
        return params


def make_llm(settings: Settings, system_instruction: str) -> OpenAILLMService:
    """OpenAI chat completions, streaming, with a bounded timeout and answer length.

    Args:
        settings: Model, key and ``OPENAI_BASE_URL``.
        system_instruction: The persona and grounding rules.
    """
    return DirectBodyOpenAILLMService(
        api_key=settings.secret("openai_api_key") or "",
        base_url=settings.openai_base_url,
        settings=OpenAILLMService.Settings(
            model=settings.llm_model,
            system_instruction=system_instruction,
            max_completion_tokens=settings.llm_max_tokens,
        ),
        retry_timeout_secs=LLM_RETRY_TIMEOUT_S,
        retry_on_timeout=True,
    )


def make_tts(settings: Settings) -> DeepgramTTSService:
    """Deepgram Aura streaming TTS (``/v1/speak`` websocket), without citation tags.

    Citation tags are removed from the text before it is spoken; the websocket is
    opened without compression (:class:`UncompressedDeepgramTTSService`).
    """
    kwargs = {"base_url": settings.deepgram_base_url} if settings.deepgram_base_url else {}
    return UncompressedDeepgramTTSService(
        api_key=settings.secret("deepgram_api_key") or "",
        settings=DeepgramTTSService.Settings(voice=settings.tts_voice),
        text_transforms=[("*", strip_citations)],
        **kwargs,
    )


def make_vad(settings: Settings) -> SileroVADAnalyzer:
    """Silero VAD (ONNX model bundled with Pipecat; runs on the CPU, offline)."""
    return SileroVADAnalyzer(
        params=VADParams(
            confidence=settings.vad_confidence,
            start_secs=settings.vad_start_secs,
            stop_secs=settings.vad_stop_secs,
        )
    )


class QuietBotProposalStartStrategy(ExternalUserTurnStartStrategy):
    """Flux's ``StartOfTurn`` starts a user turn at once, unless the bot is speaking.

    Flux proposes a turn start on the first word it hears, so "yeah" or "mm-hm" over
    the bot's answer would cut it off. While the bot speaks, this strategy leaves the
    proposal to the strategies after it (``MinWordsUserTurnStartStrategy``: the
    interim transcript must reach ``interruption_min_words``), as on Nova.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._bot_speaking = False

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Track the bot's speech; resolve proposals only while it is silent."""
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        elif isinstance(frame, ProposedUserStartedSpeakingFrame) and self._bot_speaking:
            return ProcessFrameResult.CONTINUE
        return await super().process_frame(frame)


def make_turn_strategies(settings: Settings) -> UserTurnStrategies:
    """When a user turn starts (barge-in) and when it ends.

    Start: with ``interruption_min_words`` ≤ 1, VAD speech or a transcription, both
    interrupting the bot at once. Above 1 (the default is 2), Pipecat's
    ``MinWordsUserTurnStartStrategy``: while the bot speaks, the user's turn starts
    only once the interim transcript has that many words, so a backchannel
    ("mm-hm", "yeah") does not cut the bot off while "wait, stop" does; when the bot
    is silent one word starts the turn.
    Stop: ``smart_turn`` — Pipecat's smart-turn v3 model scores the audio after VAD
    stops and ends the turn when it sounds finished, or after
    ``smart_turn_stop_secs`` of silence; ``speech_timeout`` — a fixed
    ``turn_speech_timeout_s`` of silence.
    Flux (``stt_service == "deepgram_flux"``): Flux's own turn events, answered on its
    eager end of turn (Pipecat's ``EagerUserTurnStrategies``); while the bot speaks,
    a turn starts only at ``interruption_min_words`` words, as above.
    """
    if settings.stt_service == "deepgram_flux":
        # Flux detects turns itself: Pipecat's eager strategies (answer the predicted
        # end of turn, keep the answer if the committed transcript matches), with
        # backchannel-tolerant starts as on Nova.
        flux = EagerUserTurnStrategies()
        if settings.interruption_min_words > 1:
            flux.start = [
                QuietBotProposalStartStrategy(),
                MinWordsUserTurnStartStrategy(min_words=settings.interruption_min_words),
            ]
        return flux
    if settings.turn_stop_strategy == "speech_timeout":
        stop = SpeechTimeoutUserTurnStopStrategy(user_speech_timeout=settings.turn_speech_timeout_s)
    else:
        stop = TurnAnalyzerUserTurnStopStrategy(
            turn_analyzer=LocalSmartTurnAnalyzerV3(
                params=SmartTurnParams(stop_secs=settings.smart_turn_stop_secs)
            )
        )
    if settings.interruption_min_words > 1:
        start = [MinWordsUserTurnStartStrategy(min_words=settings.interruption_min_words)]
    else:
        start = [VADUserTurnStartStrategy(), TranscriptionUserTurnStartStrategy()]
    return UserTurnStrategies(start=start, stop=[stop])
