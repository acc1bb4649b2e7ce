"""Per-turn latency: where the time between "user stopped" and "bot speaks" goes.

Built on Pipecat's ``UserBotLatencyObserver`` (voice-to-voice latency, measured from
the moment the user actually stopped speaking — VAD stop time minus ``stop_secs`` —
to the bot's first audio) plus the RAG processor's processing metrics, with the turn
window following the user *turn* (the turn strategies' frames) rather than every
local VAD event: see :class:`TurnLatencyReporter`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    MetricsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import (
    ProcessingMetricsData,
    TextAggregationMetricsData,
    TTFBMetricsData,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.observers.user_bot_latency_observer import (
    LatencyBreakdown,
    MeasuredFrom,
    UserBotLatencyObserver,
)
from pipecat.processors.frame_processor import FrameDirection

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


#: Which service a metric came from, by the suffix of its processor's class name
#: (``DirectBodyOpenAILLMService#0`` -> LLM). Matched on ``<kind>Service``: "TTS" alone is
#: also inside "DeepgramSTTService".
_SERVICE_KINDS = ("STT", "LLM", "TTS")


def _service_kind(processor: str) -> str | None:
    name = processor.split("#")[0]
    return next((kind for kind in _SERVICE_KINDS if name.endswith(f"{kind}Service")), None)


#: Allowance, seconds, for comparing Pipecat's frame push timestamps (its pipeline
#: clock, ``time.monotonic_ns``) with its metrics' durations (``time.time``).
_CLOCK_SLACK_S = 0.005


class _TurnMetrics:
    """The service metrics of one turn (seconds).

    The first TTFB of each service, the first sentence's aggregation time and the
    latest RAG retrieval time. After an answer is withdrawn (an interruption, or a
    withdrawn eager end of turn) Pipecat's services still report the partial times of
    the work they stopped (``stop_all_metrics``); those are ignored until the next
    inference's context comes through. They can also come just *after* that context
    (Flux withdraws an eager end of turn and predicts the next one at once, and the
    LLM service reports the stopped inference's partial time to first token as the
    aggregator pushes the new context), so an answer's metric longer than the time
    since its inference's context was pushed is an earlier inference's, and ignored
    too: the answer's retrieval, LLM, aggregation and TTS clocks all start after that
    push.
    """

    def __init__(self, *, withdrawn: bool = False, answer_pushed_ns: int | None = None):
        self.ttfb: dict[str, float] = {}
        self.first_sentence_s: float | None = None
        self.retrieval_s: float | None = None
        self.withdrawn = withdrawn
        # When the context of the answer under way was pushed (Pipecat's pipeline clock).
        self.answer_pushed_ns = answer_pushed_ns

    def carried(self) -> _TurnMetrics:
        """Empty metrics for a new window, the answer under way (or withdrawn) kept."""
        return _TurnMetrics(withdrawn=self.withdrawn, answer_pushed_ns=self.answer_pushed_ns)

    def start_answer(self, pushed_ns: int) -> None:
        """An inference's context was pushed at ``pushed_ns``: its metrics count."""
        self.withdrawn = False
        self.answer_pushed_ns = pushed_ns

    def _of_the_answer(self, value: float, pushed_ns: int) -> bool:
        if self.withdrawn:
            return False
        if self.answer_pushed_ns is None:
            return True
        return value <= (pushed_ns - self.answer_pushed_ns) / 1e9 + _CLOCK_SLACK_S

    def add(self, frame: MetricsFrame, pushed_ns: int) -> None:
        """Take the metrics of ``frame``, pushed at ``pushed_ns`` (the pipeline clock)."""
        for item in frame.data:
            if isinstance(item, TTFBMetricsData) and item.value > 0:
                kind = _service_kind(item.processor)
                if kind == "STT" or (
                    kind is not None and self._of_the_answer(item.value, pushed_ns)
                ):
                    self.ttfb.setdefault(kind, item.value)
            elif (
                isinstance(item, TextAggregationMetricsData)
                and self.first_sentence_s is None
                and self._of_the_answer(item.value, pushed_ns)
            ):
                self.first_sentence_s = item.value
            elif (
                isinstance(item, ProcessingMetricsData)
                and item.processor.startswith("RAGContextProcessor")
                and item.value > 0
                and self._of_the_answer(item.value, pushed_ns)
            ):
                self.retrieval_s = item.value

    def withdraw_answer(self) -> None:
        """Forget what a withdrawn answer produced (all but the transcription's)."""
        stt = self.ttfb.get("STT")
        self.ttfb = {} if stt is None else {"STT": stt}
        self.first_sentence_s = None
        self.retrieval_s = None
        self.withdrawn = True


