"""A fake OpenAI API server: a test double speaking the real HTTP wire protocol.

It serves ``POST /v1/chat/completions`` (streaming Server-Sent Events and plain JSON)
and ``POST /v1/embeddings`` on 127.0.0.1, so the real ``openai`` SDK and Pipecat's
``OpenAILLMService`` run unchanged against it::

    with FakeOpenAI(reply="Hello there.") as fake:
        llm = OpenAILLMService(api_key="sk-test", base_url=fake.base_url)
        ...
        assert fake.chat_requests[0]["messages"][-1]["content"] == "hi"
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from ._thread_server import ThreadedAiohttpServer

#: The most inputs OpenAI accepts in one embeddings request.
MAX_EMBEDDING_INPUTS = 2048

#: How many (dimension, sign) slots each word of a text is hashed into.
_SLOTS_PER_WORD = 4
_WORD_RE = re.compile(r"[a-z0-9]+")
_TOKEN_RE = re.compile(r"\s*\S+|\s+")


@dataclass
class FakeReply:
    """What the fake model answers to one chat request.

    Attributes:
        text: Answer text, streamed in roughly word-sized tokens (may be empty).
        tool_calls: Function calls to make, each a dict with ``name`` and ``arguments``
            (a JSON string, or a dict that is JSON-encoded; ``arguments_json`` is
            accepted as an alias) and optionally ``id``. Streamed after the text as
            ``delta.tool_calls`` chunks; the finish reason becomes ``"tool_calls"``.
    """

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


Reply = str | FakeReply | Callable[[dict[str, Any]], "str | FakeReply"]


def fake_embedding(text: str, dim: int = 1536) -> list[float]:
    """The deterministic unit-norm vector the fake returns for ``text``.

    A hashed bag of words: each lowercase alphanumeric word adds +-1 to a few
    dimensions chosen by a stable hash, so texts that share words have a higher
    cosine similarity. Values are float32-exact, so the ``float`` and ``base64``
    encodings decode to the same numbers.

    Args:
        text: The input text.
        dim: Number of dimensions.

    Returns:
        A list of ``dim`` floats with L2 norm 1.
    """
    vec = np.zeros(dim, dtype=np.float64)
    for word in _WORD_RE.findall(text.lower()) or [text]:
        digest = hashlib.blake2b(word.encode(), digest_size=4 * _SLOTS_PER_WORD).digest()
        for i in range(_SLOTS_PER_WORD):
            slot = int.from_bytes(digest[4 * i : 4 * i + 4], "little")
            vec[slot % dim] += 1.0 if slot & 0x80000000 else -1.0
    norm = np.linalg.norm(vec)
    if norm == 0:  # every slot cancelled out: fall back to one hashed dimension
        vec[int.from_bytes(hashlib.blake2b(text.encode()).digest()[:4], "little") % dim] = 1.0
        norm = 1.0
    return (vec / norm).astype("<f4").tolist()


def openai_error(
    status: int, message: str, *, param: str | None = None, retry_after_s: float | None = None
) -> web.Response:
    """An error response shaped like OpenAI's (``{"error": {...}}``).

    Args:
        status: HTTP status code.
        message: Human-readable message.
        param: The offending request parameter, if any.
        retry_after_s: If set, a ``Retry-After`` header (seconds, as OpenAI sends it).
    """
    kind = {429: ("requests", "rate_limit_exceeded")}.get(
        status, ("invalid_request_error" if status < 500 else "server_error", None)
    )
    body = {"error": {"message": message, "type": kind[0], "param": param, "code": kind[1]}}
    headers = {"Retry-After": f"{retry_after_s:g}"} if retry_after_s is not None else None
    return web.json_response(body, status=status, headers=headers)


def _split_tokens(text: str) -> list[str]:
    """Split text into word-sized tokens that keep their spaces (``"".join`` == text)."""
    return _TOKEN_RE.findall(text)


def _approx_tokens(value: Any) -> int:
    """A rough token count: words in every string found in ``value``."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_approx_tokens(v) for v in value.values())
    if isinstance(value, list):
        return sum(_approx_tokens(v) for v in value)
    return 0


