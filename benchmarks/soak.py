"""Soak (reliability case L3): one long conversation with ``backtalk talk``, a question every 20 s.

The real ``backtalk talk`` process runs on the benchmark world's Postgres with the
cloud services replaced by the loopback fakes at published latencies. One
browser-like client (``tests/webrtc_client.py``, aiortc) stays connected for the whole
run and asks the speech fixtures in turn, one every ``--every`` seconds. Sampled
every ten seconds: the process's RSS; the Deepgram sockets the fakes accepted (a
reconnect shows as a new one); the size of each chat request the LLM received
(messages and characters: the context must stay bounded). Pass (the catalogue's
criteria): RSS growth after warm-up < 10 %, Deepgram reconnects ≤ 2, every question
answered.

Run ``python -m benchmarks.soak`` (60 min); ``--minutes 2`` for a short check.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

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
    service_delays,
    voice_world,
    wait_until,
)

#: Samples taken in the first this many seconds are the warm-up (models, caches).
WARMUP_S = 120.0


async def soak(base: str, pid: int, world, minutes: float, every_s: float) -> dict:
    import psutil
    from webrtc_client import Microphone, SmallWebRTCClient, load_wav

    proc = psutil.Process(pid)
    clips = [load_wav(AUDIO / f) for f in TURN_FIXTURES]
    mic = Microphone()
    client = SmallWebRTCClient(base, mic)
    await client.connect(timeout_s=60)
    speaker = client.loudspeaker
    await wait_until(lambda: speaker.first_audible_at() and speaker.quiet_for(0.8), 60)
    t0 = time.monotonic()
    samples, asked, answered = [], 0, 0
    next_question = t0
    next_sample = t0
    try:
        while time.monotonic() - t0 < minutes * 60:
            now = time.monotonic()
            if now >= next_question:
                clip = mic.play(clips[asked % len(clips)])
                asked += 1
                await clip.done.wait()
                try:
                    await wait_until(lambda c=clip: speaker.first_audible_at(c.ended_at), 20)
                    answered += 1
                except TimeoutError:
                    log(f"question {asked} was not answered")
                next_question += every_s
            if now >= next_sample:
                counts = world.fakes.ctl("stats")
                samples.append(
                    {
                        "t_s": now - t0,
                        "rss_mb": proc.memory_info().rss / 2**20,
                        "listen_connections": counts.get("listen_connections"),
                        "speak_connections": counts.get("speak_connections"),
                        "chat_requests": counts.get("chat_requests"),
                        "last_request_messages": counts.get("last_request_messages"),
                        "last_request_chars": counts.get("last_request_chars"),
                    }
                )
                next_sample += 10.0
            await asyncio.sleep(0.2)
    finally:
        await client.close()
    return {"samples": samples, "asked": asked, "answered": answered}


def verdict(run: dict) -> dict:
    samples = run["samples"]
    warm = [s for s in samples if s["t_s"] >= WARMUP_S] or samples
    growth = (warm[-1]["rss_mb"] - warm[0]["rss_mb"]) / warm[0]["rss_mb"]
    listens = [s["listen_connections"] or 0 for s in samples]
    speaks = [s["speak_connections"] or 0 for s in samples]
    reconnects = max(0, max(listens) - min(listens)) + max(0, max(speaks) - min(speaks))
    sizes = [s["last_request_messages"] or 0 for s in samples]
    return {
        "rss_growth_after_warmup": growth,
        "deepgram_reconnects": reconnects,
        "max_request_messages": max(sizes, default=0),
        "unanswered": run["asked"] - run["answered"],
        "pass": growth < 0.10 and reconnects <= 2 and run["asked"] == run["answered"],
    }


def markdown(run: dict, result: dict, info: dict, args) -> str:
    rows = [
        [
            f"{s['t_s'] / 60:.1f}",
            f"{s['rss_mb']:.0f}",
            s["listen_connections"],
            s["speak_connections"],
            s["chat_requests"],
            s["last_request_messages"],
            s["last_request_chars"],
        ]
        for s in run["samples"][:: max(1, len(run["samples"]) // 24)]
    ]
    return (
        "# Soak: one long conversation (reliability case L3)\n\n"
        + machine_markdown(info)
        + f"\n\n{args.minutes:.0f} minutes, a question every {args.every:.0f} s: "
        f"{run['asked']} asked, {run['answered']} answered. RSS growth after the first "
        f"{WARMUP_S:.0f} s: **{result['rss_growth_after_warmup'] * 100:.1f} %** (goal < 10 %); "
        f"Deepgram reconnects: **{result['deepgram_reconnects']}** (goal ≤ 2); largest "
        f"chat request: {result['max_request_messages']} messages. "
        f"{'PASS' if result['pass'] else 'FAIL'}.\n\n"
        + md_table(
            [
                "minute",
                "RSS MB",
                "listen sockets",
                "speak sockets",
                "chat requests",
                "messages in the last",
                "characters in the last",
            ],
            rows,
        )
        + "\n\nThe context grows by the conversation's own turns (the LLM sees the whole "
        "conversation), never by retrieved text: one retrieval message per request.\n"
    )


def plot(run: dict):
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = [s["t_s"] / 60 for s in run["samples"]]
    a.plot(t, [s["rss_mb"] for s in run["samples"]])
    a.set_xlabel("minutes")
    a.set_ylabel("RSS, MB")
    b.plot(t, [s["last_request_messages"] or 0 for s in run["samples"]], label="messages")
    b.set_xlabel("minutes")
    b.set_ylabel("messages in the chat request")
    fig.suptitle("Soak: one conversation, a question every 20 s")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 minutes")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--every", type=float, default=20.0, help="seconds between questions")
    p.add_argument("--out", help="results name (default soak[_quick])")
    add_service_args(p)
    args = p.parse_args()
    if args.quick:
        args.minutes = 2.0
    delays = service_delays(args)
    name = args.out or ("soak_quick" if args.quick else "soak")
    sys.path.insert(0, str(ROOT / "tests"))
    from processes import free_port, start_backtalk, wait_serving

    info = machine_info()
    with voice_world(delays) as world:
        add_pg_info(info, world)
        world.fakes.ctl("cycle", texts=[MANIFEST[f]["text"] for f in TURN_FIXTURES])
        port = free_port()
        env = {**os.environ, "BACKTALK_LOG_LEVEL": "WARNING", "BACKTALK_SESSION_MAX_S": "7200"}
        proc, _out, err = start_backtalk(
            ["talk", str(LECTURE), "--port", str(port)], cwd=ROOT, env=env
        )
        try:
            wait_serving(proc, err, port)
            run = asyncio.run(
                soak(f"http://localhost:{port}", proc.pid, world, args.minutes, args.every)
            )
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(30)
    result = verdict(run)
    log(f"soak: {result}")
    payload = {"benchmark": "soak", "machine": info, "delays": delays, **run, "result": result}
    write_results(name, payload, markdown(run, result, info, args), plot(run))


if __name__ == "__main__":
    main()
