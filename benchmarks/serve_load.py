"""Load: N simultaneous WebRTC conversations through ``backtalk serve``, beside a plain Pipecat bot.

Each target runs in its own process tree on this machine, on the benchmark world's
Postgres with the lecture ingested and the cloud services replaced by the loopback
fakes at published latencies (a child process). N browser-like clients
(``tests/webrtc_client.py``: aiortc, Opus, Pipecat's session routes) connect, wait for
the greeting, then ask the speech fixtures in turn at real-time pace, with a 0.5-1.5 s
pause after each answer. Targets:

* ``serve-w1`` / ``serve-w2``: ``backtalk serve --workers 1|2 --no-auth`` (capacity
  limits raised, so that what is measured is what the machine holds, not the limits);
* ``plain``: ``benchmarks/plain_pipecat_bot.py`` under Pipecat's development runner —
  a Pipecat 1.14 cascade bot from Pipecat's template, no RAG.

Per N: voice-to-voice at the client (end of the question's speech → first audible bot
audio, for every target alike), unanswered questions, the target's CPU (its whole
process tree, psutil) and memory. A level is *held* when every conversation connected
and every question was answered, and its p95 voice-to-voice is within 100 ms of the
same target's at N = 1. With ``--profile N``, the CPU of one worker at that level is
sampled with py-spy and split into its parts (WebRTC/Opus, VAD, smart-turn, STT socket,
TTS socket, pipeline, other); waiting (in uvloop's C event loop, or a thread blocked on
a queue) is left out. The raw samples stay in ``results/serve_load_profile.raw.txt``.

Run ``python -m benchmarks.serve_load`` (~15 min); ``--quick`` (N = 1, one target).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks._common import (
    ROOT,
    log,
    machine_info,
    machine_markdown,
    md_table,
    pyplot,
    write_results,
)
from benchmarks._voice import (
    AUDIO,
    MANIFEST,
    TURN_FIXTURES,
    add_pg_info,
    add_service_args,
    pct,
    service_delays,
    voice_world,
    wait_until,
)

#: A level is held when its p95 voice-to-voice is within this of N = 1's, seconds.
P95_SLACK_S = 0.1
TARGETS = ("serve-w1", "serve-w2", "plain")
#: The lecture's key in the benchmark world's library.
VIDEO_KEY = "gradient_descent_lecture"


def speech_end_s(pcm: bytes, rate: int = 16000) -> float:
    """Seconds into a clip where its speech ends (last 20 ms window above RMS 500)."""
    import numpy as np

    window = rate // 50
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    loud = [
        i
        for i in range(0, len(samples) - window + 1, window)
        if np.sqrt(np.mean(samples[i : i + window] ** 2)) > 500
    ]
    return (loud[-1] + window) / rate if loud else len(samples) / rate


async def client_loop(base: str, index: int, stop: asyncio.Event, ready: list[int]) -> dict:
    """One browser-like client; returns its voice-to-voice times and unanswered count."""
    from webrtc_client import Microphone, SmallWebRTCClient, load_wav

    rng = random.Random(300 + index)
    clips = [load_wav(AUDIO / f) for f in TURN_FIXTURES]
    ends = [speech_end_s(c) for c in clips]
    mic = Microphone()
    # Pipecat's /start shape: both Backtalk's server and Pipecat's runner read "body".
    client = SmallWebRTCClient(
        base, mic, start_body={"transport": "webrtc", "body": {"videos": [VIDEO_KEY]}}
    )
    v2v: list[float] = []
    unanswered = 0
    await asyncio.sleep(rng.uniform(0, 2.0))  # users do not all arrive at once
    try:
        await client.connect(timeout_s=60)
        speaker = client.loudspeaker
        await wait_until(
            lambda: speaker.first_audible_at() is not None and speaker.quiet_for(0.8),
            60,
            f"client {index}'s greeting",
        )
        ready.append(index)
        turn = index
        while not stop.is_set():
            i = turn % len(clips)
            clip = mic.play(clips[i])
            turn += 1
            await clip.done.wait()
            spoken_end = clip.started_at + ends[i]
            try:
                heard = await wait_until(lambda t=spoken_end: speaker.first_audible_at(t), 15)
                v2v.append(heard - spoken_end)
                await wait_until(lambda: speaker.quiet_for(0.3), 30)
            except TimeoutError:
                unanswered += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))
    except (TimeoutError, ConnectionError, OSError) as exc:
        log(f"client {index} failed: {type(exc).__name__}: {exc}")
        return {"v2v": v2v, "unanswered": unanswered, "failed": True}
    finally:
        await client.close()
    return {"v2v": v2v, "unanswered": unanswered, "failed": False}


def tree_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) and RSS, MB, of a process and its children."""
    import psutil

    root = psutil.Process(pid)
    cpu = rss = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            cpu += t.user + t.system + t.children_user + t.children_system
            rss += p.memory_info().rss / 2**20
    return cpu, rss


