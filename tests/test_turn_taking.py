"""Turn-taking decisions on real speech, frame by frame, in Pipecat's own turn machinery.

The user aggregator of a running pipeline decides turns with two Pipecat objects: a
``VADController`` (Silero on each microphone frame) and a ``UserTurnController`` (the
turn strategies). These tests drive exactly those two, built from Backtalk's settings
(``make_vad`` and ``make_turn_strategies``, with a real :class:`OutputAudioGate`), with
the fixture speech in 32 ms frames — the order the aggregator uses (VAD first, then the
strategies, then the VAD's own start/stop frames) — and script the transcripts the STT
would send (Nova's final when the VAD stops, at zero latency; Flux's ``StartOfTurn``
and ``Update``). Time is the microphone's: every decision is a function of the audio
and the script, so the tests give the same answer on an idle or a busy machine.

The end-to-end behaviour (audio at the output transport, Deepgram's ``Clear``, the
context) is in :mod:`test_e2e_voice` and :mod:`test_e2e_flux`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from conftest import AUDIO
from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.vad_controller import VADController
from pipecat.clocks.system_clock import SystemClock
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameProcessorSetup
from pipecat.turns.user_start import TranscriptionUserTurnStartStrategy
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_controller import UserTurnController
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.asyncio.task_manager import TaskManager
from transports import load_wav

from backtalk.agent.services import make_turn_strategies, make_vad
from backtalk.agent.turns import (
    BargeInUserTurnStartStrategy,
    OutputAudioGate,
    TranscriptFinalizeFrame,
    is_backchannel,
)
from backtalk.config import Settings

pytestmark = pytest.mark.unit

FRAME_S = 0.032  # Settings.audio_in_frame with Nova: one Silero window
RATE = 16000


def pcm(name: str) -> bytes:
    return load_wav(AUDIO / name)


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def first_speech_s(audio: bytes, rms: float = 500.0) -> float:
    """Start, seconds, of the first 20 ms window louder than ``rms`` (the fixtures' onset)."""
    x = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    n = RATE // 50
    for i in range(0, len(x) - n + 1, n):
        if np.sqrt(np.mean(x[i : i + n] ** 2)) > rms:
            return i / RATE
    raise ValueError("no speech")


class Listener:
    """Backtalk's VAD and turn strategies in Pipecat's VAD and user-turn controllers.

    Attributes:
        t: Seconds of microphone audio heard so far.
        events: ``(t, what, detail)``: ``paused``/``resumed`` (the gate), ``vad start``,
            ``vad stop``, ``turn started``, ``turn stopped``, ``reset aggregation``,
            ``pushed`` (a frame the strategies pushed).
    """

    def __init__(self, settings: Settings, strategies: UserTurnStrategies | None = None):
        self.settings = settings
        self.vad = make_vad(settings)
        self.gate = OutputAudioGate()
        self.strategies = strategies or make_turn_strategies(settings, vad=self.vad, gate=self.gate)
        self.vad_controller = VADController(self.vad, audio_idle_timeout=0)
        self.controller = UserTurnController(user_turn_strategies=self.strategies)
        self.t = 0.0
        self.events: list[tuple[float, str, object]] = []
        self._queued: list[Frame] = []
        self._after: list[Frame] = []
        self._paused = False
        #: Nova's answer to a ``Finalize`` (sent on each VAD stop, and on each
        #: TranscriptFinalizeFrame the strategies push upstream): the final transcript
        #: of the speech since the last one, if there was any.
        self.on_vad_stop: Callable[[], list[Frame]] = list
        self._heard_since_finalize = False

    @property
    def barge_in(self) -> BargeInUserTurnStartStrategy:
        return next(s for s in self.strategies.start if isinstance(s, BargeInUserTurnStartStrategy))

    @property
    def smart_turn(self):
        return self.strategies.stop[0]._turn_analyzer

    async def __aenter__(self) -> Listener:
        self._task_manager = TaskManager()
        setup = FrameProcessorSetup(
            clock=SystemClock(), task_manager=self._task_manager, pipeline_worker=None
        )
        vc, c = self.vad_controller, self.controller

        async def vad_started(_):
            self._queued.append(VADUserStartedSpeakingFrame(start_secs=self.vad.params.start_secs))

        async def vad_stopped(_):
            self._queued.append(VADUserStoppedSpeakingFrame(stop_secs=self.vad.params.stop_secs))

        vc.add_event_handler("on_speech_started", vad_started)
        vc.add_event_handler("on_speech_stopped", vad_stopped)
        c.add_event_handler("on_user_turn_started", self._note("turn started"))
        c.add_event_handler("on_user_turn_started", self._output_transport_stops)
        c.add_event_handler("on_user_turn_stopped", self._note("turn stopped"))
        c.add_event_handler("on_reset_aggregation", self._note("reset aggregation"))
        c.add_event_handler("on_push_frame", self._note("pushed", 0))
        c.add_event_handler("on_push_frame", self._finalize_requested)
        c.add_event_handler("on_broadcast_frame", self._note("broadcast"))
        await vc.setup(setup)
        await c.setup(setup)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.controller.cleanup()
        await self.vad_controller.cleanup()

    def _note(self, what: str, arg: int = -1):
        async def handler(_controller, *args):
            self.events.append((round(self.t, 3), what, args[arg] if args else None))

        return handler

    async def _finalize_requested(self, _controller, frame, _direction) -> None:
        if isinstance(frame, TranscriptFinalizeFrame):
            self.events.append((round(self.t, 3), "finalize asked", None))
            self._after.extend(self._finalize())

    def _finalize(self) -> list[Frame]:
        if not self._heard_since_finalize:
            return []  # Deepgram: nothing new to finalize, an empty result (ignored)
        self._heard_since_finalize = False
        return self.on_vad_stop()

    async def _output_transport_stops(self, _controller, _strategy, params) -> None:
        # What the output transport does with the turn's InterruptionFrame while the bot
        # speaks: it drops its queued audio and reports that the bot stopped (upstream,
        # where the user aggregator sees it).
        if params.enable_interruptions:
            self._after.append(BotStoppedSpeakingFrame())

    def at(self, what: str) -> list[float]:
        """Audio times of the events called ``what``."""
        return [t for t, w, _ in self.events if w == what]

    def pushed(self, cls: type[Frame]) -> list[Frame]:
        return [d for _, w, d in self.events if w == "pushed" and isinstance(d, cls)]

    def pushed_frames(self) -> list[Frame]:
        return [d for _, w, d in self.events if w == "pushed"]

    async def frame(self, frame: Frame) -> None:
        """One frame into the turn strategies (what the aggregator does with it)."""
        await self.controller.process_frame(frame)
        self._note_gate()
        while self._after:
            await self.frame(self._after.pop(0))

    async def say(self, audio: bytes, script: dict[float, list[Frame]] | None = None) -> None:
        """Play ``audio`` in 32 ms frames; ``script``: frames to send at audio offsets (s)."""
        script = dict(sorted((script or {}).items()))
        step = int(RATE * FRAME_S) * 2
        start = self.t
        for i in range(0, len(audio) - step + 1, step):
            frame = InputAudioRawFrame(audio=audio[i : i + step], sample_rate=RATE, num_channels=1)
            self._queued = []
            await self.vad_controller.process_frame(frame)
            self._heard_since_finalize |= self.vad.speech_run_s > 0
            await self.frame(frame)
            self.t += FRAME_S
            for f in self._queued:  # the VAD's frames come back through the aggregator
                self.events.append(
                    (
                        round(self.t, 3),
                        "vad "
                        + ("start" if isinstance(f, VADUserStartedSpeakingFrame) else "stop"),
                        None,
                    )
                )
                await self.frame(f)
                if isinstance(f, VADUserStoppedSpeakingFrame):
                    for answer in self._finalize():
                        await self.frame(answer)
            self._note_gate()
            for offset in [k for k in script if k <= self.t - start + 1e-9]:
                for f in script.pop(offset):
                    await self.frame(f)

    def _note_gate(self) -> None:
        if self.gate.paused != self._paused:
            self._paused = self.gate.paused
            self.events.append((round(self.t, 3), "paused" if self._paused else "resumed", None))


def final(text: str) -> TranscriptionFrame:
    return TranscriptionFrame(text=text, user_id="", timestamp="", finalized=True)


def interim(text: str) -> InterimTranscriptionFrame:
    return InterimTranscriptionFrame(text=text, user_id="", timestamp="")


def nova_finals(*texts: str) -> Callable[[], list[Frame]]:
    """Nova at zero latency: each VAD stop's Finalize is answered with the next text."""
    queue = list(texts)
    return lambda: [final(queue.pop(0))] if queue else []


# -- what counts as a backchannel ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Yeah.", True),
        ("Mm-hm.", True),
        ("Mhmm", True),
        ("Uh-huh.", True),
        ("Right, right.", True),
        ("Oh okay, I see.", True),
        ("Haha", True),
        ("Wait, stop.", False),
        ("Stop.", False),
        ("No.", False),
        ("Yeah, but why?", False),
        ("Okay so what about the learning rate", False),
        ("Go back to the part about local minima.", False),
        ("", None),
        ("...", None),
    ],
)
def test_backchannels_are_told_from_interruptions(text: str, verdict: bool | None):
    assert is_backchannel(text) is verdict


