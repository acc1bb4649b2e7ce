"""Starting the agent outside Backtalk's server: Pipecat's ``bot()`` entry, or a Daily room.

The local page is served by :mod:`backtalk.server`; :func:`make_bot` gives Pipecat's
``async def bot(runner_args)`` shape (Pipecat's runner, its eval harness, Pipecat
Cloud), and :func:`run_daily` joins a Daily room.
"""

from __future__ import annotations

import asyncio
import socket
import sys

from loguru import logger
from pipecat.runner.types import RunnerArguments

from backtalk.agent.audio import transport_params
from backtalk.agent.bot import AgentResources, TalkSession, run_conversation
from backtalk.agent.rooms import create_private_room
from backtalk.errors import UsageError

__all__ = ["bot", "check_port_free", "configure_logging", "make_bot", "run_daily"]


def configure_logging(level: str) -> None:
    """Log Backtalk's and Pipecat's lines (loguru) to stderr at ``level``.

    Pipecat logs at DEBUG by default (its dev runner resets loguru to DEBUG), which
    includes prompts and transcripts; Backtalk logs at INFO unless asked for more
    (``BACKTALK_LOG_LEVEL``).
    """
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
        configure_logging(resources.settings.log_level)
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


_shared: AgentResources | None = None


async def bot(runner_args: RunnerArguments) -> None:
    """Pipecat's bot entry: one conversation, its videos named by the start request.

    What Pipecat Cloud (the repository's ``bot.py`` on its base image) and Pipecat's
    development runner (``python bot.py``) call per session. The session's data is the
    start request's ``body``: ``{"videos": ["KEY", ...], "persona": "tutor"}``; the
    videos must be in the library ``DATABASE_URL`` names. Settings come from the
    environment (on Pipecat Cloud: its secret set).

    Args:
        runner_args: From Pipecat's runner (Daily, SmallWebRTC, or its eval harness).
    """
    global _shared
    from backtalk.config import Settings
    from backtalk.prompts import DEFAULT_PERSONA, personas

    if _shared is None:  # shared by the sessions of this process: models load once
        _shared = await asyncio.to_thread(AgentResources.open, Settings())
    body = runner_args.body if isinstance(runner_args.body, dict) else {}
    keys = [str(k) for k in body.get("videos") or []]
    persona = str(body.get("persona") or DEFAULT_PERSONA)
    found = await asyncio.to_thread(_shared.store.find_videos, keys)
    missing = [k for k in keys if k not in found]
    if not keys or missing or persona not in personas():
        logger.error(
            "The session's body must name library videos and a known persona: "
            f'{{"videos": [...], "persona": ...}}; missing videos: {missing or "none given"}'
        )
        return
    session = TalkSession(videos=[found[k] for k in keys], persona=persona)
    await make_bot(_shared, session)(runner_args)


async def run_daily(
    resources: AgentResources, session: TalkSession, *, room_url: str | None = None
) -> str:
    """Join a Daily room (creating one with ``DAILY_API_KEY`` if none is given) and talk.

    A created room is private (:func:`backtalk.agent.rooms.create_private_room`): the
    printed link carries the user's own, non-owner token, and room and tokens expire
    after ``session_max_s``.

    Args:
        resources: Shared store, engine and embedder.
        session: The videos and persona.
        room_url: An existing room to join; None to create a private one.

    Returns:
        The room URL, once the conversation has ended.

    Raises:
        DailyError: Daily refused to create the room.
    """
    from pipecat.transports.daily.transport import DailyParams, DailyTransport

    settings = resources.settings
    token = None
    link = room_url
    if room_url is None:
        assert settings.daily_api_key is not None  # checked by Settings.require_keys
        room = await create_private_room(
            api_key=settings.secret("daily_api_key") or "",
            api_url=settings.daily_api_url,
            lifetime_s=settings.session_max_s,
        )
        room_url, token = room.url, room.bot_token
        link = f"{room.url}?t={room.user_token}"
    print(f"Join the conversation in your browser: {link}", flush=True)
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