def profile_parts(pid: int, seconds: float) -> dict[str, float]:
    """Share of one process's samples per part of a conversation (py-spy, idle excluded)."""
    out = ROOT / "benchmarks" / "results" / "serve_load_profile.raw.txt"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--threads",
        ],
        check=True,
        capture_output=True,
    )
    parts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        parts[_part(stack)] += int(count)
    total = sum(n for part, n in parts.items() if part != "idle") or 1
    return {part: n / total for part, n in parts.most_common() if part != "idle"}


#: Parts of a conversation's CPU, by the first matching frame from the leaf up: (part,
#: substrings of a py-spy frame "function (file:line)").
_PARTS = (
    ("idle", ("select (", "epoll", "poll (", "_worker (concurrent", "wait (threading")),
    ("smart-turn", ("smart_turn", "_whisper_features")),
    ("VAD (Silero)", ("silero", "vad_analyzer", "vad_controller")),
    ("WebRTC (aiortc, Opus, SRTP, ICE)", ("aiortc", "aioice", "pylibsrtp", "/av/", "av/")),
    ("audio resampling", ("soxr", "resampler")),
    ("STT socket", ("deepgram/stt", "listen/v1", "deepgram/listen")),
    ("TTS socket", ("deepgram/tts",)),
    ("LLM (openai, httpx)", ("openai", "httpx", "httpcore")),
    ("database", ("sqlalchemy", "psycopg")),
    ("pipeline (Pipecat frames, observers)", ("pipecat",)),
    ("event loop and other Python", ("",)),
)


def _part(stack: str) -> str:
    frames = stack.split(";")
    # uvloop waits for I/O in C: an event-loop thread whose innermost Python frame is the
    # loop's own run call is (almost always) waiting, not working.
    if frames and (
        any(k in frames[-1] for k in _PARTS[0][1]) or frames[-1].startswith("Runner.run (")
    ):
        return "idle"
    for part, keys in _PARTS[1:]:
        for frame in reversed(frames):
            if any(k in frame.lower() for k in keys):
                return part
    return _PARTS[-1][0]


