"""Shared plumbing of the voice benchmarks (turn latency, end of turn, speculation, concurrency).

What it gives the benchmarks:

* :class:`Fakes` — FakeOpenAI and FakeDeepgram (``tests/fakes``, the real wire
  protocols) with the published delays, run in a **separate process** so that their
  own work (the fake recogniser's RMS analysis, tone synthesis, JSON) neither shares
  the bot's GIL nor counts in the bot process's CPU. The benchmark scripts them over
  a small control endpoint (``queue`` a transcript, ``set`` a delay, ``stats``).
  In ``cycle`` mode every ``/v1/listen`` (or Flux ``/v2/listen``) connection gets its
  own transcript script (used by the concurrency benchmark, where N conversations
  share one fake). The Flux recogniser's delays (:data:`FLUX_PUBLISHED`) are part of
  the configuration too; only ``/v2/listen`` uses them.
* :func:`voice_world` — fakes + a throw-away embedded Postgres (``_common``) with the
  fixture lecture ingested through the product's own ``ingest_sources``, and the
  environment the product's ``Settings`` read (``DATABASE_URL``, ``OPENAI_BASE_URL``,
  ``BACKTALK_DEEPGRAM_BASE_URL``, ``BACKTALK_EMBEDDER``...). Everything is stopped on
  exit (also on Ctrl-C / SIGTERM).
* :class:`VoiceSession` — the real conversation (``backtalk.agent.bot.build_conversation``:
  Silero VAD, smart-turn v3, Deepgram STT/TTS and OpenAI services, speculative
  retrieval, the RAG processor on pgvector, guard, citations, recorder) on
  :class:`tests.transports.LoopbackTransport` (a real-time microphone that plays the
  WAV fixtures and silence in between, a real-time recording loudspeaker), run by
  Pipecat's ``WorkerRunner``. :meth:`VoiceSession.turn` says one utterance and
  returns a :class:`TurnRecord`: ground-truth audio times, what the pipeline did
  (frames seen by an observer) and Pipecat's own ``LatencyBreakdown`` for the turn.

Clocks: the transport and the probe use ``time.monotonic()``; Pipecat's latency
observer and frame timestamps use ``time.time()``; :data:`WALL_MINUS_MONO` converts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import contextvars
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import ROOT, EmbeddedPostgres, log, stop_on_sigterm

TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

AUDIO = TESTS / "fixtures" / "audio"
LECTURE = TESTS / "fixtures" / "transcripts" / "gradient_descent_lecture.json"
LECTURE_TITLE = "Gradient descent lecture"
MANIFEST: dict[str, dict] = json.loads((AUDIO / "manifest.json").read_text())
#: The turns of the latency benchmarks, cycled.
TURN_FIXTURES = (
    "q1_what_is_learning_rate.wav",
    "q2_why_momentum.wav",
    "q3_follow_up.wav",
    "q4_off_topic.wav",
    "hello.wav",
)
#: Published medians the fakes are set to (see VOICE.md).
PUBLISHED = {
    "stt_final_delay_s": 0.25,  # Deepgram Nova-3: final transcript after Finalize
    "llm_ttft_s": 0.55,  # OpenAI gpt-4o-mini time to first token
    "tts_first_audio_s": 0.30,  # Deepgram Aura-2 first audio
    "embedding_delay_s": 0.20,  # OpenAI embeddings request
}
#: Deepgram Flux (``/v2/listen``, ``BACKTALK_STT_SERVICE=deepgram_flux``): seconds of
#: silence after the end of speech before ``EagerEndOfTurn`` / ``EndOfTurn`` (the fake's
#: defaults). Deepgram publishes no median for either: its Flux quickstart quotes
#: "~260ms end-of-turn detection", and third-party Flux documentation (Telnyx) says an
#: eager end of turn at thresholds 0.3-0.5 saves "~150-250 ms" over waiting for
#: ``EndOfTurn``; 0.25 s / 0.45 s put the eager one 0.2 s ahead. Only ``/v2/listen``
#: uses them (Nova, ``/v1/listen``, is unaffected).
FLUX_PUBLISHED = {
    "flux_eager_eot_delay_s": 0.25,
    "flux_eot_delay_s": 0.45,
}
#: The bot's answer: one short sentence (~0.5 s of fake speech), so turns stay short.
REPLY = "The video covers that."
#: A spoken-length answer (two sentences, 39 words, as the personas ask for), streamed a
#: word per token at :data:`STREAM_TOKEN_INTERVAL_S` (``turn_latency --streamed-reply``).
#: With the one-sentence reply and no interval, everything after the first token arrives
#: at once and a processor that holds text back costs nothing measurable.
STREAMED_REPLY = (
    "The speaker says to start with a small learning rate, around 0.01, and to watch the "
    "loss for the first few hundred steps. If the loss blows up, cut the rate by a factor "
    "of ten and try again, and if it barely moves, try a larger one."
)
#: gpt-4o-mini streams ~59 tokens/s (mean of 46-70 t/s runs, OpenAI community forum,
#: "Inference speed of different models", 2025): ~17 ms a token. The fake sends one word
#: per token, so this is a little faster per word than the real model (~1.3 tokens a word).
STREAM_TOKEN_INTERVAL_S = 0.017


def first_sentence_stream_s(reply: str, token_interval_s: float) -> float:
    """Injected streaming time before the TTS can have the reply's first sentence, seconds.

    The fake streams ``reply`` as word tokens (``_split_tokens``), ``token_interval_s``
    apart after the first; Pipecat's own sentence aggregator (``SimpleTextAggregator``,
    which the TTS service uses) is fed those tokens to find the one that completes the
    first sentence (it confirms a full stop on the next non-space character), or the
    end of the response (sent without a delay). This is LLM time, not orchestration, so
    the overhead subtracts it.
    """
    from pipecat.utils.text.simple_text_aggregator import SimpleTextAggregator

    from tests.fakes.openai_server import _split_tokens

    tokens = _split_tokens(reply)

    async def first_sentence_token() -> int:
        aggregator = SimpleTextAggregator()
        for i, token in enumerate(tokens):
            async for _ in aggregator.aggregate(token):
                return i
        return max(len(tokens) - 1, 0)

    return asyncio.run(first_sentence_token()) * token_interval_s


#: Fake speech per character (the fake's default, 0.06, makes the greeting ~6 s).
TTS_SECS_PER_CHAR = 0.02
#: RMS (PCM16) above which a 20 ms window is speech (the fake recogniser's threshold).
SPEECH_RMS = 500.0
FRAME_S = 0.02
WALL_MINUS_MONO = time.time() - time.monotonic()


def mono(wall: float) -> float:
    """``time.time()`` value → ``time.monotonic()`` scale."""
    return wall - WALL_MINUS_MONO


# -- audio ------------------------------------------------------------------------------


def load_pcm(name_or_path: str | Path) -> bytes:
    from transports import load_wav

    path = Path(name_or_path)
    return load_wav(path if path.is_absolute() else AUDIO / path)


def rms_windows(pcm: bytes) -> np.ndarray:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = int(16000 * FRAME_S)
    windows = samples[: len(samples) // n * n].reshape(-1, n)
    return np.sqrt((windows**2).mean(axis=1))


def speech_span(pcm: bytes) -> tuple[float, float]:
    """(first, last) second of speech: 20 ms windows louder than :data:`SPEECH_RMS`."""
    loud = np.flatnonzero(rms_windows(pcm) > SPEECH_RMS)
    if loud.size == 0:
        raise ValueError("no speech")
    return float(loud[0] * FRAME_S), float((loud[-1] + 1) * FRAME_S)


def speech_bursts(pcm: bytes, min_gap_s: float = 0.1) -> list[tuple[float, float]]:
    bursts: list[list[float]] = []
    for i in np.flatnonzero(rms_windows(pcm) > SPEECH_RMS):
        a, b = i * FRAME_S, (i + 1) * FRAME_S
        if bursts and a - bursts[-1][1] < min_gap_s:
            bursts[-1][1] = b
        else:
            bursts.append([a, b])
    return [(float(a), float(b)) for a, b in bursts]


@dataclass(frozen=True)
class Stimulus:
    """One utterance to say: PCM, the texts the fake recogniser returns, ground truth.

    Attributes:
        name: Label.
        pcm: 16 kHz PCM16 mono.
        texts: Transcripts to queue, one per utterance the recogniser will see.
        speech_start_s / speech_end_s: First/last speech in ``pcm`` (RMS), seconds.
        pause: ``(start, end)`` seconds of an inserted mid-sentence pause, if any.
    """

    name: str
    pcm: bytes
    texts: tuple[str, ...]
    speech_start_s: float
    speech_end_s: float
    pause: tuple[float, float] | None = None

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def fixture_stimulus(name: str) -> Stimulus:
    pcm = load_pcm(name)
    a, b = speech_span(pcm)
    return Stimulus(name.removesuffix(".wav"), pcm, (MANIFEST[name]["text"],), a, b)


def quietest_cut(pcm: bytes, lo_frac: float = 0.3, hi_frac: float = 0.7) -> float:
    """Second of the quietest 60 ms stretch in the middle of the speech (a word gap)."""
    env = rms_windows(pcm)
    a, b = speech_span(pcm)
    i0, i1 = int((a + lo_frac * (b - a)) / FRAME_S), int((a + hi_frac * (b - a)) / FRAME_S)
    smooth = np.convolve(env, np.ones(3) / 3, mode="same")
    i = i0 + int(np.argmin(smooth[i0:i1]))
    return i * FRAME_S + FRAME_S / 2


def spliced_stimulus(name: str, pause_s: float, cut_s: float | None = None) -> Stimulus:
    """``name`` with ``pause_s`` of digital silence inserted at a low-energy word gap.

    The text is split at the word whose position (by characters) matches the cut.
    """
    pcm = load_pcm(name)
    a, b = speech_span(pcm)
    cut = cut_s if cut_s is not None else quietest_cut(pcm)
    k = int(round(cut * 16000)) * 2
    spliced = pcm[:k] + bytes(int(pause_s * 16000) * 2) + pcm[k:]
    words = MANIFEST[name]["text"].split()
    frac = (cut - a) / (b - a)
    chars = np.cumsum([len(w) + 1 for w in words]) / (sum(len(w) + 1 for w in words))
    split = int(np.clip(np.searchsorted(chars, frac) + 1, 1, len(words) - 1))
    texts = (" ".join(words[:split]), " ".join(words[split:]))
    # The part before the cut ends at its last loud window.
    before = speech_span(pcm[:k])[1]
    after = cut + pause_s + speech_span(pcm[k:])[0]
    return Stimulus(
        f"{name.removesuffix('.wav')}+{pause_s:.1f}s@{cut:.2f}",
        spliced,
        texts,
        a,
        b + pause_s,
        pause=(before, after),
    )


# -- the fakes, in their own process -------------------------------------------------------

_CONN: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "bench_listen_conn", default=None
)


def _serve_fakes(config: dict) -> None:
    """Child process: run both fakes with a control endpoint until stdin closes."""
    import fakes.deepgram_server as dgs
    from aiohttp import web
    from fakes import FakeDeepgram, FakeOpenAI

    # Server-side timestamps (time.monotonic() is CLOCK_MONOTONIC, shared by processes),
    # so a turn's overhead can be split into client-side stretches.
    marks: list[tuple[float, str]] = []

    class MarkedQueue(asyncio.Queue):
        def put_nowait(self, item):
            if item[0] == "speak":
                marks.append((time.monotonic(), "tts_speak"))
            super().put_nowait(item)

    class MarkedSynth(dgs._Synthesiser):
        def __init__(self, *a, **kw):
            self._first_pending = False
            super().__init__(*a, **kw)
            self.queue = MarkedQueue()

        @property
        def _new_context(self):
            return self.__dict__.get("_nc", True)

        @_new_context.setter
        def _new_context(self, value):
            if not value and self.__dict__.get("_nc", True):
                self._first_pending = True
            self.__dict__["_nc"] = value

        def _tone(self, n):
            if self._first_pending:
                self._first_pending = False
                marks.append((time.monotonic(), "tts_first_audio"))
            return super()._tone(n)

    dgs._Synthesiser = MarkedSynth
    _finalize = dgs._Recogniser.finalize

    def finalize(self):
        marks.append((time.monotonic(), "stt_final"))
        return _finalize(self)

    dgs._Recogniser.finalize = finalize
    _turn_info = dgs._FluxRecogniser._turn_info

    def turn_info(self, event, **extra):
        if event != "Update":
            marks.append((time.monotonic(), f"flux_{event}"))
        return _turn_info(self, event, **extra)

    dgs._FluxRecogniser._turn_info = turn_info

    class MarkedOpenAI(FakeOpenAI):
        async def _chat(self, request):
            marks.append((time.monotonic(), "llm_request"))
            return await super()._chat(request)

        async def _embeddings(self, request):
            marks.append((time.monotonic(), "embedding_request"))
            return await super()._embeddings(request)

    class ScriptedDeepgram(FakeDeepgram):
        cycle: list[str] | None = None
        oai: FakeOpenAI

        def _build_app(self):
            app = super()._build_app()
            app.router.add_post("/_ctl", self._ctl)
            return app

        async def _listen(self, request):
            if self.cycle:
                _CONN.set({"i": 0, "script": list(self.cycle)})
            return await super()._listen(request)

        async def _flux(self, request):
            if self.cycle:
                _CONN.set({"i": 0, "script": list(self.cycle)})
            return await super()._flux(request)

        def _peek_transcript(self) -> str:
            conn = _CONN.get()
            if conn is not None:
                return conn["script"][conn["i"] % len(conn["script"])]
            return super()._peek_transcript()

        def _pop_transcript(self) -> str:
            conn = _CONN.get()
            if conn is not None:
                text = conn["script"][conn["i"] % len(conn["script"])]
                conn["i"] += 1
                return text
            return super()._pop_transcript()

        async def _ctl(self, request):
            body = await request.json()
            op = body.get("op")
            out: dict[str, Any] = {"ok": True}
            if op == "queue":
                for text in body["texts"]:
                    self.queue_transcript(text)
            elif op == "clear":
                with self._lock:
                    self._transcripts.clear()
            elif op == "cycle":
                self.cycle = body.get("texts")
            elif op == "set":
                for k, v in body.get("deepgram", {}).items():
                    setattr(self, k, v)
                for k, v in body.get("openai", {}).items():
                    setattr(self.oai, k, v)
            elif op == "stats":
                chats = self.oai.chat_requests
                out.update(
                    chat_requests=len(chats),
                    embedding_requests=len(self.oai.embedding_requests),
                    cancelled_streams=self.oai.cancelled_streams,
                    listen_connections=self.listen_connections,
                    speak_connections=self.speak_connections,
                    unscripted_utterances=self.unscripted_utterances,
                    pending_transcripts=self.pending_transcripts,
                    clears=self.clears,
                    flux_connections=self.flux_connections,
                    flux_events=dict(
                        collections.Counter(
                            m["event"]
                            for m in self.flux_sent
                            if m.get("type") == "TurnInfo" and m.get("event") != "Update"
                        )
                    ),
                    last_user_texts=[_last_user(r) for r in chats[-int(body.get("last", 5)) :]],
                    last_request_messages=len(chats[-1]["messages"]) if chats else 0,
                    last_request_chars=len(json.dumps(chats[-1]["messages"])) if chats else 0,
                )
            elif op == "marks":
                since = float(body.get("since", 0.0))
                out["marks"] = [m for m in marks if m[0] >= since]
                if body.get("trim"):
                    del marks[: max(0, len(marks) - 1000)]
            elif op == "reset":
                self.reset()
                self.oai.reset()
            return web.json_response(out)

    def _last_user(request: dict) -> str:
        for m in reversed(request.get("messages", [])):
            if m.get("role") == "user":
                c = m.get("content")
                if isinstance(c, list):
                    c = "".join(p.get("text", "") for p in c)
                if "<transcript_excerpts>" not in (c or ""):
                    return c or ""
        return ""

    # Scripted answers (``Fakes(replies=...)``): the first ``(substring, reply)`` whose
    # substring is in the last user message (case-insensitive) answers it; else ``reply``.
    scripted = [(str(k).lower(), str(v)) for k, v in config.get("replies", [])]

    def reply(body: dict) -> str:
        question = _last_user(body).lower()
        return next((v for k, v in scripted if k in question), oai.reply_default)

    oai = MarkedOpenAI(
        reply=reply if scripted else config["reply"],
        ttft_s=config["llm_ttft_s"],
        token_interval_s=config["token_interval_s"],
        embedding_delay_s=config["embedding_delay_s"],
    )
    oai.reply_default = config["reply"]
    dg = ScriptedDeepgram(
        final_delay_s=config["stt_final_delay_s"],
        tts_first_audio_s=config["tts_first_audio_s"],
        tts_secs_per_char=config["tts_secs_per_char"],
        flux_eager_eot_delay_s=config.get(
            "flux_eager_eot_delay_s", FLUX_PUBLISHED["flux_eager_eot_delay_s"]
        ),
        flux_eot_delay_s=config.get("flux_eot_delay_s", FLUX_PUBLISHED["flux_eot_delay_s"]),
    )
    dg.oai = oai
    with oai, dg:
        print(
            json.dumps(
                {
                    "openai": oai.base_url,
                    "deepgram": dg.base_url,
                    "control": f"http://127.0.0.1:{dg.port}/_ctl",
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
        sys.stdin.read()  # until the parent closes our stdin (or dies)


class Fakes:
    """FakeOpenAI + FakeDeepgram in a child process (see the module docstring)."""

    def __init__(
        self,
        *,
        stt_final_delay_s: float,
        llm_ttft_s: float,
        tts_first_audio_s: float,
        embedding_delay_s: float,
        token_interval_s: float = 0.0,
        tts_secs_per_char: float = TTS_SECS_PER_CHAR,
        reply: str = REPLY,
        replies: Sequence[tuple[str, str]] = (),
        flux_eager_eot_delay_s: float = FLUX_PUBLISHED["flux_eager_eot_delay_s"],
        flux_eot_delay_s: float = FLUX_PUBLISHED["flux_eot_delay_s"],
    ):
        self.config = {
            "stt_final_delay_s": stt_final_delay_s,
            "llm_ttft_s": llm_ttft_s,
            "tts_first_audio_s": tts_first_audio_s,
            "embedding_delay_s": embedding_delay_s,
            "token_interval_s": token_interval_s,
            "tts_secs_per_char": tts_secs_per_char,
            "reply": reply,
            "replies": [list(pair) for pair in replies],
            # /v2/listen (Flux) only; /v1/listen (Nova) ignores them.
            "flux_eager_eot_delay_s": flux_eager_eot_delay_s,
            "flux_eot_delay_s": flux_eot_delay_s,
        }
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Fakes:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._voice", "fakes", json.dumps(self.config)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the fake services did not start")
        self.info = json.loads(line)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    @property
    def pid(self) -> int:
        return self.info["pid"]

    def ctl(self, op: str, **body: Any) -> dict:
        req = urllib.request.Request(
            self.info["control"],
            data=json.dumps({"op": op, **body}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    async def actl(self, op: str, **body: Any) -> dict:
        return await asyncio.to_thread(self.ctl, op, **body)

    _DG = {
        "stt_final_delay_s": "final_delay_s",
        "tts_first_audio_s": "tts_first_audio_s",
        "tts_secs_per_char": "tts_secs_per_char",
        "flux_eager_eot_delay_s": "flux_eager_eot_delay_s",
        "flux_eot_delay_s": "flux_eot_delay_s",
    }
    _OAI = {
        "llm_ttft_s": "ttft_s",
        "embedding_delay_s": "embedding_delay_s",
        "token_interval_s": "token_interval_s",
        "reply": "reply",
    }

    def set(self, **values: Any) -> None:
        """Change delays (names as in :data:`PUBLISHED`) while running."""
        self.ctl(
            "set",
            deepgram={self._DG[k]: v for k, v in values.items() if k in self._DG},
            openai={self._OAI[k]: v for k, v in values.items() if k in self._OAI},
        )
        self.config.update(values)


# -- the world: fakes + Postgres + ingested lecture + environment ---------------------------


def add_service_args(parser: argparse.ArgumentParser, *, flux: bool = False) -> None:
    """CLI parameters for the fake services' delays (defaults: the published medians).

    With ``flux``, also the fake Flux recogniser's delays (``/v2/listen``; see
    :data:`FLUX_PUBLISHED`).
    """
    g = parser.add_argument_group("fake services (published medians by default)")
    g.add_argument(
        "--stt-final-delay",
        type=float,
        default=PUBLISHED["stt_final_delay_s"],
        help="Deepgram final transcript after Finalize, s (Nova-3 ~0.25)",
    )
    g.add_argument(
        "--llm-ttft",
        type=float,
        default=PUBLISHED["llm_ttft_s"],
        help="OpenAI time to first token, s (gpt-4o-mini ~0.55)",
    )
    g.add_argument(
        "--tts-first-audio",
        type=float,
        default=PUBLISHED["tts_first_audio_s"],
        help="Deepgram Aura-2 first audio, s (~0.3)",
    )
    g.add_argument(
        "--embedding-delay",
        type=float,
        default=PUBLISHED["embedding_delay_s"],
        help="OpenAI embeddings request, s (~0.2)",
    )
    g.add_argument(
        "--token-interval",
        type=float,
        default=0.0,
        help="seconds between streamed LLM tokens (0: the one-sentence reply "
        "arrives with the first token, so no sentence-aggregation wait)",
    )
    if flux:
        # Deepgram documents Flux end of turn at "~260ms"; Telnyx's Flux docs say eager
        # end of turn (thresholds 0.3-0.5) saves ~150-250 ms (see FLUX_PUBLISHED).
        g.add_argument(
            "--flux-eager-eot-delay",
            type=float,
            default=FLUX_PUBLISHED["flux_eager_eot_delay_s"],
            help="Flux EagerEndOfTurn after the end of speech, s (fake default 0.25; "
            "Telnyx: eager EOT saves ~150-250 ms over EndOfTurn)",
        )
        g.add_argument(
            "--flux-eot-delay",
            type=float,
            default=FLUX_PUBLISHED["flux_eot_delay_s"],
            help="Flux EndOfTurn after the end of speech, s (fake default 0.45; "
            "Deepgram: ~260 ms end-of-turn detection)",
        )


def service_delays(args: argparse.Namespace) -> dict[str, float]:
    return {
        "stt_final_delay_s": args.stt_final_delay,
        "llm_ttft_s": args.llm_ttft,
        "tts_first_audio_s": args.tts_first_audio,
        "embedding_delay_s": args.embedding_delay,
        "token_interval_s": args.token_interval,
        # Only when add_service_args(..., flux=True) added them (the fakes' defaults else).
        **{
            key: getattr(args, key.removesuffix("_s"))
            for key in FLUX_PUBLISHED
            if hasattr(args, key.removesuffix("_s"))
        },
    }


@contextlib.contextmanager
def scoped_env(values: dict[str, str | None]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def settings(**env: str):
    """The product's ``Settings`` from the environment plus ``env`` (BACKTALK_... names)."""
    from backtalk.config import Settings

    with scoped_env(env):
        return Settings(_env_file=None)


