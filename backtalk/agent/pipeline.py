"""The voice pipeline, declared once as an ordered list of stages built from settings.

::

    transport.input() → Deepgram STT → speculative retrieval tap
      → user aggregator (Silero VAD, turn strategies) → [microphone audio stops here]
      → RAG context processor → LLM failure apology → OpenAI LLM
      → prompt-leak guard → citation processor
      → Deepgram TTS
      → transport.output() [audio gate: pauses the bot when the user cuts in]
      → heard-text processor → assistant aggregator

Turn-taking (:mod:`backtalk.agent.turns`): while the bot speaks, the user aggregator's
barge-in strategy pauses the bot's audio at the output transport on the user's first
syllable, and resumes it for a backchannel or yields the turn for a real interruption;
the heard-text processor keeps the assistant's context message to what was played.

Swapping a service or a VAD/turn parameter is a setting (see
:mod:`backtalk.agent.services`), not a code change here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import Frame, InputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMAssistantAggregator,
    LLMContextAggregatorPair,
    LLMUserAggregator,
    LLMUserAggregatorParams,
)
from pipecat.processors.filters.function_filter import FunctionFilter
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.transports.base_transport import BaseTransport
from pipecat.turns.user_turn_strategies import UserTurnStrategies

from backtalk.agent.failover import LLMFailover, failover
from backtalk.agent.personas import register_persona_tool
from backtalk.agent.recovery import LLMFailureApology
from backtalk.agent.services import make_llm, make_stt, make_tts, make_turn_strategies, make_vad
from backtalk.agent.turns import (
    BargeInUserTurnStartStrategy,
    OutputAudioGate,
    install_output_audio_gate,
)
from backtalk.config import Settings
from backtalk.processors import RAGContextProcessor, Retriever
from backtalk.processors.citations import CitationProcessor, remove_citation_tags
from backtalk.processors.guard import PromptLeakGuard
from backtalk.processors.heard_text import HeardTextProcessor
from backtalk.processors.limits import UserTextLimit
from backtalk.processors.playhead import Playhead, PlayheadRetriever, TimeIndex
from backtalk.processors.search_tool import register_search_tool
from backtalk.processors.speculative import SpeculativeRetrievalTap, SpeculativeRetriever
from backtalk.prompts import protected_texts

__all__ = ["BotStages", "build_stages"]


@dataclass
class BotStages:
    """The processors of one conversation, in pipeline order.

    Parameters:
        context: The conversation's shared LLM context.
        stages: ``(name, processor)`` in the order frames flow.
        audio_gate: What pauses the bot's audio at the output transport (None with
            ``barge_in == "vad"``, or a transport without ``TransportParams``).
        turn_strategies: The user aggregator's turn strategies.
    """

    context: LLMContext
    stages: list[tuple[str, FrameProcessor]]
    audio_gate: OutputAudioGate | None = None
    turn_strategies: UserTurnStrategies | None = None

    def __getitem__(self, name: str) -> FrameProcessor:
        """The stage called ``name`` (``stt``, ``user``, ``rag``, ``llm``, ...)."""
        return dict(self.stages)[name]

    @property
    def user(self) -> LLMUserAggregator:
        """The user context aggregator."""
        return self["user"]  # type: ignore[return-value]

    @property
    def assistant(self) -> LLMAssistantAggregator:
        """The assistant context aggregator."""
        return self["assistant"]  # type: ignore[return-value]

    @property
    def rag(self) -> RAGContextProcessor | None:
        """The RAG context processor (None in tool mode)."""
        return dict(self.stages).get("rag")  # type: ignore[return-value]

    @property
    def citations(self) -> CitationProcessor:
        """The citation processor."""
        return self["citations"]  # type: ignore[return-value]

    @property
    def barge_in(self) -> BargeInUserTurnStartStrategy | None:
        """The strategy that decides speech over the bot (None with ``barge_in == "vad"``)."""
        starts = self.turn_strategies.start if self.turn_strategies else None
        return next((s for s in starts or [] if isinstance(s, BargeInUserTurnStartStrategy)), None)

    @property
    def heard(self) -> HeardTextProcessor:
        """The processor that lets the bot's words into the context as they are played."""
        return self["heard"]  # type: ignore[return-value]

    @property
    def llm(self) -> LLMService | LLMFailover:
        """The LLM service (an :class:`~backtalk.agent.failover.LLMFailover` with a backup)."""
        return self["llm"]  # type: ignore[return-value]

    def pipeline(self) -> Pipeline:
        """A Pipecat pipeline of the stages."""
        return Pipeline([processor for _, processor in self.stages])