# -- Nova ------------------------------------------------------------------------------------

BACKCHANNELS = [
    ("backchannel_yeah.wav", "Yeah."),
    ("backchannel_mmhm.wav", "Mm-hm."),
    ("backchannel_right.wav", "Right."),
]


@pytest.mark.parametrize(("wav", "text"), BACKCHANNELS, ids=["yeah", "mm-hm", "right"])
async def test_a_backchannel_pauses_the_bot_and_resumes_it(wav: str, text: str):
    audio = pcm(wav)
    async with Listener(Settings()) as ear:
        ear.on_vad_stop = nova_finals(text)
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5))
        spoke_at = ear.t + first_speech_s(audio)
        await ear.say(audio + silence(1.5))

    (paused,) = ear.at("paused")
    (resumed,) = ear.at("resumed")
    (asked,) = ear.at("finalize asked")
    (vad_stop,) = ear.at("vad stop")
    print(
        f"\n{text} paused {paused - spoke_at:.3f} s after its first sound, for {resumed - paused:.3f} s"
    )
    # The bot paused on the first syllable: two Silero windows, long before the VAD's
    # 0.2 s start...
    assert paused - spoke_at <= 0.1
    # ...and went on as soon as the transcript showed a backchannel: asked for 0.1 s
    # after the sound (at zero latency, answered at once), before the VAD's stop.
    assert resumed == asked < vad_stop
    # No turn: nothing interrupted the bot, and the words left the user aggregation and
    # went on as a backchannel instead of into the LLM context.
    assert not ear.at("turn started")
    assert len(ear.at("reset aggregation")) == 1
    assert [f.text for f in ear.pushed(UserBackchannelFrame)] == [text]
    assert ear.barge_in.decisions == ["backchannel"]


