"""`backtalk talk` stopped by SIGTERM (docker stop, systemd) leaves no embedded Postgres."""

import os
import signal
import time

import pytest
from conftest import TRANSCRIPTS
from processes import free_port, start_backtalk, wait_serving

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
    proc, out, err = start_backtalk(
        ["talk", str((TRANSCRIPTS / "sourdough_talk.vtt").resolve()), "--port", str(port)],
        cwd=tmp_path,
        env=env,
    )
    try:
        wait_serving(proc, err, port)
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
