"""A guard that keeps the bot from reading out its own instructions.

Prompt rules ask the model not to reveal its instructions, but a model can be talked
into it. :class:`PromptLeakGuard`, placed between the LLM and the TTS, lets the
streamed reply through with a lag of ``shingle_words - 1`` words and blocks any run
of ``shingle_words`` consecutive words that appears in the protected text: the held
words are dropped with the rest of their sentence, and the bot says a short refusal
instead. A leak needs a run of that length, so holding fewer words than that is
enough to stop one; the lag costs a few tokens of time (tens of milliseconds at
usual LLM speeds), not a sentence.
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

_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"[.!?\n]")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


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
        self.blocked = 0
        self._register_event_handler("on_leak_blocked")
        self._reset()

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Pass LLM text on with a short lag, minus anything that quotes the prompt."""
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
        words = [*self._tail, *_words(text)]
        return any(
            tuple(words[i : i + self._n]) in self._shingles for i in range(len(words) - self._n + 1)
        )

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
        if self.leaks(self._pending):
            self.blocked += 1
            logger.warning(f"{self}: blocked reply text that quoted the instructions")
            await self._call_event_handler("on_leak_blocked", self._pending)
            self._skipping = _SENTENCE_END.search(self._pending) is None
            self._pending = ""
            self._tail = []
            if not self._replaced:
                self._replaced = True
                await self._release(self._replacement, template, direction)
            return
        spans = list(_WORD.finditer(self._pending.lower()))
        if final or len(spans) < self._n - 1:
            cut = len(self._pending) if final else 0
        else:
            cut = spans[-(self._n - 1)].start()  # hold the last n-1 words
        if cut:
            released, self._pending = self._pending[:cut], self._pending[cut:]
            self._tail = [*self._tail, *_words(released)][-(self._n - 1) :]
            await self._release(released, template, direction)

    async def _release(
        self, text: str, template: LLMTextFrame | None, direction: FrameDirection
    ) -> None:
        frame = LLMTextFrame(text)
        if template is not None:
            frame.skip_tts = template.skip_tts
        await self.push_frame(frame, direction)

    def _reset(self) -> None:
        self._pending = ""
        self._tail: list[str] = []
        self._replaced = False
        self._skipping = False
