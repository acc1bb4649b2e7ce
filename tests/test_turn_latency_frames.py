"""``TurnLatencyReporter`` on frame orders too rare to force through the real pipeline.

The end-to-end cases are in :mod:`test_turn_latency_report`. Here the reporter observes
a scripted sequence of Pipecat frame pushes, at push times chosen by the test, so an
order that the real pipeline produces only under load (about one run in four of the
Flux noise test with a core kept busy) happens every time.
"""

from __future__ import annotations

import asyncio

from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    EagerEndOfTurnCancelFrame,
    EagerTranscriptionFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    MetricsFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TTFBMetricsData
from pipecat.observers.base_observer import FramePushed
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from backtalk.agent.latency import TurnLatency, TurnLatencyReporter

#: The wall-clock time the scripted conversation starts at (seconds).
T0 = 1_000_000.0
LLM = "DirectBodyOpenAILLMService#0"
TTS = "UncompressedDeepgramTTSService#0"
STT = "UncompressedDeepgramFluxSTTService#0"


class Script:
    """Pushes frames into a reporter at given times (seconds after :data:`T0`)."""

    def __init__(self):
        self.now = T0
        self.reports: list[TurnLatency] = []
        self.reporter = TurnLatencyReporter(self._on_turn, time_source=lambda: self.now)
        self.source = FrameProcessor(name="source")
        self.destination = FrameProcessor(name="destination")

    async def _on_turn(self, latency: TurnLatency) -> None:
        self.reports.append(latency)

    async def push(self, at_s: float, frame: Frame) -> None:
        self.now = T0 + at_s
        await self.reporter.on_push_frame(
            FramePushed(
                source=self.source,
                destination=self.destination,
                frame=frame,
                direction=FrameDirection.DOWNSTREAM,
                timestamp=int(at_s * 1e9),  # the pipeline clock: ns since it started
            )
        )

    async def ttfb(self, at_s: float, processor: str, value_s: float) -> None:
        await self.push(
            at_s, MetricsFrame(data=[TTFBMetricsData(processor=processor, value=value_s)])
        )

    async def settled(self) -> list[TurnLatency]:
        for _ in range(10):  # Pipecat runs the breakdown's handlers as tasks
            await asyncio.sleep(0)
        return self.reports


async def test_a_withdrawn_inference_reporting_after_the_next_one_began_is_not_the_answer():
    # Flux withdraws an eager end of turn (the user went on) and predicts the next one at
    # once; the LLM service reports the stopped inference's partial time to first token
    # (0.30 s) just after the aggregator pushed the next inference's context. The answer
    # heard is that next inference's, whose first token took 1.5 s.
    s = Script()
    await s.push(0.0, VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=T0))
    await s.push(0.05, UserStartedSpeakingFrame())
    await s.push(0.05, InterruptionFrame())
    await s.push(1.0, EagerTranscriptionFrame(text="what does", user_id="", timestamp=""))
    await s.push(1.0, LLMContextFrame(context=LLMContext()))  # inference A
    await s.push(1.3, EagerEndOfTurnCancelFrame())  # the user resumed: A is withdrawn
    await s.push(1.3, EagerTranscriptionFrame(text="what does it", user_id="", timestamp=""))
    await s.push(1.3, LLMContextFrame(context=LLMContext()))  # inference B
    await s.ttfb(1.301, LLM, 0.30)  # A's partial time, as its stop is handled
    await s.push(1.5, VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=T0 + 1.5))
    await s.ttfb(1.7, STT, 0.4)
    await s.push(1.7, UserStoppedSpeakingFrame())
    await s.ttfb(2.8, LLM, 1.5)  # B's first token
    await s.ttfb(2.81, TTS, 0.01)
    await s.push(2.82, BotStartedSpeakingFrame())

    (report,) = await s.settled()
    assert report.llm_s == 1.5, report
    assert report.tts_s == 0.01 and report.stt_s == 0.4, report
    assert report.end_of_turn_s is not None and abs(report.end_of_turn_s - 0.4) < 1e-6, report