@dataclass
class World:
    fakes: Fakes
    pg: EmbeddedPostgres
    database_url: str
    embedder: str
    env: dict[str, str]


def quiet_logs(level: str = "WARNING") -> None:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=level)


def ingest_lecture(s) -> int:
    """Ingest the fixture lecture with the product's ingest job; returns chunks stored."""
    from backtalk.ingest.job import ingest_sources
    from backtalk.ingest.sources import parse_source
    from backtalk.store import make_embedder, open_store

    store = open_store(s.database_url.get_secret_value(), s.data_dir)
    embedder = make_embedder(
        s.embedder,
        openai_api_key=s.openai_api_key.get_secret_value(),
        openai_base_url=s.openai_base_url,
        openai_model=s.openai_embedding_model,
    )
    report = ingest_sources(
        [parse_source(str(LECTURE), title=LECTURE_TITLE)],
        store=store,
        embedder=embedder,
        chunk_target_s=s.chunk_target_s,
        chunk_max_s=s.chunk_max_s,
    )
    if not report.ok:
        raise RuntimeError(f"ingest failed: {report.failed}")
    chunks = sum(o.chunks for o in report.outcomes)
    store.engine.dispose()
    return chunks


@contextlib.contextmanager
def voice_world(
    delays: dict[str, float],
    *,
    embedder: str = "local",
    reply: str = REPLY,
    replies: Sequence[tuple[str, str]] = (),
    tts_secs_per_char: float = TTS_SECS_PER_CHAR,
    reuse_env: bool = False,
) -> Iterator[World]:
    """Fakes + embedded Postgres + the lecture ingested, and the environment set.

    ``replies``: scripted answers, ``(substring of the question, answer)``; the first
    match answers, else ``reply``.

    With ``reuse_env`` (a child process of a benchmark), the parent's world is used
    as given by the environment (``BENCH_VOICE_WORLD``) and nothing is started.
    """
    stop_on_sigterm()
    quiet_logs()
    if reuse_env:
        yield World(
            fakes=ChildFakes(),
            pg=None,
            database_url=os.environ["DATABASE_URL"],  # type: ignore[arg-type]
            embedder=os.environ.get("BACKTALK_EMBEDDER", "local"),
            env={},
        )
        return
    with (
        Fakes(reply=reply, replies=replies, tts_secs_per_char=tts_secs_per_char, **delays) as fakes,
        EmbeddedPostgres() as pg,
        tempfile.TemporaryDirectory(prefix="backtalk-bench-voice-") as data_dir,
    ):
        url = pg.create_database("voice")
        env = {
            "DATABASE_URL": url,
            "OPENAI_API_KEY": "sk-bench",
            "DEEPGRAM_API_KEY": "dg-bench",
            "OPENAI_BASE_URL": fakes.info["openai"],
            "BACKTALK_DEEPGRAM_BASE_URL": fakes.info["deepgram"],
            "BACKTALK_EMBEDDER": embedder,
            "BACKTALK_DATA_DIR": data_dir,
            "BENCH_FAKES_CONTROL": fakes.info["control"],
            "BENCH_FAKES_PID": str(fakes.pid),
            "BENCH_FAKES_CONFIG": json.dumps(fakes.config),
        }
        with scoped_env(env):
            # Ingest through the fake with no delay; the turns then see the real delay.
            fakes.set(embedding_delay_s=0.0)
            t = time.perf_counter()
            chunks = ingest_lecture(settings())
            log(
                f"ingested the lecture ({chunks} chunks, {embedder} embedder) "
                f"in {time.perf_counter() - t:.1f}s"
            )
            fakes.set(embedding_delay_s=delays["embedding_delay_s"])
            fakes.ctl("reset")
            yield World(fakes, pg, url, embedder, env)


