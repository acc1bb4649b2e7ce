"""Fetching a YouTube transcript (youtube-transcript-api) and the video's title (oEmbed).

This module is the only importer of ``youtube_transcript_api``. Each of its failures
becomes a :class:`~backtalk.errors.TranscriptUnavailableError` with its own cause and
remedy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import requests
from youtube_transcript_api import (
    AgeRestricted,
    CouldNotRetrieveTranscript,
    IpBlocked,
    NoTranscriptFound,
    PoTokenRequired,
    RequestBlocked,
    TranscriptsDisabled,
    VideoUnavailable,
    VideoUnplayable,
    YouTubeTranscriptApi,
)
from youtube_transcript_api.proxies import GenericProxyConfig, ProxyConfig, WebshareProxyConfig

from backtalk.errors import TranscriptUnavailableError
from backtalk.ingest.segments import Segment

__all__ = ["YouTubeProxy", "YouTubeTranscript", "fetch_youtube_transcript"]

logger = logging.getLogger("backtalk.ingest")

OEMBED_URL = "https://www.youtube.com/oembed"
_CAPTION_FILE_REMEDY = (
    "You can still ingest the captions from a file: `backtalk ingest captions.vtt --youtube-id ID`."
)


@dataclass(frozen=True, slots=True)
class YouTubeProxy:
    """How to reach YouTube when it blocks this machine's IP.

    Parameters:
        url: A generic HTTP(S) proxy URL (``BACKTALK_YOUTUBE_PROXY_URL``).
        webshare_username / webshare_password: Webshare rotating residential proxy
            credentials, the remedy youtube-transcript-api documents.
    """

    url: str | None = None
    webshare_username: str | None = None
    webshare_password: str | None = None

    def config(self) -> ProxyConfig | None:
        """The youtube-transcript-api proxy config, or None for a direct connection."""
        if self.webshare_username and self.webshare_password:
            return WebshareProxyConfig(
                proxy_username=self.webshare_username, proxy_password=self.webshare_password
            )
        if self.url:
            return GenericProxyConfig(http_url=self.url, https_url=self.url)
        return None


@dataclass(frozen=True, slots=True)
class YouTubeTranscript:
    """A fetched transcript and what we know about its video.

    Parameters:
        video_id: 11-character id.
        title / channel: From YouTube oEmbed; a placeholder title if that failed.
        language_code: Language of the transcript fetched.
        is_generated: True for YouTube's automatic captions.
        segments: The caption lines.
    """

    video_id: str
    title: str
    channel: str | None
    language_code: str
    is_generated: bool
    segments: list[Segment]


def _unavailable(
    video_id: str, exc: Exception, languages: Sequence[str], available: Sequence[str] = ()
) -> TranscriptUnavailableError:
    if isinstance(exc, IpBlocked | RequestBlocked):
        return TranscriptUnavailableError(
            video_id,
            "YouTube is blocking requests from this IP address (common on cloud servers).",
            "Set BACKTALK_WEBSHARE_PROXY_USERNAME and BACKTALK_WEBSHARE_PROXY_PASSWORD "
            "(rotating residential proxies) or BACKTALK_YOUTUBE_PROXY_URL, then retry. "
            + _CAPTION_FILE_REMEDY,
            stop_batch=True,
        )
    if isinstance(exc, TranscriptsDisabled):
        return TranscriptUnavailableError(
            video_id,
            "Subtitles are turned off for this video.",
            "Nothing can be fetched from YouTube. " + _CAPTION_FILE_REMEDY,
        )
    if isinstance(exc, NoTranscriptFound):
        listing = f" Available: {', '.join(available)}." if available else ""
        return TranscriptUnavailableError(
            video_id,
            f"No transcript in {', '.join(languages)}.{listing}",
            "Ask for another language with --language CODE (or BACKTALK_TRANSCRIPT_LANGUAGES).",
        )
    if isinstance(exc, AgeRestricted):
        return TranscriptUnavailableError(
            video_id,
            "The video is age-restricted; YouTube only shows its captions to signed-in users.",
            _CAPTION_FILE_REMEDY,
        )
    if isinstance(exc, VideoUnavailable):
        return TranscriptUnavailableError(
            video_id,
            "The video is unavailable (removed, private, or the id is wrong).",
            "Check the URL opens in a browser.",
        )
    if isinstance(exc, VideoUnplayable):
        reason = getattr(exc, "reason", None) or "no reason given"
        return TranscriptUnavailableError(
            video_id,
            f"YouTube says the video cannot be played here ({reason}).",
            "It may be region-locked or members-only. " + _CAPTION_FILE_REMEDY,
        )
    if isinstance(exc, PoTokenRequired):
        return TranscriptUnavailableError(
            video_id,
            "YouTube requires a proof-of-origin token for this video's captions.",
            "Upgrade youtube-transcript-api (pip install -U youtube-transcript-api). "
            + _CAPTION_FILE_REMEDY,
        )
    if isinstance(exc, requests.RequestException):
        return TranscriptUnavailableError(
            video_id,
            f"Could not reach YouTube ({type(exc).__name__}).",
            "Check your network connection or proxy settings and retry.",
            stop_batch=True,
        )
    return TranscriptUnavailableError(
        video_id,
        f"YouTube refused the transcript ({type(exc).__name__}).",
        "Retry later. " + _CAPTION_FILE_REMEDY,
    )


def _oembed(video_id: str, session: requests.Session) -> tuple[str, str | None]:
    """Title and channel from YouTube's oEmbed endpoint (no key needed)."""
    try:
        response = session.get(
            OEMBED_URL,
            params={"url": f"https://www.youtube.com/watch?v={video_id}", "format": "json"},
            timeout=10,
        )
        response.raise_for_status()
        data = response.json()
        return str(data.get("title") or f"YouTube video {video_id}"), data.get("author_name")
    except (requests.RequestException, ValueError) as exc:
        logger.info(
            "No oEmbed title for %s (%s); using a placeholder", video_id, type(exc).__name__
        )
        return f"YouTube video {video_id}", None


def fetch_youtube_transcript(
    video_id: str,
    *,
    languages: Sequence[str] = ("en",),
    proxy: YouTubeProxy | None = None,
) -> YouTubeTranscript:
    """Fetch a video's transcript in the first available preferred language.

    For each language in order, a manually created transcript is preferred over
    YouTube's automatic one (youtube-transcript-api's ``find_transcript`` order).

    Args:
        video_id: 11-character id.
        languages: Language codes in order of preference.
        proxy: Proxy settings, for when YouTube blocks this IP.

    Returns:
        The transcript with title and channel.

    Raises:
        TranscriptUnavailableError: with a cause and remedy for each failure kind;
            ``stop_batch`` is set when YouTube blocks this IP.
    """
    session = requests.Session()
    proxy_config = proxy.config() if proxy else None
    if proxy_config is not None:
        session.proxies = proxy_config.to_requests_dict()
    api = YouTubeTranscriptApi(proxy_config=proxy_config, http_client=session)
    available: list[str] = []
    try:
        transcripts = api.list(video_id)
        available = sorted({t.language_code for t in transcripts})
        fetched = transcripts.find_transcript(list(languages)).fetch()
    except (CouldNotRetrieveTranscript, requests.RequestException) as exc:
        raise _unavailable(video_id, exc, languages, available) from exc
    title, channel = _oembed(video_id, session)
    return YouTubeTranscript(
        video_id=video_id,
        title=title,
        channel=channel,
        language_code=fetched.language_code,
        is_generated=fetched.is_generated,
        segments=[Segment(s.text, float(s.start), float(s.duration)) for s in fetched.snippets],
    )
