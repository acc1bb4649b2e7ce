"""Where conversations run: in this process, or in worker processes, behind one interface.

:class:`LocalConversations` runs them as tasks here; :class:`backtalk.server.workers.WorkerPool`
spreads them over worker processes.

A session is registered first (``POST /api/sessions``: its videos, persona and the API
key that asked), which reserves a place; its WebRTC offer then starts the conversation
(Pipecat's :class:`~pipecat.transports.smallwebrtc.request_handler.SmallWebRTCRequestHandler`
answers it), or, for Daily, the bot joins the room. A session that never connects
gives its place back after :data:`SESSION_OFFER_TIMEOUT_S`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import psutil
from fastapi import HTTPException
from loguru import logger

from backtalk.agent.bot import AgentResources, TalkSession, run_conversation

__all__ = [
    "SESSION_OFFER_TIMEOUT_S",
    "AtCapacity",
    "ConversationHost",
    "LocalConversations",
    "session_from_json",
    "session_to_json",
]

#: A session not connected within this long, seconds, is forgotten (its place freed).
SESSION_OFFER_TIMEOUT_S = 60.0
#: Seconds a shutdown waits for cancelled conversations to end.
SHUTDOWN_GRACE_S = 2.0
#: Seconds a client is told to wait when the server is full (``Retry-After``).
RETRY_WHEN_FULL_S = 15
#: How often, seconds, a WebRTC conversation checks that its client is still there.
PEER_CHECK_S = 0.5


class AtCapacity(Exception):
    """No place for another conversation now (503 with ``Retry-After``).

    Args:
        reason: Why, for the client.
        retry_after_s: When to try again, seconds.
    """

    def __init__(self, reason: str, retry_after_s: int = RETRY_WHEN_FULL_S):
        super().__init__(reason)
        self.retry_after_s = retry_after_s


def session_to_json(session: TalkSession) -> dict:
    """A session as JSON (to hand it to a worker process)."""
    return {
        "videos": [v.key for v in session.videos],
        "persona": session.persona,
        "api_key_id": session.api_key_id,
    }


def session_from_json(data: dict, resources: AgentResources) -> TalkSession:
    """The session :func:`session_to_json` made, with its videos looked up again.

    Raises:
        HTTPException: 400 if a video is no longer in the library.
    """
    keys = list(data["videos"])
    found = resources.store.find_videos(keys)
    missing = [k for k in keys if k not in found]
    if missing:
        raise HTTPException(400, f"Not in the library any more: {', '.join(missing)}.")
    return TalkSession(
        videos=[found[k] for k in keys], persona=data["persona"], api_key_id=data["api_key_id"]
    )


async def _end_when_peer_gone(connection) -> None:
    """Close a peer connection whose client has vanished (a closed tab, a crashed browser).

    Pipecat's client SDKs ping over the data channel every second, and
    ``SmallWebRTCConnection.is_connected()`` turns False 3 s after the last ping, but
    nothing acts on it: the connection lingers until WebRTC's own consent timeout
    (~30 s), holding its pipeline and Deepgram sockets. Closing it here ends the
    conversation (the transport reports the client disconnected) within ~3.5 s.
    """
    seen = False
    while True:
        await asyncio.sleep(PEER_CHECK_S)
        if connection.is_connected():
            seen = True
        elif seen:
            logger.info("The client stopped answering; closing its connection")
            await connection.disconnect()
            return


class ConversationHost(Protocol):
    """What the server needs from whatever runs its conversations."""

    live: int
    draining: bool

    async def start(self) -> None:
        """Get ready to take sessions (start workers, samplers)."""
        ...

    async def register(self, session: TalkSession) -> str:
        """Reserve a place for ``session``; its id. Raises :class:`AtCapacity`."""
        ...

    def lookup(self, session_id: str) -> TalkSession | None:
        """The session of that id: registered and not expired, or connected.

        A connected session keeps answering its offer URL: Pipecat renegotiates
        right after connecting, and the client re-sends its offer there.
        """
        ...

    async def answer(self, session_id: str | None, body: dict, session: TalkSession) -> dict:
        """Answer a WebRTC offer (SDP) and start the conversation."""
        ...

    async def add_candidates(self, session_id: str | None, body: dict) -> None:
        """Trickle ICE candidates to a session's peer connection."""
        ...

    async def start_daily(self, session_id: str, room_url: str, token: str) -> None:
        """Start a registered session's bot in a Daily room."""
        ...

    async def not_ready(self) -> str | None:
        """Why no session could start now, or None when one can."""
        ...

    async def drain(self, deadline_s: float) -> None:
        """Take no new session; wait up to ``deadline_s`` for live ones, then end them."""
        ...

    async def close(self) -> None:
        """End every conversation now."""
        ...