def add_pg_info(info: dict, world: World) -> dict:
    """Postgres and pgvector versions of the world's database, into ``machine_info``."""
    import psycopg

    with psycopg.connect(world.database_url) as conn:
        info["postgres"] = conn.execute("SHOW server_version").fetchone()[0]
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname='vector'").fetchone()
        info["pgvector"] = row[0] if row else "?"
    return info


class ChildFakes(Fakes):
    """The parent's fakes, seen from a child process (control URL from the environment)."""

    def __init__(self):  # noqa: D107
        self.info = {
            "control": os.environ["BENCH_FAKES_CONTROL"],
            "pid": int(os.environ["BENCH_FAKES_PID"]),
        }
        self.config = json.loads(os.environ.get("BENCH_FAKES_CONFIG", "{}"))
        self.proc = None


# -- a conversation ---------------------------------------------------------------------------


_PROBE_CLASS = None


def make_probe(trace: bool = False):
    """A Pipecat observer recording turn events with ``time.monotonic()`` times.

    Built lazily, so the fakes' child process never imports Pipecat.
    """
    global _PROBE_CLASS
    if _PROBE_CLASS is None:
        from pipecat.observers.base_observer import BaseObserver

        _PROBE_CLASS = _make_probe_class(BaseObserver)
    return _PROBE_CLASS(trace)


