"""Per-turn latency: where the time between "user stopped" and "bot speaks" goes.

Voice-to-voice latency as Pipecat's ``UserBotLatencyObserver`` measures it (from the
moment the user actually stopped speaking — VAD stop time minus ``stop_secs`` — to the
bot's first audio), with the services' and the RAG processor's metrics, and with the
turn window following the user *turn* (the turn strategies' frames) rather than every
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
from pipecat.observers.user_bot_latency_observer import UserBotLatencyObserver
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

    Voice-to-voice time from the user's last sound (the local VAD's stop minus its
    ``stop_secs``, as Pipecat's ``UserBotLatencyObserver`` measures it) to the bot's
    first audio, broken down by service. The window follows the user *turn* — what the
    turn strategies decided — instead of every local VAD event, which is where it
    differs from Pipecat's observer:

    * **Service metrics count from the start of the user's speech**, not from the
      local VAD's stop. With Deepgram Flux, Backtalk answers Flux's eager end of turn,
      which can come before Silero's ``stop_secs`` have passed; a fast LLM's first
      token then arrived before the VAD stop, and Pipecat's observer drops it.
    * **Local VAD activity after the turn began to end** (released, or answered on an
      eager end of turn) is held back: it counts only if it turns out to be a new turn
      (``UserStartedSpeakingFrame``, or the ``InterruptionFrame`` a turn start
      broadcasts) or the user resuming an eagerly answered turn
      (``EagerEndOfTurnCancelFrame``). Otherwise — a cough, a "hmm", noise that starts
      no turn — the bot's answer is still timed from the question, not from the noise.
    * **A turn that starts after its speech ended** is timed from that speech. The turn
      starts on the first transcribed word; a one-word reply ("yes") on Nova is first
      transcribed by the final result, after the VAD stop. Pipecat's observer drops
      the user's last sound on every interruption, including that turn start's.
    * A withdrawn answer's metrics (LLM, TTS, retrieval) are dropped, including the
      partial times Pipecat's services report for the work they stop (see
      ``_TurnMetrics``), so the report shows the answer the user heard. A Flux eager
      end of turn is often withdrawn (``TurnResumed`` at a pause mid-question), and
      each withdrawn inference reports a time to first token.

    It is also Pipecat's observer, unchanged (every frame goes to it, and its
    ``on_latency_breakdown`` fires as usual; ``benchmarks/`` read it): one observer,
    not two. Every observer costs a queue and a task wake-up for each frame each
    processor handles (microphone frames pass three or four processors), so the
    pipeline keeps as few as it can. Pass :attr:`observers` to the ``PipelineWorker``
    (metrics must be enabled).

    Args:
        on_turn: ``async callable(TurnLatency)``, e.g. print it and send it to the
            client. Called when the bot starts answering a user turn.
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
        # The user's last sound in this window (VAD stop − stop_secs), seconds.
        self._last_sound: float | None = None
        self._released_at: float | None = None
        # The user turn has begun to end: released, or answered on an eager end of turn.
        self._ending = False
        # Local VAD frames seen since then, not yet counted.
        self._held: list[VADUserStartedSpeakingFrame | VADUserStoppedSpeakingFrame] = []
        self.turns: list[TurnLatency] = []

    @property
    def observers(self) -> list[BaseObserver]:
        """The observers to pass to the worker: just this one."""
        return [self]

    async def on_push_frame(self, data: FramePushed):
        """Follow the user turn and collect its metrics; then Pipecat's observer."""
        if data.direction == FrameDirection.DOWNSTREAM:
            await self._follow(data)
        await super().on_push_frame(data)

    async def _follow(self, data: FramePushed) -> None:
        frame = data.frame
        if isinstance(frame, VADUserStartedSpeakingFrame | VADUserStoppedSpeakingFrame):
            if self._ending and (self._held or isinstance(frame, VADUserStartedSpeakingFrame)):
                self._held.append(frame)
            else:
                self._vad(frame)
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
            self._resume()  # a new user turn: the VAD frames held were it
        elif isinstance(frame, EagerEndOfTurnCancelFrame | InterruptionFrame):
            # The user resumed an eagerly answered turn, or a turn started (which
            # broadcasts an interruption): the answer under way is withdrawn, the
            # transcription of the speech (already final if the turn started late) stays.
            self._metrics.withdraw_answer()
            self._resume()
        elif isinstance(frame, BotStartedSpeakingFrame):
            await self._report()
            self._new_window()

    def _vad(self, frame: VADUserStartedSpeakingFrame | VADUserStoppedSpeakingFrame) -> None:
        if isinstance(frame, VADUserStartedSpeakingFrame):
            # The user speaks (again): the turn's window starts here, as in Pipecat.
            self._new_window(self._metrics.carried())
        else:
            self._last_sound = frame.timestamp - frame.stop_secs

    def _resume(self) -> None:
        """The turn is not over after all: count the VAD frames held back."""
        held, self._held, self._ending, self._released_at = self._held, [], False, None
        for frame in held:
            self._vad(frame)

    def _new_window(self, metrics: _TurnMetrics | None = None) -> None:
        self._metrics = metrics or _TurnMetrics()
        self._last_sound = None
        self._released_at = None
        self._ending = False
        self._held = []

    async def _report(self) -> None:
        if self._last_sound is None:
            return  # no user speech to time from (the greeting)
        end_of_turn_s = None
        if self._released_at is not None:
            # Flux may commit the turn before the VAD stop: never below 0.
            end_of_turn_s = max(0.0, self._released_at - self._last_sound)
        metrics = self._metrics
        latency = TurnLatency(
            end_of_turn_s=end_of_turn_s,
            stt_s=metrics.ttfb.get("STT"),
            retrieval_s=metrics.retrieval_s,
            llm_s=metrics.ttfb.get("LLM"),
            tts_s=metrics.ttfb.get("TTS"),
            total_s=self._clock() - self._last_sound,
            first_sentence_s=metrics.first_sentence_s,
        )
        self.turns.append(latency)
        await self._on_turn(latency)
