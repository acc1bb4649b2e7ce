"""Turn-taking: pause the bot the moment the user cuts in, then decide what the speech was.

Pipecat 1.14 interrupts the bot when a *turn starts*: its start strategies run inside
the user aggregator, and the turn start broadcasts an ``InterruptionFrame`` that
cancels the LLM, the TTS and the output transport's queued audio. That forces a
choice between stopping at once on any speech (a "mm-hm" cuts the bot off) and
waiting for words (every real interruption is heard late). Backtalk does neither:

1. **Pause first.** While the bot speaks, :class:`BargeInUserTurnStartStrategy` reads
   Silero's per-window confidence (:class:`SpeechOnsetVADAnalyzer`, the VAD the user
   aggregator already runs) and, on the first window of speech, pauses the bot's audio
   at the output transport (:class:`OutputAudioGate`). Nothing is thrown away: the
   LLM, the TTS and the queued audio wait.
2. **Decide after.** A backchannel ("yeah", "mm-hm", "right", "okay", a laugh; see
   :func:`is_backchannel`) resumes the audio exactly where it paused, and its
   transcript never reaches the context (a ``UserBackchannelFrame`` is pushed in its
   place). So does noise that never becomes words. Any other word, or speech that
   goes on for ``interruption_s``, starts the user's turn: Pipecat's interruption
   then cancels the answer, and the gate drops the audio it was holding.

The same decision serves Nova (interim and final transcripts, Silero's VAD) and Flux
(``StartOfTurn`` proposals and ``Update`` transcripts). When the bot is silent the
strategies after this one decide as usual.

:class:`RescoringTurnAnalyzerUserTurnStopStrategy` is the end-of-turn half:
smart-turn v3 scored again as the silence after the user's speech grows, because its
verdict on a finished question can flip with tens of milliseconds of trailing silence
(``benchmarks/TURN_TAKING.md``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from loguru import logger
from pipecat.audio.filters.base_audio_filter import BaseAudioFilter
from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    FilterControlFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    SystemFrame,
    TranscriptionFrame,
    UserBackchannelFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import MetricsData
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.stt_latency import DEEPGRAM_TTFS_P99
from pipecat.transports.base_output import BaseOutputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start import BaseUserTurnStartStrategy
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy

__all__ = [
    "BACKCHANNELS",
    "STOP_WORDS",
    "BargeInUserTurnStartStrategy",
    "OutputAudioGate",
    "PrescoringSmartTurnAnalyzer",
    "RescoringTurnAnalyzerUserTurnStopStrategy",
    "SpeechOnsetVADAnalyzer",
    "TranscriptFinalizeFrame",
    "install_output_audio_gate",
    "is_backchannel",
]

# -- what a backchannel is ------------------------------------------------------------------

#: Words (and two-word phrases) a listener says to show they are following, without
#: taking the turn. The core is the most frequent "b" (acknowledge / backchannel) forms
#: of the Switchboard dialog-act corpus ("uh-huh", "yeah", "right", "oh", "okay", "yes",
#: "huh", "sure", "um-hum", "really", "oh yeah", "I see", "wow", "exactly"; Jurafsky,
#: Shriberg & Biasca, *SWBD-DAMSL Labeling Project Coder's Manual*, 1997), with the
#: spellings Deepgram writes ("mhmm", "mm-hmm") and laughter. Compared with letters
#: only, lower case ("Mm-hm." → "mmhm").
BACKCHANNELS = frozenset(
    {
        *("yeah", "yea", "yep", "yup", "yes", "ya", "yah"),
        *("mhm", "mhmm", "mmhm", "mmhmm", "mmhmmm", "mm", "mmm", "hm", "hmm", "hmmm"),
        *("uhhuh", "umhum", "umhm", "huh", "ah", "aha", "oh", "ooh"),
        *("right", "okay", "ok", "kay", "alright", "sure", "cool", "nice", "great", "wow"),
        *("really", "exactly", "totally", "true", "interesting", "gotcha", "indeed"),
        *("ha", "haha", "hahaha", "heh", "hehe"),
        *("i see", "got it", "all right", "makes sense", "of course", "oh okay", "oh yeah"),
    }
)
#: Words that always interrupt. None of them is in :data:`BACKCHANNELS` (any word not
#: there interrupts); named here so that no later edit of the vocabulary lets "wait" or
#: "no" through.
STOP_WORDS = frozenset({"wait", "stop", "no", "nope", "hold", "hang", "pause", "sorry", "but"})
#: A backchannel is at most this many words ("oh yeah I see"); longer is a turn.
BACKCHANNEL_MAX_WORDS = 4

_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")


def _words(text: str) -> list[str]:
    return [re.sub(r"[^a-z]", "", w.lower()) for w in _WORD.findall(text)]


def is_backchannel(text: str, vocabulary: Iterable[str] = BACKCHANNELS) -> bool | None:
    """Whether ``text`` (a transcript) is a backchannel.

    Args:
        text: What the recogniser heard, e.g. ``"Mm-hm."`` or ``"Wait, stop."``.
        vocabulary: Backchannel words and two-word phrases, compared letters-only and
            lower case (default :data:`BACKCHANNELS`).

    Returns:
        None when ``text`` has no words; True when it is made only of backchannel
        words and phrases, at most :data:`BACKCHANNEL_MAX_WORDS` words; False
        otherwise (any other word, a stop word, or more words).
    """
    words = [w for w in _words(text) if w]
    if not words:
        return None
    vocab = {" ".join(_words(v)) for v in vocabulary}
    if len(words) > BACKCHANNEL_MAX_WORDS or any(w in STOP_WORDS for w in words):
        return False
    i = 0
    while i < len(words):
        if " ".join(words[i : i + 2]) in vocab and i + 1 < len(words):
            i += 2
        elif words[i] in vocab:
            i += 1
        else:
            return False
    return True


# -- the user's first syllable --------------------------------------------------------------


class SpeechOnsetVADAnalyzer(SileroVADAnalyzer):
    """Silero VAD that also reports how long the user has been speaking, window by window.

    Pipecat's VAD reports a start only after ``start_secs`` (0.2 s) of speech, and
    "Wait," is 0.16 s long. This analyzer keeps, for each Silero window it scores,
    the length of the current run of windows at or above ``params.confidence`` (and of
    windows below), so a turn strategy (which sees each audio frame right after the
    user aggregator's VAD has scored it) can act on the first 32 ms window of speech.
    It is the same model run, not a second one: no extra CPU.

    Args:
        sample_rate: Audio sample rate (8000 or 16000 Hz); None: set by the pipeline.
        params: Confidence, start/stop times and minimum volume, as for Silero.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: Seconds of consecutive speech windows ending at the last window scored.
        self.speech_run_s = 0.0
        #: Seconds of consecutive non-speech windows ending at the last window scored.
        self.quiet_run_s = 0.0

    def voice_confidence(self, buffer) -> float:
        """Score one window (Silero); extend one of :attr:`speech_run_s`, :attr:`quiet_run_s`.

        Args:
            buffer: One Silero window of PCM16 audio (512 samples at 16 kHz).

        Returns:
            Silero's speech probability, 0-1.
        """
        confidence = super().voice_confidence(buffer)
        window_s = self.num_frames_required() / self.sample_rate
        if confidence >= self.params.confidence:
            self.speech_run_s += window_s
            self.quiet_run_s = 0.0
        else:
            self.speech_run_s = 0.0
            self.quiet_run_s += window_s
        return confidence


# -- the pause at the output transport -------------------------------------------------------


class OutputAudioGate(BaseAudioFilter):
    """An output audio filter that holds the bot's audio while it is paused.

    Pipecat's ``BaseOutputTransport`` plays one audio queue from one task, and runs
    ``TransportParams.audio_out_filter`` on every chunk (``audio_out_10ms_chunks``,
    40 ms by default) just before writing it. This filter makes that task wait while
    the gate is paused, so playback stops within one chunk and resumes with the very
    next one: no audio is dropped, reordered or replayed, and the text frames queued
    behind the audio (what the assistant aggregator will remember) wait with it.

    For a real interruption, :meth:`discard` keeps holding; :meth:`reopen`, called
    once the output transport has handled Pipecat's ``InterruptionFrame`` (which
    clears its queue; it then reports ``BotStoppedSpeakingFrame``), drops the chunk
    held back and lets later audio through.

    Args:
        max_pause_s: Longest a pause may last, seconds; past it the held chunk plays
            (or, when discarding, is dropped) and audio flows again. A safety net: the
            strategy always decides sooner.
        inner: An output audio filter to run after this one (the transport's own).
    """

    def __init__(self, *, max_pause_s: float = 4.0, inner: BaseAudioFilter | None = None):
        self.max_pause_s = max_pause_s
        self.inner = inner
        self._open = asyncio.Event()
        self._open.set()
        self._discard = False  # a real interruption: hold, then drop
        self._holding = False  # a chunk is waiting in filter()
        self._drop = False  # drop the chunk waiting in filter()
        self._paused_at = 0.0
        #: ``(time.monotonic() paused, resumed or None)`` of each pause.
        self.pauses: list[tuple[float, float | None]] = []
        #: Chunks dropped after interruptions.
        self.dropped = 0

    @property
    def paused(self) -> bool:
        """Whether audio is being held."""
        return not self._open.is_set()

    def pause(self) -> None:
        """Hold the next chunk (and everything after it) until :meth:`resume`."""
        if self._open.is_set():
            self._open.clear()
            self._paused_at = time.monotonic()
            self.pauses.append((self._paused_at, None))
            logger.debug(f"{self}: paused (monotonic {self._paused_at:.3f})")

    def resume(self) -> None:
        """Play on from the chunk held back (not after :meth:`discard`)."""
        if not self._discard:
            self._release()

    def discard(self) -> None:
        """A real interruption: keep holding; :meth:`reopen` drops what is held."""
        self._discard = True
        self.pause()

    def reopen(self) -> None:
        """Drop the chunk held back, if any, and let audio through again.

        Called when the output transport reports ``BotStoppedSpeakingFrame`` while
        audio is held: only the interruption's queue reset can report it then, so the
        held chunk belongs to the interrupted answer.
        """
        if self.paused:
            self._drop = self._holding
            self._discard = False
            self._release()

    def _release(self) -> None:
        if not self._open.is_set():
            self._open.set()
            if self.pauses and self.pauses[-1][1] is None:
                self.pauses[-1] = (self.pauses[-1][0], time.monotonic())

    async def start(self, sample_rate: int):
        """Start the inner filter (``sample_rate``: the output's, Hz)."""
        if self.inner:
            await self.inner.start(sample_rate)

    async def stop(self):
        """Let any held chunk go (the transport is closing) and stop the inner filter."""
        self._release()
        if self.inner:
            await self.inner.stop()

    async def process_frame(self, frame: FilterControlFrame):
        """Pass filter control frames to the inner filter."""
        if self.inner:
            await self.inner.process_frame(frame)

    async def filter(self, audio: bytes) -> bytes:
        """Wait while paused; return ``audio`` (through the inner filter), or b"".

        Args:
            audio: One output chunk of PCM16 audio.

        Returns:
            The chunk to write; b"" (a dropped chunk) makes the transport skip it.
        """
        if not self._open.is_set():
            self._holding = True
            left = self.max_pause_s - (time.monotonic() - self._paused_at)
            try:
                await asyncio.wait_for(self._open.wait(), max(0.0, left))
            except TimeoutError:
                logger.warning(f"{self}: paused for {self.max_pause_s}s; audio flows again")
                self._drop = self._discard
                self._discard = False
                self._release()
            finally:
                self._holding = False
        if self._drop:
            self._drop = False
            self.dropped += 1
            return b""
        return await self.inner.filter(audio) if self.inner else audio


def install_output_audio_gate(output: BaseOutputTransport) -> OutputAudioGate | None:
    """Put an :class:`OutputAudioGate` on ``output``'s audio, before its pipeline starts.

    Pipecat's output transports keep the ``TransportParams`` they were built with
    (``BaseOutputTransport._params``; there is no public accessor in 1.14) and read
    ``audio_out_filter`` from them when the pipeline is set up, so a gate set here, at
    build time, is the one the transport runs. A filter the transport already had runs
    after the gate.

    Args:
        output: The transport's output (``transport.output()``).

    Returns:
        The gate, or None if ``output`` keeps no ``TransportParams``.
    """
    params = getattr(output, "_params", None)
    if not isinstance(params, TransportParams):
        return None
    if isinstance(params.audio_out_filter, OutputAudioGate):
        return params.audio_out_filter
    gate = OutputAudioGate(inner=params.audio_out_filter)
    params.audio_out_filter = gate
    return gate


class TranscriptFinalizeFrame(SystemFrame):
    """Asks the STT, upstream, for the final transcript of the audio it has had, now.

    What the VAD's stop does for a turn (Pipecat's Deepgram service sends ``Finalize``
    on ``VADUserStoppedSpeakingFrame``), asked sooner: the barge-in decision needs the
    words of a short sound over the bot, and the VAD stops 0.2 s after the sound.
    Services that do not know it pass it on (the input transport drops it).
    """


# -- the decision ---------------------------------------------------------------------------


@dataclass
class _Overlap:
    """The user speaking while the bot does: what has been heard so far (audio seconds)."""

    started_s: float
    last_speech_s: float
    decided: str | None = None  # "backchannel" | "no words"
    words_pending: bool = False  # Flux proposed a turn: words are on their way
    finals: str = ""
    finalize_asked: bool = False  # for the current stretch of quiet


class BargeInUserTurnStartStrategy(BaseUserTurnStartStrategy):
    """While the bot speaks: pause it at the user's first syllable, then resume or yield.

    Put it first in ``UserTurnStrategies.start``. While the bot speaks (from
    ``BotStartedSpeakingFrame`` to ``BotStoppedSpeakingFrame``), and until the speech
    that overlapped it has been decided, it consumes the frames that would start a turn
    (``VADUserStartedSpeakingFrame``, transcriptions, Flux proposals) so that the
    strategies after it do not act on them; otherwise it passes everything on.

    * After ``onset_s`` of speech (Silero windows from ``vad``), or on any VAD start,
      transcription or Flux ``StartOfTurn``, it pauses the bot (``gate``).
    * Words that are all backchannel (:func:`is_backchannel`) resume it; a final
      transcript of them is dropped from the user aggregation and pushed on as a
      ``UserBackchannelFrame`` instead, so it never reaches the LLM context.
    * After ``finalize_after_s`` of quiet it asks the STT for the final transcript
      (:class:`TranscriptFinalizeFrame`, upstream) instead of waiting for the VAD's
      stop; sound without words resumes the bot once the user has been quiet for
      ``transcript_wait_s`` (no transcript came).
    * Any other word, or ``interruption_s`` of speech without a backchannel, starts
      the user turn with an interruption: Pipecat cancels the LLM and TTS, the output
      transport drops its queued audio, and the gate drops what it held.

    Time is counted in seconds of microphone audio, so the decisions do not depend on
    how busy the machine is.

    Args:
        vad: The user aggregator's VAD (its speech run is read after each frame).
        gate: The output transport's :class:`OutputAudioGate`.
        onset_s: Speech, seconds, that pauses the bot (0.032: one Silero window at the
            VAD's confidence).
        interruption_s: Speech over the bot, seconds, that is an interruption without
            waiting for words (longer than any backchannel; the longest fixture,
            "Mm-hm.", is 0.9 s).
        transcript_wait_s: Quiet, seconds, after which sound that brought no words is
            taken for noise. Default: Pipecat's p99 of Deepgram's time to a final
            transcript after speech (``DEEPGRAM_TTFS_P99``, 0.35 s).
        finalize_after_s: Quiet, seconds, after which the STT is asked for the final
            transcript (0.096: three Silero windows, half the VAD's ``stop_secs``).
        resume_without_words_s: If set, seconds after the pause at which the bot
            resumes while no word has been transcribed yet, the user perhaps still
            speaking (as LiveKit Agents resume a "false interruption"); words then still
            interrupt it. None (the default): it waits for the words or the quiet.
        settle_s: Quiet, seconds, after a decided backchannel or noise before the
            overlap is over (late transcripts of it are still consumed until then).
        vocabulary: Backchannel words and phrases (default :data:`BACKCHANNELS`).
    """

    def __init__(
        self,
        *,
        vad: SpeechOnsetVADAnalyzer | None,
        gate: OutputAudioGate | None,
        onset_s: float = 0.032,
        interruption_s: float = 1.5,
        transcript_wait_s: float = DEEPGRAM_TTFS_P99,
        finalize_after_s: float = 0.096,
        resume_without_words_s: float | None = None,
        settle_s: float = 1.0,
        vocabulary: Iterable[str] = BACKCHANNELS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._vad = vad
        self._gate = gate
        self._onset_s = onset_s
        self._interruption_s = interruption_s
        self._transcript_wait_s = transcript_wait_s
        self._finalize_after_s = finalize_after_s
        self._resume_without_words_s = resume_without_words_s
        self._settle_s = settle_s
        self._vocabulary = frozenset(vocabulary)
        self._bot_speaking = False
        self._user_turn = False
        self._clock_s = 0.0
        self._overlap: _Overlap | None = None
        #: What each overlap turned out to be, in order: "backchannel", "no words",
        #: "interruption" (for logs and tests).
        self.decisions: list[str] = []

    @property
    def resolves_proposed_turn_start_frames(self) -> bool:
        """True: Flux's ``StartOfTurn`` over the bot is decided here."""
        return True

    async def handle_user_turn_started(self):
        """A user turn started (here or elsewhere): the overlap is over."""
        self._overlap = None
        self._user_turn = True

    async def handle_user_turn_stopped(self):
        """The user turn ended: speech over the bot is decided here again."""
        self._user_turn = False

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        """Follow the bot and the user; decide speech over the bot (see the class)."""
        if isinstance(frame, InputAudioRawFrame):
            await self._on_audio(frame)
            return ProcessFrameResult.CONTINUE
        if isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
            if self._gate:
                self._gate.reopen()  # after an interruption: the queue has been cleared
        elif isinstance(frame, EndFrame | CancelFrame | UserStoppedSpeakingFrame):
            if self._gate:
                self._gate.reopen()
        if self._user_turn or not (self._bot_speaking or self._overlap):
            return ProcessFrameResult.CONTINUE
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._begin()
            return ProcessFrameResult.STOP
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            return ProcessFrameResult.STOP
        if isinstance(frame, ProposedUserStartedSpeakingFrame):
            self._begin().words_pending = True
            return ProcessFrameResult.STOP
        if isinstance(frame, TranscriptionFrame | InterimTranscriptionFrame):
            await self._on_words(frame)
            return ProcessFrameResult.STOP
        return ProcessFrameResult.CONTINUE

    def _begin(self) -> _Overlap:
        if self._overlap is None:
            self._overlap = _Overlap(started_s=self._clock_s, last_speech_s=self._clock_s)
            if self._bot_speaking and self._gate:
                self._gate.pause()
        return self._overlap

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        self._clock_s += len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        run_s = self._vad.speech_run_s if self._vad else 0.0
        o = self._overlap
        if o is None:
            if self._bot_speaking and not self._user_turn and run_s >= self._onset_s:
                self._begin()
            return
        if run_s > 0:
            if o.decided and self._clock_s - o.last_speech_s > self._transcript_wait_s:
                # New speech after a decided backchannel: a new overlap.
                self._overlap = None
                self.decisions.append(o.decided)
                if run_s >= self._onset_s and self._bot_speaking:
                    self._begin()
                return
            o.last_speech_s = self._clock_s
            o.finalize_asked = False
        quiet_s = self._clock_s - o.last_speech_s
        if o.decided is None:
            if o.last_speech_s - o.started_s >= self._interruption_s:
                await self._interrupt("speech went on")
                return
            if quiet_s >= self._finalize_after_s - 1e-9 and not o.finalize_asked:
                o.finalize_asked = True
                await self.push_frame(TranscriptFinalizeFrame(), FrameDirection.UPSTREAM)
            if (
                self._resume_without_words_s is not None
                and self._clock_s - o.started_s >= self._resume_without_words_s
                and self._gate
                and self._gate.paused
                and not o.words_pending
            ):
                self._gate.resume()  # undecided still: words can still interrupt
            if quiet_s >= self._transcript_wait_s and not o.words_pending:
                o.decided = "no words"
                if self._gate:
                    self._gate.resume()
            elif quiet_s >= self._settle_s:
                o.decided = "no words"  # proposed by Flux, but no words came
                if self._gate:
                    self._gate.resume()
        elif quiet_s >= self._settle_s:
            self.decisions.append(o.decided)
            self._overlap = None

    async def _on_words(self, frame: TranscriptionFrame | InterimTranscriptionFrame) -> None:
        o = self._overlap
        final = isinstance(frame, TranscriptionFrame)
        heard = f"{o.finals} {frame.text}".strip() if o else frame.text
        verdict = is_backchannel(heard, self._vocabulary)
        if verdict is None:
            return
        if verdict is False:
            await self._interrupt(f"words: {heard!r}")
            return
        if o is not None:
            # A backchannel: the bot goes on. (Words of one already decided, arriving
            # late — Flux's EndOfTurn — need no pause.)
            o.words_pending = False
            o.decided = "backchannel"
            if final:
                o.finals = heard
            if self._gate:
                self._gate.resume()
        if final:
            # Out of the user aggregation (it appended the final before we saw it), and
            # on as what it was.
            await self.trigger_reset_aggregation()
            await self.push_frame(
                UserBackchannelFrame(
                    text=frame.text, user_id=frame.user_id, timestamp=frame.timestamp
                )
            )

    async def _interrupt(self, why: str) -> None:
        logger.debug(f"{self}: interruption ({why})")
        self.decisions.append("interruption")
        self._overlap = None
        if self._gate and (self._bot_speaking or self._gate.paused):
            self._gate.discard()
        await self.trigger_user_turn_started()


# -- end of turn ----------------------------------------------------------------------------

#: Silence, seconds (four Silero windows), after which smart-turn is scored ahead of the
#: VAD stop (six windows): its verdicts there match those at the stop on every fixture
#: (benchmarks/TURN_TAKING.md).
PRESCORE_AFTER_S = 0.128


class PrescoringSmartTurnAnalyzer(LocalSmartTurnAnalyzerV3):
    """Smart-turn v3, scored while the VAD is still waiting out its ``stop_secs``.

    Pipecat runs the model when the VAD reports the user stopped (0.2 s of silence),
    and waits for it (50-110 ms on a 2-core machine) before a finished turn ends: the
    model's time is on every answer's critical path. This analyzer starts the same
    inference, in the model's own thread, as soon as Silero has scored
    ``prescore_after_s`` of non-speech (``vad.quiet_run_s``), on the audio so far; at
    the VAD stop a "finished" from it ends the turn at once. If the user speaks again
    it is dropped; an "unfinished" is scored again at the stop, with the longer
    silence, as Pipecat would.

    Relies on the 1.14 base class's ``_process_speech_segment``, ``_audio_buffer``,
    ``_speech_triggered``, ``_model_executor`` and ``_clear``.

    Args:
        vad: The user aggregator's VAD (its quiet run starts the early score).
        prescore_after_s: Silence, seconds, before the early score.
        **kwargs: For ``LocalSmartTurnAnalyzerV3`` (``params=SmartTurnParams(...)``).
    """

    def __init__(
        self,
        *,
        vad: SpeechOnsetVADAnalyzer,
        prescore_after_s: float = PRESCORE_AFTER_S,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._vad = vad
        self._prescore_after_s = prescore_after_s
        self._prescore: asyncio.Future | None = None
        #: Early scores started, and how many ended a turn.
        self.prescores = 0
        self.prescores_used = 0

    def append_audio(self, buffer: bytes, is_speech: bool) -> EndOfTurnState:
        """Buffer audio (Pipecat's); start the early score once enough silence is heard."""
        state = super().append_audio(buffer, is_speech)
        if state == EndOfTurnState.COMPLETE or self._vad.speech_run_s > 0:
            self._prescore = None  # the turn ended on its timeout, or the user speaks
        elif (
            is_speech
            and self._speech_triggered
            and self._prescore is None
            and self._vad.quiet_run_s >= self._prescore_after_s - 1e-9
        ):
            self.prescores += 1
            self._prescore = asyncio.get_running_loop().run_in_executor(
                self._model_executor, self._process_speech_segment, list(self._audio_buffer)
            )
        return state

    async def analyze_end_of_turn(self) -> tuple[EndOfTurnState, MetricsData | None]:
        """The early score if it says finished; else a score now (Pipecat's)."""
        prescore, self._prescore = self._prescore, None
        if prescore is not None:
            state, result = await prescore
            if state == EndOfTurnState.COMPLETE:
                self.prescores_used += 1
                self._clear(state)
                return state, result
        return await super().analyze_end_of_turn()

    def clear(self):
        """Reset the analyzer (Pipecat's), dropping any early score."""
        self._prescore = None
        super().clear()


class RescoringTurnAnalyzerUserTurnStopStrategy(TurnAnalyzerUserTurnStopStrategy):
    """Pipecat's smart-turn stop strategy, with the model asked again as the silence grows.

    Pipecat scores the turn once, at the VAD stop (``stop_secs``, 0.2 s, after the
    last speech); "unfinished" then waits the analyzer's ``stop_secs`` (1.0 s in
    Backtalk). Smart-turn v3's verdict on a finished question can flip with tens of
    milliseconds of trailing silence: on q1 ("...choosing the learning rate?") its
    probability goes 0.14, 0.20, 0.59, 0.55, 0.25, 0.80 over 0.20-0.36 s of silence
    (``benchmarks/TURN_TAKING.md``), so whether the bot answered at 0.3 s or 1.2 s
    depended on where the VAD stop fell in the audio frames. While the model says
    unfinished, this strategy scores again every ``rescore_every_s`` of silence, up to
    ``rescore_until_s`` after the speech; any "finished" ends the turn as Pipecat's
    first verdict would. The sentence fragments of the spliced-pause set stay
    "unfinished" (p ≤ 0.07) all through that window.

    It relies on the 1.14 base class's turn state (``_vad_stopped``,
    ``_turn_complete``) and its ``_maybe_trigger_user_turn_stopped``.

    Args:
        turn_analyzer: The smart-turn analyzer.
        rescore_every_s: Silence between scores, seconds (0.064: two Silero windows).
        rescore_until_s: Silence after the speech, seconds, past which the model is
            not asked again (0 turns re-scoring off).
    """

    def __init__(self, *, rescore_every_s: float = 0.064, rescore_until_s: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self._rescore_every_s = rescore_every_s
        self._rescore_until_s = rescore_until_s
        self._silence_s: float | None = None
        self._next_rescore_s = 0.0
        #: Scores made after the first one, and how many said "finished".
        self.rescores = 0
        self.rescored_complete = 0

    async def _handle_vad_user_started_speaking(self, frame: VADUserStartedSpeakingFrame):
        self._silence_s = None
        await super()._handle_vad_user_started_speaking(frame)

    async def _handle_vad_user_stopped_speaking(self, frame: VADUserStoppedSpeakingFrame):
        self._silence_s = frame.stop_secs
        self._next_rescore_s = frame.stop_secs + self._rescore_every_s
        await super()._handle_vad_user_stopped_speaking(frame)

    async def _handle_input_audio(self, frame: InputAudioRawFrame):
        await super()._handle_input_audio(frame)
        if self._silence_s is None or not self._vad_stopped or self._turn_complete:
            return
        self._silence_s += len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
        if self._silence_s > self._rescore_until_s + 1e-9:
            self._silence_s = None
        elif self._silence_s >= self._next_rescore_s - 1e-9:
            self._next_rescore_s += self._rescore_every_s
            self.rescores += 1
            state, prediction = await self._turn_analyzer.analyze_end_of_turn()
            await self._handle_prediction_result(prediction)
            if state == EndOfTurnState.COMPLETE:
                self.rescored_complete += 1
                self._silence_s = None
                self._turn_complete = True
                await self._maybe_trigger_user_turn_stopped()
