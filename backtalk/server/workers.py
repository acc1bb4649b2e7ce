"""Conversations in worker processes: ``backtalk serve --workers N``.

Each worker is a Python process (``python -m backtalk.server.worker``) that holds
several conversations — Pipecat's pipelines, aiortc's peer connections, Silero and
smart-turn — and answers the server over a small HTTP API on 127.0.0.1, guarded by a
random secret it inherits in its environment (never on its command line):

::

    GET   /status                    {"live", "reserved", "load", "draining", "sessions"}
    POST  /sessions/{id}             reserve a place for a session (503 if full)
    POST  /sessions/{id}/offer       its WebRTC offer → the answer (aiortc runs here)
    PATCH /sessions/{id}/offer       trickle ICE candidates
    POST  /sessions/{id}/daily       start its bot in a Daily room
    POST  /drain                     take no new session, finish the live ones, exit

The server (:class:`WorkerPool`) places each new session on the least-loaded worker
(fewest conversations, then lowest CPU use) that is under its load threshold (CPU use
in cores, LiveKit Agents' 0.7 by default) and its session cap, else answers 503. It
polls every worker once a second; a worker that dies takes only its own conversations
with it and is replaced. On SIGTERM the server drains: workers take no new session and
their conversations go on until they end or the drain deadline passes; then everything
exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import aiohttp
from fastapi import HTTPException
from loguru import logger

from backtalk.agent.bot import TalkSession
from backtalk.server.sessions import SESSION_OFFER_TIMEOUT_S, AtCapacity, session_to_json

__all__ = ["SECRET_HEADER", "WorkerPool"]

#: Header carrying the pool's secret on every call to a worker.
SECRET_HEADER = "X-Backtalk-Worker-Secret"
#: Seconds between status polls of each worker.
POLL_S = 1.0
#: Seconds a worker may take to start (it loads the embedder and opens the store).
START_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen
    port: int
    status: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def accepts(self, max_sessions: int, threshold: float) -> bool:
        s = self.status
        return (
            self.alive
            and bool(s)
            and not s.get("draining", False)
            and s.get("reserved", 0) < max_sessions
            and s.get("load", 0.0) < threshold
        )


@dataclass
class _Placed:
    worker: _Worker
    session: TalkSession
    created_at: float
    pc_id: str | None = None


class WorkerPool:
    """Spreads conversations over worker processes (see the module docstring).

    Implements :class:`backtalk.server.sessions.ConversationHost`.

    Args:
        count: Worker processes.
        max_sessions: Conversations one worker holds at most.
        load_threshold: CPU use, in cores, at or above which a worker takes no new one.
        env: The workers' environment (settings, ``DATABASE_URL``, keys).
    """

    def __init__(
        self, count: int, *, max_sessions: int, load_threshold: float, env: dict[str, str]
    ):
        self._count = count
        self._max_sessions = max_sessions
        self._threshold = load_threshold
        self._secret = secrets.token_urlsafe(24)
        self._env = {**env, "BACKTALK_WORKER_SECRET": self._secret}
        self._workers: list[_Worker] = []
        self._placed: dict[str, _Placed] = {}
        self._http: aiohttp.ClientSession | None = None
        self._monitor: asyncio.Task | None = None
        self.draining = False

    # -- life cycle --------------------------------------------------------------------

    def _spawn(self, index: int) -> _Worker:
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "backtalk.server.worker", "--port", str(port)],
            env=self._env,
            stdin=subprocess.DEVNULL,
        )
        logger.info(f"Worker {index} started (pid {process.pid})")
        return _Worker(index=index, process=process, port=port)

    async def start(self) -> None:
        """Start the workers and wait until each answers.

        Raises:
            RuntimeError: a worker exited or did not answer within ``START_TIMEOUT_S``.
        """
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), headers={SECRET_HEADER: self._secret}
        )
        self._workers = [self._spawn(i) for i in range(self._count)]
        await asyncio.gather(*(self._wait_up(w) for w in self._workers))
        self._monitor = asyncio.create_task(self._watch(), name="worker-pool-monitor")

    async def _wait_up(self, worker: _Worker) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not worker.alive:
                raise RuntimeError(f"Worker {worker.index} exited ({worker.process.returncode}).")
            if await self._poll(worker):
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"Worker {worker.index} did not start in {START_TIMEOUT_S:.0f}s.")

    async def _poll(self, worker: _Worker) -> bool:
        assert self._http is not None
        try:
            async with self._http.get(f"{worker.url}/status", timeout=2) as r:
                if r.status == 200:
                    worker.status = await r.json()
                    return True
        except (aiohttp.ClientError, TimeoutError):
            pass
        return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for i, worker in enumerate(list(self._workers)):
                if worker.alive:
                    if await self._poll(worker):
                        self._forget_ended(worker)
                    continue
                if self.draining:
                    continue
                lost = [sid for sid, p in self._placed.items() if p.worker is worker]
                for sid in lost:
                    del self._placed[sid]
                logger.error(
                    f"Worker {worker.index} (pid {worker.process.pid}) exited "
                    f"({worker.process.returncode}); {len(lost)} session(s) lost; replacing it"
                )
                _mark_dead(worker.process.pid)
                replacement = self._spawn(worker.index)
                self._workers[i] = replacement
                with contextlib.suppress(RuntimeError):
                    await self._wait_up(replacement)

    def _forget_ended(self, worker: _Worker) -> None:
        """Drop the sessions a worker no longer holds (ended or expired there)."""
        held = set(worker.status.get("sessions", []))
        now = time.monotonic()
        for sid in [
            sid
            for sid, p in self._placed.items()
            if p.worker is worker and sid not in held and now - p.created_at > POLL_S * 2
        ]:
            del self._placed[sid]

    # -- sessions ----------------------------------------------------------------------

    @property
    def live(self) -> int:
        """Conversations running in all workers (as of the last poll)."""
        return sum(w.status.get("live", 0) for w in self._workers if w.alive)

    async def register(self, session: TalkSession) -> str:
        """Reserve a place on the least-loaded worker that has one.

        Raises:
            AtCapacity: no worker has a place now (or the server is draining).
        """
        if self.draining:
            raise AtCapacity("The server is shutting down; try again shortly.")
        assert self._http is not None
        session_id = secrets.token_urlsafe(16)
        candidates = sorted(
            (w for w in self._workers if w.accepts(self._max_sessions, self._threshold)),
            # Fewest conversations first (what drives a worker's CPU next), then CPU now.
            key=lambda w: (w.status.get("reserved", 0), w.status.get("load", 0.0)),
        )
        for worker in candidates:
            try:
                async with self._http.post(
                    f"{worker.url}/sessions/{session_id}", json=session_to_json(session)
                ) as r:
                    if r.status == 200:
                        worker.status["reserved"] = worker.status.get("reserved", 0) + 1
                        self._placed[session_id] = _Placed(worker, session, time.monotonic())
                        return session_id
            except (aiohttp.ClientError, TimeoutError):
                continue
        raise AtCapacity("Every worker is busy; try again shortly.")

    def lookup(self, session_id: str) -> TalkSession | None:
        """The session of that id: registered and not expired, or connected."""
        placed = self._placed.get(session_id)
        if placed is None or not placed.worker.alive:
            return None
        if placed.pc_id is None and time.monotonic() - placed.created_at > SESSION_OFFER_TIMEOUT_S:
            return None
        return placed.session

    def _placed_or_404(self, session_id: str | None, body: dict) -> _Placed:
        placed = self._placed.get(session_id) if session_id else None
        if placed is None and body.get("pc_id"):
            placed = next((p for p in self._placed.values() if p.pc_id == body["pc_id"]), None)
        if placed is None or not placed.worker.alive:
            raise HTTPException(404, "Unknown or expired session: start a new one.")
        return placed

    async def _call(self, method: str, url: str, body: dict) -> dict:
        assert self._http is not None
        try:
            async with self._http.request(method, url, json=body) as r:
                data = await r.json(content_type=None)
                if r.status >= 400:
                    raise HTTPException(r.status, (data or {}).get("detail", "Worker error."))
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HTTPException(
                502, f"The conversation's worker failed ({type(exc).__name__})."
            ) from None

    async def answer(self, session_id: str | None, body: dict, session: TalkSession) -> dict:
        """Forward a WebRTC offer to the session's worker; its answer."""
        placed = self._placed_or_404(session_id, body)
        answer = await self._call("POST", f"{placed.worker.url}/sessions/{session_id}/offer", body)
        placed.pc_id = answer.get("pc_id")
        return answer

    async def add_candidates(self, session_id: str | None, body: dict) -> None:
        """Forward ICE candidates to the session's worker."""
        placed = self._placed_or_404(session_id, body)
        sid = next(k for k, v in self._placed.items() if v is placed)
        await self._call("PATCH", f"{placed.worker.url}/sessions/{sid}/offer", body)

    async def start_daily(self, session_id: str, room_url: str, token: str) -> None:
        """Start the session's bot in a Daily room, on its worker."""
        placed = self._placed_or_404(session_id, {})
        await self._call(
            "POST",
            f"{placed.worker.url}/sessions/{session_id}/daily",
            {"room_url": room_url, "token": token},
        )

    async def not_ready(self) -> str | None:
        """Why no session could start now, or None when a worker has a place."""
        if self.draining:
            return "The server is shutting down."
        if not any(w.accepts(self._max_sessions, self._threshold) for w in self._workers):
            return "No worker can take a conversation now (all busy, full or starting)."
        return None

    async def drain(self, deadline_s: float) -> None:
        """Workers take no new session; their conversations get ``deadline_s`` to end."""
        self.draining = True
        if self._http is not None:
            for worker in self._workers:
                if worker.alive:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with self._http.post(
                            f"{worker.url}/drain", json={"deadline_s": deadline_s}
                        ):
                            pass
        await self._wait_exit(deadline_s + 5)
        await self.close()

    async def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after 5 s)."""
        self.draining = True
        if self._monitor is not None:
            self._monitor.cancel()
        for worker in self._workers:
            if worker.alive:
                worker.process.send_signal(signal.SIGTERM)
        await self._wait_exit(5)
        for worker in self._workers:
            if worker.alive:
                worker.process.kill()
            worker.process.wait()
        if self._http is not None:
            await self._http.close()

    async def _wait_exit(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every worker process to exit."""
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                left = max(0.0, deadline - time.monotonic())
                await asyncio.to_thread(worker.process.wait, left)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        return [w.process.pid for w in self._workers if w.alive]


def _mark_dead(pid: int) -> None:
    """Tell prometheus-client's multiprocess mode that a worker is gone."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
