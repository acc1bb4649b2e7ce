"""A client that vanishes, and Ctrl-C, end ``backtalk talk``'s conversations and free everything.

The real ``backtalk talk`` runs in its own process on the embedded Postgres it starts
itself (no ``DATABASE_URL``), against the loopback Deepgram/OpenAI fakes. The client is
the aiortc WebRTC client of :mod:`tests.webrtc_client`; to vanish as a crashed browser
does — no goodbye on the data channel, no DTLS close — it runs in a child process that
is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import AUDIO, TRANSCRIPTS
from fakes import FakeDeepgram, FakeOpenAI
from processes import free_port, process_group, start_backtalk, wait_until
from webrtc_client import Microphone, SmallWebRTCClient, load_wav

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LECTURE = str(TRANSCRIPTS / "gradient_descent_lecture.json")
TESTS = Path(__file__).resolve().parent
#: A client in its own process: connects, says "connected", then waits to be killed.
CLIENT = f"""
import asyncio, sys
sys.path.insert(0, {str(TESTS)!r})
from webrtc_client import Microphone, SmallWebRTCClient

async def main():
    client = SmallWebRTCClient(sys.argv[1], Microphone())
    await client.connect(timeout_s=60)
    print("connected", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def talk_env(tmp_path: Path, openai: FakeOpenAI, deepgram: FakeDeepgram) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_", "DAILY_", "DATABASE_URL"))
    }
    env.update(
        DEEPGRAM_API_KEY="dg-test",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=openai.base_url,
        BACKTALK_DEEPGRAM_BASE_URL=deepgram.base_url,
        BACKTALK_DATA_DIR=str(tmp_path / "data"),  # the embedded Postgres lives here
    )
    return env


def postgres_of(data_dir: Path) -> list[int]:
    """Pids of Postgres servers running on ``data_dir``'s embedded cluster."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "postgres" in command and str(data_dir) in command:
                found.append(int(entry.name))
    return found


@pytest.fixture
def fakes():
    with (
        FakeOpenAI(reply="He says to start small.") as openai,
        FakeDeepgram(tts_secs_per_char=0.05) as deepgram,
    ):
        yield openai, deepgram


async def test_a_vanished_client_ends_its_conversation_in_seconds(tmp_path: Path, fakes):
    openai, deepgram = fakes
    port = free_port()
    proc, out, err = start_backtalk(
        ["talk", LECTURE, "--port", str(port)], cwd=tmp_path, env=talk_env(tmp_path, *fakes)
    )
    client = None
    try:
        await wait_until(lambda: "Open:" in out.text, 120, "the page", proc)
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, f"http://localhost:{port}", stdout=subprocess.PIPE
        )
        line = await asyncio.wait_for(client.stdout.readline(), 90)
        assert line.decode().strip() == "connected"
        await wait_until(lambda: "Client connected" in err.text, 90, "the conversation", proc)
        client.kill()  # a crashed browser: no goodbye of any kind
        await client.wait()
        gone_at = time.monotonic()
        await wait_until(
            lambda: re.search(r"Conversation \d+ ended", err.text), 30, "the end", proc
        )
        ended_s = time.monotonic() - gone_at
        print(f"\nconversation ended {ended_s:.1f}s after its client vanished")
        # WebRTC's own consent timeout would take ~30 s; Backtalk acts on the missing pings.
        assert ended_s < 15, ended_s
        assert "The client stopped answering" in err.text
    finally:
        if client is not None and client.returncode is None:
            client.kill()
            await client.wait()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.join()
        err.join()


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c-twice"])
async def test_ctrl_c_stops_talk_mid_answer_and_its_embedded_postgres(
    presses: int, tmp_path: Path, fakes
):
    openai, deepgram = fakes
    port = free_port()
    proc, out, err = start_backtalk(
        ["talk", LECTURE, "--port", str(port)], cwd=tmp_path, env=talk_env(tmp_path, *fakes)
    )
    client = None
    try:
        await wait_until(lambda: "Open:" in out.text, 120, "the page", proc)
        assert postgres_of(tmp_path / "data"), "talk did not start its embedded Postgres"
        mic = Microphone()
        client = SmallWebRTCClient(f"http://localhost:{port}", mic)
        await client.connect(timeout_s=60)
        deepgram.queue_transcript("What does the speaker say about choosing the learning rate?")
        await wait_until(lambda: client.loudspeaker.first_audible_at(0), 30, "the greeting", proc)
        mic.play(load_wav(AUDIO / "q1_what_is_learning_rate.wav"))
        # Ctrl-C while the user speaks over the greeting (a long one: 0.05 s a character).
        await asyncio.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        sigint_at = time.monotonic()
        if presses == 2:  # an impatient user: again, while talk is shutting down
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGINT)
        returncode = await asyncio.to_thread(proc.wait, 30)
        stopped_s = time.monotonic() - sigint_at
        print(f"\ntalk stopped {stopped_s:.1f}s after Ctrl-C, mid-conversation")
        assert returncode == 0
        assert stopped_s < 10, stopped_s
        assert not process_group(proc.pid), process_group(proc.pid)
        assert not postgres_of(tmp_path / "data"), "the embedded Postgres was left running"
        assert "Traceback" not in err.text, err.text[-3000:]
    finally:
        if client is not None:
            await client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.join()
        err.join()
