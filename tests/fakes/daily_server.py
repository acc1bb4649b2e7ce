"""A loopback fake of Daily's REST API: rooms and meeting tokens.

It answers what Pipecat's ``DailyRESTHelper`` asks (https://docs.daily.co/reference/rest-api):

* ``POST /v1/rooms`` ``{"privacy", "properties": {...}}`` → the room object
  (``id``, ``name``, ``api_created``, ``privacy``, ``url``, ``created_at``, ``config``);
* ``POST /v1/meeting-tokens`` ``{"properties": {...}}`` → ``{"token": ...}``;

checks ``Authorization: Bearer <key>`` (401 otherwise), and records every room and
token request so tests can assert their properties. ``fail_with=429`` (or any status)
makes the next room creation fail with that status.
"""

from __future__ import annotations

import secrets
import uuid

from aiohttp import web

from ._thread_server import ThreadedAiohttpServer

__all__ = ["FakeDaily"]


class FakeDaily(ThreadedAiohttpServer):
    """Daily's REST API on 127.0.0.1.

    Args:
        api_key: The key requests must carry.
    """

    def __init__(self, api_key: str = "daily-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.rooms: list[dict] = []
        self.tokens: list[dict] = []
        self.issued: list[str] = []
        self.fail_with: int | None = None

    @property
    def base_url(self) -> str:
        """The API base URL (``BACKTALK_DAILY_API_URL``), ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/rooms", self._create_room)
        app.router.add_post("/v1/meeting-tokens", self._create_token)
        return app

    async def _create_room(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "authentication-error"}, status=401)
        body = await request.json()
        with self._lock:
            self.rooms.append(body)
            if self.fail_with is not None:
                status, self.fail_with = self.fail_with, None
                return web.json_response({"error": "rate-limit"}, status=status)
        name = body.get("name") or uuid.uuid4().hex[:12]
        return web.json_response(
            {
                "id": str(uuid.uuid4()),
                "name": name,
                "api_created": True,
                "privacy": body.get("privacy", "public"),
                "url": f"https://backtalk-test.daily.co/{name}",
                "created_at": "2026-12-02T00:00:00.000Z",
                "config": body.get("properties", {}),
            }
        )

    async def _create_token(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return web.json_response({"error": "authentication-error"}, status=401)
        body = await request.json()
        token = "dailytoken-" + secrets.token_urlsafe(16)
        with self._lock:
            self.tokens.append(body.get("properties", {}))
            self.issued.append(token)
        return web.json_response({"token": token})
