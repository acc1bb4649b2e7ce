"""Serving the app with uvicorn: ``backtalk talk`` (one person, on localhost)."""

from __future__ import annotations

import gc
from collections.abc import Sequence

from backtalk.agent.bot import AgentResources
from backtalk.agent.runner import check_port_free, configure_logging
from backtalk.prompts import DEFAULT_PERSONA
from backtalk.server.app import SHUTDOWN_GRACE_S, create_app

__all__ = ["serve"]


def serve(
    resources: AgentResources,
    *,
    videos: Sequence[str],
    persona: str = DEFAULT_PERSONA,
    host: str = "localhost",
    port: int = 7860,
) -> None:
    """Serve Backtalk's page and its conversations until Ctrl-C (or SIGTERM).

    Prints ``Open: http://HOST:PORT/`` once the server listens; each browser that
    connects from the page runs one conversation in this process.

    Args:
        resources: Shared store, engines and embedder.
        videos: Keys of the videos the page opens on.
        persona: The persona conversations start with.
        host: Interface to listen on.
        port: TCP port.

    Raises:
        UsageError: the port is already in use.
    """
    import uvicorn

    check_port_free(host, port)
    configure_logging(resources.settings.log_level)
    url = f"http://{host}:{port}/"

    def ready() -> None:
        print(f"Backtalk is ready. Open: {url}", flush=True)

    app = create_app(resources, videos=videos, persona=persona, on_ready=ready)
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
    )
    try:
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled, once it has shut down cleanly:
        # for `talk`, Ctrl-C is the normal way to stop, not a failure.
        pass