def _make_probe_class(BaseObserver):
    from pipecat.frames.frames import (
        AggregatedTextFrame,
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        EagerEndOfTurnCancelFrame,
        EagerTranscriptionFrame,
        InterimTranscriptionFrame,
        InterruptionFrame,
        LLMContextFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        MetricsFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        TTSTextFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.metrics.metrics import (
        ProcessingMetricsData,
        TTFBMetricsData,
        TurnMetricsData,
    )
    from pipecat.processors.frame_processor import FrameDirection

    simple = (
        VADUserStartedSpeakingFrame,
        UserStartedSpeakingFrame,
        UserStoppedSpeakingFrame,
        InterruptionFrame,
        LLMFullResponseStartFrame,
        BotStartedSpeakingFrame,
        BotStoppedSpeakingFrame,
        EagerEndOfTurnCancelFrame,  # Flux: an eager end of turn withdrawn (TurnResumed)
    )

    traced = (
        LLMContextFrame,
        LLMTextFrame,
        AggregatedTextFrame,
        TTSStartedFrame,
        TTSTextFrame,
        TTSAudioRawFrame,
        UserStoppedSpeakingFrame,
        LLMFullResponseStartFrame,
        BotStartedSpeakingFrame,
        TranscriptionFrame,
    )

    class _Probe(BaseObserver):
        def __init__(self, trace: bool = False):
            super().__init__(observe_every_push=trace)
            self._trace_on = trace
            self.events: list[tuple[float, str, Any]] = []
            #: (time, frame type, source -> destination) of each hop of the frames on
            #: the answer's critical path (every push, not just the first).
            self.trace: list[tuple[float, str, str]] = []
            self._tts_seen = False
            self._llm_text_seen = False
            self._seen_ids: set[int] = set()

        async def on_push_frame(self, data):
            if data.direction != FrameDirection.DOWNSTREAM:
                return
            f = data.frame
            now = time.monotonic()
            if self._trace_on and isinstance(f, traced):
                self.trace.append(
                    (now, type(f).__name__, f"{data.source.name}->{data.destination.name}")
                )
                if len(self.trace) > 20000:
                    del self.trace[:10000]
            if self._trace_on:
                if f.id in self._seen_ids:
                    return
                self._seen_ids.add(f.id)
                if len(self._seen_ids) > 50000:
                    self._seen_ids.clear()
            if isinstance(f, simple):
                self.events.append((now, type(f).__name__, None))
                if isinstance(f, LLMFullResponseStartFrame):
                    self._tts_seen = False
                    self._llm_text_seen = False
            elif isinstance(f, VADUserStoppedSpeakingFrame):
                self.events.append(
                    (
                        now,
                        "VADUserStoppedSpeakingFrame",
                        {"silence_at": mono(f.timestamp - f.stop_secs), "stop_secs": f.stop_secs},
                    )
                )
            elif isinstance(f, TranscriptionFrame):
                self.events.append(
                    (
                        now,
                        "TranscriptionFrame",
                        {"text": f.text, "finalized": getattr(f, "finalized", None)},
                    )
                )
            elif isinstance(f, InterimTranscriptionFrame):
                self.events.append((now, "InterimTranscriptionFrame", {"text": f.text}))
            elif isinstance(f, EagerTranscriptionFrame):  # Flux: EagerEndOfTurn
                self.events.append((now, "EagerTranscriptionFrame", {"text": f.text}))
            elif isinstance(f, LLMTextFrame) and not self._llm_text_seen:
                self._llm_text_seen = True
                self.events.append((now, "FirstLLMText", None))
            elif isinstance(f, TTSStartedFrame):
                self.events.append((now, "TTSStartedFrame", None))
            elif isinstance(f, TTSAudioRawFrame) and not self._tts_seen:
                self._tts_seen = True
                self.events.append((now, "FirstTTSAudio", None))
            elif isinstance(f, MetricsFrame):
                for d in f.data:
                    if isinstance(d, TurnMetricsData):
                        self.events.append(
                            (
                                now,
                                "SmartTurn",
                                {
                                    "complete": d.is_complete,
                                    "p": d.probability,
                                    "ms": d.e2e_processing_time_ms,
                                },
                            )
                        )
                    elif (
                        isinstance(d, ProcessingMetricsData)
                        and d.value > 0
                        and d.processor.startswith("RAGContextProcessor")
                    ):
                        self.events.append((now, "RAGProcessing", {"s": d.value}))
                    elif isinstance(d, TTFBMetricsData) and d.value > 0:
                        self.events.append((now, "TTFB", {"processor": d.processor, "s": d.value}))

        def after(self, t: float, name: str | None = None) -> list[tuple[float, str, Any]]:
            return [e for e in self.events if e[0] >= t and (name is None or e[1] == name)]

        def last_name(self, *names: str) -> str | None:
            for e in reversed(self.events):
                if e[1] in names:
                    return e[1]
            return None

    return _Probe


def _schedstat_wait() -> float:
    """Seconds this thread has waited on a run queue (runnable, not running)."""
    try:
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except OSError:
        return float("nan")


def install_hooks(stages: dict, hooks: list) -> None:
    """Inline timestamps on the answer's critical path (instance-level wrappers).

    Records ``(time.monotonic(), name, run-queue wait of the event-loop thread)`` for:
    ``release`` (the user aggregator pushes UserStoppedSpeakingFrame), ``rag.in`` /
    ``rag.out``, ``llm.create`` (the OpenAI SDK call), ``llm.text`` (first text out of
    the LLM service), ``tts.audio`` (first TTS audio pushed) and ``bot_started``.
    """
    from pipecat.frames.frames import (
        BotStartedSpeakingFrame,
        LLMContextFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
        UserStoppedSpeakingFrame,
    )

    def wrap_push(proc, fn):
        orig = proc.push_frame

        async def push_frame(frame, direction=None, *a, **k):
            name = fn(frame, direction)
            if name:
                hooks.append((time.monotonic(), name, _schedstat_wait()))
            if direction is None:
                return await orig(frame, *a, **k)
            return await orig(frame, direction, *a, **k)

        proc.push_frame = push_frame

    def down(direction):
        return direction is None or direction.name == "DOWNSTREAM"

    wrap_push(
        stages["user"],
        lambda f, d: "release" if isinstance(f, UserStoppedSpeakingFrame) and down(d) else None,
    )
    if "rag" in stages:
        rag = stages["rag"]
        orig_pf = rag.process_frame

        async def process_frame(frame, direction):
            if isinstance(frame, LLMContextFrame) and direction.name == "DOWNSTREAM":
                hooks.append((time.monotonic(), "rag.in", float("nan")))
            return await orig_pf(frame, direction)

        rag.process_frame = process_frame
        wrap_push(rag, lambda f, d: "rag.out" if isinstance(f, LLMContextFrame) else None)
    llm = stages["llm"]
    state = {"text": False, "audio": False}

    def llm_push(f, d):
        if isinstance(f, LLMFullResponseStartFrame):
            state["text"] = state["audio"] = False
        elif isinstance(f, LLMTextFrame) and not state["text"]:
            state["text"] = True
            return "llm.text"
        return None

    wrap_push(llm, llm_push)
    completions = llm._client.chat.completions
    orig_create = completions.create

    async def create(*a, **kw):
        hooks.append((time.monotonic(), "llm.create", float("nan")))
        return await orig_create(*a, **kw)

    completions.create = create

    def tts_push(f, d):
        if isinstance(f, TTSAudioRawFrame) and not state["audio"]:
            state["audio"] = True
            return "tts.audio"
        return None

    wrap_push(stages["tts"], tts_push)
    wrap_push(
        stages["output"],
        lambda f, d: "bot_started" if isinstance(f, BotStartedSpeakingFrame) and down(d) else None,
    )
    if len(hooks) > 5000:
        del hooks[:2500]


async def wait_until(predicate, timeout: float, what: str = "", poll: float = 0.01):  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what or predicate}")
        await asyncio.sleep(poll)


