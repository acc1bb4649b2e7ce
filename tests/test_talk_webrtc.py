"""End to end: ``backtalk talk <caption file>`` answers a spoken question over WebRTC.

The product's main command runs as a user runs it, in its own process: it ingests
the caption file into a real (embedded) Postgres, then serves Backtalk's page and
its SmallWebRTC signalling (Pipecat's ``/start`` → ``/sessions/{id}/api/offer``). A
Python WebRTC client (:mod:`tests.webrtc_client`, aiortc) connects the way Pipecat's
client SDK does, sends a
real recorded question as Opus over RTP, and listens to the bot's voice. Only the
cloud services are stand-ins: the loopback fakes of :mod:`tests.fakes` (real wire
protocols) run in this test process.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import AUDIO, TRANSCRIPTS
from fakes import FakeDeepgram, FakeOpenAI
from processes import free_port, http_status, process_group, start_backtalk, wait_until
from webrtc_client import Microphone, SmallWebRTCClient, load_wav

from backtalk.store import Store

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LECTURE = (TRANSCRIPTS / "gradient_descent_lecture.json").resolve()
LECTURE_TITLE = "Gradient descent lecture"  # derived from the file name
Q1_WAV = AUDIO / "q1_what_is_learning_rate.wav"
Q1_TEXT = "What does the speaker say about choosing the learning rate?"
ANSWER = "He says to start small, around zero point zero one, about four minutes in."
#: The learning-rate passage of the lecture, seconds (fixtures README: 213.9-272.9).
LEARNING_RATE_SPAN = (214.0, 273.0)
#: Seconds of fake synthesised speech per character (default 0.06 makes a 6 s greeting).
TTS_SECS_PER_CHAR = 0.02
#: Silence the user leaves after the greeting before asking, seconds.
PAUSE_BEFORE_QUESTION_S = 1.5

#: Generous bounds for a loaded 2-core machine; polled, never slept for.
STARTUP_TIMEOUT_S = 90.0
GREETING_TIMEOUT_S = 15.0
ANSWER_TIMEOUT_S = 20.0
#: The fake TTS's first-audio delay, distinct from the STT's timings so the --latency
#: columns can be told apart.
TTS_FIRST_AUDIO_S = 0.3
EXIT_TIMEOUT_S = 20.0

#: RTVI events the bot sends during a turn, reported relative to the end of speech.
TIMELINE_EVENTS = (
    "user-started-speaking",
    "user-stopped-speaking",
    "bot-llm-started",
    "bot-tts-started",
    "bot-started-speaking",
)

_EXCERPT = re.compile(
    r'<excerpt [^>]*start_seconds="(\d+)" end_seconds="(\d+)">\n(.*?)\n</excerpt>', re.S
)


def wav_speech_end_s(pcm: bytes, sample_rate: int = 16000, rms: float = 500.0) -> float:
    """End, seconds, of the last 20 ms window of ``pcm`` louder than ``rms``."""
    window = sample_rate // 50
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    loud = [
        i
        for i in range(0, len(samples) - window + 1, window)
        if np.sqrt(np.mean(samples[i : i + window] ** 2)) > rms
    ]
    return (loud[-1] + window) / sample_rate


def user_texts(request: dict) -> list[str]:
    out = []
    for message in request["messages"]:
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            out.append(content or "")
    return out


@pytest.fixture
def fake_openai():
    with FakeOpenAI(reply=ANSWER) as fake:
        yield fake


@pytest.fixture
def fake_deepgram():
    with FakeDeepgram(
        tts_secs_per_char=TTS_SECS_PER_CHAR, tts_first_audio_s=TTS_FIRST_AUDIO_S
    ) as fake:
        yield fake


def conversations_ended(log: str) -> int:
    """How many conversations the agent's log says have ended."""
    return len(re.findall(r"Conversation \d+ ended", log))


def greetings(fake_deepgram: FakeDeepgram) -> int:
    return sum(LECTURE_TITLE in t for t in fake_deepgram.spoken_texts)