async def level(base: str, pid: int, n: int, warmup_s: float, window_s: float, profile: bool):
    stop = asyncio.Event()
    ready: list[int] = []
    tasks = [asyncio.create_task(client_loop(base, i, stop, ready)) for i in range(n)]
    with contextlib.suppress(TimeoutError):  # a client that never connects counts as failed
        await wait_until(lambda: len(ready) >= n or all(t.done() for t in tasks), 120)
    await asyncio.sleep(warmup_s)
    import psutil

    me = psutil.Process()
    c0, _ = tree_cpu_s(pid)
    m0 = sum(me.cpu_times()[:2])
    w0 = time.monotonic()
    parts = None
    if profile:
        workers = [
            p.pid
            for p in psutil.Process(pid).children(recursive=True)
            if "backtalk.server.worker" in " ".join(p.cmdline())
        ]
        parts = await asyncio.to_thread(profile_parts, workers[0] if workers else pid, window_s)
    else:
        await asyncio.sleep(window_s)
    c1, rss = tree_cpu_s(pid)
    m1 = sum(me.cpu_times()[:2])
    wall = time.monotonic() - w0
    stop.set()
    results = await asyncio.gather(*tasks)
    v2v = [x for r in results for x in r["v2v"]]
    out = {
        "n": n,
        "connected": len(ready),
        "failed_clients": sum(r["failed"] for r in results),
        "unanswered": sum(r["unanswered"] for r in results),
        "turns": len(v2v),
        "v2v_p50": pct(v2v, 50),
        "v2v_p95": pct(v2v, 95),
        "cpu_pct_one_core": (c1 - c0) / wall * 100,
        "clients_cpu_pct_one_core": (m1 - m0) / wall * 100,
        "rss_mb": rss,
        "parts": parts,
    }
    log(
        f"  N={n:2}: {out['connected']}/{n} connected, {out['turns']} turns, "
        f"{out['unanswered']} unanswered, v2v p95 {out['v2v_p95'] or 0:.2f} s, "
        f"CPU {out['cpu_pct_one_core']:.0f}% of a core (clients "
        f"{out['clients_cpu_pct_one_core']:.0f}%), {rss:.0f} MB"
    )
    await asyncio.sleep(4)  # sessions tear down before the next level
    return out


def held(levels: list[dict]) -> int:
    """The largest N held (see the module docstring)."""
    base = next((r["v2v_p95"] for r in levels if r["n"] == 1 and r["v2v_p95"]), None)
    best = 0
    for r in levels:
        ok = (
            r["connected"] == r["n"]
            and not r["failed_clients"]
            and not r["unanswered"]
            and r["v2v_p95"] is not None
            and (base is None or r["v2v_p95"] <= base + P95_SLACK_S)
        )
        r["held"] = ok
        if ok:
            best = max(best, r["n"])
    return best


def start_target(target: str, env: dict[str, str], port: int) -> subprocess.Popen:
    if target == "plain":
        cmd = [
            sys.executable,
            str(ROOT / "benchmarks" / "plain_pipecat_bot.py"),
            "-t",
            "webrtc",
            "--port",
            str(port),
        ]
    else:
        workers = target.removeprefix("serve-w")
        cmd = [sys.executable, "-m", "backtalk.cli", "serve", "--no-auth", "--port", str(port)]
        cmd += ["--workers", workers]
    cwd = Path(env["BACKTALK_DATA_DIR"])  # no .env there for Pipecat's runner to load
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def markdown(results: dict[str, list[dict]], info: dict, delays: dict) -> str:
    lines = [
        "# Load: conversations through `backtalk serve`, beside a plain Pipecat bot\n",
        machine_markdown(info),
        "",
        f"Fakes: {delays}. N aiortc clients in the benchmark process share the machine "
        "with the target (their Opus and SRTP work is not counted in the target's CPU). "
        f"Held = all connected and answered, p95 voice-to-voice ≤ N=1's + "
        f"{P95_SLACK_S * 1000:.0f} ms.\n",
    ]
    summary = []
    for target, levels in results.items():
        best = held(levels)
        summary.append([target, best])
        rows = [
            [
                r["n"],
                f"{r['connected']}/{r['n']}",
                r["turns"],
                r["unanswered"],
                f"{r['v2v_p50'] or 0:.2f}",
                f"{r['v2v_p95'] or 0:.2f}",
                f"{r['cpu_pct_one_core']:.0f}%",
                f"{r['cpu_pct_one_core'] / r['n']:.1f}%",
                f"{r.get('clients_cpu_pct_one_core', 0):.0f}%",
                f"{r['rss_mb']:.0f}",
                "yes" if r["held"] else "no",
            ]
            for r in levels
        ]
        lines += [
            f"## {target}\n",
            md_table(
                [
                    "N",
                    "connected",
                    "turns",
                    "unanswered",
                    "v2v p50 s",
                    "v2v p95 s",
                    "CPU (1 core)",
                    "per conversation",
                    "clients' CPU",
                    "RSS MB",
                    "held",
                ],
                rows,
            ),
            "",
        ]
        for r in levels:
            if r["parts"]:
                parts = [[k, f"{v * 100:.0f}%"] for k, v in r["parts"].items()]
                lines += [
                    f"CPU of one worker at N={r['n']}, by part (py-spy samples):\n",
                    md_table(["part", "share"], parts),
                    "",
                ]
    lines += ["## Held\n", md_table(["target", "conversations held"], summary), ""]
    return "\n".join(lines)


