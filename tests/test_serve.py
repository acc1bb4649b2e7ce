"""``backtalk serve`` as an operator runs it: keys, limits, private Daily rooms, workers.

The real server runs in its own process on a loopback port, with its worker processes,
over the real embedded Postgres; Deepgram, OpenAI and Daily's REST API are the loopback
fakes of :mod:`tests.fakes`. The provider keys are distinctive fakes, so that every log
line, response and command line can be searched for them. Conversations are real
WebRTC sessions of :mod:`tests.webrtc_client` (aiortc) started with ``POST /api/sessions``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import AUDIO, TRANSCRIPTS, start_postgres, stop_postgres
from fakes import FakeDaily, FakeDeepgram, FakeOpenAI
from processes import (
    Output,
    eventually,
    free_port,
    http_status,
    process_group,
    start_backtalk,
)
from webrtc_client import Microphone, SmallWebRTCClient, load_wav

from backtalk.store import Store
from backtalk.store.repo import conversation_start

pytestmark = [pytest.mark.integration]

LECTURE = str(TRANSCRIPTS / "gradient_descent_lecture.json")
VIDEO = "gradient_descent_lecture"
Q1_TEXT = "What does the speaker say about choosing the learning rate?"
ANSWER = "He says to start small, around zero point zero one, about four minutes in."
SECRETS = {
    "DEEPGRAM_API_KEY": "dg-LEAKCHECK-7a1f",
    "OPENAI_API_KEY": "sk-LEAKCHECK-93c2",
    "DAILY_API_KEY": "daily-LEAKCHECK-5e0d",
}
BOT_PY = Path(__file__).resolve().parent.parent / "bot.py"
_EXCERPT = re.compile(r'start_seconds="(\d+)" end_seconds="(\d+)"')


@dataclass
class Server:
    proc: subprocess.Popen
    out: Output
    err: Output
    base: str
    env: dict[str, str]
    cwd: Path

    def call(self, method: str, path: str, body: dict | None = None, key: str | None = None):
        """``(status, json, headers)`` of one request."""
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read() or b"null"), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null"), dict(e.headers)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [os.sys.executable, "-m", "backtalk.cli", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def new_key(self, name: str) -> str:
        return self.cli("keys", "create", name).strip().splitlines()[-1]

    def workers(self) -> list[tuple[int, str]]:
        return [(p, c) for p, c in process_group(self.proc.pid) if "backtalk.server.worker" in c]

    @property
    def logs(self) -> str:
        return self.out.text + self.err.text


@pytest.fixture
def fakes():
    with (
        FakeOpenAI(reply=ANSWER) as openai,
        FakeDeepgram(tts_secs_per_char=0.02) as deepgram,
        FakeDaily(api_key=SECRETS["DAILY_API_KEY"]) as daily,
    ):
        yield openai, deepgram, daily


@pytest.fixture
def serve(database_url: str, tmp_path: Path, fakes) -> Iterator:
    """``serve(*args, **settings)`` starts ``backtalk serve``; stopped after the test."""
    openai, deepgram, daily = fakes
    started: list[Server] = []
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_", "DAILY_", "PIPECAT_"))
    }
    env.update(
        SECRETS,
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=openai.base_url,
        BACKTALK_DEEPGRAM_BASE_URL=deepgram.base_url,
        BACKTALK_DAILY_API_URL=daily.base_url,
        BACKTALK_DATA_DIR=str(tmp_path / "data"),
    )
    subprocess.run(
        [os.sys.executable, "-m", "backtalk.cli", "ingest", LECTURE],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
    )

    def start(*args: str, **settings: str) -> Server:
        port = free_port()
        server_env = {**env, **{f"BACKTALK_{k.upper()}": v for k, v in settings.items()}}
        proc, out, err = start_backtalk(
            ["serve", "--port", str(port), *args], cwd=cwd, env=server_env
        )
        server = Server(proc, out, err, f"http://localhost:{port}", server_env, cwd)
        started.append(server)
        eventually(lambda: "Open:" in out.text, 120, "the server to start", proc)
        return server

    try:
        yield start
    finally:
        for server in started:
            if server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(10)
            server.out.join()
            server.err.join()
            print(f"---- backtalk serve {server.base} ----\n{server.logs[-8000:]}")


def assert_no_secrets(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked"


def test_keys_guard_every_api_route_and_each_key_sees_its_own_conversations(serve, store: Store):
    server = serve("--workers", "0")
    status, body, headers = server.call("GET", "/api/videos")
    assert status == 401 and "backtalk keys create" in body["detail"]
    assert headers.get("www-authenticate") == "Bearer"
    alice, bob = server.new_key("alice"), server.new_key("bob")
    assert alice.startswith("bt_") and alice != bob
    assert server.call("GET", "/api/videos", key=alice)[0] == 200
    assert server.call("GET", "/api/videos", key="bt_not-a-key")[0] == 401
    listing = server.cli("keys", "list")
    assert "alice" in listing and alice not in listing  # only a prefix is ever shown
    # Health stays open to load balancers.
    assert server.call("GET", "/healthz")[0] == 200
    # A conversation started with Alice's key is hers alone.
    alice_id = next(k.id for k in store.keys() if k.name == "alice")
    with store.engine.begin() as conn:
        conversation_id = conn.execute(
            conversation_start([VIDEO], transport="webrtc", persona="tutor", api_key_id=alice_id)
        ).scalar_one()
    mine = server.call("GET", f"/api/conversations?video={VIDEO}", key=alice)[1]
    assert [c["id"] for c in mine["conversations"]] == [conversation_id]
    assert server.call("GET", "/api/conversations", key=bob)[1]["conversations"] == []
    assert server.call("GET", f"/api/conversations/{conversation_id}", key=bob)[0] == 404
    assert server.call("GET", f"/api/conversations/{conversation_id}", key=alice)[0] == 200
    server.cli("keys", "revoke", str(alice_id))
    assert server.call("GET", "/api/videos", key=alice)[0] == 401
    row = next(line for line in server.cli("keys", "list").splitlines() if "alice" in line)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d\s*│\s*$", row), row  # revoked at


def test_no_auth_is_refused_off_localhost(serve, tmp_path: Path):
    server = serve("--workers", "0", "--no-auth")  # localhost: allowed
    assert server.call("GET", "/api/videos")[0] == 200
    result = subprocess.run(
        [os.sys.executable, "-m", "backtalk.cli", "serve", "--host", "0.0.0.0", "--no-auth"],
        env=server.env,
        cwd=server.cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "--no-auth is only allowed on localhost" in result.stderr
    assert "Traceback" not in result.stderr


def test_daily_rooms_are_private_and_only_the_users_token_leaves_the_server(serve, fakes):
    _, _, daily = fakes
    server = serve("--workers", "1", session_max_s="600")
    key = server.new_key("app")
    before = time.time()
    status, body, _ = server.call(
        "POST", "/api/sessions", {"videos": [VIDEO], "transport": "daily"}, key=key
    )
    assert status == 200, body
    (room,) = daily.rooms
    assert room["privacy"] == "private"
    assert room["properties"]["eject_at_room_exp"] is True
    assert before + 590 <= room["properties"]["exp"] <= time.time() + 610
    user, bot = daily.tokens
    user_token, bot_token = daily.issued
    assert user["is_owner"] is False and bot["is_owner"] is True
    for token in (user, bot):
        assert token["room_name"] == body["dailyRoom"].rsplit("/", 1)[1]
        assert token["eject_at_token_exp"] is True
        assert token["exp"] <= room["properties"]["exp"]
    assert body["dailyToken"] == user_token
    assert bot_token not in json.dumps(body)
    assert_no_secrets(json.dumps(body))
    # The bot (it cannot reach Daily from here) fails to join and frees its place.
    eventually(lambda: server.call("GET", "/readyz")[0] == 200, 60, "the place to be freed")
    for _pid, command in process_group(server.proc.pid):
        assert_no_secrets(command)
        assert bot_token not in command and user_token not in command
    assert bot_token not in server.logs and user_token not in server.logs
    assert_no_secrets(server.logs)


def test_rate_limit_and_capacity_refuse_before_any_room_or_bot(serve, fakes):
    _, _, daily = fakes
    server = serve("--workers", "1", session_starts_per_minute="2", worker_max_sessions="1")
    key = server.new_key("app")
    first = server.call("POST", "/api/sessions", {"videos": [VIDEO]}, key=key)
    assert first[0] == 200
    # At capacity (one place, taken by the first session): 503, and no room.
    full = server.call("POST", "/api/sessions", {"videos": [VIDEO], "transport": "daily"}, key=key)
    assert full[0] == 503 and int(full[2]["retry-after"]) > 0, full
    assert daily.rooms == []
    # Over the rate limit (2 a minute): 429 with Retry-After, and no room.
    limited = server.call(
        "POST", "/api/sessions", {"videos": [VIDEO], "transport": "daily"}, key=key
    )
    assert limited[0] == 429, limited
    assert 0 < int(limited[2]["retry-after"]) <= 60
    assert "2 a minute" in limited[1]["detail"]
    assert daily.rooms == []
    metrics = urllib.request.urlopen(server.base + "/metrics", timeout=10).read().decode()
    assert 'backtalk_sessions_rejected_total{reason="capacity"} 1.0' in metrics
    assert 'backtalk_sessions_rejected_total{reason="rate_limit"} 1.0' in metrics
    assert "backtalk_sessions_started_total 1.0" in metrics


def test_readiness_follows_the_database(serve, pg_server):
    server = serve("--workers", "0", "--no-auth")
    assert server.call("GET", "/readyz")[0] == 200
    stop_postgres(pg_server)
    try:
        status, body, _ = eventually(
            lambda: (r := server.call("GET", "/readyz"))[0] == 503 and r, 30, "503"
        )
        assert "database" in body["reason"]
        assert server.call("GET", "/healthz")[0] == 200  # alive, just not ready
    finally:
        start_postgres(pg_server)
    eventually(lambda: server.call("GET", "/readyz")[0] == 200, 30, "ready again")


async def ask(client: SmallWebRTCClient, mic: Microphone, fake_openai: FakeOpenAI, proc) -> dict:
    """Ask q1 out loud; the chat request it caused."""
    before = len(fake_openai.chat_requests)
    clip = mic.play(load_wav(AUDIO / "q1_what_is_learning_rate.wav"))
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        for request in fake_openai.chat_requests[before:]:
            if request["messages"] and request["messages"][-1].get("content") == Q1_TEXT:
                heard = await wait_for(
                    lambda: client.loudspeaker.first_audible_at(clip.started_at or 0), 30
                )
                assert heard, "the answer was not heard"
                return request
        assert proc.poll() is None, "the server exited"
        await asyncio.sleep(0.1)
    raise AssertionError("the question was never answered")


async def wait_for(predicate, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        await asyncio.sleep(0.05)
    return None


async def connect(server: Server, key: str | None) -> tuple[SmallWebRTCClient, Microphone]:
    mic = Microphone()
    client = SmallWebRTCClient(
        server.base,
        mic,
        start_path="/api/sessions",
        start_body={"videos": [VIDEO]},
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )
    await client.connect(timeout_s=60)
    assert await wait_for(lambda: client.loudspeaker.first_audible_at(0), 60), "no greeting"
    assert await wait_for(lambda: client.loudspeaker.quiet_for(1.0), 30), "greeting never ended"
    return client, mic


@pytest.mark.e2e
async def test_a_conversation_runs_on_a_worker_and_survives_a_drain(serve, fakes):
    openai, deepgram, _ = fakes
    server = serve("--workers", "1", drain_timeout_s="60")
    key = await asyncio.to_thread(server.new_key, "app")
    client, mic = await connect(server, key)
    try:
        deepgram.queue_transcript(Q1_TEXT)
        request = await ask(client, mic, openai, server.proc)
        rag = next(
            m["content"]
            for m in request["messages"]
            if m["role"] == "user" and "<transcript_excerpts>" in (m.get("content") or "")
        )
        spans = [(int(a), int(b)) for a, b in _EXCERPT.findall(rag)]
        assert any(a < 273 and b > 214 for a, b in spans), spans  # the learning-rate passage
        # SIGTERM: no new sessions, but the live conversation goes on.
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        assert server.proc.poll() is None, "the server did not wait for the conversation"
        deepgram.queue_transcript(Q1_TEXT)
        await ask(client, mic, openai, server.proc)
    finally:
        await client.close()
    returncode = await asyncio.to_thread(server.proc.wait, 60)
    assert returncode == 0
    assert not server.workers(), server.workers()
    assert "Traceback" not in server.logs
    assert_no_secrets(server.logs)


@pytest.mark.e2e
async def test_a_killed_worker_takes_only_its_own_conversation(serve, fakes):
    openai, deepgram, _ = fakes
    server = serve("--workers", "2", "--no-auth")
    workers = server.workers()
    assert len(workers) == 2, workers
    first, mic_1 = await connect(server, None)
    second, mic_2 = await connect(server, None)
    try:
        os.kill(workers[0][0], signal.SIGKILL)
        # Whichever conversation lived on the other worker still answers.
        survivors = []
        for client, mic in ((first, mic_1), (second, mic_2)):
            deepgram.queue_transcript(Q1_TEXT)
            try:
                await asyncio.wait_for(ask(client, mic, openai, server.proc), 45)
                survivors.append(client)
            except (AssertionError, TimeoutError):
                continue
        assert len(survivors) == 1, "exactly the other worker's conversation should survive"
        # The dead worker is replaced and the server is ready again.
        await asyncio.to_thread(
            eventually,
            lambda: len(server.workers()) == 2 and workers[0] not in server.workers(),
            60,
            "a replacement worker",
        )
        await asyncio.to_thread(
            eventually, lambda: server.call("GET", "/readyz")[0] == 200, 60, "readiness"
        )
        assert re.search(r"Worker \d .* exited .*replacing it", server.logs), server.logs[-3000:]
    finally:
        await first.close()
        await second.close()


def test_S10_serve_without_provider_keys_stops_before_any_io(tmp_path: Path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_"))
    }
    env["BACKTALK_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [os.sys.executable, "-m", "backtalk.cli", "serve"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "DEEPGRAM_API_KEY" in result.stderr and "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # no embedded database was started


@pytest.mark.e2e
async def test_L4_a_burst_of_starts_admits_what_fits_and_those_all_connect(serve, fakes):
    server = serve("--workers", "1", "--no-auth", worker_max_sessions="3")
    statuses = []
    for _ in range(20):  # within a few seconds
        status, body, headers = await asyncio.to_thread(
            server.call, "POST", "/api/sessions", {"videos": [VIDEO]}
        )
        statuses.append((status, body, headers))
    accepted = [body for status, body, _ in statuses if status == 200]
    refused = [(status, headers) for status, _, headers in statuses if status != 200]
    assert len(accepted) == 3, [s for s, _, _ in statuses]
    assert all(status in (429, 503) and int(h["retry-after"]) > 0 for status, h in refused)
    # Every admitted session connects and is greeted.
    clients = []
    try:
        for body in accepted:
            client = SmallWebRTCClient(server.base, Microphone())
            clients.append(client)
            await client.connect(timeout_s=60, session_id=body["sessionId"])
        for client in clients:
            assert await wait_for(lambda c=client: c.loudspeaker.first_audible_at(0), 30)
    finally:
        for client in clients:
            await client.close()


def start_pipecat_runner(env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen:
    """Ingest the lecture, then run ``python bot.py`` under Pipecat's own dev runner."""
    subprocess.run(
        [os.sys.executable, "-m", "backtalk.cli", "ingest", LECTURE],
        env=env,
        cwd=cwd,
        check=True,
        capture_output=True,
    )
    return subprocess.Popen(
        [os.sys.executable, str(BOT_PY), "-t", "webrtc", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.mark.e2e
async def test_the_pipecat_cloud_entry_runs_under_pipecats_own_runner(
    database_url: str, tmp_path: Path, fakes
):
    openai, deepgram, _ = fakes
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_"))
    }
    env.update(
        SECRETS,
        DATABASE_URL=database_url,
        OPENAI_BASE_URL=openai.base_url,
        BACKTALK_DEEPGRAM_BASE_URL=deepgram.base_url,
        BACKTALK_DATA_DIR=str(tmp_path / "data"),
    )
    proc = await asyncio.to_thread(start_pipecat_runner, env, tmp_path, port)
    log = Output(proc.stdout)
    client = None
    try:
        await asyncio.to_thread(
            eventually,
            lambda: http_status(f"http://localhost:{port}/status") == 200,
            120,
            "Pipecat's runner",
            proc,
        )
        client = SmallWebRTCClient(
            f"http://localhost:{port}",
            Microphone(),
            start_body={"transport": "webrtc", "body": {"videos": [VIDEO]}},
        )
        await client.connect(timeout_s=60)
        assert await wait_for(lambda: client.loudspeaker.first_audible_at(0), 60), log.text[-3000:]
        assert any("Gradient descent lecture" in t for t in deepgram.spoken_texts)
    finally:
        if client is not None:
            await client.close()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        log.join()
