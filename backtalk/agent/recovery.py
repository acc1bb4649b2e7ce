"""What the user hears when the LLM fails a turn for good: a short spoken apology.

When a chat request fails after the OpenAI SDK's retries (429, 5xx), is rejected
(other 4xx), or produces no first token twice (reliability cases R9 and R10,
:class:`~backtalk.agent.services.DirectBodyOpenAILLMService`), Pipecat's LLM service
pushes an :class:`~pipecat.frames.frames.ErrorFrame` upstream, ends the response
(``LLMFullResponseEndFrame``) and goes on to the next turn. Without more, the user hears
nothing and cannot tell a failure from a slow answer.
"""

from __future__ import annotations

from pipecat.frames.frames import ErrorFrame, Frame, TTSSpeakFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.utils.errors import ErrorCategory

__all__ = ["LLM_APOLOGY", "LLMFailureApology"]

#: What the bot says when the LLM could not answer a turn.
LLM_APOLOGY = "Sorry, I couldn't get an answer just then. Could you ask me again?"


class LLMFailureApology(FrameProcessor):
    """Speaks a fixed apology when the LLM service reports that a turn failed.

    Place it directly before the LLM service: the LLM pushes its errors upstream, so
    this processor sees them first, and the apology it pushes downstream goes through
    the LLM (which passes it on) to the TTS after the failed response. It is a
    :class:`~pipecat.frames.frames.TTSSpeakFrame` with ``append_to_context=False``:
    the next request does not carry it as the assistant's answer, and it is not saved
    as one.

    Errors of category ``APPLICATION`` (a tool handler that raised) are not apologised
    for: the LLM goes on with the tool's error result and still answers. Every frame,
    the error included, is passed on.

    Events:
        on_apology: ``(processor, error: ErrorFrame)`` after the apology is pushed.

    Args:
        llm: The LLM service whose errors to answer for, or a switcher of LLMs
            (:class:`~backtalk.agent.failover.LLMFailover`: an error it did not fail
            over from, from any of its services).
        text: What to say.
        **kwargs: For ``FrameProcessor``.
    """

    def __init__(self, llm: FrameProcessor, *, text: str = LLM_APOLOGY, **kwargs):
        super().__init__(**kwargs)
        self._llm = llm
        self._members = tuple(getattr(llm, "services", ()))
        self._text = text
        #: Apologies spoken so far.
        self.apologies = 0
        self._register_event_handler("on_apology")

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Pass every frame on; after an LLM error, push the apology downstream."""
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if (
            isinstance(frame, ErrorFrame)
            and direction == FrameDirection.UPSTREAM
            and (frame.processor is self._llm or frame.processor in self._members)
            and frame.category is not ErrorCategory.APPLICATION
        ):
            self.apologies += 1
            await self.push_frame(TTSSpeakFrame(self._text, append_to_context=False))
            await self._call_event_handler("on_apology", frame)
