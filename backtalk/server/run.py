"""Running the server with uvicorn: ``backtalk talk`` (one person) and ``backtalk serve``."""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Sequence

from backtalk.agent.bot import AgentResources
from backtalk.agent.runner import check_port_free, configure_logging
from backtalk.prompts import DEFAULT_PERSONA
from backtalk.server.app import create_app
from backtalk.server.sessions import SHUTDOWN_GRACE_S, ConversationHost, LocalConversations

__all__ = ["run_until_signalled", "serve"]


def serve(
    resources: AgentResources,
    *,
    videos: Sequence[str] = (),
    persona: str = DEFAULT_PERSONA,
    host: str = "localhost",
    port: int = 7860,
    workers: int | None = None,
    auth: bool = False,
    database_url: str | None = None,
) -> None:
    """Serve Backtalk's page, its API and its conversations until Ctrl-C or SIGTERM.

    Prints ``Open: http://HOST:PORT/`` once the server listens.

    ``backtalk talk`` (``workers=None``): conversations run in this process, with no
    limits, and Ctrl-C ends them at once. ``backtalk serve``: API keys, session-start
    rate limits, capacity; ``workers=0`` runs conversations in this process, ``N``
    spreads them over N worker processes; SIGTERM drains (no new session, live ones
    get ``drain_timeout_s``), then the process exits 0.

    Args:
        resources: Shared store, engines and embedder.
        videos: Keys of the videos the page opens on.
        persona: The persona conversations start with.
        host: Interface to listen on.
        port: TCP port.
        workers: Worker processes (``serve``), or None (``talk``).
        auth: Require API keys.
        database_url: The resolved database URL the workers connect to.

    Raises:
        UsageError: the port is already in use.
    """
    import uvicorn

    settings = resources.settings
    check_port_free(host, port)
    configure_logging(settings.log_level)
    url = f"http://{host}:{port}/"

    def ready() -> None:
        print(f"Backtalk is ready. Open: {url}", flush=True)

    conversations: ConversationHost
    if workers:
        from backtalk.server.workers import WorkerPool

        env = dict(os.environ)
        if database_url:
            env["DATABASE_URL"] = database_url
        conversations = WorkerPool(
            workers,
            max_sessions=settings.worker_max_sessions,
            load_threshold=settings.worker_load_threshold,
            env=env,
        )
    elif workers == 0:
        conversations = LocalConversations(
            resources,
            max_sessions=settings.worker_max_sessions,
            load_threshold=settings.worker_load_threshold,
        )
    else:
        conversations = LocalConversations(resources)
    serving = workers is not None
    app = create_app(
        resources,
        videos=videos,
        persona=persona,
        on_ready=ready,
        host=conversations,
        auth=auth,
        rate_limit=serving,
        drain_s=settings.drain_timeout_s if serving else None,
    )
    # Start-up objects (models, modules) live for the whole process: freezing them keeps
    # each conversation's gc.collect() short (165 → 34 ms, benchmarks/concurrency.py).
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S),
        # Behind a load balancer, the client's address comes from X-Forwarded-For
        # (for the per-address rate limit); set FORWARDED_ALLOW_IPS to the balancer's.
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
    )
    run_until_signalled(uvicorn.Server(config))


def run_until_signalled(server) -> None:
    """Run a ``uvicorn.Server`` until Ctrl-C or SIGTERM; return once it has shut down.

    uvicorn handles both signals (graceful shutdown, then the app's lifespan exit:
    drain or close), and afterwards re-raises the one it caught; by then stopping is
    done, so it is not a failure: the process exits 0.

    Once the server has shut down, further Ctrl-C and SIGTERM are ignored: what is
    left is the exit itself (under a second; the embedded Postgres is stopped by an exit
    handler), and a second Ctrl-C from an impatient user would interrupt that handler,
    print a traceback and could leave the database running.
    """
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
