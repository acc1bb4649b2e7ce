"""A bound on what one user turn may send to the LLM (reliability case S9).

A spoken turn is bounded by how long anyone talks, but text typed into the page (RTVI
``send-text``) or sent by a script is not: one pasted megabyte would be embedded,
sent to the LLM on this turn and, as part of the history, on every turn after it.
"""

from __future__ import annotations

from loguru import logger
from pipecat.frames.frames import Frame, LLMContextFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

__all__ = ["MAX_USER_CHARS", "UserTextLimit"]

#: Default cap on one user message, characters: about 2.5 minutes of speech (150 words a
#: minute, ~5.5 characters a word with the space), longer than any question.
MAX_USER_CHARS = 2000

#: Appended to a message that was cut, so the model knows it saw only the start.
CUT_NOTE = " [… the rest of this message was cut: it was longer than {limit} characters]"


class UserTextLimit(FrameProcessor):
    """Cuts the latest user message of each ``LLMContextFrame`` to ``max_chars``.

    Put it right after the user context aggregator. The message is cut in the shared
    context itself, so later turns carry the cut version too, and the cut is marked
    for the model (:data:`CUT_NOTE`). Messages whose content is a list of parts
    (images, audio) are left alone.

    Args:
        max_chars: The cap, characters (default :data:`MAX_USER_CHARS`).

    Attributes:
        cuts: Messages cut so far.
    """

    def __init__(self, max_chars: int = MAX_USER_CHARS, **kwargs):
        super().__init__(**kwargs)
        if max_chars < 1:
            raise ValueError(f"max_chars must be at least 1, not {max_chars}")
        self._max_chars = max_chars
        self.cuts = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Cut the latest user message of a context frame if it is too long; pass on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            self._cut(frame.context.get_messages())
        await self.push_frame(frame, direction)

    def _cut(self, messages: list) -> None:
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str) and len(content) > self._max_chars:
                    message["content"] = content[: self._max_chars] + CUT_NOTE.format(
                        limit=self._max_chars
                    )
                    self.cuts += 1
                    logger.warning(
                        f"{self}: a user message of {len(content)} characters was cut to "
                        f"{self._max_chars} (BACKTALK_MAX_USER_CHARS)"
                    )
                return