def plot(results: dict[str, list[dict]]):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    for target, levels in results.items():
        ns = [r["n"] for r in levels]
        a.plot(ns, [r["v2v_p95"] or 0 for r in levels], "o-", label=target)
        b.plot(ns, [r["cpu_pct_one_core"] for r in levels], "o-", label=target)
    a.set_xlabel("conversations")
    a.set_ylabel("voice-to-voice p95, s")
    b.set_xlabel("conversations")
    b.set_ylabel("CPU, % of one core")
    a.legend()
    fig.suptitle("backtalk serve vs a plain Pipecat bot, SmallWebRTC, 2 cores")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1, serve-w1 only, 10 s window")
    p.add_argument("--levels", type=int, nargs="*", default=[1, 2, 4, 6, 8])
    p.add_argument("--targets", nargs="*", default=list(TARGETS), choices=TARGETS)
    p.add_argument("--window", type=float, default=40.0, help="measurement window per level, s")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--profile", type=int, default=4, help="profile a worker at this N (0: off)")
    p.add_argument("--out", help="results name (default serve_load[_quick])")
    add_service_args(p)
    args = p.parse_args()
    delays = service_delays(args)
    ns = [1] if args.quick else args.levels
    targets = ["serve-w1"] if args.quick else args.targets
    window = 10.0 if args.quick else args.window
    name = args.out or ("serve_load_quick" if args.quick else "serve_load")
    sys.path.insert(0, str(ROOT / "tests"))
    from processes import free_port, http_status

    info = machine_info()
    results: dict[str, list[dict]] = {}
    with voice_world(delays) as world:
        add_pg_info(info, world)
        world.fakes.ctl("cycle", texts=[MANIFEST[f]["text"] for f in TURN_FIXTURES])
        for target in targets:
            env = {
                **os.environ,
                "BACKTALK_LOG_LEVEL": "WARNING",
                "BACKTALK_WORKER_LOAD_THRESHOLD": "1.0",
                "BACKTALK_WORKER_MAX_SESSIONS": "64",
                "BACKTALK_SESSION_STARTS_PER_MINUTE": "1000",
            }
            port = free_port()
            proc = start_target(target, env, port)
            health = "/status" if target == "plain" else "/readyz"
            try:
                url = f"http://localhost:{port}{health}"
                asyncio.run(wait_until(lambda u=url: http_status(u) == 200, 120))
                log(f"{target}: serving on port {port} (pid {proc.pid})")
                base = f"http://localhost:{port}"
                results[target] = [
                    asyncio.run(
                        level(
                            base,
                            proc.pid,
                            n,
                            0.0 if args.quick else args.warmup,
                            window,
                            profile=(n == args.profile and target != "plain"),
                        )
                    )
                    for n in ns
                ]
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    payload = {
        "benchmark": "serve_load",
        "machine": info,
        "delays": delays,
        "results": results,
        "load_avg_end": os.getloadavg(),
        "turn_fixtures": list(TURN_FIXTURES),
    }
    text = markdown(results, info, delays)
    write_results(name, payload, text, plot(results))


if __name__ == "__main__":
    main()
