"""A guard that keeps the bot from reading out its own instructions.

Prompt rules ask the model not to reveal its instructions, but a model can be talked
into it. :class:`PromptLeakGuard`, placed between the LLM and the TTS, holds the
streamed reply sentence by sentence (the TTS aggregates whole sentences before
speaking anyway, so this adds no delay to the first audio) and replaces any sentence
that repeats a run of ``shingle_words`` consecutive words from the protected text.
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
_SENTENCE_END = re.compile(r"[.!?\n]+[\"')\]]*\s")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class PromptLeakGuard(FrameProcessor):
    """Replaces reply sentences that quote the protected text.

    Events:
        on_leak_blocked(processor, sentence: str): a sentence was replaced.

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
        replacement: str = "Sorry, I can't share my instructions. ",
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
        self._buffer = ""
        self._tail: list[str] = []
        self._replaced = False
        self.blocked = 0
        self._register_event_handler("on_leak_blocked")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Hold LLM text per sentence and pass clean sentences on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMFullResponseStartFrame | InterruptionFrame):
            self._reset()
        elif isinstance(frame, LLMTextFrame):
            self._buffer += frame.text
            for match in list(_SENTENCE_END.finditer(self._buffer))[-1:]:
                complete, self._buffer = self._buffer[: match.end()], self._buffer[match.end() :]
                await self._release(complete, frame, direction)
            return
        elif isinstance(frame, LLMFullResponseEndFrame) and self._buffer:
            text, self._buffer = self._buffer, ""
            await self._release(text, LLMTextFrame(text), direction)
        await self.push_frame(frame, direction)

    def leaks(self, text: str) -> bool:
        """True when ``text`` (after the reply so far) quotes the protected text."""
        words = [*self._tail, *_words(text)]
        return any(
            tuple(words[i : i + self._n]) in self._shingles for i in range(len(words) - self._n + 1)
        )

    async def _release(self, text: str, template: LLMTextFrame, direction: FrameDirection):
        if self.leaks(text):
            self.blocked += 1
            logger.warning(f"{self}: blocked a reply sentence that quoted the instructions")
            await self._call_event_handler("on_leak_blocked", text)
            if not self._replaced:
                self._replaced = True
                await self.push_frame(LLMTextFrame(self._replacement), direction)
        else:
            frame = LLMTextFrame(text)
            frame.skip_tts = template.skip_tts
            await self.push_frame(frame, direction)
        self._tail = [*self._tail, *_words(text)][-(self._n - 1) :]

    def _reset(self) -> None:
        self._buffer = ""
        self._tail = []
        self._replaced = False
