"""Turn latency: voice-to-voice time of the real pipeline, and the orchestration overhead in it.

Run from the repository root::

    python -m benchmarks.turn_latency            # 30 turns (q1-q4, hello, cycled)
    python -m benchmarks.turn_latency --quick    # 5 turns (< 60 s)
    python -m benchmarks.turn_latency --streamed-reply   # -> results/turn_latency_streamed.*

The real conversation (``build_conversation``: Silero VAD + smart-turn v3 on real speech,
Deepgram STT/TTS and OpenAI service classes, speculative retrieval, the RAG processor on an
embedded Postgres + pgvector with the local WordLlama embedder, guard, citations, recorder)
runs on ``LoopbackTransport``; the cloud services are the loopback fakes, in their own
process, set to the published medians (``--stt-final-delay`` 0.25, ``--llm-ttft`` 0.55,
``--tts-first-audio`` 0.30). Each turn plays a WAV fixture in real time, with its text
queued in the fake recogniser, and waits for the answer to finish.

Accounting (per turn, from Pipecat's ``UserBotLatencyObserver`` breakdown):

* ``total_secs`` — VAD's estimate of the user's last sound (VAD stop − stop_secs) to
  ``BotStartedSpeakingFrame``: the voice-to-voice latency;
* ``user_turn_secs`` — the same start to the turn's release (``UserStoppedSpeakingFrame``).
  It *includes* the VAD silence (stop_secs), the wait for the finalized transcript (the
  STT final delay: the smart-turn stop strategy waits for it) and the turn model (its
  inference, or its ``smart_turn_stop_secs`` timeout, 1 s by default, when it scores the
  turn unfinished). So the STT final delay must not be subtracted a second time;
* **orchestration overhead** = total − user_turn_secs − injected LLM TTFT − injected TTS
  first audio: everything Backtalk and Pipecat add after the turn is released (frame
  hops, RAG retrieval, the OpenAI/Deepgram clients' request work, the guard and
  citation processors, the output transport), on the critical path;
* **turn-release overhead** (turns smart-turn scores finished) = user_turn_secs −
  VAD stop_secs − injected STT final delay: what the release path adds (Finalize send,
  websocket round trip, transcript frame hops, smart-turn inference beyond the STT wait).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
from typing import Any

import numpy as np

from benchmarks._common import log, machine_info, machine_markdown, md_table, pyplot, write_results
from benchmarks._voice import (
    PUBLISHED,
    REPLY,
    STREAM_TOKEN_INTERVAL_S,
    STREAMED_REPLY,
    TURN_FIXTURES,
    TurnRecord,
    VoiceSession,
    add_pg_info,
    add_service_args,
    close_resources,
    first_sentence_stream_s,
    fixture_stimulus,
    ms,
    open_resources,
    pct,
    record_dict,
    service_delays,
    settings,
    voice_world,
)

GOAL_P50_S = 0.010
GOAL_P95_S = 0.030

COMPONENTS = (
    "endpointing wait",
    "transcription",
    "turn detection",
    "LLM inference",
    "sentence aggregation",
    "speech synthesis",
    "output transport",
    "pipeline",
)


class DeferRecorder:
    """Prototype patch: write the user's message after the bot starts answering.

    ``ConversationRecorder`` saves the user message from a task started when the
    turn is released, i.e. while the RAG processor retrieves and the LLM request is
    built, on the same event loop and the same connection pool. This holds the write
    until the answer's first audio (at most ``max_wait_s``).
    """

    def __init__(self, session: VoiceSession, max_wait_s: float = 3.0):
        self.on = False
        recorder = session.conversation.recorder
        original = recorder.add
        output = session.transport.output()

        async def add(role, content, *, interrupted=False):
            if self.on and role == "user":
                deadline = time.monotonic() + max_wait_s
                while not output.bot_speaking and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            await original(role, content, interrupted=interrupted)

        recorder.add = add


class FastRetrievalEngine:
    """Prototype patch: retrieval on an AUTOCOMMIT engine without pre-ping or reset.

    ``make_async_engine`` uses ``pool_pre_ping=True`` and the default reset-on-return,
    so each ``PgVectorRetriever.retrieve`` costs a ping, an implicit BEGIN, the query
    and a ROLLBACK: four round trips to Postgres for one read-only SELECT. This swaps
    the retriever's engine for ``create_async_engine(..., pool_pre_ping=False,
    isolation_level="AUTOCOMMIT", pool_reset_on_return=None)``: one round trip.
    """

    def __init__(self, session: VoiceSession):
        from sqlalchemy.ext.asyncio import create_async_engine

        from backtalk.store.engine import _CONNECT_ARGS

        stages = dict(session.conversation.stages.stages)
        retriever = stages["rag"]._retriever
        self.retriever = getattr(retriever, "_retriever", retriever)  # unwrap speculation
        self.product = self.retriever._engine
        self.fast = create_async_engine(
            self.product.url,
            pool_pre_ping=False,
            pool_size=5,
            connect_args=_CONNECT_ARGS,
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
        )
        self._on = False

    @property
    def on(self) -> bool:
        return self._on

    @on.setter
    def on(self, value: bool) -> None:
        self._on = value
        self.retriever._engine = self.fast if value else self.product


PROTOTYPES = {"defer-recorder": DeferRecorder, "fast-retrieval-engine": FastRetrievalEngine}

#: Backtalk's own processors on the answer's path; ``--baseline`` runs without them.
BACKTALK_STAGES = ("speculation", "rag", "guard", "citations")


@contextlib.contextmanager
def without_stages(names: tuple[str, ...]):
    """Build conversations without the named stages (the Pipecat-only baseline).

    Wraps ``backtalk.agent.bot.build_stages`` for the duration: the same services,
    aggregators, VAD, turn strategies, recorder and transport, minus ``names``. What
    the baseline's overhead leaves out of the default's is what those stages cost.
    """
    import backtalk.agent.bot as bot

    original = bot.build_stages

    def build(*args, **kwargs):
        stages = original(*args, **kwargs)
        stages.stages = [(n, p) for n, p in stages.stages if n not in names]
        return stages

    bot.build_stages = build
    try:
        yield
    finally:
        bot.build_stages = original


async def run_turns(
    world,
    n_turns: int,
    *,
    env: dict[str, str] | None = None,
    profile: str | None = None,
    ab: str | None = None,
) -> tuple[list[TurnRecord], dict]:
    s = settings(**(env or {}))
    resources = await open_resources(s)
    stimuli = [fixture_stimulus(f) for f in TURN_FIXTURES]
    info: dict[str, Any] = {}
    try:
        async with VoiceSession(resources, world.fakes) as session:
            proto = PROTOTYPES[ab](session) if ab else None
            await session.wait_greeting()
            profiler = None
            if profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0005, async_mode="disabled")
                profiler.start()
            for i in range(n_turns):
                stim = stimuli[i % len(stimuli)]
                if proto is not None:
                    # Alternate by pairs of cycles so each fixture is seen both ways.
                    proto.on = (i // len(stimuli)) % 2 == 1
                rec = await session.turn(stim)
                if proto is not None:
                    rec.extra["prototype"] = ab if proto.on else None
                over = overhead(rec, world_delays)
                log(
                    f"turn {i + 1:2}/{n_turns} {stim.name:28} released {ms(rec.released, 0):>5} ms "
                    f"v2v {ms(rec.breakdown and rec.breakdown['total_secs'], 0):>5} ms "
                    f"overhead {ms(over):>6} ms  rag {ms(rec.rag_s, 2)} ms"
                )
            if profiler is not None:
                profiler.stop()
                info["profile"] = profile
                from benchmarks._common import RESULTS

                RESULTS.mkdir(exist_ok=True)
                (RESULTS / f"{profile}.txt").write_text(
                    profiler.output_text(unicode=False, color=False, show_all=False)
                )
                (RESULTS / f"{profile}.html").write_text(profiler.output_html())
            rag = session.conversation.stages.rag
            if rag is not None:
                info["rag_stats"] = vars(rag.stats).copy()
            spec = dict(session.conversation.stages.stages).get("speculation")
            if spec is not None:
                info["speculation_stats"] = vars(spec._retriever.stats).copy()
            info["fakes"] = await world.fakes.actl("stats", last=3)
        return session.turns, info
    finally:
        await close_resources(resources)


world_delays: dict[str, float] = dict(PUBLISHED, token_interval_s=0.0)


def overhead(t: TurnRecord, delays: dict[str, float]) -> float | None:
    """The turn's orchestration overhead with the injected delays of this run removed.

    ``delays`` may carry ``first_sentence_stream_s`` (``--streamed-reply``): the
    injected streaming time of the reply's first sentence.
    """
    return t.overhead_s(
        delays["llm_ttft_s"],
        delays["tts_first_audio_s"],
        delays.get("first_sentence_stream_s", 0.0),
    )


def summarize(turns: list[TurnRecord], delays: dict[str, float], stop_secs: float) -> dict:
    ok = [t for t in turns if t.breakdown and t.breakdown.get("user_turn_secs") is not None]
    over = [overhead(t, delays) for t in ok]
    total = [t.breakdown["total_secs"] for t in ok]
    user_turn = [t.breakdown["user_turn_secs"] for t in ok]
    finished = [t for t in ok if t.smart_turn and t.smart_turn[-1].get("complete")]
    release_over = [
        t.breakdown["user_turn_secs"] - stop_secs - delays["stt_final_delay_s"] for t in finished
    ]
    gt = [t.first_audible for t in ok if t.first_audible is not None]
    comps = {c: [t.breakdown["contributions"].get(c, 0.0) for t in ok] for c in COMPONENTS}
    ttfb: dict[str, list[float]] = {}
    for t in ok:
        for k, v in t.breakdown["ttfb"].items():
            ttfb.setdefault(k, []).append(v)
    rag = [t.rag_s for t in ok if t.rag_s is not None]
    vad_lag = [-t.vad_silence for t in ok if t.vad_silence is not None]
    by_fixture: dict[str, dict] = {}
    for name in sorted({t.name for t in ok}):
        sel = [t for t in ok if t.name == name]
        by_fixture[name] = {
            "n": len(sel),
            "v2v_p50": pct([t.breakdown["total_secs"] for t in sel], 50),
            "user_turn_p50": pct([t.breakdown["user_turn_secs"] for t in sel], 50),
            "overhead_p50": pct([overhead(t, delays) for t in sel], 50),
            "smart_turn_p": statistics.median([t.smart_turn[0]["p"] for t in sel if t.smart_turn])
            if any(t.smart_turn for t in sel)
            else None,
        }
    seg_names: list[str] = []
    for t in ok:
        for k in t.segments:
            if k not in seg_names:
                seg_names.append(k)
    segs = {k: pct([t.segments[k] for t in ok if k in t.segments], 50) for k in seg_names}
    runq = [
        (
            t.segments["loop_runq_wait"],
            overhead(t, delays),
        )
        for t in ok
        if "loop_runq_wait" in t.segments
    ]
    fit = None
    if len(runq) >= 5:
        x, y = np.array(runq).T
        slope, intercept = np.polyfit(x, y, 1)
        fit = {
            "intercept_s": float(intercept),
            "slope": float(slope),
            "r": float(np.corrcoef(x, y)[0, 1]),
        }
    return {
        "segments_median": segs,
        "loop_runq_wait": {
            "p50": pct([r for r, _ in runq], 50),
            "p95": pct([r for r, _ in runq], 95),
        },
        "overhead_vs_runq_fit": fit,
        "turns_measured": len(ok),
        "turns_played": len(turns),
        "v2v": {"p50": pct(total, 50), "p95": pct(total, 95)},
        "v2v_ground_truth": {"p50": pct(gt, 50), "p95": pct(gt, 95)},
        "user_turn": {"p50": pct(user_turn, 50), "p95": pct(user_turn, 95)},
        "overhead": {
            "p50": pct(over, 50),
            "p95": pct(over, 95),
            "max": max(over) if over else None,
            "min": min(over) if over else None,
        },
        "turn_release_overhead": {
            "p50": pct(release_over, 50),
            "p95": pct(release_over, 95),
            "n": len(release_over),
        },
        "components_median": {c: pct(v, 50) for c, v in comps.items()},
        "ttfb_median": {k: pct(v, 50) for k, v in ttfb.items()},
        "rag_s": {"p50": pct(rag, 50), "p95": pct(rag, 95)},
        "vad_lag_s": {"p50": pct(vad_lag, 50), "p95": pct(vad_lag, 95)},
        "by_fixture": by_fixture,
        "goal": {
            "overhead_p50_s": GOAL_P50_S,
            "overhead_p95_s": GOAL_P95_S,
            "pass": bool(over) and pct(over, 50) <= GOAL_P50_S and pct(over, 95) <= GOAL_P95_S,
        },
    }


def markdown(runs: list[dict], delays: dict, info: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        machine_markdown(info),
        "",
        "Transport: LoopbackTransport in-process (no WebRTC encode/decode). Fakes in a child "
        f"process: STT final {delays['stt_final_delay_s']}s, LLM TTFT {delays['llm_ttft_s']}s, "
        f"TTS first audio {delays['tts_first_audio_s']}s, embeddings {delays['embedding_delay_s']}s, "  # noqa: E501
        f"token interval {delays['token_interval_s']}s.",
        "",
    ]
    if delays.get("first_sentence_stream_s"):
        lines += [
            "Reply: the two-sentence `STREAMED_REPLY`, one word per token; its first sentence "
            f"streams for {ms(delays['first_sentence_stream_s'], 0)} ms after the first token "
            "(LLM time, subtracted from the overhead like the TTFT).",
            "",
        ]
    rows = []
    for r in runs:
        s = r["summary"]
        rows.append(
            [
                r["label"],
                f"{s['turns_measured']}/{s['turns_played']}",
                ms(s["v2v"]["p50"], 0),
                ms(s["v2v"]["p95"], 0),
                ms(s["v2v_ground_truth"]["p50"], 0),
                ms(s["user_turn"]["p50"], 0),
                ms(s["overhead"]["p50"]),
                ms(s["overhead"]["p95"]),
                ms(s["turn_release_overhead"]["p50"]),
                ms(s["rag_s"]["p50"], 2),
                "PASS" if s["goal"]["pass"] else "FAIL",
            ]
        )
    lines += [
        md_table(
            [
                "run",
                "turns",
                "v2v p50 ms",
                "v2v p95 ms",
                "last sound→audible p50 ms",
                "user_turn p50 ms",
                "overhead p50 ms",
                "overhead p95 ms",
                "release overhead p50 ms",
                "RAG p50 ms",
                "goal (≤10/≤30 ms)",
            ],
            rows,
        ),
        "",
    ]
    s = runs[0]["summary"]
    lines += [
        f"## Median per component ({runs[0]['label']}; Pipecat contributions)",
        "",
        md_table(
            ["component", "median ms"], [[c, ms(v)] for c, v in s["components_median"].items()]
        ),
        "",
        "### Where the orchestration overhead goes (median per stretch, ms)",
        "",
        "Split with inline timestamps in the bot and server-side timestamps in the fakes "
        "(CLOCK_MONOTONIC is shared by processes). `loop_runq_wait` = time the event-loop "
        "thread was runnable but waiting for a CPU (`/proc/thread-self/schedstat`) between "
        "release and BotStartedSpeaking: contention from other processes.",
        "",
        md_table(
            ["stretch", "median ms"], [[k, ms(v, 2)] for k, v in s["segments_median"].items()]
        ),
        "",
        (
            f"Overhead vs run-queue wait: overhead ≈ {ms(s['overhead_vs_runq_fit']['intercept_s'])} ms "  # noqa: E501
            f"+ {s['overhead_vs_runq_fit']['slope']:.2f} × wait (r = {s['overhead_vs_runq_fit']['r']:.2f}); "  # noqa: E501
            "the intercept estimates the overhead on an uncontended machine."
            if s.get("overhead_vs_runq_fit")
            else ""
        ),
        "",
        md_table(
            ["service TTFB (measured)", "median ms"],
            [[k, ms(v)] for k, v in s["ttfb_median"].items()],
        ),
        "",
        "## Per fixture",
        "",
        md_table(
            [
                "fixture",
                "n",
                "smart-turn p(complete)",
                "user_turn p50 ms",
                "v2v p50 ms",
                "overhead p50 ms",
            ],
            [
                [
                    k,
                    v["n"],
                    "–" if v["smart_turn_p"] is None else f"{v['smart_turn_p']:.2f}",
                    ms(v["user_turn_p50"], 0),
                    ms(v["v2v_p50"], 0),
                    ms(v["overhead_p50"]),
                ]
                for k, v in s["by_fixture"].items()
            ],
        ),
    ]
    return "\n".join(lines)


def plot(runs: list[dict], delays: dict):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    ax = axes[0]
    for r in runs:
        over = [t["_overhead"] * 1000 for t in r["turns"] if t["_overhead"] is not None]
        ax.plot(range(1, len(over) + 1), over, marker="o", ms=3, label=r["label"])
    ax.axhline(GOAL_P50_S * 1000, color="g", ls="--", lw=1, label="goal p50 10 ms")
    ax.axhline(GOAL_P95_S * 1000, color="r", ls="--", lw=1, label="goal p95 30 ms")
    ax.set_xlabel("turn")
    ax.set_ylabel("orchestration overhead, ms")
    ax.set_title("total − user_turn − LLM TTFT − TTS first audio")
    ax.legend(fontsize=7)
    ax = axes[1]
    s = runs[0]["summary"]["components_median"]
    left = 0.0
    for c, v in s.items():
        if v:
            ax.barh([0], [v * 1000], left=left, label=f"{c} {v * 1000:.0f}")
            left += v * 1000
    ax.set_yticks([])
    ax.set_xlabel("ms (median of each component)")
    ax.set_title(f"voice-to-voice breakdown ({runs[0]['label']})")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    ax = axes[2]
    for r in runs:
        pts = [
            (t["segments"]["loop_runq_wait"] * 1000, t["_overhead"] * 1000)
            for t in r["turns"]
            if t.get("segments", {}).get("loop_runq_wait") is not None
            and t["_overhead"] is not None
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=12, label=r["label"])
    ax.set_xlabel("event-loop run-queue wait during release→bot speech, ms")
    ax.set_ylabel("overhead, ms")
    ax.set_title("overhead vs CPU contention")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="5 turns, one run (< 60 s)")
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--runs", type=int, default=1, help="repeat the whole run (stability)")
    p.add_argument(
        "--no-speculation",
        action="store_true",
        help="also run with BACKTALK_SPECULATIVE_RETRIEVAL=false",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="also run without Backtalk's processors (speculation, RAG, guard, citations): "
        "the Pipecat-only overhead on the same machine",
    )
    p.add_argument(
        "--streamed-reply",
        action="store_true",
        help="answer with a two-sentence reply streamed a word per token (STREAMED_REPLY; "
        f"--token-interval defaults to {STREAM_TOKEN_INTERVAL_S}, gpt-4o-mini's ~59 tokens/s): "
        "shows what holding text back costs; the first sentence's streaming time is "
        "subtracted from the overhead",
    )
    p.add_argument(
        "--ab",
        choices=sorted(PROTOTYPES),
        help="A/B a prototype patch: alternate cycles of 5 turns with it off/on",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run at this nice value (e.g. -10: near-dedicated CPU on a shared machine)",
    )
    p.add_argument("--out", help="results name (default turn_latency[_streamed][_quick])")
    p.add_argument(
        "--profile",
        action="store_true",
        help="pyinstrument the event loop during the turns (results/turn_latency_profile.*)",
    )
    add_service_args(p)
    args = p.parse_args()
    if args.streamed_reply and args.token_interval == 0.0:
        args.token_interval = STREAM_TOKEN_INTERVAL_S
    service = service_delays(args)  # what the fakes inject
    reply = STREAMED_REPLY if args.streamed_reply else REPLY
    # ... and what the overhead subtracts: those delays and the first sentence's stream.
    delays = dict(
        service, first_sentence_stream_s=first_sentence_stream_s(reply, args.token_interval)
    )
    world_delays.update(delays)
    if args.nice:
        os.nice(args.nice)  # before any thread/child starts: they inherit it
    n = 5 if args.quick else args.turns
    name = args.out or (
        "turn_latency"
        + ("_streamed" if args.streamed_reply else "")
        + ("_quick" if args.quick else "")
    )
    t_start = time.perf_counter()
    info = machine_info()
    runs: list[dict] = []
    variants: list[tuple[str, dict[str, str], tuple[str, ...]]] = [
        (f"default run {i + 1}", {}, ()) for i in range(1 if args.quick else args.runs)
    ]
    if args.no_speculation:
        variants.append(("speculation off", {"BACKTALK_SPECULATIVE_RETRIEVAL": "false"}, ()))
    if args.baseline:
        variants.append(("Pipecat only (baseline)", {}, BACKTALK_STAGES))
    with voice_world(service, reply=reply) as world:
        add_pg_info(info, world)
        for label, env, dropped in variants:
            log(f"== {label}: {n} turns")
            with without_stages(dropped):
                turns, extra = asyncio.run(
                    run_turns(
                        world,
                        n,
                        env=env,
                        profile="turn_latency_profile" if args.profile else None,
                        ab=args.ab,
                    )
                )
            stop_secs = settings(**env).vad_stop_secs
            summary = summarize(turns, delays, stop_secs)
            recs = []
            for t in turns:
                d = record_dict(t)
                d["_overhead"] = overhead(t, delays)
                recs.append(d)
            runs.append(
                {
                    "label": label,
                    "env": env,
                    "without": list(dropped),
                    "summary": summary,
                    "info": extra,
                    "turns": recs,
                }
            )
            if args.ab:
                for flag, sub in ((False, "A (as shipped)"), (True, f"B ({args.ab})")):
                    sel = [t for t in turns if bool(t.extra.get("prototype")) == flag]
                    runs.append(
                        {
                            "label": f"{label} {sub}",
                            "env": env,
                            "summary": summarize(sel, delays, stop_secs),
                            "info": {},
                            "turns": [],
                        }
                    )
            log(
                f"{label}: v2v p50 {ms(summary['v2v']['p50'], 0)} ms, overhead p50 "
                f"{ms(summary['overhead']['p50'])} / p95 {ms(summary['overhead']['p95'])} ms"
            )
    payload = {
        "benchmark": "turn_latency",
        "machine": info,
        "delays": delays,
        "reply": reply,
        "settings": {
            k: v
            for k, v in settings().model_dump().items()
            if k.startswith(
                ("vad_", "turn_", "smart_", "interruption", "speculative", "retrieval_", "embedder")
            )
        },
        "wall_s": round(time.perf_counter() - t_start, 1),
        "runs": runs,
    }
    write_results(name, payload, markdown(runs, delays, info, "Turn latency"), plot(runs, delays))


if __name__ == "__main__":
    main()