async def wait_all_ready(tasks, ready: list, what: str, timeout: float = 120.0) -> None:  # noqa: ASYNC109
    """Wait until every one of ``tasks`` (the sessions of a level) has appended to ``ready``.

    Raises the first session's exception as soon as one fails, or ``TimeoutError``.
    """
    started = time.monotonic()
    while len(ready) < len(tasks):
        for t in tasks:
            if t.done() and t.exception():
                raise t.exception()
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"only {len(ready)}/{len(tasks)} {what} greeted")
        await asyncio.sleep(0.1)


@dataclass
class TurnRecord:
    """One turn. Times are seconds relative to the user's last sound (ground truth)."""

    name: str
    text: str
    speech_s: float
    vad_silence: float | None = None  # VAD's estimate of the last sound (stop - stop_secs)
    vad_stop: float | None = None  # VADUserStoppedSpeakingFrame seen (final one)
    transcript: float | None = None  # final TranscriptionFrame
    released: float | None = None  # UserStoppedSpeakingFrame (turn released)
    llm_request: float | None = None
    first_tts_audio: float | None = None
    bot_started: float | None = None  # BotStartedSpeakingFrame
    first_audible: float | None = None  # loudspeaker: first audible frame written
    smart_turn: list[dict] = field(default_factory=list)
    rag_s: float | None = None
    ttfb: dict[str, float] = field(default_factory=dict)
    premature_releases: list[float] = field(default_factory=list)  # before the last sound
    bot_audio_before_end: bool = False
    breakdown: dict | None = None
    #: The overhead split by server-side timestamps of the fakes (seconds):
    #: pre_llm (release → chat request at the fake), llm_client (fake's first token due
    #: → LLMTextFrame out of the LLM service, incl. the fake's sleep overshoot),
    #: text_to_tts (LLMTextFrame → Speak at the fake: guard, citations, TTS
    #: aggregation, websocket send), tts_server (Speak → the fake's first audio, minus
    #: the injected delay), audio_out (fake's first audio → BotStartedSpeakingFrame).
    segments: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def overhead_s(
        self, llm_ttft_s: float, tts_first_audio_s: float, stream_s: float = 0.0
    ) -> float | None:
        """Pipecat total − user_turn_secs − injected LLM TTFT − injected TTS first audio
        − injected streaming time of the first sentence (:func:`first_sentence_stream_s`)."""
        b = self.breakdown
        if not b or b.get("user_turn_secs") is None:
            return None
        return b["total_secs"] - b["user_turn_secs"] - llm_ttft_s - tts_first_audio_s - stream_s