async def test_wait_stop_over_the_bot_is_an_interruption():
    audio = pcm("barge_in_wait.wav")
    async with Listener(Settings()) as ear:
        ear.on_vad_stop = nova_finals("Wait, stop.", "Go back to the part about local minima.")
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5))
        spoke_at = ear.t + first_speech_s(audio)
        await ear.say(audio + silence(1.0))

    (paused,) = ear.at("paused")
    started = ear.at("turn started")
    first_stop = ear.at("finalize asked")[0]
    assert paused - spoke_at <= 0.1
    # The user's turn started, with an interruption, at the first transcript ("Wait,
    # stop.", asked for in the pause after "Wait,"); the bot stayed paused until then, and the gate let audio through again
    # only once the output transport had dropped the answer's (BotStoppedSpeakingFrame).
    assert started[0] == first_stop, ear.events
    params = next(d for _, w, d in ear.events if w == "turn started")
    assert params.enable_interruptions
    assert ear.at("resumed") == started[:1]
    assert not ear.pushed(UserBackchannelFrame) and not ear.at("reset aggregation")
    assert ear.barge_in.decisions == ["interruption"]


async def test_noise_without_words_resumes_the_bot():
    # Half a second of someone else's question (Silero hears speech) with nothing for the
    # recogniser to transcribe: noise that never becomes words.
    q2 = pcm("q2_why_momentum.wav")
    noise = q2[: int(RATE * 0.55) * 2]
    async with Listener(Settings()) as ear:
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5))
        await ear.say(noise + silence(2.0))

    (paused,) = ear.at("paused")
    (resumed,) = ear.at("resumed")
    last_sound = 0.5 + 0.55
    # Resumed once no transcript came within Deepgram's p99 time to a final (0.35 s of
    # quiet), and no turn started.
    assert 0.3 <= resumed - last_sound <= 0.6, ear.events
    assert not ear.at("turn started")
    assert ear.barge_in.decisions == ["no words"]


