"""`backtalk talk` stopped by SIGTERM (docker stop, systemd) leaves no embedded Postgres."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TRANSCRIPTS
from processes import Output, free_port, http_status

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def embedded_postgres_running(data_dir) -> bool:
    pid_file = data_dir / "pg" / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_the_agent_and_its_embedded_postgres(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    env = {
        **os.environ,
        "BACKTALK_DATA_DIR": str(data_dir),
        "DEEPGRAM_API_KEY": "dg-test",
        "OPENAI_API_KEY": "sk-test",
    }
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backtalk.cli",
            "talk",
            str((TRANSCRIPTS / "sourdough_talk.vtt").resolve()),
            "--port",
            str(port),
        ],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = Output(proc.stdout), Output(proc.stderr)
    try:
        deadline = time.monotonic() + 90
        while http_status(f"http://localhost:{port}/client/") != 200:
            assert proc.poll() is None, err.text[-3000:]
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.2)
        assert embedded_postgres_running(data_dir)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        deadline = time.monotonic() + 10
        while embedded_postgres_running(data_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not embedded_postgres_running(data_dir), "the embedded Postgres was left running"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out.join()
        err.join()
        if embedded_postgres_running(data_dir):  # don't leave a server behind on failure
            import pgserver

            pgserver.get_server(data_dir / "pg", cleanup_mode="stop").cleanup()