def breakdown_dict(b) -> dict:
    contributions: dict[str, float] = {}
    for c in b.contributions:
        contributions[c.label] = contributions.get(c.label, 0.0) + c.duration_secs
    return {
        "total_secs": b.total_secs,
        "user_turn_secs": b.user_turn_secs,
        "measured_from": str(b.measured_from) if b.measured_from else None,
        "contributions": contributions,
        "ttfb": {t.processor.split("#")[0]: t.duration_secs for t in b.ttfb},
        "text_aggregation_s": b.text_aggregation.duration_secs if b.text_aggregation else None,
    }


class VoiceSession:
    """One real conversation on a LoopbackTransport (see the module docstring).

    Args:
        resources: ``AgentResources`` (shared by sessions of one process, as in the
            product's server).
        fakes: To queue transcripts before each utterance (None: cycle mode).
    """

    def __init__(self, resources, fakes: Fakes | None, *, name: str = "bench", trace: bool = False):
        self.trace = trace
        self.resources = resources
        self.fakes = fakes
        self.name = name
        self.breakdowns: list[tuple[float, Any]] = []
        self.turns: list[TurnRecord] = []

    async def __aenter__(self) -> VoiceSession:
        from pipecat.workers.runner import WorkerRunner
        from transports import LoopbackTransport

        from backtalk.agent.audio import transport_params
        from backtalk.agent.bot import TalkSession, build_conversation

        # The product's transport settings (input audio joined into Settings.audio_in_frame).
        self.transport = LoopbackTransport(transport_params(self.resources.settings))
        self.probe = make_probe(self.trace)
        videos = self.resources.store.list_videos()
        self.conversation = await build_conversation(
            self.transport,
            TalkSession(videos=videos),
            self.resources,
            transport_name="bench",
            observers=[self.probe],
            idle_timeout_secs=None,
        )

        async def on_breakdown(_observer, breakdown):
            self.breakdowns.append((time.monotonic(), breakdown))

        self.conversation.latency.add_event_handler("on_latency_breakdown", on_breakdown)
        self.hooks: list[tuple[float, str, float]] = []
        install_hooks(dict(self.conversation.stages.stages), self.hooks)
        self.runner = WorkerRunner(handle_sigint=False)
        await self.runner.add_workers(self.conversation.worker)
        self.runner_task = asyncio.create_task(self.runner.run(), name=f"{self.name}-runner")
        await self.transport.connect_client()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.transport.disconnect_client()
            await asyncio.wait_for(asyncio.shield(self.runner_task), 15)
        except Exception as e:  # noqa: BLE001
            log(f"{self.name}: unclean stop ({type(e).__name__}: {e})")
        finally:
            if not self.runner_task.done():
                self.runner_task.cancel()
                with contextlib.suppress(BaseException):
                    await self.runner_task
            with contextlib.suppress(Exception):
                await self.conversation.recorder.finish()

    @property
    def output(self):
        return self.transport.output()

    async def wait_greeting(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109
        await wait_until(lambda: self.output.audible_bytes() > 0, timeout, "the greeting")
        await wait_until(lambda: not self.output.bot_speaking, timeout, "the greeting to end")
        await asyncio.sleep(0.3)

    async def turn(
        self,
        stim: Stimulus,
        *,
        timeout: float = 15.0,  # noqa: ASYNC109
        settle_s: float = 0.3,
        queue: bool = True,
    ) -> TurnRecord:
        """Say ``stim`` and wait until the bot has answered (or gone quiet)."""
        if queue and self.fakes is not None:
            await self.fakes.actl("clear")
            await self.fakes.actl("queue", texts=list(stim.texts))
        n_breakdowns = len(self.breakdowns)
        started = await self.transport.play_pcm(stim.pcm)
        t0 = started + stim.speech_start_s
        end = started + stim.speech_end_s  # the user's last sound
        # Wait for the answer to start and finish.
        try:
            await wait_until(
                lambda: any(
                    t >= end for t, n, _ in self.probe.events if n == "BotStartedSpeakingFrame"
                ),
                timeout,
                f"{stim.name}: the answer",
            )
            await wait_until(lambda: not self.output.bot_speaking, timeout, "the answer to end")
            # A late second turn (e.g. after a cut-off) may still be in flight.
            await wait_until(
                lambda: (
                    self.probe.last_name("UserStartedSpeakingFrame", "UserStoppedSpeakingFrame")
                    != "UserStartedSpeakingFrame"
                    and not self.output.bot_speaking
                ),
                timeout,
                "quiet",
            )
        except TimeoutError as e:
            log(f"{self.name}: {e}")
        await asyncio.sleep(settle_s)
        rec = self._record(stim, t0, end)
        rec.extra.update(speech_start_mono=t0, speech_end_mono=end)
        if self.fakes is not None and rec.released is not None:
            try:
                marks = (await self.fakes.actl("marks", since=t0, trim=True))["marks"]
                rec.segments = self._segments(end + rec.released, marks)
                if len(self.hooks) > 4000:
                    del self.hooks[:2000]
            except Exception as e:  # noqa: BLE001
                log(f"{self.name}: no fake marks ({e})")
        new = [b for t, b in self.breakdowns[n_breakdowns:]]
        turns = [b for b in new if b.user_turn_start_time is not None]
        if turns:
            rec.breakdown = breakdown_dict(turns[-1])
        self.turns.append(rec)
        return rec

    def _segments(self, approx_release: float, marks: list) -> dict[str, float]:
        """Split the time after the turn's release (see :class:`TurnRecord`)."""
        ttft = self.fakes.config.get("llm_ttft_s", 0.0)
        tts = self.fakes.config.get("tts_first_audio_s", 0.0)
        hooks = [h for h in self.hooks if h[0] >= approx_release - 0.2]

        def hook(name, after):
            return next(((t, w) for t, n, w in hooks if n == name and t >= after), (None, None))

        def mark_first(kind, after):
            return next((t for t, k in marks if k == kind and t >= after), None)

        released, w0 = hook("release", approx_release - 0.2)
        if released is None:
            return {}
        rag_in, _ = hook("rag.in", released)
        rag_out, _ = hook("rag.out", released)
        create, _ = hook("llm.create", released)
        req = mark_first("llm_request", released)
        text, _ = hook("llm.text", released)
        speak = mark_first("tts_speak", text - 0.002) if text else None
        audio = mark_first("tts_first_audio", speak) if speak else None
        tts_audio, _ = hook("tts.audio", audio) if audio else (None, None)
        bot, w1 = hook("bot_started", tts_audio) if tts_audio else (None, None)
        if None in (create, req, text, speak, audio, tts_audio, bot):
            return {}
        out = {
            "to_rag": (rag_in - released) if rag_in else 0.0,
            "rag": (rag_out - rag_in) if rag_in and rag_out else 0.0,
            "to_llm_request": create - (rag_out or released),
            "llm_request_sent": req - create,
            "llm_response": text - (req + ttft),
            "text_to_tts": speak - text,
            "tts_server": audio - speak - tts,
            "tts_client": tts_audio - audio,
            "audio_out": bot - tts_audio,
            "release_to_bot": bot - released,
        }
        if w0 is not None and w1 is not None:
            out["loop_runq_wait"] = w1 - w0
        return out

    def _record(self, stim: Stimulus, t0: float, end: float) -> TurnRecord:
        ev = self.probe.after(t0 - 0.05)
        rel = lambda t: None if t is None else t - end  # noqa: E731

        def first(name, after=end - 10, pred=lambda d: True):
            return next((t for t, n, d in ev if n == name and t >= after and pred(d)), None)

        rec = TurnRecord(stim.name, stim.text, stim.speech_end_s - stim.speech_start_s)
        releases = [t for t, n, _ in ev if n == "UserStoppedSpeakingFrame"]
        final_release = next((t for t in releases if t >= end), None)
        rec.premature_releases = [round(t - end, 3) for t in releases if t < end]
        rec.released = rel(final_release)
        vads = [
            (t, d)
            for t, n, d in ev
            if n == "VADUserStoppedSpeakingFrame" and (final_release is None or t <= final_release)
        ]
        if vads:
            rec.vad_stop = rel(vads[-1][0])
            rec.vad_silence = rel(vads[-1][1]["silence_at"])
        anchor = final_release if final_release is not None else end
        tr = [t for t, n, d in ev if n == "TranscriptionFrame" and t <= anchor]
        rec.transcript = rel(tr[-1]) if tr else None
        rec.llm_request = rel(first("LLMFullResponseStartFrame", anchor))
        rec.first_tts_audio = rel(first("FirstTTSAudio", anchor))
        rec.bot_started = rel(first("BotStartedSpeakingFrame", anchor))
        rec.first_audible = rel(self.output.first_audible_at(since=end))
        rec.bot_audio_before_end = any(
            w.audible and t0 <= w.t < end for w in self.output.written[-2000:]
        )
        rec.smart_turn = [{**d, "at": round(t - end, 3)} for t, n, d in ev if n == "SmartTurn"]
        rag = [d["s"] for t, n, d in ev if n == "RAGProcessing" and t >= anchor - 0.01]
        rec.rag_s = rag[0] if rag else None
        for t, n, d in ev:
            if n == "TTFB" and t >= anchor - 1.0:
                rec.ttfb.setdefault(d["processor"].split("#")[0], d["s"])
        return rec


async def open_resources(s):
    """``AgentResources`` for settings ``s`` (opened off the event loop)."""
    from backtalk.agent.bot import AgentResources

    return await asyncio.to_thread(AgentResources.open, s)


def with_settings(resources, s):
    """The same store/engine/embedder under other settings (turn strategy, flags)."""
    import dataclasses

    return dataclasses.replace(resources, settings=s)


async def close_resources(resources) -> None:
    await resources.close()
    resources.store.engine.dispose()


# -- statistics & reporting helpers ---------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.percentile(v, q)) if v else None


def ms(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 1000:.{digits}f}"


def record_dict(rec: TurnRecord) -> dict:
    import dataclasses

    return dataclasses.asdict(rec)


def process_cpu_times() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "fakes":
        _serve_fakes(json.loads(sys.argv[2]))
    else:
        print("usage: python -m benchmarks._voice fakes CONFIG_JSON (internal)", file=sys.stderr)
        sys.exit(2)
