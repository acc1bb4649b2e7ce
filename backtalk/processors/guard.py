"""A guard that keeps the bot from reading out its own instructions.

Prompt rules ask the model not to reveal its instructions, but a model can be talked
into it. :class:`PromptLeakGuard`, placed between the LLM and the TTS, blocks any run
of ``shingle_words`` consecutive words that appears in the protected text: the quoting
words are dropped with the rest of their sentence (the words before them are spoken),
and the bot says a short refusal instead.

Streamed text passes as it arrives. The guard holds back only what could still become
a leak: the trailing run of words that begins some protected run (the same idea as
stop sequences in a streaming LLM server, which hold only a partial match), and a last
word that may still be growing. Every leak starts with such a run, so nothing that
could complete one is released, and an ordinary answer reaches the TTS with no lag —
the sentence aggregator sees a full stop as soon as the LLM sends it (after a full stop
the first letter of a held word goes ahead: Pipecat's sentence aggregator closes a
sentence only when it sees the next non-space character). (Holding a fixed
``shingle_words - 1`` words, as this guard first did, delayed every first sentence by
seven words: ~120 ms measured at gpt-4o-mini's streaming speed; see ``benchmarks/VOICE.md``.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["PromptLeakGuard"]

_WORD = re.compile(r"[a-z0-9']+", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?\n]")
_AFTER_SENTENCE = re.compile(r"[.!?][\"')\]]*\s+$")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


class PromptLeakGuard(FrameProcessor):
    """Blocks reply text that quotes the protected text.

    Events:
        on_leak_blocked(processor, text: str): text was blocked.

    Args:
        protected: Texts that must never be read out (system prompts, personas).
        shingle_words: Length of the word run that counts as quoting, words. 8 words
            in a row is far beyond chance overlap in ordinary answers.
        replacement: What is said instead of a blocked sentence.
        **kwargs: Passed to :class:`FrameProcessor`.
    """

    def __init__(
        self,
        protected: Sequence[str],
        *,
        shingle_words: int = 8,
        replacement: str = " Sorry, I can't share my instructions. ",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._n = shingle_words
        self._replacement = replacement
        self._shingles = {
            tuple(words[i : i + self._n])
            for text in protected
            for words in [_words(text)]
            for i in range(len(words) - self._n + 1)
        }
        # Every proper prefix of a protected run, with the words that can follow it: a
        # trailing run of reply words found here could still grow into a leak, so it is held.
        self._continuations: dict[tuple[str, ...], set[str]] = {}
        for run in self._shingles:
            for k in range(1, self._n):
                self._continuations.setdefault(run[:k], set()).add(run[k])
        self.blocked = 0
        self._register_event_handler("on_leak_blocked")
        self._reset()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Pass LLM text on as it arrives, holding only what could still quote the prompt."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseStartFrame | InterruptionFrame):
            self._reset()
        elif isinstance(frame, LLMTextFrame):
            await self._feed(frame.text, frame, direction)
            return
        elif isinstance(frame, LLMFullResponseEndFrame):
            await self._feed("", None, direction, final=True)
        await self.push_frame(frame, direction)

    def leaks(self, text: str) -> bool:
        """True when ``text``, following what was already released, quotes the prompt."""
        return self._leak_start(text) is not None

    def _leak_start(self, text: str) -> int | None:
        """Where in ``text`` the first quoting run starts (0: in released text), or None."""
        spans = list(_WORD.finditer(text))
        words = [*self._tail, *(m.group().lower() for m in spans)]
        for i in range(len(words) - self._n + 1):
            if tuple(words[i : i + self._n]) in self._shingles:
                first = i - len(self._tail)
                return spans[first].start() if first > 0 else 0
        return None

    async def _feed(
        self,
        text: str,
        template: LLMTextFrame | None,
        direction: FrameDirection,
        *,
        final: bool = False,
    ) -> None:
        self._pending += text
        if self._skipping:
            # Drop the rest of a blocked sentence.
            end = _SENTENCE_END.search(self._pending)
            if end is None:
                self._pending = ""
                return
            self._pending = self._pending[end.end() :]
            self._skipping = False
        start = self._leak_start(self._pending)
        if start is not None:
            if start > self._sent:  # words before the quoting run are safe
                await self._release(self._pending[self._sent : start], template, direction)
            blocked = self._pending[start:]
            self.blocked += 1
            logger.warning(f"{self}: blocked reply text that quoted the instructions")
            await self._call_event_handler("on_leak_blocked", blocked)
            self._skipping = _SENTENCE_END.search(blocked) is None
            self._pending = ""
            self._sent = 0
            self._tail = []
            if not self._replaced:
                self._replaced = True
                await self._release(self._replacement, template, direction)
            return
        cut = len(self._pending) if final else self._safe_prefix_length()
        if cut:
            released, self._pending = self._pending[:cut], self._pending[cut:]
            self._tail = [*self._tail, *_words(released)][-(self._n - 1) :]
            await self._release(released[self._sent :], template, direction)
            self._sent = 0
        if self._pending and not self._sent and _AFTER_SENTENCE.search(self._released):
            # Pipecat's sentence aggregator confirms a sentence end when it sees the next
            # non-space character. A held word there would hold back the whole sentence,
            # so its first character goes ahead: one letter quotes nothing (if the word
            # does start a quote, the letter is followed by the refusal).
            self._sent = 1
            await self._release(self._pending[0], template, direction)

    def _safe_prefix_length(self) -> int:
        """How many leading characters of the pending text cannot be part of a leak."""
        spans = list(_WORD.finditer(self._pending))
        # A word touching the end of the text may be half a word ("instruc"): held.
        growing = (
            spans[-1].group().lower() if spans and spans[-1].end() == len(self._pending) else None
        )
        complete = spans[:-1] if growing else spans
        words = [*self._tail, *(m.group().lower() for m in complete)]
        held = 0  # the longest trailing run of complete words that starts a protected run
        for k in range(min(self._n - 1, len(words)), 0, -1):
            following = self._continuations.get(tuple(words[-k:]))
            if following and (growing is None or any(w.startswith(growing) for w in following)):
                held = k
                break
        first_held = len(complete) - held
        if first_held < 0:  # the run began in text already released: hold all of it
            return 0
        if first_held < len(complete):
            return complete[first_held].start()
        return spans[-1].start() if growing else len(self._pending)

    async def _release(
        self, text: str, template: LLMTextFrame | None, direction: FrameDirection
    ) -> None:
        if not text:
            return
        self._released = (self._released + text)[-8:]
        frame = LLMTextFrame(text)
        if template is not None:
            frame.skip_tts = template.skip_tts
        await self.push_frame(frame, direction)

    def _reset(self) -> None:
        self._pending = ""
        self._sent = 0  # leading characters of the pending text already pushed on
        self._released = ""  # the end of the text pushed on
        self._tail: list[str] = []
        self._replaced = False
        self._skipping = False