async def test_speech_that_goes_on_is_an_interruption_before_any_word():
    # A whole question over the bot, with the transcript late: speech longer than any
    # backchannel interrupts without waiting for words.
    async with Listener(Settings()) as ear:
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5))
        paused_from = ear.t
        await ear.say(pcm("q1_what_is_learning_rate.wav"))

    (paused,) = ear.at("paused")
    (started,) = ear.at("turn started")
    assert started - paused == pytest.approx(Settings().barge_in_speech_s, abs=0.07)
    assert paused - paused_from < 0.2


async def test_words_start_the_turn_when_the_bot_is_silent_and_noise_does_not():
    q2 = pcm("q2_why_momentum.wav")
    async with Listener(Settings()) as ear:
        await ear.say(silence(0.3) + q2[: int(RATE * 0.55) * 2] + silence(1.0))
        assert not ear.at("turn started") and not ear.at("paused")
        await ear.say(q2, script={0.6: [interim("Why does")]})
    assert len(ear.at("turn started")) == 1
    assert not ear.at("paused")


async def test_with_barge_in_vad_any_speech_interrupts_at_once():
    # BACKTALK_BARGE_IN=vad: Pipecat's default strategies; "yeah" cuts the bot off.
    async with Listener(Settings(barge_in="vad")) as ear:
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5) + pcm("backchannel_yeah.wav") + silence(0.5))
    assert ear.at("turn started") == ear.at("vad start")[:1]
    assert not ear.at("paused")


# -- Flux ------------------------------------------------------------------------------------


def flux() -> Settings:
    return Settings(stt_service="deepgram_flux", deepgram_api_key="dg-test")


async def test_flux_backchannel_resumes_on_its_first_update_while_the_user_still_speaks():
    # Flux sends StartOfTurn with the first word at the first speech, an Update 0.25 s
    # of audio later, and EndOfTurn once the user is done: "Mm-hm." (0.9 s) is known to be
    # a backchannel while it is still being said.
    audio = pcm("backchannel_mmhm.wav")
    onset = first_speech_s(audio)
    async with Listener(flux()) as ear:
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5))
        await ear.say(
            audio + silence(1.5),
            script={
                onset + 0.02: [ProposedUserStartedSpeakingFrame()],
                onset + 0.27: [interim("Mm-hm.")],
                0.9 + 0.45: [final("Mm-hm.")],
            },
        )
    (paused,) = ear.at("paused")
    (resumed,) = ear.at("resumed")
    assert resumed - paused < 0.35 and resumed < 0.5 + 0.9  # before the hum ended
    assert not ear.at("turn started")
    assert [f.text for f in ear.pushed(UserBackchannelFrame)] == ["Mm-hm."]
    assert ear.barge_in.decisions == ["backchannel"]


async def test_flux_wait_is_an_interruption_on_its_first_update():
    audio = pcm("barge_in_wait.wav")
    onset = first_speech_s(audio)
    async with Listener(flux()) as ear:
        await ear.frame(BotStartedSpeakingFrame())
        await ear.say(silence(0.5))
        await ear.say(
            audio,
            script={
                onset + 0.02: [ProposedUserStartedSpeakingFrame()],
                onset + 0.27: [interim("Wait,")],
            },
        )
    (paused,) = ear.at("paused")
    (started,) = ear.at("turn started")
    assert paused - 0.5 - onset <= 0.1
    assert started - 0.5 - onset <= 0.35
    assert ear.barge_in.decisions == ["interruption"]


# -- end of turn -----------------------------------------------------------------------------


