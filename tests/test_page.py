"""Backtalk's web page in a real browser, against the real ``backtalk talk`` process.

Debian's Chromium (driven by Playwright) opens the page that ``backtalk talk`` serves,
and a person's use of it is played out: the page loads, the user presses Talk, hears
the greeting, asks a recorded question out loud, sees the captions, hears the answer,
clicks the citation chip (the player jumps there), opens the passage, hangs up and
finds the conversation in the history; asks about "this part" while the video plays;
switches the persona; adds a video from a YouTube link; pastes a bad link; has the
microphone blocked; and has no YouTube.

Real parts: the ``backtalk`` process (one for the module, started as a user starts
it), the embedded Postgres, Pipecat with the real Deepgram and OpenAI SDK code, the
browser's WebRTC stack, and ``youtube-transcript-api`` (the server's ingest of a
link), which reaches "YouTube" through Backtalk's ``BACKTALK_YOUTUBE_PROXY_URL``: a
proxy in this process answers from the recorded exchanges of :mod:`youtube_replay`.
Stand-ins (:mod:`browser`): the loopback fakes of :mod:`tests.fakes` for the cloud
services, a WebAudio microphone into which the test plays real speech WAVs, and a
stub of YouTube's IFrame player API (the page's only external script). Each test
opens its own browser context, so none depends on another having run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from browser import (
    PageUnderTest,
    YouTubeReplayProxy,
    browser_missing,
    launch_chromium,
    poll,
)
from conftest import TRANSCRIPTS, scratch_database
from fakes import FakeDeepgram, FakeOpenAI
from processes import Output, free_port, http_status, start_backtalk
from youtube_replay import GRADIENT_CHANNEL, GRADIENT_TITLE, load_snippets, register_video

from backtalk.store import Store, make_engine
from backtalk.store.engine import _with_driver

_MISSING = browser_missing()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(_MISSING is not None, reason=f"browser tests: {_MISSING}"),
]

LECTURE = (TRANSCRIPTS / "gradient_descent_lecture.json").resolve()
#: The lecture is ingested from its caption file with a YouTube id, so the page shows
#: it in the (stub) YouTube player and citations can seek it.
VIDEO = "GDlecture01"
TITLE = GRADIENT_TITLE  # "Gradient Descent, Explained Simply"

Q1_WAV = "q1_what_is_learning_rate.wav"
Q1_TEXT = "What does the speaker say about choosing the learning rate?"
#: 214 s is inside the learning-rate passage (213.9-272.9 s); the tag is not spoken.
Q1_ANSWER_SPOKEN = "He says to start small, about three and a half minutes in."
Q1_ANSWER = Q1_ANSWER_SPOKEN[:-1] + f' <cite v="{VIDEO}" t="214"/>.'
CHIP_TEXT = f"03:34 · {TITLE}"

THIS_PART_WAV = "q3_follow_up.wav"
THIS_PART_TEXT = "What did she just say there?"
THIS_PART_ANSWER = "Just then she was talking about how big each step should be."
#: Where the user has the player when asking about "this part": 3:40.
PLAYHEAD_S = 220

INGEST_ID = "CoffeeTalk1"  # a fictional YouTube video, replayed (11 characters)
INGEST_TITLE = "Brewing Better Coffee at Home"
INGEST_SNIPPETS = "coffee_canary_talk"
BAD_LINK = "https://example.com/watch?v=nope"

CASUAL_OPENING = "You are a relaxed, friendly buddy"
TUTOR_OPENING = "You are a friendly, patient tutor"

#: Fake synthesised speech, seconds per character (the default 0.06 makes long greetings).
TTS_SECS_PER_CHAR = 0.02

#: Generous bounds for a busy 2-core machine; every wait polls an observable condition.
STARTUP_TIMEOUT_S = 120.0
PAGE_TIMEOUT_S = 30.0
GREETING_TIMEOUT_S = 45.0
TURN_TIMEOUT_S = 60.0
#: The greeting has ended once the bot has been quiet this long (ms) and says "listening".
QUIET_MS = 1500
#: The level below which the received audio counts as silence (RMS, full scale 1) is
#: the meter's THRESHOLD (0.02); the fake TTS tone is ~0.17 RMS, peak ~0.24.
AUDIBLE_PEAK = 0.05

_EXCERPT = re.compile(r"<excerpt\b([^>]*)>")
_ATTR = re.compile(r'(\w+)="([^"]*)"')


# -- the server (one per module) -------------------------------------------------------


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    out: Output
    err: Output
    openai: FakeOpenAI
    deepgram: FakeDeepgram
    youtube: YouTubeReplayProxy
    store: Store

    def alive(self) -> str | None:
        """Why waiting on the page is pointless (the server exited), or None."""
        if self.proc.poll() is None:
            return None
        return f"backtalk exited ({self.proc.returncode}):\n{self.err.text[-3000:]}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base + path, timeout=10) as response:
            return json.loads(response.read())


def _reply(body: dict) -> str:
    """The fake LLM's answer to a chat request, chosen by the user's last words."""
    question = _user_texts(body)[-1] if _user_texts(body) else ""
    if Q1_TEXT in question:
        return Q1_ANSWER
    if THIS_PART_TEXT in question:
        return THIS_PART_ANSWER
    return "Sure."


def _user_texts(request: dict) -> list[str]:
    out = []
    for message in request.get("messages", []):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            out.append(content or "")
    return out


def _system_text(request: dict) -> str:
    """The system instruction a chat request carries (its system/developer messages)."""
    parts = []
    for message in request.get("messages", []):
        if message.get("role") in ("system", "developer"):
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content)
            parts.append(content or "")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def page_database(pg_server) -> Iterator[str]:
    """A fresh migrated database for the module's server (dropped afterwards)."""
    with scratch_database(pg_server, prefix="t_page") as url:
        yield url


