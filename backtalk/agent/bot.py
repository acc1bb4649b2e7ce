"""One conversation: build the pipeline for a transport, greet, record, run."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from loguru import logger
from pipecat.frames.frames import EndFrame, LLMTextFrame, TTSSpeakFrame
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameProcessor
from pipecat.processors.frameworks.rtvi.frames import RTVIServerMessageFrame
from pipecat.processors.frameworks.rtvi.observer import RTVIObserver
from pipecat.processors.frameworks.rtvi.processor import RTVIProcessor
from pipecat.transports.base_transport import BaseTransport
from pipecat.workers.runner import WorkerRunner
from sqlalchemy.ext.asyncio import AsyncEngine

from backtalk.agent import metrics
from backtalk.agent.latency import TurnLatency, TurnLatencyReporter, format_turn_latency
from backtalk.agent.personas import persona_switch
from backtalk.agent.pipeline import BotStages, build_stages
from backtalk.agent.recorder import ConversationRecorder
from backtalk.config import Settings
from backtalk.processors.citations import Citation
from backtalk.processors.playhead import Playhead, PlayheadRetriever
from backtalk.processors.speculative import SpeculativeRetriever
from backtalk.prompts import DEFAULT_PERSONA, personas, system_instruction
from backtalk.store import (
    Embedder,
    PgVectorRetriever,
    Store,
    VideoInfo,
    embedder_for,
    library_for,
    make_async_engine,
    make_retrieval_engine,
)

#: Seconds the pre-conversation retrieval warm-up may take.
WARM_UP_TIMEOUT_S = 3.0
#: What the bot says when a conversation reaches its time limit, or goes quiet.
GOODBYE_AT_LIMIT = "That's all the time we have for this conversation. Thanks for talking, bye!"
GOODBYE_WHEN_IDLE = "It's gone quiet, so I'll hang up now. Come back any time. Bye!"

__all__ = ["AgentResources", "Conversation", "TalkSession", "greeting", "run_conversation"]


@dataclass(frozen=True)
class TalkSession:
    """What a conversation is about.

    Parameters:
        videos: The videos in scope (retrieval searches only these).
        persona: Persona prompt name (``backtalk/prompts/<persona>.md``).
        api_key_id: The API key that started it (``backtalk serve``), recorded with
            the conversation so that only that key sees it; None otherwise.
    """

    videos: Sequence[VideoInfo]
    persona: str = DEFAULT_PERSONA
    api_key_id: int | None = None


def _spoken_duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    return "about a minute" if minutes == 1 else f"about {minutes} minutes"


def greeting(videos: Sequence[VideoInfo]) -> str:
    """What the bot says first: it names the video(s) it has watched.

    Args:
        videos: The session's videos.
    """
    if len(videos) == 1:
        v = videos[0]
        return (
            f'Hi! I\'ve watched "{v.title}", {_spoken_duration(v.duration_s)} long. '
            "What would you like to know about it?"
        )
    titles = ", ".join(f'"{v.title}"' for v in videos[:-1]) + f' and "{videos[-1].title}"'
    return f"Hi! I've watched {titles}. What would you like to talk about?"


class _GuardedRTVIObserver(RTVIObserver):
    """Pipecat's RTVI observer, reporting the LLM's text only as the guard passes it on.

    Pipecat reports every token the LLM service pushes (``bot-llm-text``) before the
    prompt-leak guard and the citation processor have seen it, so a sentence the guard
    keeps from the TTS would still reach the client. Text from the LLM service itself is
    skipped; what the guard pushes on is reported as usual.
    """

    def __init__(self, rtvi: RTVIProcessor, *, llm: FrameProcessor, **kwargs):
        super().__init__(rtvi, **kwargs)
        self._llm = llm

    async def on_push_frame(self, data: FramePushed):
        """Skip the LLM service's own text frames; report everything else."""
        if isinstance(data.frame, LLMTextFrame) and data.source is self._llm:
            return
        await super().on_push_frame(data)