@pytest.mark.parametrize("stt_service", ["deepgram", "deepgram_flux"], ids=["nova", "flux"])
async def test_talk_answers_a_spoken_question_over_webrtc(
    stt_service: str,
    database_url: str,
    store: Store,
    tmp_path: Path,
    fake_openai: FakeOpenAI,
    fake_deepgram: FakeDeepgram,
):
    fake_deepgram.queue_transcript(Q1_TEXT)
    port = free_port()
    cwd = tmp_path / "cwd"  # empty: no .env for Settings or the runner's load_dotenv
    cwd.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_", "DAILY_", "PIPECAT_"))
    }
    env.update(
        DATABASE_URL=database_url,
        DEEPGRAM_API_KEY="dg-test",
        OPENAI_API_KEY="sk-test",
        OPENAI_BASE_URL=fake_openai.base_url,
        BACKTALK_DEEPGRAM_BASE_URL=fake_deepgram.base_url,
        BACKTALK_DATA_DIR=str(tmp_path / "data"),
        BACKTALK_STT_SERVICE=stt_service,
    )
    t0 = time.monotonic()
    proc, out, err = start_backtalk(
        ["talk", str(LECTURE), "--port", str(port), "--latency"], cwd=cwd, env=env
    )
    client: SmallWebRTCClient | None = None
    timings: dict[str, float] = {}
    try:
        # -- 1. it ingests, prints where to go, and serves the page -----------------------
        await wait_until(
            lambda: f"{LECTURE_TITLE} (" in out.text, STARTUP_TIMEOUT_S, "the ingest report", proc
        )
        timings["ingested"] = time.monotonic() - t0
        url = await wait_until(
            lambda: re.search(r"Open: (http://\S+)", out.text),
            STARTUP_TIMEOUT_S,
            "the URL to open",
            proc,
        )
        base = url.group(1).rstrip("/")
        assert base == f"http://localhost:{port}", base
        # The printed URL is Backtalk's own page.
        await wait_until(
            lambda: http_status(f"{base}/") == 200, STARTUP_TIMEOUT_S, "GET / == 200", proc
        )
        timings["startup"] = time.monotonic() - t0
        page = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{base}/", timeout=5).read().decode()
        )
        assert "<title>Backtalk" in page, "GET / is not Backtalk's page"
        ingested = re.search(r"✓ \S+ added: Gradient descent lecture \(\d+ chunks\)", out.text)
        assert ingested, out.text

        # -- 2. a WebRTC client joins, as the prebuilt page does --------------------------
        mic = Microphone()
        client = SmallWebRTCClient(base, mic)
        connect_started = time.monotonic()
        await client.connect(timeout_s=30)
        timings["connect"] = time.monotonic() - connect_started
        assert client.answer["type"] == "answer" and client.answer["pc_id"]
        assert "a=candidate" in client.offer_request["sdp"]  # no trickle ICE needed

        # -- 3. the bot greets, naming the video ------------------------------------------
        speaker = client.loudspeaker
        greeted_at = await wait_until(
            lambda: speaker.first_audible_at(connect_started),
            GREETING_TIMEOUT_S,
            "the greeting's audio",
            proc,
        )
        timings["greeting"] = greeted_at - connect_started
        assert greetings(fake_deepgram) >= 1, fake_deepgram.spoken_texts
        # The data channel works both ways: client-ready was answered.
        await wait_until(lambda: client.rtvi_messages("bot-ready"), 10, "RTVI bot-ready", proc)
        await wait_until(
            lambda: speaker.quiet_for(PAUSE_BEFORE_QUESTION_S), 20, "the greeting to end", proc
        )
        greeting_s = speaker.audible_seconds(connect_started)
        greetings_heard = [greetings(fake_deepgram)]

        # -- 4. the user asks a question out loud -----------------------------------------
        pcm = load_wav(Q1_WAV)
        speech_end_s = wav_speech_end_s(pcm)
        clip = mic.play(pcm)
        await wait_until(lambda: clip.ended_at, 15, "the question to be sent", proc)
        user_stopped_at = clip.started_at + speech_end_s
        request = await wait_until(
            lambda: next(
                (
                    r
                    for r in fake_openai.chat_requests
                    if r["messages"] and r["messages"][-1].get("content") == Q1_TEXT
                ),
                None,
            ),
            ANSWER_TIMEOUT_S,
            "the chat request for the question",
            proc,
        )
        timings["llm_request"] = time.monotonic() - user_stopped_at  # upper bound (polled)
        answered_at = await wait_until(
            lambda: speaker.first_audible_at(user_stopped_at),
            ANSWER_TIMEOUT_S,
            "the answer's audio",
            proc,
        )
        timings["answer"] = answered_at - user_stopped_at
        await wait_until(lambda: speaker.quiet_for(1.0), 20, "the answer to end", proc)
        answer_s = speaker.audible_seconds(user_stopped_at)
        timeline = {
            kind: round(msgs[0][0] - user_stopped_at, 2)
            for kind in TIMELINE_EVENTS
            if (msgs := client.rtvi_messages(kind, since=clip.started_at))
        }
        finals = [
            (t, m["data"].get("text"))
            for t, m in client.rtvi_messages("user-transcription", since=clip.started_at)
            if m["data"].get("final")
        ]
        assert Q1_TEXT in [text for _, text in finals], finals
        timeline["final user-transcription"] = round(finals[0][0] - user_stopped_at, 2)

        # Retrieval: a user-role <transcript_excerpts> message with the learning-rate passage.
        rag = next((t for t in user_texts(request) if "<transcript_excerpts>" in t), None)
        assert rag is not None, request["messages"]
        spans = [(int(a), int(b)) for a, b, _ in _EXCERPT.findall(rag)]
        lo, hi = LEARNING_RATE_SPAN
        assert any(a < hi and b > lo for a, b in spans), f"no excerpt overlaps {lo}-{hi}: {spans}"
        assert request["messages"][-1]["role"] == "user"
        assert any(t.strip() == ANSWER for t in fake_deepgram.spoken_texts), (
            fake_deepgram.spoken_texts
        )
        assert answer_s > 1.0, f"only {answer_s:.2f}s of the answer was heard"

        # --latency: the turn's breakdown on the console, the same numbers to the client.
        (_, report), *_ = await wait_until(
            lambda: [
                (t, m)
                for t, m in client.rtvi_messages("server-message", since=clip.started_at)
                if m["data"].get("type") == "turn-latency"
            ],
            10,
            "the turn-latency message",
            proc,
        )
        latency = report["data"]
        line = await wait_until(
            lambda: re.search(r"turn latency .*total +(\d+)ms", err.text), 10, "--latency", proc
        )
        assert int(line.group(1)) == round(latency["total_s"] * 1000), (line.group(0), latency)
        for part in ("end_of_turn_s", "stt_s", "retrieval_s", "llm_s", "first_sentence_s", "tts_s"):
            assert isinstance(latency[part], float), latency
        # Each column is its own service's time (the fake TTS waits TTS_FIRST_AUDIO_S).
        assert TTS_FIRST_AUDIO_S <= latency["tts_s"] < latency["total_s"], latency
        assert latency["stt_s"] < latency["total_s"], latency

        # -- 5. the user hangs up; the conversation ends and was saved ---------------------
        await client.close()
        client = None
        await wait_until(
            lambda: conversations_ended(err.text) == 1, 15, "the conversation to end", proc
        )
        ((conversation_id, keys, _),) = store.conversations()
        assert keys == "gradient_descent_lecture"
        # The end-of-conversation log line reports speculative retrieval where it runs
        # (on by default with Nova, off with Flux).
        speculation = re.search(r"Conversation \d+ ended: .*speculative retrieval", err.text)
        assert (speculation is not None) == (stt_service == "deepgram"), err.text[-2000:]
        saved = store.conversation_messages(conversation_id)
        assert ("user", Q1_TEXT, False) in saved, saved
        assert ("assistant", ANSWER, False) in saved, saved

        # -- 6. reloading the page starts a new conversation, greeted again -----------------
        client = SmallWebRTCClient(base, Microphone())
        reconnect_started = time.monotonic()
        await client.connect(timeout_s=30)
        regreeted_at = await wait_until(
            lambda: client.loudspeaker.first_audible_at(reconnect_started),
            GREETING_TIMEOUT_S,
            "the second greeting's audio",
            proc,
        )
        timings["regreeting"] = regreeted_at - reconnect_started
        await wait_until(
            lambda: client.loudspeaker.quiet_for(1.0), 20, "the second greeting to end", proc
        )
        greetings_heard.append(greetings(fake_deepgram) - greetings_heard[0])
        assert greetings_heard[1] >= 1, fake_deepgram.spoken_texts
        await client.close()
        client = None
        await wait_until(
            lambda: conversations_ended(err.text) == 2, 15, "the second conversation to end", proc
        )
        assert len(store.conversations()) == 2

        # -- 7. Ctrl-C stops the server cleanly ---------------------------------------------
        group_before = process_group(proc.pid)
        proc.send_signal(signal.SIGINT)
        sigint_at = time.monotonic()
        try:
            returncode = await asyncio.to_thread(proc.wait, EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"backtalk talk still running {EXIT_TIMEOUT_S:.0f}s after SIGINT")
        timings["exit"] = time.monotonic() - sigint_at
        out.join()
        err.join()
        leftovers = process_group(proc.pid)
        print(
            f"\nbacktalk talk over WebRTC: startup {timings['startup']:.1f}s "
            f"(ingest done {timings['ingested']:.1f}s); connect {timings['connect']:.2f}s; "
            f"greeting audio {timings['greeting']:.2f}s after connecting ({greeting_s:.1f}s "
            f"long); answer audio {timings['answer']:.2f}s after the user stopped speaking "
            f"({answer_s:.1f}s long; RTVI events, s after the user stopped: {timeline}); "
            f"LLM request <= {timings['llm_request']:.2f}s; second session greeted "
            f"{timings['regreeting']:.2f}s after connecting; exit {timings['exit']:.2f}s after "
            f"SIGINT (rc {returncode}); greetings per session {greetings_heard}; "
            f"process group before SIGINT: {group_before}"
        )
        assert returncode == 0, returncode
        assert "Traceback" not in err.text, err.text[-5000:]
        assert not re.search(r"\| (ERROR|CRITICAL) ", err.text), err.text[-5000:]
        assert not leftovers, f"orphan processes: {leftovers}"
        # One greeting per conversation, even when SmallWebRTC reports a connection twice.
        assert greetings_heard == [1, 1]
    finally:
        if client is not None:
            await client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        out.join()
        err.join()
        print("---- backtalk stdout ----\n" + out.text)
        print("---- backtalk stderr ----\n" + err.text[-20000:])