@pytest.fixture(scope="module")
def server(page_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``backtalk talk GDlecture01`` serving the page, the lecture ingested beforehand."""
    tmp = tmp_path_factory.mktemp("page")
    cwd = tmp / "cwd"  # empty: no .env
    cwd.mkdir()
    engine = make_engine(_with_driver(page_database))
    with (
        FakeOpenAI(reply=_reply) as openai,
        FakeDeepgram(tts_secs_per_char=TTS_SECS_PER_CHAR) as deepgram,
        YouTubeReplayProxy(tmp) as youtube,
    ):
        register_video(
            youtube.rsps,
            INGEST_ID,
            snippets=load_snippets(INGEST_SNIPPETS),
            title=INGEST_TITLE,
            channel=GRADIENT_CHANNEL,
        )
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BACKTALK_", "OPENAI_", "DEEPGRAM_", "DAILY_", "PIPECAT_"))
        }
        env.update(
            DATABASE_URL=page_database,
            DEEPGRAM_API_KEY="dg-test",
            OPENAI_API_KEY="sk-test",
            OPENAI_BASE_URL=openai.base_url,
            BACKTALK_DEEPGRAM_BASE_URL=deepgram.base_url,
            BACKTALK_DATA_DIR=str(tmp / "data"),
            # The server's link ingest reaches "YouTube" through the replay proxy.
            BACKTALK_YOUTUBE_PROXY_URL=youtube.url,
            REQUESTS_CA_BUNDLE=str(youtube.ca_bundle),
        )
        ingest = subprocess.run(
            [sys.executable, "-m", "backtalk.cli", "ingest", str(LECTURE)]
            + ["--youtube-id", VIDEO, "--title", TITLE],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT_S,
        )
        assert ingest.returncode == 0, ingest.stdout + ingest.stderr
        port = free_port()
        proc, out, err = start_backtalk(["talk", VIDEO, "--port", str(port)], cwd=cwd, env=env)
        base = f"http://localhost:{port}"
        try:
            poll(
                lambda: http_status(f"{base}/api/config") == 200,
                timeout_s=STARTUP_TIMEOUT_S,
                what="backtalk talk to serve /api/config",
                alive=lambda: None if proc.poll() is None else err.text[-3000:],
            )
            yield Server(base, proc, out, err, openai, deepgram, youtube, Store(engine))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            out.join()
            err.join()
            engine.dispose()
            print("---- backtalk stderr (tail) ----\n" + err.text[-20000:])


@pytest.fixture
def backtalk(server: Server) -> Iterator[Server]:
    """The module's server, with this test's share of its log printed on failure."""
    server.deepgram.reset()  # no transcript left queued by another test
    start = len(server.err.lines)
    yield server
    print(
        f"---- backtalk stderr during the test ----\n{''.join(server.err.lines[start:])[-15000:]}"
    )


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def open_page(chromium, backtalk: Server):
    """Open the page in a fresh browser context: ``open_page(mic=..., youtube=...)``."""
    pages: list[PageUnderTest] = []

    def open_(**options) -> PageUnderTest:
        tab = PageUnderTest(chromium, backtalk.base, alive=backtalk.alive, **options)
        pages.append(tab)
        tab.open()
        return tab

    yield open_
    for tab in pages:
        tab.close()


# -- what a person sees ------------------------------------------------------------------

_FIND_TEXT = """([selector, needle]) => {
    for (const el of document.querySelectorAll(selector)) {
        const text = el.innerText.replace(/\\s+/g, " ").trim();
        if (text.includes(needle) && el.checkVisibility()) return text;
    }
    return null;
}"""

_VISIBLE_TEXT = """(selector) => {
    const el = document.querySelector(selector);
    return el && el.checkVisibility() ? el.innerText.replace(/\\s+/g, " ").trim() : null;
}"""


def visible_text(tab: PageUnderTest, selector: str) -> str | None:
    """The text of ``selector`` if it is visible (None: absent or hidden)."""
    return tab.js(_VISIBLE_TEXT, selector)


def wait_text(tab: PageUnderTest, selector: str, needle: str, what: str, timeout_s: float) -> str:
    """Wait until a visible ``selector`` element contains ``needle``; return its text."""
    return tab.until(_FIND_TEXT, what, timeout_s=timeout_s, arg=[selector, needle])


def status(tab: PageUnderTest) -> str | None:
    return tab.js("document.querySelector('#status')?.dataset.state ?? null")


def wait_ready(tab: PageUnderTest) -> None:
    """The page has opened on the lecture: it is in the library, selected, in the player."""
    tab.until(
        f"document.querySelector('#library [data-video-key=\"{VIDEO}\"]')?.checkVisibility()",
        "the lecture in the library",
        timeout_s=PAGE_TIMEOUT_S,
    )
    tab.until(
        f"window.__yt && __yt.videoId() === '{VIDEO}'",
        "the player to show the lecture",
        timeout_s=PAGE_TIMEOUT_S,
    )


def connect_and_hear_greeting(tab: PageUnderTest, server: Server) -> None:
    """Press Talk; the bot greets out loud (audio on the page), then listens."""
    greetings_before = sum(TITLE in t for t in server.deepgram.spoken_texts)
    assert status(tab) == "idle", tab.describe()
    tab.page.click("#talk-button")

    def greeted() -> bool:
        state = tab.js(
            "({state: document.querySelector('#status').dataset.state,"
            " heard: window.__botAudio.firstAudibleAt !== null})"
        )
        assert state["state"] != "error", f"the page could not connect\n{tab.describe()}"
        return state["heard"]

    tab.until(greeted, "the greeting's audio on the page", timeout_s=GREETING_TIMEOUT_S)
    tab.until(
        f"document.querySelector('#status').dataset.state === 'listening' "
        f"&& window.__botAudio.quietForMs() > {QUIET_MS}",
        "the greeting to end and the status to say listening",
        timeout_s=GREETING_TIMEOUT_S,
    )
    audio = tab.bot_audio()
    assert audio["peak"] > AUDIBLE_PEAK and audio["audibleMs"] > 300, audio
    # What is heard plays from a media element, not muted.
    assert any(
        p["liveBotTracks"] and not p["paused"] and not p["muted"] and p["volume"] > 0
        for p in audio["players"]
    ), audio["players"]
    assert sum(TITLE in t for t in server.deepgram.spoken_texts) > greetings_before, (
        server.deepgram.spoken_texts
    )
    assert visible_text(tab, "#status"), "the status has no text"


def ask(tab: PageUnderTest, server: Server, wav: str, text: str) -> float:
    """Say ``wav`` into the microphone (recognised as ``text``); its caption appears.

    Returns the page time (ms) at which the user started speaking.
    """
    server.deepgram.queue_transcript(text)
    started = tab.say(wav)
    wait_text(
        tab,
        "#conversation .turn.user:not(.interim)",
        text,
        f"the user's caption {text!r}",
        TURN_TIMEOUT_S,
    )
    tab.until(tab.said, "the question to be played", timeout_s=TURN_TIMEOUT_S)
    return started


def chat_request_for(server: Server, tab: PageUnderTest, question: str) -> dict:
    """The chat request the server sent the LLM for ``question``."""
    return tab.until(
        lambda: next(
            (r for r in server.openai.chat_requests if question in (_user_texts(r) or [""])[-1]),
            None,
        ),
        f"the LLM request for {question!r}",
        timeout_s=TURN_TIMEOUT_S,
    )


def excerpts(request: dict) -> list[dict[str, str]]:
    """Attributes of every ``<excerpt>`` in the request's ``<transcript_excerpts>``."""
    found = []
    for text in _user_texts(request):
        if "<transcript_excerpts>" in text:
            found += [dict(_ATTR.findall(m.group(1))) for m in _EXCERPT.finditer(text)]
    return found


def conversation_ids(server: Server) -> set[int]:
    return {c["id"] for c in server.get("/api/conversations")["conversations"]}


def open_history(tab: PageUnderTest) -> None:
    """Show the history list (it shares a panel with the transcript, behind a tab)."""
    if not tab.js("document.querySelector('#history')?.checkVisibility() ?? false"):
        tab.page.get_by_role("tab", name="History").click()


def assert_no_page_errors(tab: PageUnderTest, allowed: re.Pattern | None = None) -> None:
    errors = [e for e in tab.errors() if not (allowed and allowed.search(e))]
    assert not errors, f"console errors on the page: {errors}"


# -- the tests -----------------------------------------------------------------------------


def test_a_spoken_question_is_captioned_answered_out_loud_cited_and_saved(open_page, backtalk):
    """Talk, hear the greeting, ask out loud; see both captions, hear the answer, use its
    chip (the player seeks to 3:34) and passage; hang up; find it all in the history.
    The page logs no error on the way."""
    server = backtalk
    tab = open_page()
    wait_ready(tab)
    known = conversation_ids(server)
    connect_and_hear_greeting(tab, server)

    started = ask(tab, server, Q1_WAV, Q1_TEXT)
    bot = wait_text(
        tab, "#conversation .turn.bot", Q1_ANSWER_SPOKEN[:30], "the bot's caption", TURN_TIMEOUT_S
    )
    assert "<cite" not in bot and "t=" not in bot, bot
    tab.until(
        lambda: tab.audible_ms_since(started) > 500,
        "the answer's audio on the page",
        timeout_s=TURN_TIMEOUT_S,
    )
    chip = wait_text(
        tab,
        "#conversation .turn.bot .citation-chip",
        "03:34",
        "the answer's citation chip",
        TURN_TIMEOUT_S,
    )
    assert chip == CHIP_TEXT, chip
    # The answer's latency bar: one segment per part of the turn, titled with its time.
    tab.until(
        "document.querySelector('#conversation .turn.bot .latency-bar [data-part=\"llm_s\"]')",
        "the answer's latency bar",
        timeout_s=TURN_TIMEOUT_S,
    )
    parts = tab.js(
        "[...document.querySelectorAll('#conversation .turn.bot .latency-bar [data-part]')]"
        ".map(e => [e.dataset.part, e.title])"
    )
    assert [p for p, _ in parts] == [
        "end_of_turn_s",
        "stt_s",
        "retrieval_s",
        "llm_s",
        "first_sentence_s",
        "tts_s",
    ], parts
    assert re.fullmatch(r"llm \d+\.\d\d s", dict(parts)["llm_s"]), parts
    tab.until(
        f"document.querySelector('#status').dataset.state === 'listening' "
        f"&& window.__botAudio.quietForMs() > {QUIET_MS}",
        "the answer to end",
        timeout_s=TURN_TIMEOUT_S,
    )
    tab.screenshot("page-conversation.png")

    # The chip takes the player to 3:34.
    chip_el = tab.page.locator("#conversation .turn.bot .citation-chip").first
    assert chip_el.get_attribute("data-seconds") == "214"
    assert chip_el.get_attribute("data-video-key") == VIDEO
    seeks_before = len(tab.youtube()["seeks"])
    chip_el.click()
    seek = tab.until(
        f"__yt.seeks.length > {seeks_before} && __yt.seeks.at(-1)",
        "the player to seek",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert seek == {"seconds": 214, "allowSeekAhead": True, "videoId": VIDEO}, seek

    # Its passage toggle opens the transcript text the citation falls in.
    covering = [c.text for c in server.store.chunks(VIDEO) if c.start_s <= 214 < c.end_s]
    assert covering, "no chunk of the lecture covers 214 s"
    citation = tab.page.locator("#conversation .turn.bot .citation").first
    citation.locator(".passage-toggle").click()
    passage = tab.until(
        lambda: (
            citation.locator(".passage").is_visible()
            and any(
                text[:60] in " ".join(citation.locator(".passage").inner_text().split())
                for text in covering
            )
            and citation.locator(".passage").inner_text()
        ),
        "the passage's transcript text",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert "learning rate" in passage.lower(), passage

    # Hang up; the conversation is in the history, with its question, answer and chip.
    tab.page.click("#talk-button")
    tab.until(
        "document.querySelector('#status').dataset.state === 'idle'",
        "the page to hang up",
        timeout_s=PAGE_TIMEOUT_S,
    )
    new_id = tab.until(
        lambda: (conversation_ids(server) - known) or None,
        "the conversation to be saved",
        timeout_s=PAGE_TIMEOUT_S,
    )
    (conversation_id,) = new_id
    open_history(tab)
    item = tab.page.locator(f'#history .history-item[data-conversation-id="{conversation_id}"]')
    tab.until(item.is_visible, "the conversation in the history list", timeout_s=PAGE_TIMEOUT_S)
    item.click()
    wait_text(tab, "#history-view", Q1_TEXT, "the question in the history view", PAGE_TIMEOUT_S)
    view = wait_text(
        tab,
        "#history-view",
        Q1_ANSWER_SPOKEN[:30],
        "the answer in the history view",
        PAGE_TIMEOUT_S,
    )
    assert "<cite" not in view, view
    saved_chip = tab.page.locator("#history-view .citation-chip").first
    tab.until(saved_chip.is_visible, "the answer's chip in the history view", timeout_s=10)
    assert " ".join(saved_chip.inner_text().split()) == CHIP_TEXT
    saved_chip.scroll_into_view_if_needed()
    tab.screenshot("page-history.png")
    seeks_before = len(tab.youtube()["seeks"])
    saved_chip.click()
    seek = tab.until(
        f"__yt.seeks.length > {seeks_before} && __yt.seeks.at(-1)",
        "the player to seek from the history",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert seek["seconds"] == 214 and seek["videoId"] == VIDEO, seek
    assert_no_page_errors(tab)


def test_this_part_means_where_the_player_is_and_the_persona_can_change(open_page, backtalk):
    """With the video playing at 3:40, "what did she just say there?" brings the LLM the
    passage under the playhead; the video pauses while the user talks and plays on after
    the answer; the persona chosen mid-conversation is the one the LLM is given."""
    server = backtalk
    tab = open_page()
    wait_ready(tab)
    assert tab.page.locator("#persona-select").input_value() == "tutor"
    connect_and_hear_greeting(tab, server)

    # While connected, the user picks the casual persona and plays the video at 3:40.
    tab.page.select_option("#persona-select", "casual")
    tab.js(f"__yt.play({PLAYHEAD_S})")
    calls_before = len(tab.youtube()["calls"])
    ask(tab, server, THIS_PART_WAV, THIS_PART_TEXT)
    # "Pause the video" (the default) while the user talks.
    assert tab.page.locator("#pause-mode").input_value() == "pause"
    calls = [name for name, _ in tab.youtube()["calls"][calls_before:]]
    assert "pauseVideo" in calls, f"the video kept playing while the user talked: {calls}"

    # The question reached the LLM with the passage under the playhead, marked as such.
    request = chat_request_for(server, tab, THIS_PART_TEXT)
    found = excerpts(request)
    under = [
        e
        for e in found
        if float(e["start_seconds"]) <= PLAYHEAD_S <= float(e["end_seconds"])
        and e.get("playhead") == "03:40"
    ]
    assert under, f"no excerpt at the playhead 03:40 covers {PLAYHEAD_S}s: {found}"
    # ... and the casual persona's instruction instead of the tutor's.
    system = _system_text(request)
    assert system.startswith(CASUAL_OPENING), system[:400]
    assert TUTOR_OPENING not in system, system[:400]

    wait_text(
        tab, "#conversation .turn.bot", THIS_PART_ANSWER[:25], "the bot's caption", TURN_TIMEOUT_S
    )
    # Once the answer is over, the video plays on.
    tab.until(
        f"__yt.calls.slice({calls_before}).some(([name]) => name === 'playVideo') "
        "&& __yt.state === YT.PlayerState.PLAYING",
        "the video to resume after the answer",
        timeout_s=TURN_TIMEOUT_S,
    )
    assert_no_page_errors(tab)


def test_a_youtube_link_is_ingested_with_progress_then_shown(open_page, backtalk):
    """A pasted YouTube link: the page shows the job fetching the transcript, then the
    video in the library and in the player (its transcript from replayed YouTube)."""
    server = backtalk
    assert INGEST_ID not in {v["key"] for v in server.get("/api/videos")["videos"]}
    tab = open_page()
    wait_ready(tab)
    # Hold YouTube's caption download, so the page can be seen while the job runs.
    release = server.youtube.hold(f"/api/timedtext?v={INGEST_ID}")
    try:
        tab.page.fill("#link-input", f"https://www.youtube.com/watch?v={INGEST_ID}&t=5s")
        tab.page.click("#link-submit")
        tab.until(lambda: server.youtube.held, "the server to fetch the captions", timeout_s=60)
        # The job is now fetching (the captions are held): the page says so.
        progress = tab.until(
            """(() => { const el = document.querySelector('#ingest-status');
                if (!el || !el.checkVisibility() || el.dataset.status !== 'running') return null;
                const text = el.innerText.trim();
                return /fetch|transcript|caption|download/i.test(text) ? text : null; })()""",
            "the page to show the ingest fetching the transcript",
            timeout_s=PAGE_TIMEOUT_S,
        )
        assert INGEST_ID not in tab.js(
            "[...document.querySelectorAll('#library [data-video-key]')].map(e => e.dataset.videoKey)"
        ), f"the video is in the library before its transcript was fetched ({progress!r})"
        tab.screenshot("page-ingest.png")
    finally:
        release.set()
    tab.until(
        "document.querySelector('#ingest-status')?.dataset.status === 'done'",
        "the ingest to finish",
        timeout_s=TURN_TIMEOUT_S,
    )
    wait_text(
        tab,
        f'#library [data-video-key="{INGEST_ID}"]',
        INGEST_TITLE,
        "the new video in the library",
        PAGE_TIMEOUT_S,
    )
    tab.until(
        f"window.__yt && __yt.videoId() === '{INGEST_ID}'",
        "the player to show the new video",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert not visible_text(tab, "#ingest-error"), visible_text(tab, "#ingest-error")
    (video,) = [v for v in server.get("/api/videos")["videos"] if v["key"] == INGEST_ID]
    assert video["title"] == INGEST_TITLE and video["youtube_id"] == INGEST_ID, video
    assert video["chunks"] > 0, video
    assert not server.youtube.unmatched, server.youtube.unmatched
    assert_no_page_errors(tab)


def test_a_bad_link_shows_its_message_and_adds_nothing(open_page, backtalk):
    """A link that is not a YouTube video: the server's message shows in #ingest-error;
    nothing is fetched, nothing is added."""
    server = backtalk
    tab = open_page()
    wait_ready(tab)
    library_before = tab.js("document.querySelectorAll('#library [data-video-key]').length")
    videos_before = server.get("/api/videos")["videos"]
    fetched_before = len(server.youtube.log)

    tab.page.fill("#link-input", BAD_LINK)
    tab.page.click("#link-submit")
    message = tab.until(
        lambda: visible_text(tab, "#ingest-error"),
        "the bad link's message in #ingest-error",
        timeout_s=PAGE_TIMEOUT_S,
    )
    # The server's message: it names what was wrong and what to do.
    assert "example.com" in message or "YouTube" in message, message
    assert re.search(r"youtube", message, re.I), message

    assert server.get("/api/videos")["videos"] == videos_before
    assert len(server.youtube.log) == fetched_before, "a bad link made requests to YouTube"
    assert tab.js("document.querySelectorAll('#library [data-video-key]').length") == library_before
    # Chromium logs the API's 400 answer itself; that is the server's message, not a bug.
    assert_no_page_errors(tab, allowed=re.compile(r"status of 400.*/api/videos"))


def test_a_blocked_microphone_is_explained_and_nothing_connects(open_page, backtalk):
    """The user has blocked the microphone: #mic-error says so, and no session starts."""
    tab = open_page(mic="blocked")
    wait_ready(tab)
    tab.page.click("#talk-button")
    message = tab.until(
        lambda: visible_text(tab, "#mic-error"),
        "the blocked-microphone message",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert re.search(r"microphone", message, re.I) and re.search(r"blocked", message, re.I), message
    tab.until(
        "['idle', 'error'].includes(document.querySelector('#status').dataset.state)",
        "the status to settle (idle or error)",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert tab.js("window.__mic.requests") >= 1, "the page never asked for the microphone"
    connects = [
        (m, u)
        for m, u in tab.requests
        if m == "POST" and re.search(r"/api/(sessions|offer)|/start$", u)
    ]
    assert not connects, f"the page connected without a microphone: {connects}"
    assert tab.bot_audio()["tracks"] == 0
    assert_no_page_errors(tab)


def test_without_youtube_the_page_says_so_and_chips_open_youtube_links(open_page, backtalk):
    """YouTube's player script cannot load: #yt-fallback says so, and a citation chip
    (here in a saved conversation) opens https://youtu.be/ID?t=N instead."""
    server = backtalk
    # A saved conversation with a cited answer (what the agent records), to open.
    conversation_id = _save_cited_conversation(server)
    tab = open_page(youtube="offline")
    tab.until(
        f"document.querySelector('#library [data-video-key=\"{VIDEO}\"]')?.checkVisibility()",
        "the lecture in the library",
        timeout_s=PAGE_TIMEOUT_S,
    )
    fallback = tab.until(
        lambda: visible_text(tab, "#yt-fallback"),
        "the no-YouTube notice",
        timeout_s=PAGE_TIMEOUT_S,
    )
    assert re.search(r"youtube", fallback, re.I), fallback
    assert not tab.js("document.querySelector('#player')?.checkVisibility() ?? false"), (
        "the player is shown without YouTube"
    )

    open_history(tab)
    item = tab.page.locator(f'#history .history-item[data-conversation-id="{conversation_id}"]')
    tab.until(item.is_visible, "the saved conversation in the history", timeout_s=PAGE_TIMEOUT_S)
    item.click()
    chip = tab.page.locator("#history-view .citation-chip").first
    tab.until(chip.is_visible, "the saved answer's chip", timeout_s=PAGE_TIMEOUT_S)
    assert " ".join(chip.inner_text().split()) == CHIP_TEXT
    link = f"https://youtu.be/{VIDEO}?t=214"
    href = chip.evaluate("el => el.closest('a')?.href ?? el.querySelector('a')?.href ?? null")
    if href is None:  # a button: clicking it must open the link
        chip.click()
        tab.until(
            lambda: link in tab.external_requests,
            f"the chip to open {link}",
            timeout_s=PAGE_TIMEOUT_S,
        )
    else:
        assert href == link, href
    assert_no_page_errors(tab)


def _save_cited_conversation(server: Server) -> int:
    """Save a finished conversation whose answer cites 3:34, as the agent records one."""
    from backtalk.processors.citations import Citation
    from backtalk.processors.retrieval import RetrievedChunk
    from backtalk.store.repo import conversation_end, message_insert

    (chunk,) = [c for c in server.store.chunks(VIDEO) if c.start_s <= 214 < c.end_s][:1]
    retrieved = RetrievedChunk(
        video_key=VIDEO,
        youtube_id=VIDEO,
        video_title=TITLE,
        start_s=chunk.start_s,
        end_s=chunk.end_s,
        text=chunk.text,
        score=1.0,
    )
    citation = Citation(chunk=retrieved, seconds=214).message()
    conversation_id = server.store.start_conversation([VIDEO], transport="webrtc", persona="tutor")
    with server.store.engine.begin() as conn:
        conn.execute(message_insert(conversation_id, "user", Q1_TEXT))
        conn.execute(message_insert(conversation_id, "assistant", Q1_ANSWER, citations=[citation]))
        conn.execute(conversation_end(conversation_id))
    return conversation_id
