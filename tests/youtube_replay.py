"""Replay YouTube's HTTP exchanges for the real ``youtube-transcript-api`` client.

The machine running the tests has no route to YouTube, so this module registers
hand-made responses on a ``responses.RequestsMock``, the same way the library's
own test-suite does. The real ``YouTubeTranscriptApi`` then runs unmodified: it
GETs the watch page, pulls the ``INNERTUBE_API_KEY`` out of it, POSTs to the
innertube ``player`` endpoint, reads ``playabilityStatus`` and the caption track
list, and GETs the chosen track's ``timedtext`` XML. Backtalk's own title lookup
(a GET of YouTube's oEmbed endpoint) is registered too.

The response bodies are small files in ``tests/fixtures/youtube/`` (see the
README there); they are shaped like YouTube's responses but written by hand.
The transcript text comes from ``tests/fixtures/transcripts/``.

Typical use::

    import responses
    from youtube_transcript_api import YouTubeTranscriptApi
    from youtube_replay import GRADIENT_VIDEO_ID, load_snippets, register_video

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        register_video(rsps, GRADIENT_VIDEO_ID)
        fetched = YouTubeTranscriptApi().fetch(GRADIENT_VIDEO_ID, languages=["en"])
        assert fetched.to_raw_data() == load_snippets()

Every request is matched on the video id, so any number of videos can share one
mock. Registering the same video id a second time queues the new exchanges
behind the old ones: when two registrations match, ``responses`` serves the
first one once and then drops it. So::

    register_video(rsps, vid, scenario="ip_blocked")
    register_video(rsps, vid)

makes the first attempt fail with ``IpBlocked`` and the retry succeed.
``register_video`` also works on the module-level mock (``responses.mock``)
used with ``@responses.activate``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from string import Template
from typing import Any, Literal, get_args
from urllib.parse import parse_qs, urlencode, urlsplit

import responses
from requests import PreparedRequest
from responses import matchers

__all__ = [
    "CHANNEL_URL",
    "FIXTURES_DIR",
    "GRADIENT_CHANNEL",
    "GRADIENT_TITLE",
    "GRADIENT_VIDEO_ID",
    "INNERTUBE_API_KEY",
    "SCENARIOS",
    "Scenario",
    "TRANSCRIPT_FIXTURES_DIR",
    "YOUTUBE_FIXTURES_DIR",
    "load_snippets",
    "oembed_url",
    "register_video",
    "snippets_to_timedtext_xml",
    "watch_url",
]

GRADIENT_VIDEO_ID = "GDlecture01"  # 11 chars, our fictional video for gradient_descent_lecture.json
GRADIENT_TITLE = "Gradient Descent, Explained Simply"
GRADIENT_CHANNEL = "Backtalk Test Lectures"

Scenario = Literal[
    "ok",
    "transcripts_disabled",
    "no_transcript",
    "video_unavailable",
    "age_restricted",
    "request_blocked",
    "ip_blocked",
    "unplayable",
]
SCENARIOS: tuple[str, ...] = get_args(Scenario)

FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
YOUTUBE_FIXTURES_DIR = FIXTURES_DIR / "youtube"
TRANSCRIPT_FIXTURES_DIR = FIXTURES_DIR / "transcripts"

# Made up; it only has to match the client's r'"INNERTUBE_API_KEY":\s*"([a-zA-Z0-9_-]+)"'.
INNERTUBE_API_KEY = "backtalk-replay-innertube-key"
CHANNEL_URL = "https://www.youtube.com/@backtalk-test-lectures"

_WATCH_URL = "https://www.youtube.com/watch"
_PLAYER_URL = "https://www.youtube.com/youtubei/v1/player"
_TIMEDTEXT_URL = "https://www.youtube.com/api/timedtext"
_OEMBED_URL = "https://www.youtube.com/oembed"

_HTML = "text/html; charset=utf-8"
_JSON = "application/json; charset=UTF-8"
_XML = "text/xml; charset=UTF-8"

# Which innertube player file each scenario answers with (None: the watch page already fails).
_PLAYER_FILES: dict[str, str | None] = {
    "ok": "player_ok.json",
    "no_transcript": "player_ok.json",
    "transcripts_disabled": "player_transcripts_disabled.json",
    "video_unavailable": "player_video_unavailable.json",
    "age_restricted": "player_age_restricted.json",
    "request_blocked": "player_bot_check.json",
    "unplayable": "player_unplayable.json",
    "ip_blocked": None,
}

_LANGUAGE_NAMES = {
    "de": "German",
    "en": "English",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "nl": "Dutch",
    "pt": "Portuguese",
}


def watch_url(video_id: str) -> str:
    """The watch-page URL youtube-transcript-api GETs for ``video_id``."""
    return f"{_WATCH_URL}?v={video_id}"


def oembed_url(video_id: str) -> str:
    """The oEmbed URL Backtalk GETs for ``video_id``'s title and channel."""
    return f"{_OEMBED_URL}?{urlencode({'url': watch_url(video_id), 'format': 'json'})}"


