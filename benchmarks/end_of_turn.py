"""End-of-turn wait: how long the bot waits after the user's last sound, and who gets cut off.

Run from the repository root::

    python -m benchmarks.end_of_turn            # every strategy below, 11 utterances each
    python -m benchmarks.end_of_turn --quick    # 2 strategies x 3 utterances (< 60 s)

For each turn-detection configuration (set only through Backtalk's settings:
``BACKTALK_TURN_STOP_STRATEGY``, ``BACKTALK_SMART_TURN_STOP_SECS``,
``BACKTALK_VAD_STOP_SECS``, ``BACKTALK_TURN_SPEECH_TIMEOUT_S``; and the fake STT's
final-transcript delay for the "STT finalisation" rows) a fresh real conversation
(``build_conversation`` on ``LoopbackTransport``; Silero VAD + smart-turn v3 or the
speech-timeout strategy on real speech) hears:

* the finished questions q1-q4 and "hello" (the WAV fixtures), and
* *pauses inside a sentence*: q1 and q2 cut at their quietest word gap in the middle
  of the sentence (``_voice.quietest_cut``) with 0.4 / 0.6 / 0.8 s of digital silence
  spliced in ("Why does momentum | help gradient descent?").

Per utterance: **wait** = user's last sound (RMS ground truth of the WAV as played)
→ the turn's release (``UserStoppedSpeakingFrame``), and for the spliced ones a
**cut-off** = the turn was released before the user's last sound (during the pause);
"bot spoke" = the bot's audio played before the user had finished.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks._common import log, machine_info, machine_markdown, md_table, pyplot, write_results
from benchmarks._voice import (
    VoiceSession,
    add_pg_info,
    add_service_args,
    close_resources,
    fixture_stimulus,
    ms,
    open_resources,
    record_dict,
    service_delays,
    settings,
    spliced_stimulus,
    voice_world,
    with_settings,
)

FINISHED = (
    "q1_what_is_learning_rate.wav",
    "q2_why_momentum.wav",
    "q3_follow_up.wav",
    "q4_off_topic.wav",
    "hello.wav",
)
SPLICE_FIXTURES = ("q2_why_momentum.wav", "q1_what_is_learning_rate.wav")
PAUSES = (0.4, 0.6, 0.8)
REPLY = "Okay."


def st(stop: float, vad: float = 0.2) -> dict[str, str]:
    return {
        "BACKTALK_TURN_STOP_STRATEGY": "smart_turn",
        "BACKTALK_SMART_TURN_STOP_SECS": str(stop),
        "BACKTALK_VAD_STOP_SECS": str(vad),
    }


def to(timeout: float, vad: float = 0.2) -> dict[str, str]:
    return {
        "BACKTALK_TURN_STOP_STRATEGY": "speech_timeout",
        "BACKTALK_TURN_SPEECH_TIMEOUT_S": str(timeout),
        "BACKTALK_VAD_STOP_SECS": str(vad),
    }


def frames(frame_s: float) -> dict[str, str]:
    """The shipped turn detection with the microphone's 20 ms frames joined to ``frame_s``."""
    return {**st(1.0), "BACKTALK_AUDIO_IN_FRAME_S": str(frame_s)}


#: (label, group, settings env, fake-service overrides)
CONFIGS: list[tuple[str, str, dict[str, str], dict[str, float]]] = [
    ("smart-turn stop 3.0 (Pipecat's default)", "smart-turn stop_secs", st(3.0), {}),
    ("smart-turn stop 2.0", "smart-turn stop_secs", st(2.0), {}),
    ("smart-turn stop 1.5", "smart-turn stop_secs", st(1.5), {}),
    ("smart-turn stop 1.0 (default)", "smart-turn stop_secs", st(1.0), {}),
    ("smart-turn 3.0, VAD stop 0.3", "VAD stop_secs", st(3.0, 0.3), {}),
    ("smart-turn 3.0, VAD stop 0.5", "VAD stop_secs", st(3.0, 0.5), {}),
    ("speech_timeout 0.4", "speech_timeout", to(0.4), {}),
    ("speech_timeout 0.6", "speech_timeout", to(0.6), {}),
    ("speech_timeout 0.8", "speech_timeout", to(0.8), {}),
    ("smart-turn 3.0, STT final 0.1 s", "STT finalisation", st(3.0), {"stt_final_delay_s": 0.1}),
    ("smart-turn 3.0, STT final 0.5 s", "STT finalisation", st(3.0), {"stt_final_delay_s": 0.5}),
    (
        "speech_timeout 0.4, STT final 0.5 s",
        "STT finalisation",
        to(0.4),
        {"stt_final_delay_s": 0.5},
    ),
    ("smart-turn 1.0, VAD stop 0.3", "combination", st(1.0, 0.3), {}),
    ("smart-turn 1.5, VAD stop 0.3", "combination", st(1.5, 0.3), {}),
    ("speech_timeout 0.6, VAD stop 0.3", "combination", to(0.6, 0.3), {}),
    ("smart-turn 1.0, VAD stop 0.4", "combination", st(1.0, 0.4), {}),
    ("smart-turn 1.0, VAD stop 0.5", "combination", st(1.0, 0.5), {}),
    # Input audio frame length (Settings.audio_in_frame; 32 ms is the default with Nova).
    ("smart-turn 1.0, 20 ms input frames", "input frames", frames(0.02), {}),
    ("smart-turn 1.0, 32 ms input frames (default)", "input frames", frames(0.032), {}),
    ("smart-turn 1.0, 40 ms input frames", "input frames", frames(0.04), {}),
    ("smart-turn 1.0, 80 ms input frames", "input frames", frames(0.08), {}),
]
QUICK = [CONFIGS[0], CONFIGS[7]]