class _GuardedRTVIProcessor(RTVIProcessor):
    """An RTVI processor whose observer is :class:`_GuardedRTVIObserver`."""

    def __init__(self, *, llm: FrameProcessor, **kwargs):
        super().__init__(**kwargs)
        self._llm = llm

    def create_rtvi_observer(self, *, params=None, **kwargs):
        """The observer that reports the LLM's text only past the guard."""
        return _GuardedRTVIObserver(self, llm=self._llm, params=params, **kwargs)


@dataclass
class AgentResources:
    """Process-wide resources every conversation shares, opened once and warmed.

    Parameters:
        settings: The settings.
        store: The library (synchronous engine, for set-up work).
        engine: Asyncio engine for recording conversations.
        retrieval_engine: Asyncio engine for the per-turn search (autocommit, no ping).
        embedder: The store's embedder (loaded once; WordLlama takes ~0.4 s).
    """

    settings: Settings
    store: Store
    engine: AsyncEngine
    retrieval_engine: AsyncEngine
    embedder: Embedder

    @classmethod
    def open(cls, settings: Settings, store: Store | None = None) -> AgentResources:
        """Open the store (unless given) and build the embedder and async engine.

        Also limits numpy's BLAS to one thread for the whole process (threadpoolctl).
        Smart-turn v3 computes its Whisper features with one matrix product per
        analysis (``pipecat/audio/turn/smart_turn/_whisper_features.py``), which
        OpenBLAS splits over every core; the extra threads then busy-wait for the next
        call (OpenBLAS's thread timeout, 2^28 cycles by default: ~0.1 s here). Measured
        on a 2-core machine: one analysis takes 52 ms wall either way, but 157 ms of CPU
        with two BLAS threads against 52 ms with one; a process holding 12-16
        conversations used ~6 % less CPU (``benchmarks/VOICE.md``, section 4).
        Nothing a conversation does gains from threaded BLAS (a query embedding is
        below OpenBLAS's threading threshold).

        Raises:
            StoreError: the database cannot be reached.
            EmbedderMismatchError: ``BACKTALK_EMBEDDER`` differs from the library's.
        """
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1, user_api="blas")
        store = store or library_for(settings)
        embedder = embedder_for(settings)
        store.check_embedder(embedder.model, embedder.dimensions)
        return cls(
            settings=settings,
            store=store,
            engine=make_async_engine(store.engine.url),
            retrieval_engine=make_retrieval_engine(
                store.engine.url, pool_timeout_s=settings.retrieval_timeout_s
            ),
            embedder=embedder,
        )

    def retriever(self, session: TalkSession) -> PgVectorRetriever:
        """A retriever scoped to the session's videos."""
        return PgVectorRetriever(
            self.retrieval_engine, self.embedder, video_ids=[v.id for v in session.videos]
        )

    async def close(self) -> None:
        """Close pooled database connections."""
        await self.engine.dispose()
        await self.retrieval_engine.dispose()


@dataclass
class Conversation:
    """A built, not yet running, conversation (exposed for tests and embedding).

    Parameters:
        stages: The pipeline's processors.
        worker: The Pipecat worker that runs them.
        recorder: Saves the conversation.
        latency: Reports each turn's latency breakdown.
        playhead: Where the user is in the video (from the page's messages).
        observers: Extra observers the worker runs.
    """

    stages: BotStages
    worker: PipelineWorker
    recorder: ConversationRecorder
    latency: TurnLatencyReporter
    playhead: Playhead
    observers: list[BaseObserver] = field(default_factory=list)


#: RTVI client messages the conversation understands (``client.sendClientMessage``).
PLAYER_POSITION_MESSAGE = "player-position"
SET_PERSONA_MESSAGE = "set-persona"