async def test_a_turns_own_metrics_are_kept():
    # A plain Nova turn. The LLM's time to first token is as long as the answer has
    # existed (its request went out as its context was pushed): it is the answer's.
    s = Script()
    await s.push(0.0, VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=T0))
    await s.push(0.05, UserStartedSpeakingFrame())
    await s.push(0.05, InterruptionFrame())
    await s.push(2.0, VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=T0 + 2.0))
    await s.ttfb(2.2, STT, 0.25)
    await s.push(2.3, UserStoppedSpeakingFrame())
    await s.push(2.3, LLMContextFrame(context=LLMContext()))
    await s.ttfb(2.85, LLM, 0.55)
    await s.ttfb(3.15, TTS, 0.3)
    await s.push(3.2, BotStartedSpeakingFrame())

    (report,) = await s.settled()
    assert (report.stt_s, report.llm_s, report.tts_s) == (0.25, 0.55, 0.3), report
    assert abs(report.total_s - 1.4) < 1e-6, report  # from the last sound (1.8 s)


async def test_withdrawn_inferences_at_word_gaps_do_not_give_the_answer_its_time():
    # Flux predicts the end of turn at a gap between words (EagerEndOfTurn), the user
    # goes on (TurnResumed), and the withdrawn inference's partial time to first token
    # (0.2 s) arrives before the next prediction: it is not the answer's. The answer's
    # own first token takes 1.5 s.
    s = Script()
    await s.push(0.0, VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=T0))
    await s.push(0.05, UserStartedSpeakingFrame())
    await s.push(0.05, InterruptionFrame())
    await s.push(0.6, EagerTranscriptionFrame(text="what does", user_id="", timestamp=""))
    await s.push(0.6, LLMContextFrame(context=LLMContext()))  # inference A
    await s.push(0.8, EagerEndOfTurnCancelFrame())  # TurnResumed: A is withdrawn
    await s.ttfb(0.801, LLM, 0.20)  # A's partial time, as it stops
    await s.push(2.0, EagerTranscriptionFrame(text="what does it say", user_id="", timestamp=""))
    await s.push(2.0, LLMContextFrame(context=LLMContext()))  # inference B: the answer
    await s.push(2.1, VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=T0 + 2.1))
    await s.push(2.4, UserStoppedSpeakingFrame())
    await s.ttfb(3.5, LLM, 1.5)
    await s.ttfb(3.52, TTS, 0.01)
    await s.push(3.53, BotStartedSpeakingFrame())

    (report,) = await s.settled()
    assert report.llm_s == 1.5, report
    assert abs(report.total_s - (3.53 - 1.9)) < 1e-6, report  # from the last sound


async def test_noise_after_the_release_does_not_restart_the_timing():
    # The turn is released; a cough reaches the VAD (start and stop) while the answer is
    # being generated, and starts no turn. The answer is timed from the question.
    s = Script()
    await s.push(0.0, VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=T0))
    await s.push(0.3, UserStartedSpeakingFrame())
    await s.push(0.3, InterruptionFrame())
    await s.push(2.0, VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=T0 + 2.0))
    await s.ttfb(2.2, STT, 0.25)
    await s.push(2.3, UserStoppedSpeakingFrame())
    await s.push(2.3, LLMContextFrame(context=LLMContext()))
    await s.push(2.5, VADUserStartedSpeakingFrame(start_secs=0.2, timestamp=T0 + 2.5))
    await s.push(3.0, VADUserStoppedSpeakingFrame(stop_secs=0.2, timestamp=T0 + 3.0))
    await s.ttfb(4.8, LLM, 2.5)
    await s.ttfb(4.81, TTS, 0.01)
    await s.push(4.82, BotStartedSpeakingFrame())

    (report,) = await s.settled()
    assert report.llm_s == 2.5, report
    assert abs(report.total_s - (4.82 - 1.8)) < 1e-6, report
    assert report.end_of_turn_s is not None and abs(report.end_of_turn_s - 0.5) < 1e-6, report
