"""A worker process of ``backtalk serve``: ``python -m backtalk.server.worker --port N``.

It holds conversations for the server's :class:`~backtalk.server.workers.WorkerPool`
and answers only on 127.0.0.1, to callers that present the pool's secret
(``BACKTALK_WORKER_SECRET`` in its environment). Not meant to be started by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hmac
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request

from backtalk.agent.bot import AgentResources
from backtalk.agent.runner import configure_logging
from backtalk.config import Settings
from backtalk.server.run import run_until_signalled
from backtalk.server.sessions import AtCapacity, LocalConversations, session_from_json
from backtalk.server.workers import SECRET_HEADER

__all__ = ["create_worker_app", "main"]


def create_worker_app(resources: AgentResources, secret: str) -> FastAPI:
    """The worker's internal API (see :mod:`backtalk.server.workers`).

    Args:
        resources: Shared store, engines and embedder of this process.
        secret: The pool's secret; requests without it get 403.
    """
    host = LocalConversations(resources)
    state: dict = {"server": None}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await host.start()
        try:
            yield
        finally:
            await host.close()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)
    app.state.worker = state

    @app.middleware("http")
    async def only_the_pool(request: Request, call_next):
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            from fastapi.responses import JSONResponse

            return JSONResponse({"detail": "Forbidden."}, status_code=403)
        return await call_next(request)

    @app.get("/status")
    async def status() -> dict:
        return {
            "live": host.live,
            "reserved": host.reserved,
            "load": host.load(),
            "draining": host.draining,
            "sessions": host.session_ids,
            "pid": os.getpid(),
        }

    @app.post("/sessions/{session_id}")
    def reserve(session_id: str, body: dict) -> dict:
        try:
            host.adopt(session_id, session_from_json(body, resources))
        except AtCapacity as exc:
            raise HTTPException(503, str(exc)) from None
        return {"status": "reserved"}

    @app.post("/sessions/{session_id}/offer")
    async def offer(session_id: str, body: dict) -> dict:
        session = host.lookup(session_id)
        if session is None:
            raise HTTPException(404, "Unknown or expired session: start a new one.")
        return await host.answer(session_id, body, session)

    @app.patch("/sessions/{session_id}/offer")
    async def candidates(session_id: str, body: dict) -> dict:
        await host.add_candidates(session_id, body)
        return {"status": "success"}

    @app.post("/sessions/{session_id}/daily")
    async def daily(session_id: str, body: dict) -> dict:
        await host.start_daily(session_id, body["room_url"], body["token"])
        return {"status": "started"}

    @app.post("/drain")
    async def drain(body: dict) -> dict:
        async def drain_then_exit() -> None:
            await host.drain(float(body.get("deadline_s", 60)))
            if state["server"] is not None:
                state["server"].should_exit = True

        state["drain"] = asyncio.create_task(drain_then_exit(), name="worker-drain")
        return {"status": "draining", "live": host.live}

    return app


def main() -> None:
    """Run one worker until the pool drains or stops it."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="backtalk.server.worker")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    secret = os.environ.pop("BACKTALK_WORKER_SECRET", "")
    if not secret:
        raise SystemExit("backtalk.server.worker is started by `backtalk serve`, not by hand.")
    settings = Settings()
    configure_logging(settings.log_level)
    resources = AgentResources.open(settings)
    app = create_worker_app(resources, secret)
    gc.collect()
    gc.freeze()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
    )
    app.state.worker["server"] = server
    run_until_signalled(server)


if __name__ == "__main__":
    main()
