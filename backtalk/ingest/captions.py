"""Caption files: WebVTT (webvtt-py), SubRip (pysrt), youtube-transcript-api JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pysrt
import webvtt
from pydantic import BaseModel, TypeAdapter, ValidationError

from backtalk.errors import CaptionFileError
from backtalk.ingest.segments import Segment

__all__ = ["read_caption_file"]


class _Snippet(BaseModel):
    """One entry of ``FetchedTranscript.to_raw_data()``."""

    text: str
    start: float
    duration: float


_SNIPPETS = TypeAdapter(list[_Snippet])


def _read_vtt(path: Path) -> list[Segment]:
    captions = webvtt.read(str(path))
    return [
        Segment(
            c.text,
            c.start_time.in_milliseconds() / 1000,
            (c.end_time.in_milliseconds() - c.start_time.in_milliseconds()) / 1000,
        )
        for c in captions
    ]


def _read_srt(path: Path) -> list[Segment]:
    items = pysrt.open(str(path), encoding="utf-8", error_handling=pysrt.ERROR_RAISE)
    return [
        Segment(i.text, i.start.ordinal / 1000, (i.end.ordinal - i.start.ordinal) / 1000)
        for i in items
    ]


def _read_json(path: Path) -> list[Segment]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return [Segment(s.text, s.start, s.duration) for s in _SNIPPETS.validate_python(data)]


_READERS = {".vtt": _read_vtt, ".srt": _read_srt, ".json": _read_json}


def read_caption_file(path: Path) -> list[Segment]:
    """Read a caption file into segments (markup is left for :func:`clean_text`).

    Args:
        path: A ``.vtt``, ``.srt``, or ``.json`` file in youtube-transcript-api's
            raw shape (a list of ``{"text", "start", "duration"}``, seconds).

    Returns:
        Segments with times in seconds.

    Raises:
        CaptionFileError: unreadable, malformed, or without any caption.
    """
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise CaptionFileError(str(path), f"unsupported format; use one of {', '.join(_READERS)}")
    try:
        segments = reader(path)
    except OSError as exc:
        raise CaptionFileError(str(path), f"cannot read it ({exc.strerror or exc})") from exc
    except UnicodeDecodeError:
        raise CaptionFileError(str(path), "not UTF-8 text; re-save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise CaptionFileError(str(path), f"not valid JSON (line {exc.lineno})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CaptionFileError(
            str(path),
            f"not a youtube-transcript-api transcript: at {where}: {first['msg']} "
            '(expected a list of {"text", "start", "duration"})',
        ) from None
    except (webvtt.errors.MalformedFileError, webvtt.errors.MalformedCaptionError) as exc:
        raise CaptionFileError(str(path), f"not a valid WebVTT file ({exc})") from None
    except Exception as exc:  # pysrt raises bare errors on malformed input
        raise CaptionFileError(str(path), f"could not parse it ({type(exc).__name__})") from None
    if not segments:
        raise CaptionFileError(str(path), "contains no captions")
    return segments