def load_snippets(name: str = "gradient_descent_lecture") -> list[dict]:
    """Load ``tests/fixtures/transcripts/<name>.json`` (``[{"text", "start", "duration"}]``)."""
    path = TRANSCRIPT_FIXTURES_DIR / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def snippets_to_timedtext_xml(snippets: Sequence[dict]) -> str:
    """Render snippets as a YouTube ``timedtext`` document (the default, non-srv3 format).

    YouTube HTML-escapes caption text and then XML-escapes the result (an apostrophe
    arrives as ``&amp;#39;``); the client undoes both, so text round-trips exactly
    unless it contains something that looks like an HTML tag (``<...>``), which the
    client strips just as it would for a real video. Times are written to the
    millisecond, as YouTube does. Empty text yields an empty element, which the
    client skips.
    """
    lines = ['<?xml version="1.0" encoding="utf-8" ?><transcript>']
    for snippet in snippets:
        text = html.escape(snippet["text"], quote=True).replace("&#x27;", "&#39;")
        start = _seconds(snippet["start"])
        duration = _seconds(snippet.get("duration", 0.0))
        lines.append(
            f'<text start="{start}" dur="{duration}">{html.escape(text, quote=False)}</text>'
        )
    lines.append("</transcript>")
    return "\n".join(lines) + "\n"