async def build_conversation(
    transport: BaseTransport,
    session: TalkSession,
    resources: AgentResources,
    *,
    transport_name: str,
    observers: Sequence[BaseObserver] = (),
    idle_timeout_secs: float | None = 300,
    max_duration_s: float | None = None,
) -> Conversation:
    """Assemble one conversation on ``transport`` (see :func:`run_conversation`).

    ``idle_timeout_secs``: nobody spoke for this long, seconds → the bot says goodbye
    and the conversation ends (None: never). ``max_duration_s``: the same this long,
    seconds, after the client connected (None: no limit).
    """
    settings = resources.settings
    retriever = resources.retriever(session)
    try:
        # Bounded: a slow embeddings endpoint must not hold up the greeting.
        await asyncio.wait_for(retriever.warm_up(), timeout=WARM_UP_TIMEOUT_S)
    except Exception as exc:  # the first turn will pay for it, or report the failure
        logger.warning(f"Retrieval warm-up did not complete ({type(exc).__name__})")
    videos = [(v.title, v.duration_s) for v in session.videos]

    def instruction_for(persona: str) -> str:
        return system_instruction(videos, persona=persona, retrieval_mode=settings.retrieval_mode)

    worker: PipelineWorker | None = None
    playhead = Playhead()

    async def tell_client(data: dict) -> None:
        if worker is not None:
            await worker.queue_frame(RTVIServerMessageFrame(data=data))

    async def on_persona_change(persona: str) -> None:
        await tell_client({"type": "persona", "persona": persona})

    stages = build_stages(
        settings,
        transport,
        retriever,
        instruction_for=instruction_for,
        persona=session.persona,
        playhead=playhead,
        time_index=retriever,
        on_persona_change=on_persona_change,
    )

    async def on_turn(latency: TurnLatency) -> None:
        # Always to the client (RTVI); to the console when asked (--latency).
        if settings.print_latency:
            print(format_turn_latency(latency), file=sys.stderr, flush=True)
        metrics.observe_turn(latency.message())
        await tell_client(latency.message())

    latency = TurnLatencyReporter(on_turn)
    worker = PipelineWorker(
        stages.pipeline(),
        params=PipelineParams(enable_metrics=True, enable_usage_metrics=True),
        observers=[*latency.observers, *observers],
        idle_timeout_secs=idle_timeout_secs,
        # On idle the bot says goodbye (below) instead of being cut off mid-air.
        cancel_on_idle_timeout=False,
        # Pipecat's turn tracking feeds its OpenTelemetry tracing and AudioBufferProcessor,
        # neither used here; each observer costs a task wake-up per frame per processor.
        enable_turn_tracking=False,
        # Clients see the LLM's words only past the prompt-leak guard. Pipecat's eval
        # harness judges the model itself, so it gets the raw text.
        rtvi_processor=(
            None if transport_name.startswith("eval") else _GuardedRTVIProcessor(llm=stages.llm)
        ),
    )
    recorder = ConversationRecorder(resources.engine)
    await recorder.start(
        [v.key for v in session.videos],
        transport=transport_name,
        persona=session.persona,
        api_key_id=session.api_key_id,
    )

    ending = False

    async def say_goodbye(words: str) -> None:
        # Speak, then end: the EndFrame follows the goodbye's audio down the pipeline.
        nonlocal ending
        if ending:
            return
        ending = True
        logger.info("Ending the conversation (time limit or idle)")
        await worker.queue_frames([TTSSpeakFrame(words), EndFrame()])

    @worker.event_handler("on_idle_timeout")
    async def _on_idle(_worker):
        await say_goodbye(GOODBYE_WHEN_IDLE)

    async def end_at_limit() -> None:
        await asyncio.sleep(max_duration_s)
        await say_goodbye(GOODBYE_AT_LIMIT)

    limit_task: asyncio.Task | None = None

    @worker.event_handler("on_pipeline_finished")
    async def _on_finished(_worker, _frame):
        if limit_task is not None:
            limit_task.cancel()

    recorder.attach(stages.user, stages.assistant)

    if stages.rag is not None:

        @stages.rag.event_handler("on_retrieval_failed")
        async def _on_retrieval_failed(_processor, _query, _error):
            metrics.RETRIEVAL_FAILURES.inc()

    @stages.citations.event_handler("on_citation")
    async def _on_citation(_processor, citation: Citation):
        recorder.note_citation(citation.message())

    # The worker prepends an RTVIProcessor for the client (RTVI is on by default).
    rtvi = worker.rtvi

    @rtvi.event_handler("on_client_ready")
    async def _on_client_ready(_rtvi):
        await tell_client(
            {
                "type": "session",
                "conversation_id": recorder.conversation_id,
                "videos": [v.key for v in session.videos],
                "persona": session.persona,
            }
        )

    @rtvi.event_handler("on_client_message")
    async def _on_client_message(_rtvi, message):
        await _handle_client_message(message.type, message.data)

    async def _handle_client_message(kind: str, data: object) -> None:
        data = data if isinstance(data, dict) else {}
        if kind == PLAYER_POSITION_MESSAGE:
            try:
                playhead.update(
                    str(data["video_key"]),
                    float(data["seconds"]),
                    playing=bool(data.get("playing", False)),
                )
            except (KeyError, TypeError, ValueError):
                logger.warning("Ignored a malformed player-position message")
        elif kind == SET_PERSONA_MESSAGE:
            persona = str(data.get("persona", ""))
            if persona not in personas():
                logger.warning("Ignored a set-persona message naming an unknown persona")
                return
            await worker.queue_frame(persona_switch(instruction_for, persona))
            await on_persona_change(persona)

    hello = greeting(session.videos)

    greeted = False

    @transport.event_handler("on_client_connected")
    async def _on_connected(_transport, _client):
        # Greet once: SmallWebRTC can report one connection twice (a race between
        # its connect() and its connection-state callback).
        nonlocal greeted, limit_task
        if greeted:
            return
        greeted = True
        logger.info("Client connected; greeting")
        await worker.queue_frames([TTSSpeakFrame(hello)])
        if max_duration_s is not None:
            limit_task = asyncio.create_task(end_at_limit(), name="conversation-time-limit")

    @transport.event_handler("on_client_disconnected")
    async def _on_disconnected(_transport, _client):
        logger.info("Client disconnected; ending the conversation")
        await worker.cancel()

    return Conversation(
        stages=stages,
        worker=worker,
        recorder=recorder,
        latency=latency,
        playhead=playhead,
        observers=list(observers),
    )