async def run_config(world, resources, label, env, overrides, stimuli) -> list[dict]:
    base = dict(world.fakes.config)
    if overrides:
        world.fakes.set(**overrides)
    s = settings(**env)
    out = []
    try:
        async with VoiceSession(with_settings(resources, s), world.fakes, name=label) as session:
            await session.wait_greeting()
            for stim in stimuli:
                rec = await session.turn(stim, timeout=12.0)
                d = record_dict(rec)
                d["config"] = label
                d["spliced"] = stim.pause is not None
                d["pause_s"] = round(stim.pause[1] - stim.pause[0], 2) if stim.pause else None
                d["inserted_pause_s"] = (
                    float(stim.name.split("+")[1].split("s@")[0]) if stim.pause else None
                )
                d["cut_off"] = bool(rec.premature_releases)
                first_p = rec.smart_turn[-1]["p"] if rec.smart_turn else None
                log(
                    f"{label:34} {stim.name:30} wait {ms(rec.released, 0):>5} ms "
                    f"{'CUT-OFF at ' + str(rec.premature_releases) if rec.premature_releases else ''}"  # noqa: E501
                    f"{'' if first_p is None else f' p={first_p:.2f}'}"
                )
                out.append(d)
    finally:
        if overrides:
            world.fakes.set(**{k: base[k] for k in overrides})
    return out


def summarize(rows: list[dict], configs) -> list[dict]:
    out = []
    for label, group, env, over in configs:
        sel = [r for r in rows if r["config"] == label]
        fin = [r for r in sel if not r["spliced"] and r["released"] is not None]
        spl = [r for r in sel if r["spliced"]]
        q1 = [r["released"] for r in fin if r["name"].startswith("q1")]
        others = [r["released"] for r in fin if not r["name"].startswith("q1")]
        waits = [r["released"] for r in fin]
        out.append(
            {
                "config": label,
                "group": group,
                "env": env,
                "fake_overrides": over,
                "wait_mean_finished": statistics.mean(waits) if waits else None,
                "wait_max_finished": max(waits) if waits else None,
                "wait_q1": statistics.mean(q1) if q1 else None,
                "wait_q2_q4_hello_median": statistics.median(others) if others else None,
                "cutoffs": sum(r["cut_off"] for r in spl),
                "spliced": len(spl),
                "cutoffs_by_pause": {
                    str(p): sum(r["cut_off"] for r in spl if r["inserted_pause_s"] == p)
                    for p in PAUSES
                },
                "bot_spoke_over": sum(r["bot_audio_before_end"] for r in spl),
                "per_fixture": {r["name"]: r["released"] for r in sel},
            }
        )
    return out


def recommend(summary: list[dict]) -> dict | None:
    ok = [
        s
        for s in summary
        if s["spliced"]
        and s["cutoffs"] == 0
        and s["wait_mean_finished"] is not None
        and not s["fake_overrides"]
    ]
    if not ok:
        return None
    return min(ok, key=lambda s: s["wait_mean_finished"])


