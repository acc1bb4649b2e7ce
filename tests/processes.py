"""Helpers for tests that run Backtalk in its own process, as a user does."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "Output",
    "eventually",
    "wait_until",
    "free_port",
    "http_status",
    "process_group",
    "start_backtalk",
    "wait_serving",
]


class Output:
    """Collects a pipe's lines from a background thread."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, ""):
            self.lines.append(line)
        stream.close()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def process_group(pgid: int) -> list[tuple[int, str]]:
    """(pid, command) of every live process in process group ``pgid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append((int(entry.name), command.strip()))
        except (OSError, ValueError):
            continue
    return found


def start_backtalk(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str]
) -> tuple[subprocess.Popen, Output, Output]:
    """Start ``backtalk ARGS`` as a user would, in its own process group.

    Returns the process and its stdout and stderr, each read by a background thread.
    The process group lets a test find and kill anything it leaves behind.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "backtalk.cli", *args],
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    return proc, Output(proc.stdout), Output(proc.stderr)


def wait_serving(proc: subprocess.Popen, err: Output, port: int, timeout_s: float = 90) -> None:
    """Wait until ``backtalk talk`` (or ``serve``) answers on ``port``.

    Raises:
        AssertionError: the process exited (its stderr's tail is the message), or
            ``timeout_s`` seconds passed.
    """
    deadline = time.monotonic() + timeout_s
    while http_status(f"http://localhost:{port}/healthz") != 200:
        assert proc.poll() is None, err.text[-3000:]
        assert time.monotonic() < deadline, "the agent did not start"
        time.sleep(0.2)


def _check(value, deadline: float, timeout_s: float, what: str, proc) -> bool:
    if value:
        return True
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"backtalk exited ({proc.returncode}) while waiting for {what}")
    if time.monotonic() > deadline:
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
    return False


async def wait_until(
    predicate: Callable[[], object],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen | None = None,
) -> object:
    """Poll ``predicate`` every 50 ms; its first truthy value.

    Raises:
        AssertionError: after ``timeout_s``, or as soon as ``proc`` exits.
    """
    deadline = time.monotonic() + timeout_s
    while not _check(value := predicate(), deadline, timeout_s, what, proc):
        await asyncio.sleep(0.05)
    return value


def eventually(
    predicate: Callable[[], object],
    timeout_s: float,
    what: str,
    proc: subprocess.Popen | None = None,
) -> object:
    """:func:`wait_until` for synchronous code (polls every 100 ms)."""
    deadline = time.monotonic() + timeout_s
    while not _check(value := predicate(), deadline, timeout_s, what, proc):
        time.sleep(0.1)
    return value
