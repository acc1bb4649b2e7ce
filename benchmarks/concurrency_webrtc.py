"""Concurrency over SmallWebRTC: N browser-like clients talking to one ``backtalk talk``.

What a user runs, measured as a whole: ``backtalk talk`` in its own process (Pipecat's
dev runner, SmallWebRTC, Opus in and out), on the benchmark world's Postgres with the
lecture ingested, the cloud services replaced by the loopback fakes (child process,
published medians). N Python WebRTC clients (``tests/webrtc_client.py``, aiortc: what
the prebuilt page does) connect, wait for the greeting, then ask the speech fixtures
(q1-q4, hello) in turn at real-time pace, with a 0.5-1.5 s pause after each answer.

Per level: the ``talk`` process's CPU over the window (psutil; the clients' own Opus
and SRTP work runs in this benchmark process, on the same two cores, and is reported
beside it), and per turn the bot's RTVI ``turn-latency`` message: overhead =
``total_s − end_of_turn_s −`` the injected LLM first-token and TTS first-audio delays
(as ``concurrency.py`` computes it from Pipecat's breakdown). Run
``python -m benchmarks.concurrency_webrtc`` (N = 1, 2, 4, 8; ~5 min); ``--quick``
(N = 1, ~1 min).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import time
from typing import Any

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
    LECTURE,
    MANIFEST,
    TURN_FIXTURES,
    add_pg_info,
    add_service_args,
    ms,
    pct,
    service_delays,
    voice_world,
    wait_all_ready,
    wait_until,
)
from benchmarks.concurrency import CPU_LIMIT_MACHINE_PCT, P95_LIMIT_S, passes


async def client_loop(base: str, index: int, stop: asyncio.Event, ready: list[int]) -> dict:
    """One browser-like client: connect, hear the greeting, then ask in turn until stopped."""
    from webrtc_client import Microphone, SmallWebRTCClient, load_wav

    rng = random.Random(200 + index)
    clips = [load_wav(AUDIO / f) for f in TURN_FIXTURES]
    mic = Microphone()
    client = SmallWebRTCClient(base, mic)
    await asyncio.sleep(rng.uniform(0, 2.0))  # users do not all arrive at once
    await client.connect(timeout_s=60)
    speaker = client.loudspeaker
    try:
        await wait_until(
            lambda: speaker.first_audible_at() is not None and speaker.quiet_for(0.8),
            60,
            f"client {index}'s greeting",
        )
        ready.append(index)
        turn = index
        while not stop.is_set():
            asked = time.monotonic()
            clip = mic.play(clips[turn % len(clips)])
            turn += 1
            await clip.done.wait()
            with contextlib.suppress(TimeoutError):  # unanswered: ask the next question
                await wait_until(
                    lambda since=asked: (
                        speaker.first_audible_at(since + 0.1) is not None and speaker.quiet_for(0.3)
                    ),
                    15,
                )
            await asyncio.sleep(rng.uniform(0.5, 1.5))
    finally:
        await client.close()
    return {"messages": client.rtvi_messages("server-message")}


def turn_latencies(messages: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, dict]]:
    """``(time, turn-latency payload)`` out of a client's RTVI server messages."""
    out = []
    for t, m in messages:
        data = m.get("data") or {}
        if data.get("type") == "turn-latency":
            out.append((t, data))
    return out


async def level(base: str, talk_pid: int, n: int, warmup_s: float, window_s: float, delays) -> dict:
    import psutil

    bot = psutil.Process(talk_pid)
    me = psutil.Process()
    stop = asyncio.Event()
    ready: list[int] = []
    tasks = [asyncio.create_task(client_loop(base, i, stop, ready)) for i in range(n)]
    await wait_all_ready(tasks, ready, "clients")
    await asyncio.sleep(warmup_s)
    b0, c0, w0 = bot.cpu_times(), me.cpu_times(), time.monotonic()
    psutil.cpu_percent(None)
    await asyncio.sleep(window_s)
    b1, c1, w1 = bot.cpu_times(), me.cpu_times(), time.monotonic()
    machine = psutil.cpu_percent(None) * psutil.cpu_count()
    stop.set()
    results = await asyncio.gather(*tasks)
    ttft, tts = delays["llm_ttft_s"], delays["tts_first_audio_s"]
    turns = [
        d
        for r in results
        for t, d in turn_latencies(r["messages"])
        if w0 <= t <= w1 + 5 and d.get("end_of_turn_s") is not None
    ]
    over = [d["total_s"] - d["end_of_turn_s"] - ttft - tts for d in turns]
    wall = w1 - w0
    cpu = (b1.user + b1.system - b0.user - b0.system) / wall * 100
    out = {
        "n": n,
        "cpu_pct_one_core": cpu,
        "cpu_pct_machine": cpu / psutil.cpu_count(),
        "clients_cpu_pct_one_core": (c1.user + c1.system - c0.user - c0.system) / wall * 100,
        "machine_total_cpu_pct_of_200": machine,
        "turns_in_window": len(over),
        "overhead_p50": pct(over, 50),
        "overhead_p95": pct(over, 95),
        "v2v_p50": pct([d["total_s"] for d in turns], 50),
        "end_of_turn_p50": pct([d["end_of_turn_s"] for d in turns], 50),
        "rss_mb": bot.memory_info().rss / 2**20,
    }
    out["pass"] = passes(out)
    log(
        f"N={n:2}: talk CPU {cpu:5.1f}% of a core, "
        f"clients {out['clients_cpu_pct_one_core']:5.1f}%, "
        f"overhead p95 {ms(out['overhead_p95'])} ms over {len(over)} turns"
        f" -> {'PASS' if out['pass'] else 'FAIL'}"
    )
    await asyncio.sleep(3)  # let the bot tear the sessions down before the next level
    return out


