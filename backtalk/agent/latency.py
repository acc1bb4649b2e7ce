"""Per-turn latency: where the time between "user stopped" and "bot speaks" goes.

Built on Pipecat's ``UserBotLatencyObserver`` (voice-to-voice latency, measured from
the moment the user actually stopped speaking — VAD stop time minus ``stop_secs`` —
to the bot's first audio) plus the RAG processor's processing metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from pipecat.frames.frames import MetricsFrame
from pipecat.metrics.metrics import ProcessingMetricsData
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.observers.user_bot_latency_observer import (
    LatencyBreakdown,
    MeasuredFrom,
    UserBotLatencyObserver,
)

__all__ = ["TurnLatency", "TurnLatencyReporter", "format_turn_latency"]


@dataclass(frozen=True, slots=True)
class TurnLatency:
    """One turn's latency breakdown, seconds (None when not measured).

    Parameters:
        end_of_turn_s: From the user's last sound to the turn being released: VAD
            silence, STT finalisation and the turn model's wait.
        stt_s: Speech-to-text time to final transcript (Pipecat's STT TTFB).
        retrieval_s: RAG retrieval (query embedding + vector search).
        llm_s: LLM time to first token.
        tts_s: TTS time to first audio.
        total_s: Voice-to-voice: user's last sound to the bot's first audio.
        first_sentence_s: From the LLM's first token to the first sentence going to the
            TTS (Pipecat's text-aggregation metric): the LLM streaming the rest of the
            first sentence, plus anything that holds reply text back. At gpt-4o-mini's
            ~59 tokens/s a 20-word first sentence is ~0.4 s of it, so short first
            sentences answer sooner.
    """

    end_of_turn_s: float | None
    stt_s: float | None
    retrieval_s: float | None
    llm_s: float | None
    tts_s: float | None
    total_s: float
    first_sentence_s: float | None = None

    def message(self) -> dict:
        """The RTVI server-message payload: ``{"type": "turn-latency", ...}`` (seconds)."""
        return {"type": "turn-latency", **asdict(self)}


def format_turn_latency(latency: TurnLatency) -> str:
    """One line for the console, milliseconds."""

    def ms(value: float | None) -> str:
        return "   -  " if value is None else f"{value * 1000:5.0f}ms"

    return (
        f"turn latency  end-of-turn {ms(latency.end_of_turn_s)}  stt {ms(latency.stt_s)}  "
        f"retrieval {ms(latency.retrieval_s)}  llm {ms(latency.llm_s)}  "
        f"first sentence {ms(latency.first_sentence_s)}  "
        f"tts {ms(latency.tts_s)}  total {ms(latency.total_s)}"
    )


def _ttfb(breakdown: LatencyBreakdown, kind: str) -> float | None:
    """The TTFB of the first ``<...><kind>Service`` (``STT``, ``LLM``, ``TTS``) in the turn.

    Matched on the class-name suffix: "TTS" alone is also inside "DeepgramSTTService".
    """
    suffix = f"{kind}Service"
    values = [t.duration_secs for t in breakdown.ttfb if t.processor.split("#")[0].endswith(suffix)]
    return values[0] if values else None


class TurnLatencyReporter(UserBotLatencyObserver):
    """Collects each turn's :class:`TurnLatency` and hands it to ``on_turn``.

    Pipecat's ``UserBotLatencyObserver`` extended to remember the RAG processor's
    retrieval time: one observer, not two. Every observer costs a queue and a task
    wake-up for each frame each processor handles (50 microphone frames a second
    pass three or four processors), so the pipeline keeps as few as it can.
    Pass :attr:`observers` to the ``PipelineWorker`` (metrics must be enabled).

    Args:
        on_turn: ``async callable(TurnLatency)``, e.g. print it and send it to the
            client.
    """

    def __init__(self, on_turn: Callable[[TurnLatency], Awaitable[None]]):
        super().__init__()
        self._on_turn = on_turn
        self._retrieval_s: float | None = None
        self.turns: list[TurnLatency] = []
        self.add_event_handler("on_latency_breakdown", self._on_breakdown)

    @property
    def observers(self) -> list[BaseObserver]:
        """The observers to pass to the worker: just this one."""
        return [self]

    async def on_push_frame(self, data: FramePushed):
        """Remember the latest RAG retrieval time, then measure the turn as Pipecat does."""
        if isinstance(data.frame, MetricsFrame):
            for item in data.frame.data:
                if (
                    isinstance(item, ProcessingMetricsData)
                    and item.processor.startswith("RAGContextProcessor")
                    and item.value > 0
                ):
                    self._retrieval_s = item.value
        await super().on_push_frame(data)

    async def _on_breakdown(self, _observer, breakdown: LatencyBreakdown):
        if breakdown.measured_from is MeasuredFrom.CLIENT_CONNECTED:
            return  # the greeting, timed from the client joining, is not a turn
        latency = TurnLatency(
            end_of_turn_s=breakdown.user_turn_secs,
            stt_s=_ttfb(breakdown, "STT"),
            retrieval_s=self._retrieval_s,
            llm_s=_ttfb(breakdown, "LLM"),
            tts_s=_ttfb(breakdown, "TTS"),
            total_s=breakdown.total_secs,
            first_sentence_s=(
                breakdown.text_aggregation.duration_secs if breakdown.text_aggregation else None
            ),
        )
        self._retrieval_s = None
        self.turns.append(latency)
        await self._on_turn(latency)
