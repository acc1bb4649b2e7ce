"""Concurrency: how many simultaneous conversations one process holds, and memory over time.

Run from the repository root::

    python -m benchmarks.concurrency            # N = 1, 2, 4, 8, 16; then 100 conversations x2
    python -m benchmarks.concurrency --quick    # N = 2 (9 s window), 3 conversations x2 (< 60 s)

Part 1 — N simultaneous conversations in one process (the product's shape: one
``AgentResources`` shared by every conversation, one ``build_conversation`` per
session), each on its own ``LoopbackTransport`` (real-time microphone playing the WAV
fixtures q1-q4, hello in turn, with a 0.5-1.5 s pause after each answer; real Silero VAD
and smart-turn v3 per session; fakes in a child process, each listen connection with
its own transcript script). After every session has been greeted and a warm-up, a
measurement window records:

* CPU of the bot process (``psutil``; user + system of all its threads) as % of one
  core and of the whole machine (2 cores = 200 %), and the machine's total CPU (other
  processes included: the machine is shared);
* memory: RSS during the window minus RSS before the sessions, divided by N;
* orchestration overhead of every turn finished in the window (as in
  ``benchmarks.turn_latency``: total − user_turn − LLM TTFT − TTS first audio), p50/p95.

A level passes when the process stays under 70 % of the machine (140 % of one core) and
p95 overhead ≤ 100 ms. ``py-spy`` then samples the process at the largest N for a CPU
breakdown (``results/<name>_profile_n<N>.raw.txt``, summarised in the report).

Part 2 — 100 conversations one after another (connect, greeting, one question,
disconnect), in two child processes: RSS after each conversation without and with
``gc.collect()``, to show memory returns to its baseline.

All figures are for LoopbackTransport in-process: PCM frames handed over in memory,
no WebRTC. With SmallWebRTC each session also decodes Opus (48 kHz) in and encodes
Opus out, plus resampling and RTP/DTLS/SRTP work in aiortc, which adds CPU per session.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    RESULTS,
    ROOT,
    log,
    machine_info,
    machine_markdown,
    md_table,
    pyplot,
    write_results,
)
from benchmarks._voice import (
    MANIFEST,
    REPLY,
    TURN_FIXTURES,
    VoiceSession,
    add_pg_info,
    add_service_args,
    close_resources,
    fixture_stimulus,
    ms,
    open_resources,
    pct,
    service_delays,
    settings,
    voice_world,
    wait_all_ready,
)

CPU_LIMIT_MACHINE_PCT = 70.0
P95_LIMIT_S = 0.100


def passes(level: dict) -> bool:
    """The issue's criterion: under 70 % of the machine's CPU and p95 overhead ≤ 100 ms."""
    return (
        level["cpu_pct_machine"] < CPU_LIMIT_MACHINE_PCT
        and level["overhead_p95"] is not None
        and level["overhead_p95"] <= P95_LIMIT_S
    )


def apply_prototypes(inline_vad: bool) -> list[str]:
    """Prototype patches, applied to this process only (measured against the default).

    (The Deepgram listen websocket without permessage-deflate, once ``--no-deflate`` here,
    is what the product does: ``backtalk.agent.services.listen_without_compression``.)

    * ``inline_vad``: Pipecat's ``VADAnalyzer.analyze_audio`` runs Silero in a thread pool
      for every 20 ms frame (``run_in_executor``): a thread hand-off and GIL round trip per
      frame per session. This runs it inline on the event loop.
    """
    applied = []
    if inline_vad:
        from pipecat.audio.vad.vad_analyzer import VADAnalyzer

        async def analyze_audio(self, buffer):
            return self._run_analyzer(buffer)

        VADAnalyzer.analyze_audio = analyze_audio
        applied.append("inline-vad")
    return applied


def rss_mb(proc=None) -> float:
    import psutil

    return (proc or psutil.Process()).memory_info().rss / 2**20


async def session_loop(
    resources, fakes, idx: int, stop: asyncio.Event, ready: list, turns: list, offset_s: float
) -> None:
    stimuli = [fixture_stimulus(f) for f in TURN_FIXTURES]
    rng = random.Random(idx)
    await asyncio.sleep(offset_s)
    async with VoiceSession(resources, None, name=f"s{idx}") as session:
        await session.wait_greeting(timeout=60)
        ready.append(idx)
        i = 0
        while not stop.is_set():
            rec = await session.turn(stimuli[i % len(stimuli)], timeout=20.0, queue=False)
            rec.extra["session"] = idx
            rec.extra["finished_at"] = time.monotonic()
            turns.append(rec)
            i += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5))


def py_spy(pid: int, seconds: float, out_raw) -> subprocess.Popen | None:
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        log("py-spy not found; no CPU profile")
        return None
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "100",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "-o",
            str(out_raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


CATEGORIES = [
    ("Silero VAD (onnxruntime)", r"silero"),
    ("smart-turn v3 (onnxruntime)", r"smart_turn"),
    ("Deepgram STT: sending the audio (websocket)", r"deepgram/stt|listen/v1|send_media"),
    ("TTS (Deepgram service, websocket recv)", r"deepgram/tts"),
    ("audio resampling (soxr)", r"resampl|soxr"),
    ("output transport (chunking, silence check)", r"base_output|transports\.py.*write_audio"),
    ("input transport + microphone", r"base_input|transports\.py.*_microphone|_next_chunk"),
    ("LLM (openai SDK, httpx)", r"openai|httpx|httpcore"),
    ("RAG / SQLAlchemy / psycopg", r"sqlalchemy|psycopg|retriev|wordllama"),
    ("observers (latency, turn tracking, RTVI, probe)", r"observer|rtvi|_voice\.py"),
    ("user aggregator / turn strategies", r"llm_response_universal|turns/|user_turn"),
    ("pipecat frame plumbing", r"frame_processor|pipeline/|task_manager|base_object"),
    ("websockets / aiohttp library", r"websockets|aiohttp"),
    ("asyncio event loop", r"asyncio|selectors"),
]


def profile_summary(raw_path) -> dict:
    """Inclusive-by-first-match category shares of a py-spy raw (collapsed) profile."""
    totals: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    threads: collections.Counter = collections.Counter()
    total = 0
    for line in open(raw_path):
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[frames[0]] += n
        leaves[frames[-1]] += n
        cat = "other"
        for name, pat in CATEGORIES:
            if re.search(pat, stack):
                cat = name
                break
        totals[cat] += n
    return {
        "samples": total,
        "categories": {k: v / total for k, v in totals.most_common()} if total else {},
        "threads": {k: v / total for k, v in threads.most_common(8)} if total else {},
        "top_leaves": {k: v / total for k, v in leaves.most_common(15)} if total else {},
    }


async def level(
    resources, fakes, n: int, warmup_s: float, window_s: float, profile_raw: Path | None
) -> dict:
    import psutil

    proc = psutil.Process()
    fake_proc = psutil.Process(fakes.pid)
    gc.collect()
    rss0 = rss_mb(proc)
    stop = asyncio.Event()
    ready: list[int] = []
    turns: list = []
    tasks = [
        asyncio.create_task(
            session_loop(
                resources,
                fakes,
                i,
                stop,
                ready,
                turns,
                offset_s=random.Random(100 + i).uniform(0, min(3.0, 0.25 * n)),
            )
        )
        for i in range(n)
    ]
    result: dict[str, Any] = {"n": n}
    try:
        await wait_all_ready(tasks, ready, "sessions")
        await asyncio.sleep(warmup_s)
        c0, f0, w0 = proc.cpu_times(), fake_proc.cpu_times(), time.monotonic()
        psutil.cpu_percent(None)
        rss_samples = []
        while time.monotonic() - w0 < window_s:
            await asyncio.sleep(1.0)
            rss_samples.append(rss_mb(proc))
        c1, f1, w1 = proc.cpu_times(), fake_proc.cpu_times(), time.monotonic()
        machine_pct = psutil.cpu_percent(None) * psutil.cpu_count()
        wall = w1 - w0
        cpu = (c1.user + c1.system - c0.user - c0.system) / wall * 100
        fake_cpu = (f1.user + f1.system - f0.user - f0.system) / wall * 100
        in_window = [t for t in turns if w0 <= t.extra["finished_at"] <= w1 + 20]
        over = [
            t.overhead_s(fakes.config["llm_ttft_s"], fakes.config["tts_first_audio_s"])
            for t in in_window
        ]
        over = [o for o in over if o is not None]
        result.update(
            {
                "cpu_pct_one_core": cpu,
                "cpu_pct_machine": cpu / psutil.cpu_count(),
                "fakes_cpu_pct_one_core": fake_cpu,
                "machine_total_cpu_pct_of_200": machine_pct,
                "rss_before_mb": rss0,
                "rss_window_mb": float(np.mean(rss_samples)),
                "rss_per_session_mb": (float(np.mean(rss_samples)) - rss0) / n,
                "turns_in_window": len(over),
                "overhead_p50": pct(over, 50),
                "overhead_p95": pct(over, 95),
                "v2v_p50": pct([t.breakdown["total_secs"] for t in in_window if t.breakdown], 50),
                "released_p50": pct([t.released for t in in_window if t.released is not None], 50),
                "unanswered": sum(1 for t in turns if t.bot_started is None),
                "cutoffs": sum(1 for t in in_window if t.premature_releases),
                "load_avg": os.getloadavg(),
            }
        )
        result["pass"] = passes(result)
        if profile_raw is not None:
            raw = profile_raw
            spy = py_spy(os.getpid(), 15, raw)
            if spy is not None:
                await asyncio.sleep(16)
                await asyncio.to_thread(spy.wait, 30)
                if raw.exists():
                    result["profile"] = profile_summary(raw)
    finally:
        stop.set()
        done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception():
                log(f"session failed: {t.exception()!r}")
    gc.collect()
    result["rss_after_mb"] = rss_mb(proc)
    log(
        f"N={n:2}: CPU {result.get('cpu_pct_one_core', float('nan')):5.1f}% of a core "
        f"({result.get('cpu_pct_machine', float('nan')):4.1f}% of machine), "
        f"{result.get('rss_per_session_mb', float('nan')):5.1f} MB/session, overhead p95 "
        f"{ms(result.get('overhead_p95'))} ms over {result.get('turns_in_window')} turns"
        f" -> {'PASS' if result.get('pass') else 'FAIL'}"
    )
    return result


async def levels_main(world, ns, warmup_s, window_s, profile_n, name: str) -> list[dict]:
    resources = await open_resources(settings())
    texts = [MANIFEST[f]["text"] for f in TURN_FIXTURES]
    world.fakes.ctl("cycle", texts=texts)
    out = []
    try:
        for n in ns:
            out.append(
                await level(
                    resources,
                    world.fakes,
                    n,
                    warmup_s,
                    window_s,
                    RESULTS / f"{name}_profile_n{n}.raw.txt" if n == profile_n else None,
                )
            )
    finally:
        await close_resources(resources)
    return out


# -- part 2: sequential conversations (child process) ----------------------------------------


async def leak_child(n: int, collect: bool, freeze: bool = False) -> dict:
    from benchmarks._voice import ChildFakes

    fakes = ChildFakes()
    resources = await open_resources(settings())
    if freeze:
        # Prototype: move everything alive after start-up (imports, models, the store)
        # out of the collector's reach, so a full collection only walks new objects.
        gc.collect()
        gc.freeze()
    hello = fixture_stimulus("hello.wav")
    rss = [rss_mb()]
    gc_ms: list[float] = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            async with VoiceSession(resources, None, name=f"c{i}") as session:
                await session.wait_greeting(timeout=30)
                await session.turn(hello, timeout=15.0, queue=False, settle_s=0.1)
            del session
            if collect:
                t = time.perf_counter()
                gc.collect()
                gc_ms.append((time.perf_counter() - t) * 1000)
            rss.append(rss_mb())
            if (i + 1) % 10 == 0:
                log(
                    f"{'gc' if collect else 'no-gc'}: {i + 1}/{n} conversations, RSS {rss[-1]:.1f} MB"  # noqa: E501
                )
    finally:
        await close_resources(resources)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return {
        "collect": collect,
        "freeze": freeze,
        "rss_mb": rss,
        "seconds": time.monotonic() - t0,
        "gc_ms": gc_ms,
        "leftover_tasks": len(tasks),
        "fakes": bool(fakes),
    }


def run_leak_children(n: int, freeze: bool = False) -> list[dict]:
    procs = []
    for collect in (False, True):
        cmd = [sys.executable, "-m", "benchmarks.concurrency", "--leak-child", str(n)]
        if collect:
            cmd.append("--gc")
        if freeze:
            cmd.append("--freeze")
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=3600)
        line = [x for x in stdout.splitlines() if x.startswith("{")]
        if p.returncode != 0 or not line:
            raise RuntimeError(f"leak child failed ({p.returncode})")
        out.append(json.loads(line[-1]))
    return out


def leak_summary(child: dict) -> dict:
    rss = child["rss_mb"]
    warm = rss[min(5, len(rss) - 1)]
    return {
        "collect": child["collect"],
        "start_mb": rss[0],
        "after_5_mb": warm,
        "end_mb": rss[-1],
        "max_mb": max(rss),
        "growth_after_warmup_mb": rss[-1] - warm,
        "growth_per_conversation_kb": (rss[-1] - warm) * 1024 / max(1, len(rss) - 6),
        "seconds": child["seconds"],
        "leftover_tasks": child["leftover_tasks"],
    }


# -- report ---------------------------------------------------------------------------------


def markdown(levels, leak, info) -> str:
    lines = [
        "# Concurrency",
        "",
        machine_markdown(info),
        "",
        "Transport: **LoopbackTransport in-process** (PCM in memory; no Opus, no WebRTC). "
        "CPU = the bot process (all threads; fakes run in their own process and are listed "
        "separately); % of machine = % of 2 cores (200 % = both cores busy). "
        "Pass = process < 70 % of the machine and p95 overhead ≤ 100 ms.",
        "",
    ]
    rows = [
        [
            r["n"],
            f"{r.get('cpu_pct_one_core', float('nan')):.0f}%",
            f"{r.get('cpu_pct_machine', float('nan')):.0f}%",
            f"{r.get('fakes_cpu_pct_one_core', float('nan')):.0f}%",
            f"{r.get('machine_total_cpu_pct_of_200', float('nan')):.0f}%",
            f"{r.get('rss_per_session_mb', float('nan')):.1f}",
            r.get("turns_in_window"),
            ms(r.get("overhead_p50")),
            ms(r.get("overhead_p95")),
            ms(r.get("released_p50"), 0),
            "PASS" if r.get("pass") else "FAIL",
        ]
        for r in levels
    ]
    lines.append(
        md_table(
            [
                "N",
                "CPU (1 core)",
                "CPU (machine)",
                "fakes CPU (1 core)",
                "machine total (all procs, of 200%)",
                "MB / session",
                "turns",
                "overhead p50 ms",
                "overhead p95 ms",
                "turn release p50 ms",
                "pass",
            ],
            rows,
        )
    )
    passing = [r["n"] for r in levels if r.get("pass")]
    lines += [
        "",
        f"Most sessions held within the limits: **{max(passing) if passing else 0}** (goal ≥ 16).",
    ]
    prof = next((r["profile"] for r in levels if r.get("profile")), None)
    if prof:
        lines += [
            "",
            f"## Where the CPU goes (py-spy, N = {next(r['n'] for r in levels if r.get('profile'))}, "  # noqa: E501
            f"{prof['samples']} samples)",
            "",
            md_table(
                ["category (first match from the stack)", "share"],
                [[k, f"{100 * v:.1f}%"] for k, v in prof["categories"].items()],
            ),
            "",
            md_table(
                ["thread", "share"], [[k, f"{100 * v:.1f}%"] for k, v in prof["threads"].items()]
            ),
            "",
            md_table(
                ["leaf function", "share"],
                [[k.replace("|", "/"), f"{100 * v:.1f}%"] for k, v in prof["top_leaves"].items()],
            ),
        ]
    if leak:
        lines += [
            "",
            "## Conversations one after another",
            "",
            md_table(
                [
                    "variant",
                    "start MB",
                    "after 5 MB",
                    "end MB",
                    "max MB",
                    "growth after warm-up MB",
                    "KB / conversation",
                    "leftover tasks",
                ],
                [
                    [
                        "gc.collect() after each" if s["collect"] else "no explicit gc",
                        f"{s['start_mb']:.0f}",
                        f"{s['after_5_mb']:.0f}",
                        f"{s['end_mb']:.0f}",
                        f"{s['max_mb']:.0f}",
                        f"{s['growth_after_warmup_mb']:.1f}",
                        f"{s['growth_per_conversation_kb']:.0f}",
                        s["leftover_tasks"],
                    ]
                    for s in leak["summary"]
                ],
            ),
        ]
    return "\n".join(lines)


def plot(levels, leak):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    ns = [r["n"] for r in levels]
    if not ns:
        axes[0].set_visible(False)
        axes[1].set_visible(False)
    ax = axes[0]
    ax.plot(ns, [r.get("cpu_pct_machine") for r in levels], marker="o", label="bot process")
    ax.plot(
        ns,
        [r.get("machine_total_cpu_pct_of_200", 0) / 2 for r in levels],
        marker="x",
        ls=":",
        label="whole machine (all processes)",
    )
    ax.axhline(CPU_LIMIT_MACHINE_PCT, color="r", ls="--", lw=1, label="70 % limit")
    if ns:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("simultaneous conversations")
    ax.set_ylabel("CPU, % of the machine (2 cores)")
    ax.legend(fontsize=8)
    ax2 = axes[1]
    ax2.plot(ns, [(r.get("overhead_p95") or 0) * 1000 for r in levels], marker="o", label="p95")
    ax2.plot(ns, [(r.get("overhead_p50") or 0) * 1000 for r in levels], marker="o", label="p50")
    ax2.axhline(P95_LIMIT_S * 1000, color="r", ls="--", lw=1, label="100 ms limit")
    if ns:
        ax2.set_xscale("log", base=2)
    ax2.set_xlabel("simultaneous conversations")
    ax2.set_ylabel("orchestration overhead, ms")
    ax2.legend(fontsize=8)
    ax3 = axes[2]
    if leak:
        for child in leak["children"]:
            ax3.plot(
                child["rss_mb"],
                label="gc.collect() after each" if child["collect"] else "no explicit gc",
            )
        ax3.set_xlabel("conversations completed")
        ax3.set_ylabel("RSS, MB")
        ax3.legend(fontsize=8)
        ax3.set_title("sequential conversations")
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--levels", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    p.add_argument("--window", type=float, default=40.0, help="measurement window per level, s")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--sequential", type=int, default=100, help="conversations in part 2 (0: skip)")
    p.add_argument("--leak-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--gc", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--freeze",
        action="store_true",
        help="gc.freeze() after start-up in the sequential children, as Backtalk's server "
        "does (without it they collect like the agent alone)",
    )
    p.add_argument("--no-profile", action="store_true")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run at this nice value (children inherit it), e.g. -10 on a shared machine",
    )
    p.add_argument("--out", help="results name (default concurrency[_quick])")
    p.add_argument(
        "--inline-vad",
        action="store_true",
        help="prototype: Silero VAD inline instead of run_in_executor per frame",
    )
    add_service_args(p)
    args = p.parse_args()
    if args.leak_child:
        with voice_world({}, reuse_env=True):
            print(
                json.dumps(asyncio.run(leak_child(args.leak_child, args.gc, args.freeze))),
                flush=True,
            )
        return
    delays = service_delays(args)
    if args.nice:
        os.nice(args.nice)
    prototypes = apply_prototypes(args.inline_vad)
    ns = [2] if args.quick else args.levels
    window = 9.0 if args.quick else args.window
    sequential = 3 if args.quick else args.sequential
    name = args.out or ("concurrency_quick" if args.quick else "concurrency")
    t0 = time.perf_counter()
    info = machine_info()
    with voice_world(delays, reply=REPLY) as world:
        add_pg_info(info, world)
        levels = asyncio.run(
            levels_main(
                world,
                ns,
                0.0 if args.quick else args.warmup,
                window,
                None if args.no_profile or args.quick else max(ns),
                name,
            )
        )
        leak = None
        if sequential:
            world.fakes.set(tts_secs_per_char=0.005)
            world.fakes.ctl("cycle", texts=[MANIFEST["hello.wav"]["text"]])
            children = run_leak_children(sequential, args.freeze)
            leak = {"children": children, "summary": [leak_summary(c) for c in children]}
    payload = {
        "benchmark": "concurrency",
        "machine": info,
        "delays": delays,
        "transport": "LoopbackTransport (in-process PCM; no WebRTC)",
        "prototypes": prototypes,
        "wall_s": round(time.perf_counter() - t0, 1),
        "levels": levels,
        "sequential": leak,
    }
    write_results(name, payload, markdown(levels, leak, info), plot(levels, leak))


if __name__ == "__main__":
    main()