class FakeOpenAI(ThreadedAiohttpServer):
    """Fake OpenAI chat-completions and embeddings endpoints (a loopback test double).

    Runs in a background thread, so it works from sync tests, async tests and
    benchmarks alike. The timing attributes may be changed while it runs.

    Args:
        reply: The answer: a string, a :class:`FakeReply`, or a callable taking the
            parsed request body and returning either (called in the server thread).
        ttft_s: Seconds before the first streamed chunk (time to first token); the
            ``role`` chunk is sent together with the first token, not before it.
        token_interval_s: Seconds between streamed tokens.
        embedding_dim: Vector length when the request has no ``dimensions``.
        embedding_delay_s: Seconds each embeddings request takes (only the requests
            ``embedding_delay_when`` selects, when it is set).
        embedding_delay_when: ``(inputs: list[str]) -> bool``, called in the server
            thread with each embeddings request's input texts: True delays that
            request by ``embedding_delay_s``. None: every request is delayed.
        embedding_fail_when: ``(inputs: list[str]) -> bool``: True answers that
            embeddings request with ``fail_status`` and an OpenAI error body (every
            time it is asked, retries included). None: no such failures.
        fail_next: Answer the next N requests (any endpoint) with ``fail_status``.
        fail_status: HTTP status for injected failures (e.g. 500, 429).

    Chat-only fault knobs (:meth:`fail_chat`, :meth:`stall_chat`) act on the next N chat
    requests, whichever client sends them (an SDK retry is a request like any other).

    Attributes:
        base_url: ``"http://127.0.0.1:PORT/v1"``, for ``base_url=`` of the SDK/service.
        chat_requests: Parsed JSON bodies of ``POST /v1/chat/completions``, in order
            (including requests answered with an injected failure or stalled).
        chat_request_times: ``time.monotonic()`` at the arrival of each of them.
        embedding_requests: Parsed JSON bodies of ``POST /v1/embeddings``, likewise.
        auth_headers: The ``Authorization`` header of every request ("" if missing).
        cancelled_streams: Chat streams whose client disconnected before the end.
    """

    def __init__(
        self,
        *,
        reply: Reply = "Sure. The video covers that.",
        ttft_s: float = 0.0,
        token_interval_s: float = 0.0,
        embedding_dim: int = 1536,
        embedding_delay_s: float = 0.0,
        embedding_delay_when: Callable[[list[str]], bool] | None = None,
        embedding_fail_when: Callable[[list[str]], bool] | None = None,
        fail_next: int = 0,
        fail_status: int = 500,
    ) -> None:
        super().__init__()
        self.reply = reply
        self.ttft_s = ttft_s
        self.token_interval_s = token_interval_s
        self.embedding_dim = embedding_dim
        self.embedding_delay_s = embedding_delay_s
        self.embedding_delay_when = embedding_delay_when
        self.embedding_fail_when = embedding_fail_when
        self._fail_next = fail_next
        self._fail_status = fail_status
        self._chat_requests: list[dict] = []
        self._chat_request_times: list[float] = []
        self._chat_faults: list[tuple[int, float | None]] = []  # (status, Retry-After s)
        self._chat_stalls: list[tuple[float, bool]] = []  # (seconds, before the headers)
        self._embedding_requests: list[dict] = []
        self._auth_headers: list[str] = []
        self._cancelled_streams = 0

    # -- recorded state (thread-safe copies) --------------------------------------------

    @property
    def base_url(self) -> str:
        """The API base URL, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def chat_requests(self) -> list[dict]:
        """Parsed bodies of chat-completion requests, in order."""
        with self._lock:
            return list(self._chat_requests)

    @property
    def chat_request_times(self) -> list[float]:
        """``time.monotonic()`` when each chat request arrived, in order."""
        with self._lock:
            return list(self._chat_request_times)

    @property
    def embedding_requests(self) -> list[dict]:
        """Parsed bodies of embeddings requests, in order."""
        with self._lock:
            return list(self._embedding_requests)

    @property
    def auth_headers(self) -> list[str]:
        """The ``Authorization`` header of every request, in order."""
        with self._lock:
            return list(self._auth_headers)

    @property
    def cancelled_streams(self) -> int:
        """Chat streams the client abandoned before ``data: [DONE]``."""
        with self._lock:
            return self._cancelled_streams

    def set_fail(self, n: int, status: int = 500) -> None:
        """Answer the next ``n`` requests with HTTP ``status`` and an OpenAI error body."""
        with self._lock:
            self._fail_next, self._fail_status = n, status

    def fail_chat(self, n: int, status: int = 429, *, retry_after_s: float | None = None) -> None:
        """Answer the next ``n`` chat requests with ``status`` and an OpenAI error body.

        Args:
            n: How many chat requests (each SDK retry counts as one).
            status: HTTP status, e.g. 429 or 500.
            retry_after_s: If set, each answer carries ``Retry-After`` (seconds).
        """
        with self._lock:
            self._chat_faults = [(status, retry_after_s)] * n

    def stall_chat(self, n: int, seconds: float, *, before_headers: bool = False) -> None:
        """Withhold the first token of the next ``n`` chat requests for ``seconds``.

        Args:
            n: How many chat requests.
            seconds: How long the first token (and so the whole reply) is late.
            before_headers: True: the HTTP response itself is late (a server that is
                slow to accept); False: ``200`` and the SSE headers come at once and the
                first chunk ``seconds`` later (a model that is slow to start).
        """
        with self._lock:
            self._chat_stalls = [(seconds, before_headers)] * n

    def reset(self) -> None:
        """Forget all recorded requests and pending failures."""
        with self._lock:
            self._chat_requests.clear()
            self._chat_request_times.clear()
            self._chat_faults.clear()
            self._chat_stalls.clear()
            self._embedding_requests.clear()
            self._auth_headers.clear()
            self._cancelled_streams = 0
            self._fail_next = 0

    # -- server -------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        return app

    async def _accept(
        self, request: web.Request, log: list[dict], times: list[float] | None = None
    ) -> tuple[dict[str, Any], web.Response | None]:
        """Check auth, parse and record the body (its arrival in ``times``), inject failures."""
        arrived = time.monotonic()
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self._auth_headers.append(auth)
        if not auth.startswith("Bearer ") or not auth[len("Bearer ") :].strip():
            return {}, openai_error(401, "You didn't provide an API key.")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return {}, openai_error(400, "We could not parse the JSON body of your request.")
        with self._lock:
            log.append(body)
            if times is not None:
                times.append(arrived)
            fail = self._fail_next > 0
            if fail:
                self._fail_next -= 1
        if fail:
            return body, openai_error(self._fail_status, "Injected failure (FakeOpenAI).")
        return body, None

    def _resolve_reply(self, body: dict[str, Any]) -> FakeReply:
        reply = self.reply(body) if callable(self.reply) else self.reply
        return reply if isinstance(reply, FakeReply) else FakeReply(text=reply)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, error = await self._accept(request, self._chat_requests, self._chat_request_times)
        if error is not None:
            return error
        with self._lock:
            fault = self._chat_faults.pop(0) if self._chat_faults else None
            stall_s, before_headers = self._chat_stalls.pop(0) if self._chat_stalls else (0.0, 0)
        if fault is not None:
            status, retry_after_s = fault
            return openai_error(
                status, "Injected chat failure (FakeOpenAI).", retry_after_s=retry_after_s
            )
        if before_headers:
            await asyncio.sleep(stall_s)
            stall_s = 0.0
        reply = self._resolve_reply(body)
        if body.get("stream"):
            return await self._stream_chat(request, body, reply, stall_s=stall_s)
        await asyncio.sleep(self.ttft_s + stall_s)
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in _tool_calls(reply)
            ]
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "gpt-4.1"),
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                    }
                ],
                "usage": _usage(body, reply),
            }
        )

    async def _stream_chat(
        self, request: web.Request, body: dict[str, Any], reply: FakeReply, *, stall_s: float = 0.0
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "gpt-4.1"),
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: dict | None, finish: str | None = None) -> bytes:
            data: dict[str, Any] = dict(base)
            data["choices"] = [
                {"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
            ]
            if include_usage:
                data["usage"] = None
            return f"data: {json.dumps(data)}\n\n".encode()

        # Each event: (seconds to wait before it, bytes). The role chunk arrives with the
        # first token, as with the real API (Pipecat stops its TTFB timer on it).
        events: list[tuple[float, bytes]] = []
        role = chunk({"role": "assistant", "content": "" if reply.text else None})
        for token in _split_tokens(reply.text):
            events.append((self.token_interval_s, chunk({"content": token})))
        for i, (cid, name, args) in enumerate(_tool_calls(reply)):
            head = {"index": i, "id": cid, "type": "function"}
            head["function"] = {"name": name, "arguments": ""}
            events.append((self.token_interval_s, chunk({"tool_calls": [head]})))
            for j in range(0, len(args), 8):
                frag = {"index": i, "function": {"arguments": args[j : j + 8]}}
                events.append((self.token_interval_s, chunk({"tool_calls": [frag]})))
        tail = chunk(None, "tool_calls" if reply.tool_calls else "stop")
        if include_usage:
            usage = dict(base, choices=[], usage=_usage(body, reply))
            tail += f"data: {json.dumps(usage)}\n\n".encode()
        tail += b"data: [DONE]\n\n"
        if events:
            events[0] = (self.ttft_s + stall_s, role + events[0][1])
        else:
            events.append((self.ttft_s + stall_s, role))
        events.append((0.0, tail))

        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        await response.prepare(request)
        try:
            # Each event is due at a fixed time from the start (its delays summed), so the
            # sleeps' overshoot does not add up over a long stream of tokens.
            loop = asyncio.get_running_loop()
            due = loop.time()
            for delay, data in events:
                due += delay
                if delay > 0:
                    await asyncio.sleep(max(due - loop.time(), 0.0))
                await response.write(data)
            await response.write_eof()
        except ConnectionResetError:  # client went away while we were writing
            self._count_cancelled()
        except asyncio.CancelledError:  # client went away while we were waiting
            self._count_cancelled()
            raise
        return response

    def _count_cancelled(self) -> None:
        with self._lock:
            self._cancelled_streams += 1

    async def _embeddings(self, request: web.Request) -> web.Response:
        body, error = await self._accept(request, self._embedding_requests)
        if error is not None:
            return error
        raw = body.get("input")
        if isinstance(raw, str) or (isinstance(raw, list) and raw and isinstance(raw[0], int)):
            raw = [raw]  # one string, or one pre-tokenised input
        if not isinstance(raw, list) or not raw:
            return openai_error(400, "'input' must be a non-empty string or array.", param="input")
        if len(raw) > MAX_EMBEDDING_INPUTS:
            return openai_error(
                400,
                f"'$.input' is invalid: at most {MAX_EMBEDDING_INPUTS} inputs are allowed "
                f"per request, got {len(raw)}.",
                param="input",
            )
        texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        if any(not t for t in texts):
            return openai_error(400, "'$.input' is invalid: empty string.", param="input")
        dim = body.get("dimensions") or self.embedding_dim
        if not isinstance(dim, int) or dim < 1:
            return openai_error(400, "'dimensions' must be a positive integer.", param="dimensions")
        fail_when = self.embedding_fail_when
        if fail_when is not None and fail_when(texts):
            return openai_error(self._fail_status, "Injected embeddings failure (FakeOpenAI).")
        delay_when = self.embedding_delay_when
        if delay_when is None or delay_when(texts):
            await asyncio.sleep(self.embedding_delay_s)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vector = fake_embedding(text, dim)
            if as_base64:
                vector = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(len(t.split()) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def _tool_calls(reply: FakeReply) -> list[tuple[str, str, str]]:
    """(id, name, arguments JSON) for each tool call of a reply."""
    calls = []
    for call in reply.tool_calls:
        args = call.get("arguments", call.get("arguments_json", "{}"))
        if not isinstance(args, str):
            args = json.dumps(args)
        calls.append((call.get("id") or f"call_{uuid.uuid4().hex[:24]}", call["name"], args))
    return calls


def _usage(body: dict[str, Any], reply: FakeReply) -> dict[str, int]:
    prompt = _approx_tokens(body.get("messages", [])) + 3 * len(body.get("messages", []))
    completion = len(_split_tokens(reply.text)) + sum(
        len(args) // 4 + 1 for _, _, args in _tool_calls(reply)
    )
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
