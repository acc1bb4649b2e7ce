"""Starting the agent: a local browser page (SmallWebRTC) or a Daily room."""

from __future__ import annotations

import gc
import socket
import sys
from contextlib import asynccontextmanager

import aiohttp
from loguru import logger
from pipecat.runner.types import RunnerArguments

from backtalk.agent.audio import transport_params
from backtalk.agent.bot import AgentResources, TalkSession, run_conversation
from backtalk.errors import UsageError

__all__ = ["make_bot", "run_daily", "serve_webrtc"]


def _configure_logging(level: str) -> None:
    # Pipecat's dev runner resets loguru to DEBUG, which logs prompts and transcripts;
    # Backtalk logs at INFO unless asked for more (BACKTALK_LOG_LEVEL).
    logger.remove()
    logger.add(sys.stderr, level=level)


def check_port_free(host: str, port: int) -> None:
    """Fail early, by name, if another program (an earlier ``backtalk talk``?) holds the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((socket.gethostbyname(host), port))
        except OSError:
            raise UsageError(
                f"Port {port} on {host} is already in use (is another `backtalk talk` "
                "running?). Stop it, or pass --port with a free port."
            ) from None


def make_bot(resources: AgentResources, session: TalkSession):
    """The ``bot(runner_args)`` coroutine function Pipecat's dev runner calls per session.

    Args:
        resources: Shared store, engine and embedder.
        session: The videos and persona.

    Returns:
        ``async def bot(runner_args: RunnerArguments) -> None``.
    """
    from pipecat.evals.transport import EvalTransportParams
    from pipecat.runner.utils import create_transport
    from pipecat.transports.daily.transport import DailyParams

    async def bot(runner_args: RunnerArguments) -> None:
        _configure_logging(resources.settings.log_level)
        transport = await create_transport(
            runner_args,
            {
                "daily": lambda: transport_params(resources.settings, DailyParams),
                "webrtc": lambda: transport_params(resources.settings),
                # Pipecat's eval harness (`pipecat eval run ... --bot-url ws://HOST:PORT/ws`).
                "eval": lambda: transport_params(resources.settings, EvalTransportParams),
            },
        )
        name = type(transport).__name__.removesuffix("Transport").lower()
        await run_conversation(
            transport,
            session,
            resources,
            transport_name=name,
            handle_sigint=runner_args.handle_sigint,
        )

    return bot


def serve_webrtc(resources: AgentResources, session: TalkSession, *, host: str, port: int) -> None:
    """Serve the agent on a local page with Pipecat's development runner (SmallWebRTC).

    The runner prints the URL to open (``http://HOST:PORT/client``); each browser
    connection starts one conversation. Blocks until Ctrl-C.

    Args:
        resources: Shared store, engine and embedder.
        session: The videos and persona.
        host: Interface to listen on.
        port: TCP port.

    Raises:
        UsageError: the port is already in use.
    """
    from pipecat.runner import run as pipecat_runner

    check_port_free(host, port)
    # The runner resets loguru to DEBUG in main(); restore our level when its server
    # starts, by composing a lifespan the same way the runner composes its own.
    existing = pipecat_runner.app.router.lifespan_context

    @asynccontextmanager
    async def quiet_logs(app):
        _configure_logging(resources.settings.log_level)
        async with existing(app) as state:
            yield state

    pipecat_runner.app.router.lifespan_context = quiet_logs
    # Start-up objects (models, modules) live for the whole process: freezing them keeps
    # each conversation's gc.collect() short (165 → 34 ms, benchmarks/concurrency.py).
    gc.collect()
    gc.freeze()
    # The runner discovers `bot` on the __main__ module and reads its options from argv.
    sys.modules["__main__"].bot = make_bot(resources, session)  # type: ignore[attr-defined]
    sys.argv = [sys.argv[0], "-t", "webrtc", "--host", host, "--port", str(port)]
    pipecat_runner.main()


async def run_daily(
    resources: AgentResources, session: TalkSession, *, room_url: str | None = None
) -> str:
    """Join a Daily room (creating one with ``DAILY_API_KEY`` if none is given) and talk.

    Args:
        resources: Shared store, engine and embedder.
        session: The videos and persona.
        room_url: An existing room to join; None to create a temporary one (1 h).

    Returns:
        The room URL, once the conversation has ended.
    """
    from pipecat.runner.daily import configure
    from pipecat.transports.daily.transport import DailyParams, DailyTransport

    settings = resources.settings
    token = None
    if room_url is None:
        assert settings.daily_api_key is not None  # checked by Settings.require_keys
        async with aiohttp.ClientSession() as http:
            room = await configure(
                http, api_key=settings.secret("daily_api_key"), room_exp_duration=1.0
            )
        room_url, token = room.room_url, room.token
    print(f"Join the conversation in your browser: {room_url}", flush=True)
    transport = DailyTransport(
        room_url,
        token,
        "Backtalk",
        transport_params(settings, DailyParams),
    )
    await run_conversation(
        transport, session, resources, transport_name="daily", handle_sigint=True
    )
    return room_url
