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
    WS   /ws                        Pipecat's eval harness (without authentication only)

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
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from backtalk.agent import metrics
from backtalk.agent.bot import AgentResources, TalkSession
from backtalk.agent.rooms import DailyError, create_private_room
from backtalk.errors import InvalidVideoIdError
from backtalk.prompts import DEFAULT_PERSONA, personas
from backtalk.server.jobs import IngestJobs
from backtalk.server.limits import SessionStartLimiter
from backtalk.server.metrics import CONTENT_TYPE_LATEST, metrics_text
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
from backtalk.server.sessions import AtCapacity, ConversationHost, LocalConversations

__all__ = ["WEB_DIST", "create_app"]

#: The page's built assets (committed; rebuilt with ``npm --prefix backtalk/web run build``).
WEB_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> int | None:
    """The calling API key's id; None when the server runs without authentication.

    Raises:
        HTTPException: 401 without a valid, unrevoked key.
    """
    if not request.app.state.auth:
        return None
    scheme, _, key = (authorization or "").partition(" ")
    store = request.app.state.store
    key_id = store.key_id(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if key_id is None:
        raise HTTPException(
            401,
            "An API key is needed: send 'Authorization: Bearer <key>' "
            "(create one with `backtalk keys create NAME`).",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key_id


#: A route's caller: the API key's id (see :func:`caller`).
Caller = Annotated[int | None, Depends(caller)]


def create_app(
    resources: AgentResources,
    *,
    videos: Sequence[str] = (),
    persona: str = DEFAULT_PERSONA,
    on_ready: Any = None,
    host: ConversationHost | None = None,
    auth: bool = False,
    rate_limit: bool = False,
    drain_s: float | None = None,
) -> FastAPI:
    """Build the server for ``resources``' library.

    Args:
        resources: The shared store, engines and embedder.
        videos: Keys of the videos the page opens on (``backtalk talk URL...``).
        persona: The persona conversations start with unless the page asks otherwise.
        on_ready: Called (no arguments) once the server is serving.
        host: Where conversations run (default: this process, no limit).
        auth: Require an API key (``Authorization: Bearer …``) on every ``/api``
            route; each key sees only its own conversations.
        rate_limit: Limit session starts per API key and per client address to
            ``session_starts_per_minute`` (429 with ``Retry-After``).
        drain_s: On shutdown, let live conversations finish for up to this long,
            seconds, before ending them (None: end them at once, as Ctrl-C on
            ``talk`` does).

    Returns:
        The FastAPI app (run it with uvicorn).
    """
    settings = resources.settings
    store = resources.store
    jobs = IngestJobs(settings, store, resources.embedder)
    conversations: ConversationHost = host or LocalConversations(resources)
    starts = SessionStartLimiter(settings.session_starts_per_minute) if rate_limit else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await conversations.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            jobs.close()
            if drain_s:
                await conversations.drain(drain_s)
            else:
                await conversations.close()

    app = FastAPI(
        title="Backtalk",
        summary="Talk out loud with a YouTube video.",
        description=(
            "The page's API and Pipecat-compatible sessions. With `backtalk serve`, every "
            "`/api` route needs `Authorization: Bearer <key>` (`backtalk keys create`)."
        ),
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.conversations = conversations
    app.state.store = store
    app.state.auth = auth

    def video_or_404(key: str) -> VideoOut:
        found = store.find_videos([key])
        if key not in found:
            raise HTTPException(404, f"There is no video {key!r} in the library.")
        return VideoOut.of(found[key])

    def session_for(request: SessionRequest, api_key_id: int | None) -> TalkSession:
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
        return TalkSession(videos=[found[k] for k in keys], persona=chosen, api_key_id=api_key_id)

    def admit(request: Request, api_key_id: int | None) -> None:
        """Refuse a session start over the rate limit (429) — before anything is created."""
        if starts is None:
            return
        client = request.client.host if request.client else "unknown"
        wait_s = starts.hit(api_key_id, client)
        if wait_s is not None:
            metrics.SESSIONS_REJECTED.labels(reason="rate_limit").inc()
            raise HTTPException(
                429,
                f"Too many conversations started: at most {settings.session_starts_per_minute} "
                f"a minute. Try again in {wait_s} s.",
                headers={"Retry-After": str(wait_s)},
            )

    async def register(session: TalkSession) -> str:
        try:
            session_id = await conversations.register(session)
        except AtCapacity as exc:
            metrics.SESSIONS_REJECTED.labels(reason="capacity").inc()
            raise HTTPException(
                503, str(exc), headers={"Retry-After": str(exc.retry_after_s)}
            ) from None
        metrics.SESSIONS_STARTED.inc()
        return session_id

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict:
        """Liveness: 200 while the process runs."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "Not ready: why"}})
    async def readyz() -> JSONResponse:
        """Readiness: 200 when the database answers and a session could start now."""
        reason = await asyncio.to_thread(store.ping)
        if reason is None:
            reason = await conversations.not_ready()
        if reason is not None:
            return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
        return JSONResponse({"status": "ready", "conversations": conversations.live})

    @app.get("/metrics", tags=["health"], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return Response(metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/config", tags=["page"])
    def config(_caller: Caller) -> ConfigOut:
        """The videos and persona the page opens on, and the personas to choose from."""
        found = store.find_videos(list(videos))
        return ConfigOut(
            videos=[VideoOut.of(found[k]) for k in videos if k in found],
            persona=persona,
            personas=personas(),
        )

    @app.get("/api/videos", tags=["library"])
    def list_videos(_caller: Caller) -> VideosOut:
        """Every video in the library, oldest ingest first."""
        return VideosOut(videos=[VideoOut.of(v) for v in store.list_videos()])

    @app.post("/api/videos", status_code=202, tags=["library"])
    async def add_video(request: IngestRequest, _caller: Caller) -> JobResponse:
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
    async def job(job_id: str, _caller: Caller) -> JobResponse:
        """An ingest job's stage and progress; its error message if it failed."""
        found = jobs.get(job_id)
        if found is None:
            raise HTTPException(404, f"There is no ingest job {job_id!r}.")
        return JobResponse(job=found)

    @app.delete("/api/videos/{key}", status_code=204, tags=["library"])
    def remove_video(key: str, _caller: Caller) -> Response:
        """Remove a video and its chunks."""
        if not store.remove_video(key):
            raise HTTPException(404, f"There is no video {key!r} in the library.")
        return Response(status_code=204)

    @app.get("/api/videos/{key}/chunks", tags=["library"])
    def chunks(key: str, _caller: Caller) -> ChunksOut:
        """A video's transcript, chunk by chunk, in order."""
        video = video_or_404(key)
        return ChunksOut(video=video, chunks=[ChunkOut.of(c) for c in store.chunks(key)])

    @app.get("/api/collections", tags=["library"])
    def collections(_caller: Caller) -> CollectionsOut:
        """Collections and their videos' keys."""
        return CollectionsOut(
            collections=[
                CollectionOut(name=name, videos=keys) for name, keys in store.collections().items()
            ]
        )

    @app.get("/api/conversations", tags=["history"])
    def list_conversations(api_key_id: Caller, video: str | None = None) -> ConversationsOut:
        """Saved conversations, newest first; ``?video=KEY`` for those about one video.

        With authentication, only the conversations the caller's key started.
        """
        found = store.conversation_summaries(video_key=video, api_key_id=api_key_id)
        return ConversationsOut(conversations=[ConversationSummaryOut.of(s) for s in found])

    @app.get("/api/conversations/{conversation_id}", tags=["history"])
    def conversation(conversation_id: int, api_key_id: Caller) -> ConversationOut:
        """A saved conversation with its messages and their citations."""
        record = store.conversation(conversation_id, api_key_id=api_key_id)
        if record is None:
            raise HTTPException(404, f"There is no conversation {conversation_id}.")
        return ConversationOut.of(record)

    async def start_session(request: Request, api_key_id: Caller) -> SessionStarted:
        body = await _json_body(request)
        # Pipecat's /start shape nests the bot's data under "body".
        data = body.get("body") if isinstance(body.get("body"), dict) else body
        transport = data.get("transport", body.get("transport", "webrtc"))
        if transport not in ("webrtc", "daily"):
            raise HTTPException(400, "'transport' must be 'webrtc' or 'daily'.")
        parsed = SessionRequest.model_validate(data)
        session = await asyncio.to_thread(session_for, parsed, api_key_id)
        if transport == "daily" and not settings.daily_api_key:
            raise HTTPException(
                400, "This server has no DAILY_API_KEY: start a 'webrtc' session instead."
            )
        admit(request, api_key_id)
        session_id = await register(session)
        if transport == "webrtc":
            return SessionStarted(
                sessionId=session_id, offerUrl=f"/sessions/{session_id}/api/offer"
            )
        try:
            room = await create_private_room(
                api_key=settings.secret("daily_api_key") or "",
                api_url=settings.daily_api_url,
                lifetime_s=settings.session_max_s,
            )
        except DailyError as exc:
            raise HTTPException(502, str(exc)) from None
        await conversations.start_daily(session_id, room.url, room.bot_token)
        return SessionStarted(sessionId=session_id, dailyRoom=room.url, dailyToken=room.user_token)

    app.add_api_route(
        "/api/sessions",
        start_session,
        methods=["POST"],
        response_model_exclude_none=True,
        tags=["conversations"],
        summary="Start a conversation",
        description=(
            'Body: {"videos": [key, ...], "persona": "tutor", "transport": "webrtc"} '
            '(Pipecat\'s /start shape, {"body": {...}}, also works). WebRTC: then POST '
            "the offer to offerUrl. Daily: join dailyRoom with dailyToken (the user's "
            "token; the room is private). 429 over the rate limit, 503 at capacity, both "
            "with Retry-After; a refused start creates no room and starts no bot."
        ),
        responses={429: {"description": "Rate limited"}, 503: {"description": "At capacity"}},
    )
    app.add_api_route(
        "/start",
        start_session,
        methods=["POST"],
        include_in_schema=False,
        response_model_exclude_none=True,
    )

    @app.post("/sessions/{session_id}/api/offer", tags=["conversations"])
    async def session_offer(session_id: str, request: Request) -> dict:
        """The session's WebRTC offer (SDP); returns the answer and ``pc_id``.

        The session id, from an authenticated ``POST /api/sessions``, is the credential.
        """
        session = conversations.lookup(session_id)
        if session is None:
            raise HTTPException(404, "Unknown or expired session: start a new one.")
        return await conversations.answer(session_id, await _json_body(request), session)

    @app.patch("/sessions/{session_id}/api/offer", tags=["conversations"])
    async def session_candidates(session_id: str, request: Request) -> dict:
        """Trickle ICE candidates for the session's peer connection."""
        await conversations.add_candidates(session_id, await _json_body(request))
        return {"status": "success"}

    @app.post("/api/offer", tags=["conversations"])
    async def direct_offer(request: Request, api_key_id: Caller) -> dict:
        """A WebRTC offer without a session; the session's data in ``request_data``.

        Pipecat's clients send ``requestData`` (camelCase) or ``request_data``: both work.
        """
        body = await _json_body(request)
        data = body.get("request_data") or body.get("requestData") or {}
        if not isinstance(data, dict):
            raise HTTPException(400, "'request_data' must be an object.")
        parsed = SessionRequest.model_validate(data)
        session = await asyncio.to_thread(session_for, parsed, api_key_id)
        admit(request, api_key_id)
        session_id = await register(session)
        return await conversations.answer(session_id, body, session)

    @app.patch("/api/offer", tags=["conversations"])
    async def direct_candidates(request: Request, _caller: Caller) -> dict:
        """Trickle ICE candidates for a direct offer's peer connection."""
        await conversations.add_candidates(None, await _json_body(request))
        return {"status": "success"}

    if not auth:

        @app.websocket("/ws")
        async def eval_harness(websocket: WebSocket) -> None:
            """Pipecat's eval harness (``pipecat eval run … --bot-url ws://HOST:PORT/ws``).

            One conversation about the server's default videos, over the harness's
            websocket transport; served only without authentication (``talk``).
            """
            from pipecat.runner.types import WebSocketRunnerArguments

            from backtalk.agent.runner import make_bot

            await websocket.accept()
            session = await asyncio.to_thread(session_for, SessionRequest(), None)
            await make_bot(resources, session)(WebSocketRunnerArguments(websocket=websocket))

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