def register_video(
    rsps: responses.RequestsMock,
    video_id: str,
    *,
    scenario: Scenario = "ok",
    snippets: list[dict] | None = None,
    language_code: str = "en",
    is_generated: bool = True,
    title: str = GRADIENT_TITLE,
    channel: str = GRADIENT_CHANNEL,
    manual_languages: tuple[str, ...] = (),
    manual_snippets: list[dict] | None = None,
) -> None:
    """Register the HTTP exchanges youtube-transcript-api and our oEmbed lookup make for one video.

    Args:
        rsps: the mock to register on (``responses.RequestsMock()`` or ``responses.mock``).
        video_id: the video id the client will be asked for.
        scenario: what YouTube does for this video:

            - ``"ok"``: one caption track in ``language_code`` (auto-generated unless
              ``is_generated=False``) carrying ``snippets``.
            - ``"no_transcript"``: like ``"ok"``, but the only track is German (``"de"``),
              or ``language_code`` if you pass one other than ``"en"``; asking for
              ``["en"]`` raises ``NoTranscriptFound``.
            - ``"transcripts_disabled"``: playable, but the player response has no
              ``captions`` -> ``TranscriptsDisabled``.
            - ``"video_unavailable"``: player status ``ERROR`` "This video is unavailable"
              -> ``VideoUnavailable``; oEmbed answers 404.
            - ``"age_restricted"``: ``LOGIN_REQUIRED`` with the age-gate reason
              -> ``AgeRestricted``.
            - ``"request_blocked"``: ``LOGIN_REQUIRED`` "Sign in to confirm you're not a
              bot" -> ``RequestBlocked`` (exactly that class, not ``IpBlocked``).
            - ``"ip_blocked"``: the watch page answers HTTP 429 with a reCAPTCHA page
              -> ``IpBlocked`` (a subclass of ``RequestBlocked``).
            - ``"unplayable"``: status ``UNPLAYABLE``, reason "Video unavailable", one
              sub-reason (geo-block) -> ``VideoUnplayable``.

            Except for ``"video_unavailable"``, oEmbed answers 200 with ``title`` and
            ``channel``.
        snippets: ``[{"text", "start", "duration"}]`` served for the track(s); defaults to
            ``gradient_descent_lecture.json``.
        language_code: language of the main track.
        is_generated: whether the main track is auto-generated (``kind: "asr"``).
        title: the video title (oEmbed ``title``, player ``videoDetails.title``).
        channel: the channel name (oEmbed ``author_name``, player ``videoDetails.author``).
        manual_languages: languages that also get a manually created track, e.g.
            ``("en",)`` gives an English video both a manual and an auto-generated
            track; the client prefers the manual one.
        manual_snippets: text for the manually created tracks; defaults to ``snippets``.
            Use different text to tell which track a caller picked.

    Every track is translatable into en/de/es/fr; a translated fetch
    (``transcript.translate("de").fetch()``) replays the source track's text.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; expected one of {SCENARIOS}")
    if snippets is None:
        snippets = load_snippets()
    if manual_snippets is None:
        manual_snippets = snippets

    tracks: list[tuple[str, bool, list[dict]]] = []  # (language, is_generated, snippets)
    if scenario in ("ok", "no_transcript"):
        main_language = language_code
        if scenario == "no_transcript" and language_code == "en":
            main_language = "de"
        tracks.append((main_language, is_generated, snippets))
        for language in manual_languages:
            if (language, False) not in [(lang, gen) for lang, gen, _ in tracks]:
                tracks.append((language, False, manual_snippets))
        if scenario == "no_transcript" and any(lang == "en" for lang, _, _ in tracks):
            raise ValueError("scenario 'no_transcript' must not have an English track")

    _register_oembed(
        rsps, video_id, found=scenario != "video_unavailable", title=title, channel=channel
    )

    if scenario == "ip_blocked":
        body = _template("watch_too_many_requests.html").substitute(video_id=html.escape(video_id))
        rsps.add(
            responses.GET,
            _WATCH_URL,
            body=body.encode("utf-8"),
            status=429,
            content_type=_HTML,
            match=[matchers.query_param_matcher({"v": video_id})],
        )
        return

    page = _template("watch.html").substitute(
        video_id=html.escape(video_id), title_html=html.escape(title), api_key=INNERTUBE_API_KEY
    )
    rsps.add(
        responses.GET,
        _WATCH_URL,
        body=page.encode("utf-8"),
        status=200,
        content_type=_HTML,
        match=[matchers.query_param_matcher({"v": video_id})],
    )

    player = _load_json(_PLAYER_FILES[scenario])
    details = player.get("videoDetails")
    if details is not None:
        details.update(
            videoId=video_id,
            title=title,
            author=channel,
            lengthSeconds=str(_length_seconds(snippets)),
        )

    if tracks:
        renderer = player["captions"]["playerCaptionsTracklistRenderer"]
        renderer["captionTracks"] = [
            _caption_track(video_id, language, generated) for language, generated, _ in tracks
        ]

    rsps.add(
        responses.POST,
        _PLAYER_URL,
        body=json.dumps(player, ensure_ascii=False).encode("utf-8"),
        status=200,
        content_type=_JSON,
        match=[
            matchers.query_param_matcher({"key": INNERTUBE_API_KEY}),
            matchers.json_params_matcher({"videoId": video_id}, strict_match=False),
        ],
    )

    for language, generated, track_snippets in tracks:
        rsps.add(
            responses.GET,
            _TIMEDTEXT_URL,
            body=snippets_to_timedtext_xml(track_snippets).encode("utf-8"),
            status=200,
            content_type=_XML,
            match=[_timedtext_matcher(video_id, language, generated)],
        )


# --------------------------------------------------------------------------- internals


def _template(name: str) -> Template:
    return Template((YOUTUBE_FIXTURES_DIR / name).read_text(encoding="utf-8"))


def _load_json(name: str) -> dict[str, Any]:
    return json.loads((YOUTUBE_FIXTURES_DIR / name).read_text(encoding="utf-8"))


def _seconds(value: float) -> str:
    return repr(round(float(value), 3))


def _length_seconds(snippets: Sequence[dict]) -> int:
    ends = [float(s["start"]) + float(s.get("duration", 0.0)) for s in snippets]
    return int(max(ends, default=0.0))


def _language_name(language_code: str) -> str:
    return _LANGUAGE_NAMES.get(language_code, language_code)


def _caption_track(video_id: str, language_code: str, is_generated: bool) -> dict[str, Any]:
    """One ``captionTracks`` entry, shaped like YouTube's."""
    query = {"v": video_id, "caps": "asr", "hl": "en", "key": "yt8"}
    if is_generated:
        query["kind"] = "asr"
    query["lang"] = language_code
    # The client strips "&fmt=srv3" and so receives the plain <transcript> format.
    base_url = f"{_TIMEDTEXT_URL}?{urlencode(query)}&fmt=srv3"
    name = _language_name(language_code)
    track: dict[str, Any] = {
        "baseUrl": base_url,
        "name": {"runs": [{"text": f"{name} (auto-generated)" if is_generated else name}]},
        "vssId": f"{'a' if is_generated else ''}.{language_code}",
        "languageCode": language_code,
        "isTranslatable": True,
        "trackName": "",
    }
    if is_generated:
        track["kind"] = "asr"
    return track