async def run_conversation(
    transport: BaseTransport,
    session: TalkSession,
    resources: AgentResources,
    *,
    transport_name: str,
    handle_sigint: bool = False,
    observers: Sequence[BaseObserver] = (),
) -> None:
    """Run one voice conversation until the user leaves.

    The bot greets the user by naming the video when they connect, answers each
    turn grounded in the session's videos, and saves every turn.

    Args:
        transport: A connected Pipecat transport (Daily, SmallWebRTC, ...).
        session: The videos and persona.
        resources: Shared store, engine and embedder.
        transport_name: Recorded with the conversation (``webrtc``, ``daily``).
        handle_sigint: Let the runner handle Ctrl-C (standalone runs).
        observers: Extra Pipecat observers (metrics, latency).

    A conversation lasts at most ``session_max_s`` and ends after ``session_idle_s``
    without speech; either way the bot says goodbye first.
    """
    conversation = await build_conversation(
        transport,
        session,
        resources,
        transport_name=transport_name,
        observers=observers,
        idle_timeout_secs=resources.settings.session_idle_s,
        max_duration_s=resources.settings.session_max_s,
    )
    runner = WorkerRunner(handle_sigint=handle_sigint)
    metrics.SESSIONS_ACTIVE.inc()
    try:
        await runner.add_workers(conversation.worker)
        await runner.run()
    finally:
        metrics.SESSIONS_ACTIVE.dec()
        await conversation.recorder.finish()
        # A finished conversation's frames and services form reference cycles; without
        # a collection RSS grows ~8 MB per conversation (benchmarks/concurrency.py).
        gc.collect()
        rag = conversation.stages.rag
        if rag is not None:
            stats = rag.stats
            hits = ""
            turn_retriever = rag.retriever
            if isinstance(turn_retriever, PlayheadRetriever):
                turn_retriever = turn_retriever.inner
            if isinstance(turn_retriever, SpeculativeRetriever):
                spec = turn_retriever.stats
                hits = (
                    f", speculative retrieval {spec.ready_hits} ready / {spec.hits} hits / "
                    f"{spec.misses} misses"
                )
            logger.info(
                f"Conversation {conversation.recorder.conversation_id} ended: {stats.turns} "
                f"turns, {stats.timeouts} retrieval timeouts, {stats.failures} failures{hits}"
            )
