"""Backup providers: a failed turn moves to the backup at once instead of going silent.

Pipecat's :class:`~pipecat.pipeline.service_switcher.ServiceSwitcher` routes frames to
one of several services, and its ``ServiceSwitcherStrategyFailover`` switches when the
active service can no longer work at all (``is_usable`` False: a refused key, a socket
that keeps failing). The failures a voice conversation meets most are not of that kind:
a 429 or a 500 after the SDK's retries, a first token that never comes, a dropped
socket. The service stays "usable", the switcher stays put, and the user's turn is lost.

:class:`TransientFailoverStrategy` switches on any error of the active service except
an application one (a tool handler that raised). :class:`LLMFailover` is Pipecat's
:class:`~pipecat.pipeline.llm_switcher.LLMSwitcher` with that strategy, which also
sends the failed turn's request to the backup, so the same turn is answered, once: if
the backup fails that turn too, the error goes on and the user hears the apology
(:mod:`backtalk.agent.recovery`). After ``failback_after_s`` on the backup, the next
turn tries the first service again.
"""

from __future__ import annotations

import time

from loguru import logger
from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMUpdateSettingsFrame,
)
from pipecat.pipeline.llm_switcher import LLMSwitcher
from pipecat.pipeline.service_switcher import ServiceSwitcher, ServiceSwitcherStrategyFailover
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.llm_service import LLMService
from pipecat.services.openai.llm import OpenAILLMService
from pipecat.utils.errors import ErrorCategory

__all__ = ["FAILBACK_AFTER_S", "LLMFailover", "TransientFailoverStrategy", "failover"]

#: Seconds on a backup LLM after which the next turn tries the first one again: long
#: enough for a rate-limit window (OpenAI's limits are per minute) to pass.
FAILBACK_AFTER_S = 60.0


class TransientFailoverStrategy(ServiceSwitcherStrategyFailover):
    """Switch to the next usable service on any error of the active one.

    Unlike Pipecat's ``ServiceSwitcherStrategyFailover``, which switches only when the
    failed service has become unusable, it also switches on errors the service can
    carry on from (rate limits, server errors, timeouts, a dropped socket). Errors of
    category ``APPLICATION`` never switch. The failed service stays in the list and is
    switched back to when the backup fails in turn.

    Attributes:
        switches_left: Switches still allowed (None: any number). :class:`LLMFailover`
            allows one per turn.
        switched_at: ``time.monotonic()`` of the last switch, or None.
    """

    def __init__(self, services: list[FrameProcessor]):
        super().__init__(services)
        self.switches_left: int | None = None
        self.switched_at: float | None = None

    async def handle_error(self, error: ErrorFrame) -> FrameProcessor | None:
        """Switch away from the active service that reported ``error``, if allowed.

        Returns:
            The newly active service, or None (the error then travels on).
        """
        failed = error.processor or self._active_service
        if (
            failed is not self._active_service
            or error.category is ErrorCategory.APPLICATION
            or self.switches_left == 0
        ):
            return None
        at = self._services.index(failed)
        for offset in range(1, len(self._services)):
            candidate = self._services[(at + offset) % len(self._services)]
            if candidate.is_usable and await self._set_active_if_available(candidate):
                if self.switches_left is not None:
                    self.switches_left -= 1
                self.switched_at = time.monotonic()
                logger.warning(f"{failed.name} failed ({error.error}); now {candidate.name}")
                return candidate
        return None

    async def switch_to(self, service: FrameProcessor) -> FrameProcessor | None:
        """Make ``service`` the active one (if it is usable); returns it, or None."""
        return await self._set_active_if_available(service)


class LLMFailover(LLMSwitcher[TransientFailoverStrategy]):
    """Pipecat's ``LLMSwitcher`` that answers a failed turn with the next LLM.

    Put it where the LLM service goes. Each ``LLMContextFrame`` is one turn's request;
    when the active LLM fails it (its ``ErrorFrame``, after its own retries and
    first-token re-issue), the switcher switches to the next LLM and, once the failed
    response has ended (``LLMFullResponseEndFrame``), sends the same context to it, with
    the failed LLM's current system instruction (a persona switched by voice is kept).
    One switch per turn; an interruption drops the pending request. After
    ``failback_after_s`` on a backup, the next turn goes to the first LLM again.

    Args:
        llms: The primary LLM first, then its backups.
        failback_after_s: Seconds (default :data:`FAILBACK_AFTER_S`).
    """

    def __init__(self, llms: list[LLMService], *, failback_after_s: float = FAILBACK_AFTER_S):
        super().__init__(llms, strategy_type=TransientFailoverStrategy)
        self._failback_after_s = failback_after_s
        self._turn: LLMContextFrame | None = None
        self._reissue: tuple[FrameProcessor, FrameProcessor, LLMContextFrame] | None = None
        #: Turns answered by a backup after the active LLM failed them.
        self.failovers = 0

    async def process_frame(self, frame: Frame, direction: FrameDirection):
        """Remember each turn's request; fail back when it is time (see the class)."""
        if isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._maybe_fail_back()
            self._turn = frame
            self._reissue = None
            self.strategy.switches_left = 1
        elif isinstance(frame, InterruptionFrame):
            self._turn = None
            self._reissue = None
        await super().process_frame(frame, direction)

    async def push_frame(self, frame: Frame, direction: FrameDirection = FrameDirection.DOWNSTREAM):
        """Pipecat's, plus: a turn its LLM failed is sent to the one switched to."""
        active = self.strategy.active_service
        if isinstance(frame, ErrorFrame) and frame.processor is active and self._turn:
            await super().push_frame(frame, direction)  # the strategy may switch
            if self.strategy.active_service is not active:
                self._reissue = (active, self.strategy.active_service, self._turn)
                self._turn = None
            return
        await super().push_frame(frame, direction)
        if isinstance(frame, LLMFullResponseEndFrame) and self._reissue:
            failed, backup, context = self._reissue
            self._reissue = None
            self.failovers += 1
            instruction = getattr(getattr(failed, "_settings", None), "system_instruction", None)
            if isinstance(instruction, str):
                delta = OpenAILLMService.Settings(system_instruction=instruction)
                await backup.queue_frame(LLMUpdateSettingsFrame(delta=delta, service=backup))
            self._turn = context
            await backup.queue_frame(context)

    async def _maybe_fail_back(self) -> None:
        primary = self.services[0]
        switched_at = self.strategy.switched_at
        if (
            self.strategy.active_service is not primary
            and primary.is_usable
            and switched_at is not None
            and time.monotonic() - switched_at >= self._failback_after_s
        ):
            if await self.strategy.switch_to(primary):
                logger.info(f"{self}: back to {primary.name}")


def failover(services: list[FrameProcessor]) -> FrameProcessor:
    """One service, or a ``ServiceSwitcher`` over them with :class:`TransientFailoverStrategy`.

    For the STT and TTS: every service in the list is started (its socket opened) so
    that the switch is immediate; on any error of the active one the next takes over
    and stays active.

    Args:
        services: The primary first, then its backups.
    """
    if len(services) == 1:
        return services[0]
    return ServiceSwitcher(services, strategy_type=TransientFailoverStrategy)
