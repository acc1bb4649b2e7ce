"""Private Daily rooms for one conversation, through Daily's REST API.

Pipecat's ``runner.daily.configure()`` creates *public* rooms and owner tokens; a
conversation with Backtalk is private to the person who started it. So each room is
created with (Daily REST API, https://docs.daily.co/reference/rest-api):

* the room: ``privacy: "private"``, ``exp`` = now + the session limit,
  ``eject_at_room_exp: true`` — nobody can join without a token, and nobody stays
  after the conversation's time is up;
* the user's meeting token: ``room_name``, ``is_owner: false``, ``exp``,
  ``eject_at_token_exp: true`` — this is the only token that leaves the server;
* the bot's token: the same, with ``is_owner: true``; it stays on the server.

Requests go through Pipecat's :class:`~pipecat.transports.daily.utils.DailyRESTHelper`
with these properties spelled out, to ``BACKTALK_DAILY_API_URL``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp

from backtalk.errors import BacktalkError

__all__ = ["DailyError", "PrivateRoom", "create_private_room"]


class DailyError(BacktalkError):
    """Daily's REST API refused or failed (the message never holds a key or token)."""


@dataclass(frozen=True, slots=True)
class PrivateRoom:
    """A room for one conversation.

    Parameters:
        url: The room's URL.
        user_token: The user's (non-owner) meeting token: give it to the client.
        bot_token: The bot's owner token: never leaves the server.
        expires_at: Unix time, seconds, when room and tokens expire.
    """

    url: str
    user_token: str
    bot_token: str
    expires_at: int

    def __repr__(self) -> str:  # tokens are secrets: never in logs or tracebacks
        return f"PrivateRoom(url={self.url!r}, expires_at={self.expires_at})"


async def create_private_room(
    *, api_key: str, api_url: str, lifetime_s: float, http: aiohttp.ClientSession | None = None
) -> PrivateRoom:
    """Create a private room and its two tokens (see the module docstring).

    Args:
        api_key: ``DAILY_API_KEY``.
        api_url: Daily's REST API base (``https://api.daily.co/v1``).
        lifetime_s: How long room and tokens live, seconds (the session limit).
        http: An aiohttp session to use (a new one by default).

    Returns:
        The room.

    Raises:
        DailyError: Daily refused or could not be reached (status only, no secrets).
    """
    from pipecat.transports.daily.utils import (
        DailyRESTHelper,
        DailyRoomParams,
        DailyRoomProperties,
    )

    expires_at = int(time.time() + lifetime_s)
    own_session = http is None
    session = http or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
    try:
        helper = DailyRESTHelper(
            daily_api_key=api_key, daily_api_url=api_url.rstrip("/"), aiohttp_session=session
        )
        room = await helper.create_room(
            DailyRoomParams(
                privacy="private",
                properties=DailyRoomProperties(exp=expires_at, eject_at_room_exp=True),
            )
        )
        lifetime = max(1.0, expires_at - time.time())
        user_token = await helper.get_token(
            room.url, expiry_time=lifetime, eject_at_token_exp=True, owner=False
        )
        bot_token = await helper.get_token(
            room.url, expiry_time=lifetime, eject_at_token_exp=True, owner=True
        )
    except aiohttp.ClientError as exc:
        raise DailyError(f"Daily could not be reached ({type(exc).__name__}).") from None
    except Exception as exc:  # DailyRESTHelper raises bare Exceptions with the status
        status = str(exc).split(":", 1)[0]
        raise DailyError(f"Daily refused to create the room ({status}).") from None
    finally:
        if own_session:
            await session.close()
    return PrivateRoom(
        url=room.url, user_token=user_token, bot_token=bot_token, expires_at=expires_at
    )