class TurnLatencyReporter(UserBotLatencyObserver):
    """Collects each turn's :class:`TurnLatency` and hands it to ``on_turn``.

    Pipecat's ``UserBotLatencyObserver`` (voice-to-voice time from the user's last
    sound, by the local VAD, to the bot's first audio), with the turn's window made
    to follow the user *turn* — what the turn strategies decided — instead of every
    local VAD event:

    * **Service metrics count from the start of the user's speech**, not from the
      local VAD's stop. With Deepgram Flux, Backtalk answers Flux's eager end of turn,
      which can come before Silero's ``stop_secs`` have passed; a fast LLM's first
      token then arrived before the VAD stop, Pipecat's observer dropped its TTFB and
      the report showed no LLM time.
    * **Local VAD activity after the turn began to end** (released, or answered on an
      eager end of turn) is held back: it starts a new window only if it turns out to
      be a new turn (``UserStartedSpeakingFrame``, or the ``InterruptionFrame`` a turn
      start broadcasts) or the user resuming an eagerly answered turn
      (``EagerEndOfTurnCancelFrame``).
      Otherwise — a cough, a "hmm", noise that starts no turn — the bot's answer is
      still timed from the question, not from the noise.
    * **A turn that starts after its speech ended** is timed from that speech. The turn
      starts on the first transcribed word; a one-word reply ("yes") on Nova is first
      transcribed by the final result, after the VAD stop, and the turn start's
      ``InterruptionFrame`` made Pipecat's observer drop the time of the user's last
      sound, so the turn went unreported.
    * A withdrawn answer's metrics (LLM, TTS, retrieval) are dropped, including the
      partial times Pipecat's services report for the work they stop, so the report
      shows the answer the user heard. A Flux eager end of turn is often withdrawn
      (``TurnResumed`` at a pause mid-question), and each withdrawn inference reports a
      time to first token.

    It also records the RAG processor's retrieval time: one observer, not two. Every
    observer costs a queue and a task wake-up for each frame each processor handles
    (microphone frames pass three or four processors), so the pipeline keeps as few
    as it can. Pass :attr:`observers` to the ``PipelineWorker`` (metrics must be
    enabled). Pipecat's ``on_latency_breakdown`` event still fires with its own
    breakdown (``benchmarks/`` read it).

    Args:
        on_turn: ``async callable(TurnLatency)``, e.g. print it and send it to the
            client.
        time_source: Reads the current time in seconds (``time.time``, the clock of
            Pipecat's VAD frame timestamps).
    """

    def __init__(
        self,
        on_turn: Callable[[TurnLatency], Awaitable[None]],
        *,
        time_source: Callable[[], float] = time.time,
    ):
        super().__init__(time_source=time_source)
        self._on_turn = on_turn
        self._clock = time_source
        self._metrics = _TurnMetrics()
        self._released_at: float | None = None
        # The user turn has begun to end: released, or answered on an eager end of turn.
        self._ending = False
        # Local VAD frames seen since then, held back from Pipecat's observer.
        self._held: list[FramePushed] = []
        # The VAD stop of the current window's speech, once Pipecat's observer has it.
        self._vad_stop: FramePushed | None = None
        # The metrics and release time of the window the bot last answered.
        self._answered: tuple[_TurnMetrics, float | None] = (_TurnMetrics(), None)
        self.turns: list[TurnLatency] = []
        self.add_event_handler("on_latency_breakdown", self._on_breakdown)

    @property
    def observers(self) -> list[BaseObserver]:
        """The observers to pass to the worker: just this one."""
        return [self]

    async def on_push_frame(self, data: FramePushed):
        """Follow the user turn, collect the turn's metrics, then measure as Pipecat does."""
        if data.direction != FrameDirection.DOWNSTREAM:
            return
        frame = data.frame
        if isinstance(frame, VADUserStartedSpeakingFrame | VADUserStoppedSpeakingFrame):
            if self._ending and (self._held or isinstance(frame, VADUserStartedSpeakingFrame)):
                self._held.append(data)
                return
            if isinstance(frame, VADUserStartedSpeakingFrame):
                # The user speaks (again): the turn's window starts here, as in Pipecat.
                self._new_window(self._metrics.carried())
            else:
                self._vad_stop = data
        elif isinstance(frame, MetricsFrame):
            self._metrics.add(frame, data.timestamp)
        elif isinstance(frame, LLMContextFrame):
            self._metrics.start_answer(data.timestamp)  # an inference starts
        elif isinstance(frame, EagerTranscriptionFrame):
            self._ending = True
        elif isinstance(frame, UserStoppedSpeakingFrame):
            self._ending = True
            self._released_at = self._clock()
        elif isinstance(frame, UserStartedSpeakingFrame):
            await self._replay(self._held)  # a new user turn: the VAD frames held were it
        elif isinstance(frame, EagerEndOfTurnCancelFrame):
            # The user resumed (or Flux committed other words): the turn goes on.
            self._metrics.withdraw_answer()
            await self._replay(self._held)
        elif isinstance(frame, InterruptionFrame):
            # The answer under way is cancelled (a user turn starting broadcasts one).
            held, vad_stop = self._held, self._vad_stop
            # Whatever answer was under way is withdrawn; the transcription of the
            # speech that started this turn (already final if the turn started late) stays.
            self._metrics.withdraw_answer()
            self._new_window(self._metrics)
            await super().on_push_frame(data)  # Pipecat's observer drops its anchor here
            if held:
                await self._replay(held)  # the new speech's VAD frames set it again
            elif vad_stop is not None:
                # The turn started after its speech ended (a one-word "yes" is first
                # transcribed by the final result, after the VAD stop): that speech's
                # last sound is still where the turn is timed from.
                await self.on_push_frame(vad_stop)
            return
        elif isinstance(frame, BotStartedSpeakingFrame):
            # Pipecat runs the on_latency_breakdown handlers as tasks, after this returns.
            self._answered = (self._metrics, self._released_at)
            await super().on_push_frame(data)
            self._new_window()
            return
        await super().on_push_frame(data)

    def _new_window(self, metrics: _TurnMetrics | None = None) -> None:
        self._metrics = metrics or _TurnMetrics()
        self._released_at = None
        self._ending = False
        self._held = []
        self._vad_stop = None

    async def _replay(self, held: list[FramePushed]) -> None:
        """The turn is not over after all: replay the VAD frames held back."""
        self._held, self._ending = [], False
        for data in held:
            await self.on_push_frame(data)

    async def _on_breakdown(self, _observer, breakdown: LatencyBreakdown):
        if breakdown.measured_from is MeasuredFrom.CLIENT_CONNECTED:
            return  # the greeting, timed from the client joining, is not a turn
        metrics, released_at = self._answered
        anchor = breakdown.user_turn_start_time  # the user's last sound, by the VAD
        end_of_turn_s = None
        if anchor is not None and released_at is not None:
            # Pipecat's user_turn_secs is the same difference, but only when the release
            # comes after the VAD stop; Flux may commit the turn before it.
            end_of_turn_s = max(0.0, released_at - anchor)
        latency = TurnLatency(
            end_of_turn_s=end_of_turn_s,
            stt_s=metrics.ttfb.get("STT"),
            retrieval_s=metrics.retrieval_s,
            llm_s=metrics.ttfb.get("LLM"),
            tts_s=metrics.ttfb.get("TTS"),
            total_s=breakdown.total_secs,
            first_sentence_s=metrics.first_sentence_s,
        )
        self.turns.append(latency)
        await self._on_turn(latency)