def pipecats(settings: Settings) -> UserTurnStrategies:
    """Pipecat's smart-turn strategy, scored once at the VAD stop (Backtalk's 1.0 s wait)."""
    return UserTurnStrategies(
        start=[TranscriptionUserTurnStartStrategy()],
        stop=[
            TurnAnalyzerUserTurnStopStrategy(
                turn_analyzer=LocalSmartTurnAnalyzerV3(
                    params=SmartTurnParams(stop_secs=settings.smart_turn_stop_secs)
                )
            )
        ],
    )


async def release_after(
    audio: bytes, text: str, lead_s: float, *, pipecat: bool = False
) -> tuple[list[float], Listener]:
    """When the turn of ``audio`` (transcribed ``text``) ends, seconds after its last sound.

    The turn starts on an interim, as Nova's first words start it; the final answers the
    VAD stop's Finalize. Several releases mean the turn was cut off mid-sentence. With
    ``pipecat``, Pipecat's own stop strategy decides instead of Backtalk's.
    """
    x = np.frombuffer(audio, dtype="<i2").astype(np.float64)
    n = RATE // 50
    loud = [i for i in range(0, len(x) - n + 1, n) if np.sqrt(np.mean(x[i : i + n] ** 2)) > 500]
    last_sound = lead_s + (loud[-1] + n) / RATE
    settings = Settings()
    async with Listener(settings, pipecats(settings) if pipecat else None) as ear:
        ear.on_vad_stop = nova_finals(text, text)
        await ear.say(
            silence(lead_s) + audio + silence(1.6), script={lead_s + 0.6: [interim("What")]}
        )
    return [round(t - last_sound, 3) for t in ear.at("turn stopped")], ear


#: Leading silence, s: shifts where the VAD's decisions fall in the 32 ms frame grid,
#: as the phase of a live microphone does.
PHASES = (0.5, 0.506, 0.512, 0.518, 0.524)


async def test_q1_is_answered_within_half_a_second_whatever_the_frame_phase():
    q1 = pcm("q1_what_is_learning_rate.wav")
    text = "What does the speaker say about choosing the learning rate?"
    once = [(await release_after(q1, text, p, pipecat=True))[0] for p in PHASES]
    rescored = [(await release_after(q1, text, p))[0] for p in PHASES]
    print(f"\nq1 released after its last sound: scored once {once}, re-scored {rescored}")
    # The case under test happens: scored once, at the VAD stop, smart-turn calls this
    # finished question unfinished on some phases, and the turn waits out its 1.0 s.
    assert any(r[0] > 1.0 for r in once)
    # Scored again as the silence grows, it ends within the re-scoring window on every
    # phase, and never later than scoring once.
    assert all(len(r) == 1 and r[0] <= 0.5 + 2 * FRAME_S for r in rescored)
    assert all(b[0] <= a[0] + 1e-6 for a, b in zip(once, rescored, strict=True))


async def test_a_pause_inside_the_sentence_is_not_cut_off_by_the_rescoring():
    # q1 with 0.8 s of silence spliced in after "...about choosing": smart-turn says
    # unfinished there all through the re-scoring window.
    from benchmarks._voice import spliced_stimulus

    s = spliced_stimulus("q1_what_is_learning_rate.wav", 0.8)
    releases, _ = await release_after(s.pcm, " ".join(s.texts), 0.5)
    assert len(releases) == 1 and releases[0] >= 0, releases


@pytest.mark.parametrize("wav", ["q2_why_momentum.wav", "q4_off_topic.wav", "hello.wav"])
async def test_a_finished_turn_is_scored_before_the_vad_stop(wav: str):
    # Smart-turn ran while the VAD was still waiting out its stop_secs, so at the VAD
    # stop its "finished" was ready: the turn ended on that very frame, with no model
    # run left on the answer's critical path (the time it saves is wall-clock time:
    # benchmarks/TURN_TAKING.md).
    text = "The question."
    releases, ear = await release_after(pcm(wav), text, 0.5)
    assert len(releases) == 1
    (stopped,) = ear.at("turn stopped")
    assert stopped == ear.at("vad stop")[-1]
    assert ear.smart_turn.prescores_used == 1