def markdown(summary, rows, info, delays) -> str:
    lines = [
        "# End-of-turn wait",
        "",
        machine_markdown(info),
        "",
        "Wait = the user's last sound (WAV ground truth, RMS > 500) → the turn's release "
        "(`UserStoppedSpeakingFrame`). Cut-off = released during an inserted mid-sentence "
        "pause. LoopbackTransport in-process; fakes at STT final "
        f"{delays['stt_final_delay_s']}s unless the row says otherwise.",
        "",
    ]
    header = [
        "configuration",
        "q1 wait ms",
        "q2-q4+hello median ms",
        "mean (finished) ms",
        "max ms",
        "cut-offs (0.4/0.6/0.8 s)",
        "bot spoke over user",
    ]
    lines.append(
        md_table(
            header,
            [
                [
                    s["config"],
                    ms(s["wait_q1"], 0),
                    ms(s["wait_q2_q4_hello_median"], 0),
                    ms(s["wait_mean_finished"], 0),
                    ms(s["wait_max_finished"], 0),
                    f"{s['cutoffs']}/{s['spliced']} ({'/'.join(str(v) for v in s['cutoffs_by_pause'].values())})",  # noqa: E501
                    s["bot_spoke_over"],
                ]
                for s in summary
            ],
        )
    )
    names = []
    for r in rows:
        if r["name"] not in names:
            names.append(r["name"])
    lines += [
        "",
        "## Wait per utterance (ms; `cut` = released during the pause)",
        "",
        md_table(
            ["configuration", *names],
            [
                [
                    s["config"],
                    *[
                        (
                            "cut "
                            if any(
                                r["cut_off"]
                                for r in rows
                                if r["config"] == s["config"] and r["name"] == n
                            )
                            else ""
                        )
                        + ms(s["per_fixture"].get(n), 0)
                        for n in names
                    ],
                ]
                for s in summary
            ],
        ),
    ]
    probs: dict[str, list[float]] = {}
    for r in rows:
        if r["smart_turn"] and not r["spliced"]:
            probs.setdefault(r["name"], []).append(r["smart_turn"][-1]["p"])
    if probs:
        lines += [
            "",
            "Smart-turn v3 p(complete) at the final VAD stop (all smart-turn rows): "
            + ", ".join(f"{k} {min(v):.2f}-{max(v):.2f}" for k, v in probs.items())
            + ".",
        ]
    best = recommend(summary)
    if best:
        lines += [
            "",
            f"Shortest mean wait with no cut-off: **{best['config']}** "
            f"({ms(best['wait_mean_finished'], 0)} ms mean, q1 {ms(best['wait_q1'], 0)} ms).",
        ]
    return "\n".join(lines)


def plot(summary):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(11, 5))
    y = range(len(summary))
    ax.barh(
        [i - 0.2 for i in y],
        [(s["wait_q2_q4_hello_median"] or 0) * 1000 for s in summary],
        height=0.4,
        label="finished questions q2-q4, hello (median)",
    )
    ax.barh(
        [i + 0.2 for i in y],
        [(s["wait_q1"] or 0) * 1000 for s in summary],
        height=0.4,
        label="q1 (smart-turn scores it unfinished)",
    )
    for i, s in enumerate(summary):
        if s["cutoffs"]:
            ax.text(
                max((s["wait_q1"] or 0), (s["wait_q2_q4_hello_median"] or 0)) * 1000 + 30,
                i,
                f"{s['cutoffs']}/{s['spliced']} cut off",
                va="center",
                color="red",
                fontsize=8,
            )
    ax.set_yticks(list(y))
    ax.set_yticklabels([s["config"] for s in summary], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("wait after the user's last sound, ms")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("End-of-turn wait vs mid-sentence cut-offs")
    fig.tight_layout()
    return fig


async def main_async(world, configs, stimuli) -> list[dict]:
    resources = await open_resources(settings())
    rows: list[dict] = []
    try:
        for label, _group, env, over in configs:
            rows += await run_config(world, resources, label, env, over, stimuli)
    finally:
        await close_resources(resources)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", nargs="*", help="substrings of configuration labels to run")
    p.add_argument("--out", help="results name (default end_of_turn[_quick])")
    add_service_args(p)
    args = p.parse_args()
    delays = service_delays(args)
    configs = QUICK if args.quick else CONFIGS
    if args.only:
        configs = [c for c in configs if any(o in c[0] for o in args.only)]
    if args.quick:
        stimuli = [
            fixture_stimulus(FINISHED[0]),
            fixture_stimulus(FINISHED[1]),
            spliced_stimulus(SPLICE_FIXTURES[0], 0.6),
        ]
    else:
        stimuli = [fixture_stimulus(f) for f in FINISHED]
        stimuli += [spliced_stimulus(f, pause) for f in SPLICE_FIXTURES for pause in PAUSES]
    t0 = time.perf_counter()
    info = machine_info()
    with voice_world(delays, reply=REPLY) as world:
        add_pg_info(info, world)
        rows = asyncio.run(main_async(world, configs, stimuli))
    summary = summarize(rows, configs)
    payload: dict[str, Any] = {
        "benchmark": "end_of_turn",
        "machine": info,
        "delays": delays,
        "stimuli": [
            {
                "name": s.name,
                "texts": s.texts,
                "speech_s": [s.speech_start_s, s.speech_end_s],
                "pause": s.pause,
            }
            for s in stimuli
        ],
        "wall_s": round(time.perf_counter() - t0, 1),
        "summary": summary,
        "recommended": (recommend(summary) or {}).get("config"),
        "rows": rows,
    }
    name = args.out or ("end_of_turn_quick" if args.quick else "end_of_turn")
    write_results(name, payload, markdown(summary, rows, info, delays), plot(summary))


if __name__ == "__main__":
    main()