def markdown(levels: list[dict], info: dict, delays: dict) -> str:
    rows = [
        [
            r["n"],
            f"{r['cpu_pct_one_core']:.0f}%",
            f"{r['cpu_pct_machine']:.0f}%",
            f"{r['cpu_pct_one_core'] / r['n']:.1f}%",
            f"{r['clients_cpu_pct_one_core']:.0f}%",
            f"{r['machine_total_cpu_pct_of_200']:.0f}%",
            f"{r['rss_mb']:.0f}",
            r["turns_in_window"],
            ms(r["overhead_p50"]),
            ms(r["overhead_p95"]),
            ms(r["end_of_turn_p50"], 0),
            "PASS" if r["pass"] else "FAIL",
        ]
        for r in levels
    ]
    held = max([r["n"] for r in levels if r["pass"]], default=0)
    return (
        "# Concurrency over SmallWebRTC (`backtalk talk`)\n\n"
        + machine_markdown(info)
        + "\n\nTransport: **SmallWebRTC** (Opus, RTP/SRTP, aiortc) between N Python clients "
        "in the benchmark process and one `backtalk talk` process, all on this machine. "
        f"Fakes: {delays}. The clients' CPU (Opus encode/decode of both directions, SRTP) "
        "shares the two cores with the bot; a real deployment's browsers would not.\n\n"
        + md_table(
            [
                "N",
                "talk CPU (1 core)",
                "talk CPU (machine)",
                "per conversation (1 core)",
                "clients CPU (1 core)",
                "machine total (of 200%)",
                "talk RSS MB",
                "turns",
                "overhead p50 ms",
                "overhead p95 ms",
                "end of turn p50 ms",
                "pass",
            ],
            rows,
        )
        + f"\n\nMost conversations held within the limits: **{held}** (goal ≥ 16).\n"
    )


def plot(levels: list[dict]):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    ns = [r["n"] for r in levels]
    a.plot(ns, [r["cpu_pct_one_core"] for r in levels], "o-", label="backtalk talk")
    a.plot(ns, [r["clients_cpu_pct_one_core"] for r in levels], "s--", label="clients")
    a.axhline(2 * CPU_LIMIT_MACHINE_PCT, color="grey", ls=":", label="70 % of 2 cores")
    a.set_xlabel("conversations")
    a.set_ylabel("CPU, % of one core")
    a.legend()
    b.plot(ns, [1e3 * (r["overhead_p95"] or 0) for r in levels], "o-")
    b.axhline(1e3 * P95_LIMIT_S, color="grey", ls=":")
    b.set_xlabel("conversations")
    b.set_ylabel("p95 overhead, ms")
    fig.suptitle("SmallWebRTC: N clients, one backtalk talk process")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 1, 10 s window (~1 min)")
    p.add_argument("--levels", type=int, nargs="*", default=[1, 2, 4, 8])
    p.add_argument("--window", type=float, default=30.0, help="measurement window per level, s")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--out", help="results name (default concurrency_webrtc[_quick])")
    add_service_args(p)
    args = p.parse_args()
    delays = service_delays(args)
    ns = [1] if args.quick else args.levels
    window = 10.0 if args.quick else args.window
    name = args.out or ("concurrency_webrtc_quick" if args.quick else "concurrency_webrtc")
    from processes import free_port, start_backtalk, wait_serving

    info = machine_info()
    with voice_world(delays) as world:
        add_pg_info(info, world)
        world.fakes.ctl("cycle", texts=[MANIFEST[f]["text"] for f in TURN_FIXTURES])
        port = free_port()
        env = {**os.environ, "BACKTALK_LOG_LEVEL": "WARNING"}
        proc, _out, err = start_backtalk(
            ["talk", str(LECTURE), "--port", str(port)], cwd=ROOT, env=env
        )
        try:
            wait_serving(proc, err, port)
            log(f"backtalk talk serving on port {port} (pid {proc.pid})")
            base = f"http://localhost:{port}"
            levels = [
                asyncio.run(
                    level(base, proc.pid, n, 0.0 if args.quick else args.warmup, window, delays)
                )
                for n in ns
            ]
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(20)
            except Exception:
                os.killpg(proc.pid, signal.SIGKILL)
    payload = {
        "benchmark": "concurrency_webrtc",
        "machine": info,
        "delays": delays,
        "transport": "SmallWebRTC (backtalk talk) with aiortc clients on the same machine",
        "levels": levels,
        "load_avg_end": os.getloadavg(),
        "turn_fixtures": list(TURN_FIXTURES),
    }
    write_results(name, payload, markdown(levels, info, delays), plot(levels))


if __name__ == "__main__":
    main()
