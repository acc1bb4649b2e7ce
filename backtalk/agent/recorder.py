"""Saving each conversation and its messages, off the turn's critical path."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loguru import logger
from pipecat.processors.aggregators.llm_response_universal import (
    AssistantTurnStoppedMessage,
    LLMAssistantAggregator,
    LLMUserAggregator,
    UserTurnMessageAddedMessage,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from backtalk.processors.citations import remove_citation_tags
from backtalk.store.repo import conversation_end, conversation_start, message_insert

__all__ = ["MAX_UNSAVED", "ConversationRecorder"]

#: Messages kept in memory while the database is unreachable, at most (the oldest go).
MAX_UNSAVED = 200


class ConversationRecorder:
    """Writes a conversation's user and assistant turns to the ``messages`` table.

    It listens to the context aggregators' ``on_user_turn_message_added`` and
    ``on_assistant_turn_stopped`` events, which Pipecat runs as tasks, so a write
    never delays a turn; writes are serialised so rows keep the conversation's
    order. A database failure is logged and the conversation goes on. Citations sent
    to the client during an assistant turn (:meth:`note_citation`) are saved with that
    turn's message, so a saved conversation keeps its clickable moments.

    Args:
        engine: Asyncio engine of the store.
    """

    def __init__(self, engine: AsyncEngine):
        self._engine = engine
        self._lock = asyncio.Lock()
        self._citations: list[dict] = []
        self._unsaved: list[tuple] = []
        self.conversation_id: int | None = None

    async def start(
        self,
        video_keys: Sequence[str],
        *,
        transport: str | None,
        persona: str | None,
        api_key_id: int | None = None,
    ) -> int:
        """Create the ``conversations`` row (owned by ``api_key_id``). Returns its id.

        Raises:
            sqlalchemy.exc.SQLAlchemyError: the store is unreachable.
        """
        async with self._engine.begin() as conn:
            result = await conn.execute(
                conversation_start(
                    video_keys, transport=transport, persona=persona, api_key_id=api_key_id
                )
            )
            self.conversation_id = result.scalar_one()
        return self.conversation_id

    def attach(self, user: LLMUserAggregator, assistant: LLMAssistantAggregator) -> None:
        """Subscribe to the aggregators' turn events."""

        @user.event_handler("on_user_turn_message_added")
        async def _on_user(_aggregator, message: UserTurnMessageAddedMessage):
            await self.add("user", message.content)

        @assistant.event_handler("on_assistant_turn_stopped")
        async def _on_assistant(_aggregator, message: AssistantTurnStoppedMessage):
            citations, self._citations = self._citations, []
            # Saved as said: the tags' moments are kept, checked, in ``citations``.
            content = remove_citation_tags(message.content or "").strip()
            if content:
                await self.add(
                    "assistant",
                    content,
                    interrupted=message.interrupted,
                    citations=citations,
                )

    def note_citation(self, citation: dict) -> None:
        """Keep a citation sent during the current assistant turn, to save with it.

        Args:
            citation: The payload sent to the client
                (:meth:`~backtalk.processors.citations.Citation.message`).
        """
        self._citations.append(citation)

    async def add(
        self,
        role: str,
        content: str,
        *,
        interrupted: bool = False,
        citations: Sequence[dict] | None = None,
    ) -> None:
        """Append one message (no-op before :meth:`start`).

        If the database is unreachable the message is kept (up to
        :data:`MAX_UNSAVED` of them) and written, in order, with the next one that
        gets through: an outage costs history nothing if it ends during the call.
        """
        if self.conversation_id is None:
            return
        async with self._lock:
            pending = [*self._unsaved, (role, content, interrupted, citations)]
            try:
                async with self._engine.begin() as conn:
                    for message in pending:
                        await conn.execute(message_insert(self.conversation_id, *message))
                self._unsaved = []
            except SQLAlchemyError as exc:
                self._unsaved = pending[-MAX_UNSAVED:]
                logger.warning(
                    f"Could not save the conversation's {role} message ({type(exc).__name__}); "
                    f"{len(self._unsaved)} message(s) kept to save later"
                )

    async def finish(self) -> None:
        """Mark the conversation ended."""
        if self.conversation_id is None:
            return
        async with self._lock:
            try:
                async with self._engine.begin() as conn:
                    await conn.execute(conversation_end(self.conversation_id))
            except SQLAlchemyError as exc:
                logger.warning(f"Could not close the conversation record: {type(exc).__name__}")