def _timedtext_matcher(video_id: str, language_code: str, is_generated: bool):
    """Match a timedtext GET for one track: same v, lang and kind; tlang, fmt etc. are free."""

    def match(request: PreparedRequest) -> tuple[bool, str]:
        query = parse_qs(urlsplit(str(request.url)).query, keep_blank_values=True)
        wanted = {
            "v": [video_id],
            "lang": [language_code],
            "kind": ["asr"] if is_generated else None,
        }
        got = {key: query.get(key) for key in wanted}
        if got == wanted:
            return True, ""
        return False, f"timedtext query {got} doesn't match {wanted}"

    return match


def _oembed_matcher(video_id: str):
    """Match an oEmbed GET for ``video_id`` whatever the parameter order or URL encoding."""

    def match(request: PreparedRequest) -> tuple[bool, str]:
        query = parse_qs(urlsplit(str(request.url)).query, keep_blank_values=True)
        urls = query.get("url", [])
        formats = query.get("format", ["json"])
        if formats != ["json"]:
            return False, f"oEmbed format {formats} is not ['json']"
        if len(urls) != 1 or _video_id_from_url(urls[0]) != video_id:
            return False, f"oEmbed url {urls} is not a URL of video {video_id}"
        return True, ""

    return match


def _video_id_from_url(url: str) -> str | None:
    parts = urlsplit(url)
    host = parts.netloc.lower()
    if host in ("youtu.be", "www.youtu.be"):
        return parts.path.lstrip("/") or None
    if host in ("youtube.com", "www.youtube.com", "m.youtube.com"):
        if parts.path == "/watch":
            ids = parse_qs(parts.query).get("v", [])
            return ids[0] if len(ids) == 1 else None
        for prefix in ("/shorts/", "/embed/", "/live/"):
            if parts.path.startswith(prefix):
                return parts.path[len(prefix) :].strip("/") or None
    return None


def _register_oembed(
    rsps: responses.RequestsMock, video_id: str, *, found: bool, title: str, channel: str
) -> None:
    if not found:
        # What YouTube's oEmbed answers for a video that doesn't exist (private ones get 401).
        rsps.add(
            responses.GET,
            _OEMBED_URL,
            body="Not Found",
            status=404,
            content_type="text/html; charset=utf-8",
            match=[_oembed_matcher(video_id)],
        )
        return
    oembed = _load_json("oembed.json")
    embed_src = f"https://www.youtube.com/embed/{video_id}?feature=oembed"
    oembed.update(
        title=title,
        author_name=channel,
        author_url=CHANNEL_URL,
        thumbnail_url=f"https://i.ytimg.com/vi/{video_id}/hqdefault.jpg",
        html=(
            f'<iframe width="200" height="113" src="{embed_src}" frameborder="0" '
            f'allowfullscreen title="{html.escape(title)}"></iframe>'
        ),
    )
    rsps.add(
        responses.GET,
        _OEMBED_URL,
        body=json.dumps(oembed, ensure_ascii=False).encode("utf-8"),
        status=200,
        content_type=_JSON,
        match=[_oembed_matcher(video_id)],
    )
