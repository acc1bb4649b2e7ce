"""The FastAPI application: Backtalk's page, its JSON API, and WebRTC conversations.

::

    GET  /                          the page (backtalk/web/dist)
    GET  /healthz                   200 while the process runs
    GET  /api/config                the videos and persona the page opens on
    GET  /api/videos                the library
    POST /api/videos                ingest a YouTube video (a background job)
    GET  /api/jobs/{id}             an ingest job's progress
    DELETE /api/videos/{key}        remove a video
    GET  /api/videos/{key}/chunks   a video's transcript
    GET  /api/collections           collections
    GET  /api/conversations         saved conversations (?video=KEY)
    GET  /api/conversations/{id}    one, with its messages and citations
    POST /api/sessions              start a conversation (also POST /start, Pipecat's name)
    POST/PATCH /sessions/{id}/api/offer   its WebRTC offer / ICE candidates
    POST/PATCH /api/offer           a direct offer (the session's data in request_data)

The session endpoints have the shapes of Pipecat's development runner
(``pipecat/runner/run.py``), so Pipecat's client SDK (``startBotAndConnect``) and its
prebuilt clients work against them; the offer is answered by Pipecat's own
:class:`~pipecat.transports.smallwebrtc.request_handler.SmallWebRTCRequestHandler`.
Each connection runs one conversation (:func:`backtalk.agent.bot.run_conversation`)
as a task of this process. Endpoints that read the database are plain functions,
which FastAPI runs in its thread pool, so a query never holds up the conversations on
the event loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from loguru import logger

from backtalk.agent.bot import AgentResources, TalkSession, run_conversation
from backtalk.errors import InvalidVideoIdError
from backtalk.prompts import DEFAULT_PERSONA, personas
from backtalk.server.jobs import IngestJobs
from backtalk.server.schemas import (
    ChunkOut,
    ChunksOut,
    CollectionOut,
    CollectionsOut,
    ConfigOut,
    ConversationOut,
    ConversationsOut,
    ConversationSummaryOut,
    IngestRequest,
    JobResponse,
    SessionRequest,
    SessionStarted,
    VideoOut,
    VideosOut,
)

__all__ = ["WEB_DIST", "create_app"]

#: The page's built assets (committed; rebuilt with ``npm --prefix backtalk/web run build``).
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"
#: A session not connected within this long, seconds, is forgotten.
SESSION_OFFER_TIMEOUT_S = 300.0
#: Seconds a shutdown waits for conversations to end after cancelling them.
SHUTDOWN_GRACE_S = 2.0


@dataclass
class _PendingSession:
    session: TalkSession
    created_at: float


class _Conversations:
    """Sessions waiting for their offer, and the conversations running in this process."""

    def __init__(self, resources: AgentResources):
        self._resources = resources
        self._pending: dict[str, _PendingSession] = {}
        self._tasks: set[asyncio.Task] = set()
        self._handler = None

    @property
    def handler(self):
        """Pipecat's SmallWebRTC request handler (created on first use: imports aiortc)."""
        if self._handler is None:
            from pipecat.transports.smallwebrtc.request_handler import SmallWebRTCRequestHandler

            self._handler = SmallWebRTCRequestHandler()
        return self._handler

    def register(self, session: TalkSession) -> str:
        now = time.monotonic()
        for sid in [
            s for s, p in self._pending.items() if now - p.created_at > SESSION_OFFER_TIMEOUT_S
        ]:
            del self._pending[sid]
        session_id = str(uuid.uuid4())
        self._pending[session_id] = _PendingSession(session, now)
        return session_id

    def pending(self, session_id: str) -> TalkSession | None:
        entry = self._pending.get(session_id)
        return entry.session if entry is not None else None

    async def answer(self, body: dict, session: TalkSession) -> dict:
        """Answer a WebRTC offer and start the conversation on the new connection."""
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
            task = asyncio.create_task(self._converse(connection, session))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return await self.handler.handle_web_request(
            request=request, webrtc_connection_callback=start
        )

    async def add_candidates(self, body: dict) -> None:
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

    async def _converse(self, connection, session: TalkSession) -> None:
        from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

        from backtalk.agent.audio import transport_params

        transport = SmallWebRTCTransport(
            webrtc_connection=connection, params=transport_params(self._resources.settings)
        )
        try:
            await run_conversation(transport, session, self._resources, transport_name="webrtc")
        except asyncio.CancelledError:
            raise
        except Exception:  # one conversation's failure must not touch the others
            logger.exception("A conversation failed")

    @property
    def live(self) -> int:
        """Conversations running now."""
        return len(self._tasks)

    async def close(self) -> None:
        """End every conversation and close the peer connections."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
        if self._handler is not None:
            await asyncio.wait_for(self._handler.close(), timeout=SHUTDOWN_GRACE_S)


def create_app(
    resources: AgentResources,
    *,
    videos: Sequence[str] = (),
    persona: str = DEFAULT_PERSONA,
    on_ready: Any = None,
) -> FastAPI:
    """Build the server for ``resources``' library.

    Args:
        resources: The shared store, engines and embedder.
        videos: Keys of the videos the page opens on (``backtalk talk URL...``).
        persona: The persona conversations start with unless the page asks otherwise.
        on_ready: Called (no arguments) once the server is serving.

    Returns:
        The FastAPI app (run it with uvicorn).
    """
    store = resources.store
    jobs = IngestJobs(resources.settings, store, resources.embedder)
    conversations = _Conversations(resources)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            jobs.close()
            await conversations.close()

    app = FastAPI(
        title="Backtalk",
        summary="Talk out loud with a YouTube video.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.conversations = conversations

    def video_or_404(key: str) -> VideoOut:
        found = store.find_videos([key])
        if key not in found:
            raise HTTPException(404, f"There is no video {key!r} in the library.")
        return VideoOut.of(found[key])

    def session_for(request: SessionRequest) -> TalkSession:
        keys = request.videos if request.videos else list(videos)
        if not keys:
            raise HTTPException(400, "Choose at least one video to talk about ('videos').")
        found = store.find_videos(keys)
        missing = [k for k in keys if k not in found]
        if missing:
            raise HTTPException(
                400,
                f"Not in the library: {', '.join(missing)}. Add a video first "
                "(POST /api/videos, or `backtalk ingest URL`).",
            )
        chosen = request.persona or persona
        if chosen not in personas():
            raise HTTPException(
                400, f"Unknown persona {chosen!r}; choose one of: {', '.join(personas())}."
            )
        return TalkSession(videos=[found[k] for k in keys], persona=chosen)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: 200 while the process runs."""
        return {"status": "ok", "conversations": conversations.live}

    @app.get("/api/config", tags=["page"])
    def config() -> ConfigOut:
        """The videos and persona the page opens on, and the personas to choose from."""
        found = store.find_videos(list(videos))
        return ConfigOut(
            videos=[VideoOut.of(found[k]) for k in videos if k in found],
            persona=persona,
            personas=personas(),
        )

    @app.get("/api/videos", tags=["library"])
    def list_videos() -> VideosOut:
        """Every video in the library, oldest ingest first."""
        return VideosOut(videos=[VideoOut.of(v) for v in store.list_videos()])

    @app.post("/api/videos", status_code=202, tags=["library"])
    async def add_video(request: IngestRequest) -> JobResponse:
        """Ingest a YouTube video as a background job (poll ``GET /api/jobs/{id}``).

        A 400 names an input that is not a YouTube video; nothing is fetched or written.
        """
        try:
            return JobResponse(job=jobs.submit(request.input))
        except InvalidVideoIdError as exc:
            raise HTTPException(
                400,
                f"{exc}. Paste a YouTube link (youtube.com/watch?v=…, youtu.be/…) or an "
                "11-character video id; nothing was added.",
            ) from None

    @app.get("/api/jobs/{job_id}", tags=["library"])
    async def job(job_id: str) -> JobResponse:
        """An ingest job's stage and progress; its error message if it failed."""
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"There is no ingest job {job_id!r}.")
        return JobResponse(job=found)

    @app.delete("/api/videos/{key}", status_code=204, tags=["library"])
    def remove_video(key: str) -> Response:
        """Remove a video and its chunks."""
        if not store.remove_video(key):
            raise HTTPException(404, f"There is no video {key!r} in the library.")
        return Response(status_code=204)

    @app.get("/api/videos/{key}/chunks", tags=["library"])
    def chunks(key: str) -> ChunksOut:
        """A video's transcript, chunk by chunk, in order."""
        video = video_or_404(key)
        return ChunksOut(video=video, chunks=[ChunkOut.of(c) for c in store.chunks(key)])

    @app.get("/api/collections", tags=["library"])
    def collections() -> CollectionsOut:
        """Collections and their videos' keys."""
        return CollectionsOut(
            collections=[
                CollectionOut(name=name, videos=keys) for name, keys in store.collections().items()
            ]
        )

    @app.get("/api/conversations", tags=["history"])
    def list_conversations(video: str | None = None) -> ConversationsOut:
        """Saved conversations, newest first; ``?video=KEY`` for those about one video."""
        return ConversationsOut(
            conversations=[
                ConversationSummaryOut.of(s) for s in store.conversation_summaries(video_key=video)
            ]
        )

    @app.get("/api/conversations/{conversation_id}", tags=["history"])
    def conversation(conversation_id: int) -> ConversationOut:
        """A saved conversation with its messages and their citations."""
        record = store.conversation(conversation_id)
        if record is None:
            raise HTTPException(404, f"There is no conversation {conversation_id}.")
        return ConversationOut.of(record)

    async def start_session(request: Request) -> SessionStarted:
        body = await _json_body(request)
        # Pipecat's /start shape nests the bot's data under "body".
        data = body.get("body") if isinstance(body.get("body"), dict) else body
        if body.get("transport", "webrtc") != "webrtc":
            raise HTTPException(400, "This server starts WebRTC sessions only ('transport').")
        session = await asyncio.to_thread(session_for, SessionRequest.model_validate(data))
        session_id = conversations.register(session)
        return SessionStarted(sessionId=session_id, offerUrl=f"/sessions/{session_id}/api/offer")

    app.add_api_route(
        "/api/sessions",
        start_session,
        methods=["POST"],
        tags=["conversations"],
        summary="Start a conversation",
        description=(
            'Body: {"videos": [key, ...], "persona": "tutor"} (Pipecat\'s /start shape, '
            '{"body": {...}}, also works). Then POST the WebRTC offer to offerUrl.'
        ),
    )
    app.add_api_route("/start", start_session, methods=["POST"], include_in_schema=False)

    @app.post("/sessions/{session_id}/api/offer", tags=["conversations"])
    async def session_offer(session_id: str, request: Request) -> dict:
        """The session's WebRTC offer (SDP); returns the answer and ``pc_id``."""
        session = conversations.pending(session_id)
        if session is None:
            raise HTTPException(404, "Unknown or expired session: start a new one.")
        return await conversations.answer(await _json_body(request), session)

    @app.patch("/sessions/{session_id}/api/offer", tags=["conversations"])
    async def session_candidates(session_id: str, request: Request) -> dict:
        """Trickle ICE candidates for the session's peer connection."""
        if conversations.pending(session_id) is None:
            raise HTTPException(404, "Unknown or expired session: start a new one.")
        await conversations.add_candidates(await _json_body(request))
        return {"status": "success"}

    @app.post("/api/offer", tags=["conversations"])
    async def direct_offer(request: Request) -> dict:
        """A WebRTC offer without a session; the session's data in ``request_data``.

        Pipecat's clients send ``requestData`` (camelCase) or ``request_data``: both work.
        """
        body = await _json_body(request)
        data = body.get("request_data") or body.get("requestData") or {}
        if not isinstance(data, dict):
            raise HTTPException(400, "'request_data' must be an object.")
        session = await asyncio.to_thread(session_for, SessionRequest.model_validate(data))
        return await conversations.answer(body, session)

    @app.patch("/api/offer", tags=["conversations"])
    async def direct_candidates(request: Request) -> dict:
        """Trickle ICE candidates for a direct offer's peer connection."""
        await conversations.add_candidates(await _json_body(request))
        return {"status": "success"}

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    _mount_page(app)
    return app


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise HTTPException(400, "The request body must be JSON.") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    return body


def _mount_page(app: FastAPI) -> None:
    index = WEB_DIST / "index.html"
    assets = WEB_DIST / "assets"
    if assets.is_dir():
        app.mount("/assets", StaticFiles(directory=assets), name="assets")

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        if not index.is_file():
            return JSONResponse(
                {
                    "detail": "The page's built files are missing: run "
                    "`npm --prefix backtalk/web ci && npm --prefix backtalk/web run build`."
                },
                status_code=503,
            )
        return FileResponse(index, headers={"Cache-Control": "no-cache"})
