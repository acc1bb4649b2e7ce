"""What the user can hand to ``backtalk ingest`` / ``talk``: YouTube URLs, ids, caption files.

Everything here is validation without I/O beyond checking a local file exists, so a
batch with a bad input is refused before any network request or database write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from backtalk.errors import InvalidVideoIdError

__all__ = [
    "CAPTION_SUFFIXES",
    "CaptionFileSource",
    "Source",
    "YouTubeSource",
    "parse_source",
    "parse_video_id",
]

CAPTION_SUFFIXES = (".vtt", ".srt", ".json")
_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{11}")
#: Hosts that serve YouTube watch pages (youtube-nocookie serves embeds only).
_YOUTUBE_HOSTS = {
    "youtube.com",
    "www.youtube.com",
    "m.youtube.com",
    "music.youtube.com",
    "youtube-nocookie.com",
    "www.youtube-nocookie.com",
}
#: A URL scheme such as ``javascript:`` (but not ``host:443``).
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):(?!\d)")
_SHORT_HOSTS = {"youtu.be", "www.youtu.be"}
#: Path prefixes whose next segment is the video id.
_ID_PATHS = ("shorts", "embed", "live", "v", "e")


def parse_video_id(value: str) -> str:
    """The 11-character YouTube id in a URL or bare id.

    Accepts ``watch?v=``, ``youtu.be/``, ``/shorts/``, ``/embed/``, ``/live/``,
    ``/v/`` URLs on www./m./music.youtube.com and youtube-nocookie.com, with or
    without scheme; other query parameters (``t=``, ``si=``, ``list=``) are ignored.

    Args:
        value: What the user typed.

    Returns:
        The video id.

    Raises:
        InvalidVideoIdError: with the reason the value is not a YouTube video.
    """
    raw = value.strip()
    if not raw:
        raise InvalidVideoIdError(value, "empty input; give a YouTube URL or an 11-character id")
    if _VIDEO_ID.fullmatch(raw):
        return raw
    scheme = _SCHEME.match(raw)
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        raise InvalidVideoIdError(value, f"unsupported scheme {scheme.group(1)!r}; use a https URL")
    url = raw if "://" in raw else f"https://{raw}"
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise InvalidVideoIdError(value, "not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidVideoIdError(value, f"unsupported scheme {parts.scheme!r}; use a https URL")
    if "." not in host and "://" not in raw:
        raise InvalidVideoIdError(
            value,
            "not a YouTube URL, an 11-character video id, or a caption file "
            f"({', '.join(CAPTION_SUFFIXES)}) that exists",
        )
    segments = [s for s in parts.path.split("/") if s]
    candidate: str | None = None
    if host in _SHORT_HOSTS:
        candidate = segments[0] if segments else None
    elif host in _YOUTUBE_HOSTS:
        if segments[:1] == ["watch"]:
            candidate = (parse_qs(parts.query).get("v") or [None])[0]
        elif len(segments) >= 2 and segments[0] in _ID_PATHS:
            candidate = segments[1]
        elif segments[:1] == ["playlist"]:
            raise InvalidVideoIdError(
                value, "a playlist URL; give the URL of one video in it (watch?v=...)"
            )
    else:
        raise InvalidVideoIdError(value, f"{host!r} is not a YouTube host")
    if candidate is None:
        raise InvalidVideoIdError(value, "no video id in this YouTube URL")
    if not _VIDEO_ID.fullmatch(candidate):
        raise InvalidVideoIdError(
            value, f"{candidate!r} is not a YouTube video id (11 characters of A-Z a-z 0-9 _ -)"
        )
    return candidate


@dataclass(frozen=True, slots=True)
class YouTubeSource:
    """A video to fetch from YouTube.

    Parameters:
        video_id: 11-character id.
        given: The input as the user typed it (for messages).
    """

    video_id: str
    given: str

    @property
    def key(self) -> str:
        """The video's key in the store: its YouTube id."""
        return self.video_id


@dataclass(frozen=True, slots=True)
class CaptionFileSource:
    """A local caption file.

    Parameters:
        path: The ``.vtt``, ``.srt`` or youtube-transcript-api ``.json`` file.
        given: The input as the user typed it.
        key: The video's key in the store (``--id``, else derived from the file name).
        title: Display title (``--title``, else derived from the file name).
        youtube_id: The YouTube video these captions belong to, if known (enables
            deep links); a file named after a YouTube id counts as known.
    """

    path: Path
    given: str
    key: str
    title: str
    youtube_id: str | None = None


Source = YouTubeSource | CaptionFileSource


def _slug(stem: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")
    return slug[:64] or "captions"


def parse_source(value: str, *, title: str | None = None, youtube_id: str | None = None) -> Source:
    """Classify one input: a caption file if it names one, else a YouTube video.

    Args:
        value: A path, URL or id.
        title: Title for a caption file (ignored for YouTube).
        youtube_id: YouTube id (or URL) a caption file belongs to.

    Returns:
        The parsed source.

    Raises:
        InvalidVideoIdError: not a usable file, URL or id, with the reason.
    """
    if not value.strip():
        raise InvalidVideoIdError(value, "empty input; give a YouTube URL, an id or a caption file")
    path = Path(value).expanduser()
    looks_like_file = path.suffix.lower() in CAPTION_SUFFIXES or path.exists()
    if looks_like_file:
        if not path.is_file():
            raise InvalidVideoIdError(value, "no such caption file")
        if path.suffix.lower() not in CAPTION_SUFFIXES:
            raise InvalidVideoIdError(
                value, f"unsupported caption format; use one of {', '.join(CAPTION_SUFFIXES)}"
            )
        linked = parse_video_id(youtube_id) if youtube_id else None
        if linked is None and _VIDEO_ID.fullmatch(path.stem):
            linked = path.stem
        return CaptionFileSource(
            path=path,
            given=value,
            key=linked or _slug(path.stem),
            title=title or path.stem.replace("_", " ").replace("-", " ").strip().capitalize(),
            youtube_id=linked,
        )
    return YouTubeSource(video_id=parse_video_id(value), given=value)
