"""What was heard is what is remembered: the bot's words reach the context as they are played.

Pipecat's assistant aggregator builds the bot's context message from the
``TTSTextFrame`` frames that come out of the output transport. A TTS service with word
timestamps sends one per word at the moment it is spoken; Deepgram Aura has none, so
Pipecat sends each sentence as one frame, queued with the sentence's audio and let
through *before* that audio plays (a later sentence's text can even overtake an
earlier sentence's audio). When the user interrupts, the context then holds sentences
the user never heard, and "what did you just say?" is answered with them.

:class:`HeardTextProcessor`, placed between ``transport.output()`` and the assistant
aggregator, holds those sentences back and releases them word by word as the audio
that speaks them is played (the output transport pushes each chunk on after writing
it). Where a word ends in the audio is estimated from its characters: the sentence
audio of each finished TTS context (``TTSStartedFrame`` … ``TTSStoppedFrame``) gives
the voice's seconds per character, which the next answer uses. On an interruption the
words not yet played are dropped, so the context keeps what was heard, to about a
word.

Frames of other kinds that come after held text wait behind it, in order (so the
aggregator still sees an answer's end after its words); system frames pass at once.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    StartFrame,
    SystemFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["DEFAULT_SECS_PER_CHAR", "HeardTextProcessor"]

#: Seconds of speech per character before the first answer has calibrated it: about
#: 150 words a minute (the usual conversational rate) at ~6 characters a word with its
#: space. Replaced after the first TTS context (in Backtalk, the greeting).
DEFAULT_SECS_PER_CHAR = 0.067

_WORD = re.compile(r"\S+\s*")


class HeardTextProcessor(FrameProcessor):
    """Releases the bot's spoken text to the assistant aggregator as its audio plays.

    Place it right after ``transport.output()`` and before the assistant aggregator.

    Args:
        secs_per_char: Seconds of audio per spoken character until a finished TTS
            context has measured it (default :data:`DEFAULT_SECS_PER_CHAR`).
        spoken_text: Maps a ``TTSTextFrame``'s text to what the TTS actually says (for
            example without markup the TTS strips); its length is what is timed.
        **kwargs: For ``FrameProcessor``.
    """

    def __init__(
        self,
        *,
        secs_per_char: float = DEFAULT_SECS_PER_CHAR,
        spoken_text: Callable[[str], str] = lambda text: text,
        **kwargs,
    ):
        super().__init__(**kwargs)
        #: The current estimate of seconds of audio per spoken character.
        self.secs_per_char = secs_per_char
        self._spoken_text = spoken_text
        # Held frames in order: (word frame, audio seconds by which it is heard) or
        # (other frame, None).
        self._held: deque[tuple[Frame, float | None]] = deque()
        self._played_s = 0.0  # audio of the current TTS context played so far
        self._chars = 0  # spoken characters of the current context so far
        #: Words dropped because the user interrupted before hearing them.
        self.dropped_words = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Hold, pace and release the bot's text; pass everything else in order."""
        await super().process_frame(frame, direction)
        if direction != FrameDirection.DOWNSTREAM or isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            return
        if isinstance(frame, InterruptionFrame | CancelFrame):
            await self._drop_unheard()
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            await self._release(everything=True)  # all audio was played before EndFrame
            await self.push_frame(frame, direction)
        elif isinstance(frame, SystemFrame):
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSStartedFrame):
            await self._release(everything=True)
            self._played_s, self._chars = 0.0, 0
            await self._hold_or_push(frame)
        elif isinstance(frame, TTSTextFrame):
            self._hold_words(frame)
            await self._release()
        elif isinstance(frame, TTSAudioRawFrame):
            self._played_s += len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)
            await self.push_frame(frame, direction)
            await self._release()
        elif isinstance(frame, TTSStoppedFrame):
            if self._chars and self._played_s:
                self.secs_per_char = self._played_s / self._chars
            await self._release(everything=True)
            await self.push_frame(frame, direction)
        else:
            await self._hold_or_push(frame)

    def _hold_words(self, frame: TTSTextFrame) -> None:
        """Split a sentence into word frames, each due when its last character is heard.

        A word's end is the spoken length of the sentence up to it (``spoken_text`` of
        that prefix), so markup the TTS drops takes no time; a piece of markup is due
        with the spoken word after it.
        """
        # Pieces joined the way the aggregator joins frames: exactly as written when the
        # frame carries its own spaces, else as words it puts spaces between (a space
        # after each: the pause between sentences is spoken time too).
        spaced = frame.includes_inter_frame_spaces
        if spaced:
            words = _WORD.findall(frame.text) or [frame.text]
            words[0] = frame.text[: len(frame.text) - len(frame.text.lstrip())] + words[0]
            joiner, tail = "", 0
        else:
            words = frame.text.split() or [frame.text]
            joiner, tail = " ", 1
        ends = [len(self._spoken_text(joiner.join(words[: i + 1]))) for i in range(len(words))]
        for i in range(len(ends) - 2, -1, -1):
            ends[i] = min(ends[i], ends[i + 1])
        for word, end in zip(words, ends, strict=True):
            piece = TTSTextFrame(
                word,
                text_type=frame.text_type,
                segment_id=frame.segment_id,
                context_id=frame.context_id,
            )
            piece.append_to_context = frame.append_to_context
            piece.includes_inter_frame_spaces = spaced
            piece.will_be_spoken = frame.will_be_spoken
            piece.interruptible = frame.interruptible
            self._held.append((piece, (self._chars + end) * self.secs_per_char))
        self._chars += (ends[-1] if ends else 0) + tail

    async def _hold_or_push(self, frame: Frame) -> None:
        if self._held:
            self._held.append((frame, None))
        else:
            await self.push_frame(frame)

    async def _release(self, *, everything: bool = False) -> None:
        """Push held frames whose audio has been played (all of them with ``everything``)."""
        while self._held:
            frame, due_s = self._held[0]
            if not everything and due_s is not None and due_s > self._played_s + 1e-6:
                return
            self._held.popleft()
            await self.push_frame(frame)

    async def _drop_unheard(self) -> None:
        """An interruption: forget what was not played; uninterruptible frames stay held."""
        held, self._held = self._held, deque()
        for frame, due_s in held:
            if frame.interruptible:
                self.dropped_words += due_s is not None
            else:
                self._held.append((frame, due_s))