@dataclass
class _Pending:
    session: TalkSession
    created_at: float


class LocalConversations:
    """Runs each conversation as a task of this process.

    Args:
        resources: Shared store, engines and embedder.
        max_sessions: Conversations (live plus registered) held at most.
        load_threshold: CPU use of this process, in cores, at or above which it takes
            no new conversation; None to ignore the load.
    """

    def __init__(
        self,
        resources: AgentResources,
        *,
        max_sessions: int | None = None,
        load_threshold: float | None = None,
    ):
        self._resources = resources
        self._max_sessions = max_sessions
        self._load_threshold = load_threshold
        self._pending: dict[str, _Pending] = {}
        self._connected: dict[str, TalkSession] = {}
        self._tasks: set[asyncio.Task] = set()
        self._handler = None
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # starts the measurement window
        self._load = 0.0
        self._sampler: asyncio.Task | None = None
        self.draining = False

    @property
    def handler(self):
        """Pipecat's SmallWebRTC request handler (created on first use: imports aiortc)."""
        if self._handler is None:
            from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequestHandler

            self._handler = SmallWebRTCRequestHandler()
        return self._handler

    @property
    def live(self) -> int:
        """Conversations running now."""
        return len(self._tasks)

    @property
    def session_ids(self) -> list[str]:
        """Ids of the sessions registered (not expired) or connected here."""
        self._forget_stale()
        return [*self._pending, *self._connected]

    @property
    def reserved(self) -> int:
        """Conversations running or registered and not yet connected."""
        self._forget_stale()
        return len(self._tasks) + len(self._pending)

    def load(self) -> float:
        """This process's CPU use, in cores (1.0 = one core busy), over the last sample."""
        return self._load

    async def sample_load(self, interval_s: float = 1.0) -> None:
        """Measure this process's CPU use every ``interval_s`` seconds, forever."""
        while True:
            await asyncio.sleep(interval_s)
            self._load = self._process.cpu_percent(None) / 100.0

    def _forget_stale(self) -> None:
        now = time.monotonic()
        for sid in [
            s for s, p in self._pending.items() if now - p.created_at > SESSION_OFFER_TIMEOUT_S
        ]:
            del self._pending[sid]

    def refusal(self) -> str | None:
        """Why this process takes no new conversation now, or None."""
        if self.draining:
            return "The server is shutting down; try again shortly."
        if self._max_sessions is not None and self.reserved >= self._max_sessions:
            return f"All {self._max_sessions} conversation places are taken; try again shortly."
        if self._load_threshold is not None and self._load >= self._load_threshold:
            return "The server is busy; try again shortly."
        return None

    async def start(self) -> None:
        """Start sampling this process's CPU use (for the load threshold)."""
        self._sampler = asyncio.create_task(self.sample_load(), name="conversation-load")

    async def register(self, session: TalkSession) -> str:
        """Reserve a place for ``session``; its id.

        Raises:
            AtCapacity: no place now.
        """
        reason = self.refusal()
        if reason is not None:
            raise AtCapacity(reason)
        session_id = str(uuid.uuid4())
        self._pending[session_id] = _Pending(session, time.monotonic())
        return session_id

    def adopt(self, session_id: str, session: TalkSession) -> None:
        """Register a session under an id chosen elsewhere (a worker pool's).

        Raises:
            AtCapacity: no place now.
        """
        reason = self.refusal()
        if reason is not None:
            raise AtCapacity(reason)
        self._pending[session_id] = _Pending(session, time.monotonic())

    def lookup(self, session_id: str) -> TalkSession | None:
        """The session of that id: registered and not expired, or connected."""
        self._forget_stale()
        entry = self._pending.get(session_id)
        if entry is not None:
            return entry.session
        return self._connected.get(session_id)

    async def answer(self, session_id: str | None, body: dict, session: TalkSession) -> dict:
        """Answer a WebRTC offer and start the conversation on the new connection.

        Raises:
            HTTPException: 400 for an offer without ``sdp``/``type``.
        """
        from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequest

        try:
            request = SmallWebRTCRequest(
                sdp=body["sdp"],
                type=body["type"],
                pc_id=body.get("pc_id"),
                restart_pc=body.get("restart_pc"),
            )
        except (KeyError, TypeError):
            raise HTTPException(400, "A WebRTC offer needs 'sdp' and 'type'.") from None

        async def start(connection) -> None:
            # Called for a new peer connection only (a renegotiation reuses its pc_id).
            if session_id is not None:
                self._pending.pop(session_id, None)
                self._connected[session_id] = session
            task = self._spawn(self._converse_webrtc(connection, session))
            if session_id is not None:
                task.add_done_callback(lambda _t: self._connected.pop(session_id, None))

        return await self.handler.handle_web_request(
            request=request, webrtc_connection_callback=start
        )

    async def add_candidates(self, session_id: str | None, body: dict) -> None:
        """Trickle ICE candidates to the peer connection ``body["pc_id"]``.

        Raises:
            HTTPException: 400 for a malformed body; 404 for an unknown peer connection.
        """
        from pipecat.transports.smallwebrtc.request_handler import (
            IceCandidate,
            SmallWebRTCPatchRequest,
        )

        try:
            request = SmallWebRTCPatchRequest(
                pc_id=body["pc_id"],
                candidates=[IceCandidate(**c) for c in body.get("candidates", [])],
            )
        except (KeyError, TypeError):
            raise HTTPException(400, "ICE candidates need 'pc_id' and 'candidates'.") from None
        await self.handler.handle_patch_request(request)

    async def start_daily(self, session_id: str, room_url: str, token: str) -> None:
        """Start a registered session's bot in a Daily room (the bot's owner token)."""
        entry = self._pending.pop(session_id, None)
        if entry is None:
            raise HTTPException(404, "Unknown or expired session: start a new one.")
        self._spawn(self._converse_daily(room_url, token, entry.session))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine, name="conversation")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _converse_webrtc(self, connection, session: TalkSession) -> None:
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

        from backtalk.agent.audio import transport_params

        transport = SmallWebRTCTransport(
            webrtc_connection=connection, params=transport_params(self._resources.settings)
        )
        watchdog = asyncio.create_task(_end_when_peer_gone(connection), name="webrtc-peer")
        try:
            await self._converse(transport, session, "webrtc")
        finally:
            watchdog.cancel()

    async def _converse_daily(self, room_url: str, token: str, session: TalkSession) -> None:
        from pipecat.transports.daily.transport import DailyParams, DailyTransport

        from backtalk.agent.audio import transport_params

        transport = DailyTransport(
            room_url, token, "Backtalk", transport_params(self._resources.settings, DailyParams)
        )
        this = asyncio.current_task()
        joined = asyncio.Event()
        user_came = asyncio.Event()

        @transport.event_handler("on_joined")
        async def _on_joined(_transport, _data):
            joined.set()

        @transport.event_handler("on_first_participant_joined")
        async def _on_user(_transport, _participant):
            user_came.set()

        @transport.event_handler("on_error")
        async def _on_error(_transport, _message):
            if not joined.is_set() and this is not None:
                logger.error("The bot could not join its Daily room; ending the conversation")
                this.cancel()

        async def wait_for_user() -> None:
            # A room nobody joins must not hold a place until the session limit.
            try:
                await asyncio.wait_for(user_came.wait(), SESSION_OFFER_TIMEOUT_S)
            except TimeoutError:
                logger.info("Nobody joined the Daily room; ending the conversation")
                if this is not None:
                    this.cancel()

        watchdog = asyncio.create_task(wait_for_user(), name="daily-user-watchdog")
        try:
            await self._converse(transport, session, "daily")
        finally:
            watchdog.cancel()

    async def _converse(self, transport, session: TalkSession, name: str) -> None:
        try:
            await run_conversation(transport, session, self._resources, transport_name=name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one conversation's failure must not touch the others
            logger.error(f"A conversation failed: {type(exc).__name__}")

    async def not_ready(self) -> str | None:
        """Why no session could start here now, or None when one can."""
        return self.refusal()

    async def drain(self, deadline_s: float) -> None:
        """Take no new session; let live ones finish for up to ``deadline_s``, then end them."""
        self.draining = True
        self._pending.clear()
        if self._tasks:
            logger.info(
                f"Draining: waiting up to {deadline_s:.0f}s for {self.live} conversation(s)"
            )
            await asyncio.wait(list(self._tasks), timeout=deadline_s)
        await self.close()

    async def close(self) -> None:
        """End every conversation and close the peer connections."""
        if self._sampler is not None:
            self._sampler.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
        if self._handler is not None:
            await asyncio.wait_for(self._handler.close(), timeout=SHUTDOWN_GRACE_S)