async def _not_microphone_audio(frame: Frame) -> bool:
    return not isinstance(frame, InputAudioRawFrame)


def microphone_audio_end() -> FunctionFilter:
    """A filter that stops the user's audio once the user aggregator has used it.

    Pipecat passes every input audio frame (50 per second per conversation) down the
    whole pipeline: past the STT (``audio_passthrough``) for the user aggregator's VAD
    and turn model, and past the aggregator to the RAG processor, LLM, guard,
    citations, TTS, output transport and assistant aggregator, none of which use it;
    each hop runs the frame through every observer too. Dropping it after the
    aggregator saves those hops (``benchmarks/results/concurrency*.md``). Input audio
    is a system frame, so the filter must be told to filter system frames.
    """
    return FunctionFilter(_not_microphone_audio, filter_system_frames=True)


def build_stages(
    settings: Settings,
    transport: BaseTransport,
    retriever: Retriever,
    *,
    instruction_for: Callable[[str], str],
    persona: str,
    playhead: Playhead | None = None,
    time_index: TimeIndex | None = None,
    on_persona_change: Callable[[str], Awaitable[None]] | None = None,
) -> BotStages:
    """Build the processors of one conversation.

    Args:
        settings: Services, models, VAD and turn parameters, retrieval mode.
        transport: Daily, SmallWebRTC, or any Pipecat transport.
        retriever: What retrieval searches (usually a
            :class:`~backtalk.store.PgVectorRetriever` scoped to the session's videos).
        instruction_for: Builds the LLM's system instruction (persona + grounding
            rules) for a persona name.
        persona: The persona to start with.
        playhead: Where the user is in the video, as the page reports it; with
            ``time_index``, questions about "this part" get the passage under it
            (:class:`~backtalk.processors.playhead.PlayheadRetriever`).
        time_index: Finds chunks by time (the store's retriever).
        on_persona_change: Awaited after the LLM switches persona by voice.

    Returns:
        The stages; ``.pipeline()`` assembles them.
    """
    llm: LLMService | LLMFailover = make_llm(settings, instruction_for(persona))
    stt, tts = make_stt(settings), make_tts(settings)
    if settings.backup_llm_base_url:
        backup = make_llm(settings, instruction_for(persona), backup=True)
        llm = LLMFailover([llm, backup], failback_after_s=settings.backup_llm_failback_s)
    if settings.backup_deepgram_api_key or settings.backup_deepgram_base_url:
        stt = failover([stt, make_stt(settings, backup=True)])
        tts = failover([tts, make_tts(settings, backup=True)])
    tools = [register_persona_tool(llm, instruction_for, on_change=on_persona_change)]
    if settings.retrieval_mode == "tool":
        tools.append(
            register_search_tool(
                llm, retriever, top_k=settings.retrieval_top_k, min_score=settings.min_score
            )
        )
    context = LLMContext(tools=ToolsSchema(standard_tools=tools))
    output = transport.output()
    vad = make_vad(settings)
    gate = install_output_audio_gate(output) if settings.barge_in == "pause" else None
    strategies = make_turn_strategies(settings, vad=vad, gate=gate)
    user, assistant = LLMContextAggregatorPair(
        context,
        user_params=LLMUserAggregatorParams(vad_analyzer=vad, user_turn_strategies=strategies),
    )
    inject = settings.retrieval_mode == "inject"
    speculative = SpeculativeRetriever(retriever) if inject and settings.speculate else None
    turn_retriever: Retriever = speculative or retriever
    if playhead is not None and time_index is not None:
        turn_retriever = PlayheadRetriever(turn_retriever, time_index, playhead)
    rag = RAGContextProcessor(
        turn_retriever,
        top_k=settings.retrieval_top_k,
        timeout_s=settings.retrieval_timeout_s,
        min_score=settings.min_score,
    )
    stages: list[tuple[str, FrameProcessor]] = [
        ("input", transport.input()),
        ("stt", stt),
        *(
            [("speculation", SpeculativeRetrievalTap(speculative, top_k=settings.retrieval_top_k))]
            if speculative
            else []
        ),
        ("user", user),
        ("user_audio_end", microphone_audio_end()),
        ("limit", UserTextLimit(settings.max_user_chars)),
        *([("rag", rag)] if inject else []),
        ("recovery", LLMFailureApology(llm)),
        ("llm", llm),
        ("guard", PromptLeakGuard(protected_texts())),
        ("citations", CitationProcessor()),
        ("tts", tts),
        ("output", output),
        ("heard", HeardTextProcessor(spoken_text=remove_citation_tags)),
        ("assistant", assistant),
    ]
    return BotStages(context=context, stages=stages, audio_gate=gate, turn_strategies=strategies)
