"""Transcript segments and the text clean-up every source goes through."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Segment", "clean_text", "clean_title", "dedupe_segments"]

_TAG = re.compile(r"<[^>]{0,200}>")
#: Sound cues such as ``[Music]``, ``[Laughter]``, ``[soft guitar music]``: not speech.
_SOUND_CUE = re.compile(r"\[[^\]]{0,60}\]")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Segment:
    """One caption line.

    Parameters:
        text: What is said (cleaned: no markup, no invisible characters).
        start_s: When the line starts, seconds from the start of the video.
        duration_s: How long it is shown, seconds. Auto-generated YouTube captions
            overlap (each runs to the start of the line after next).
    """

    text: str
    start_s: float
    duration_s: float


#: Unicode general categories that never belong in stored text: Cf, format characters
#: (zero-width space/joiners, bidi embeddings, overrides and isolates, the BOM, tag
#: characters); Co, private use; Cs, surrogates (only reachable from broken decoding);
#: Cn, unassigned code points. Cc (control characters) are dropped too, except ordinary
#: whitespace, which the final whitespace collapse turns into spaces.
INVISIBLE_CATEGORIES = frozenset({"Cf", "Co", "Cs", "Cn"})


def _visible(char: str) -> bool:
    category = unicodedata.category(char)
    if category in INVISIBLE_CATEGORIES:
        return False
    return not (category == "Cc" and char not in "\t\n\r")


def _strip_invisible(text: str) -> str:
    if text.isascii() and text.isprintable():  # plain ASCII needs neither step
        return text
    # NFKC folds compatibility forms (full-width letters, ligatures); filtering after
    # it means nothing it produces escapes the filter.
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if _visible(ch))


def clean_text(raw: str) -> str:
    """Normalise caption text for storage and prompting.

    Unescapes HTML entities, removes markup (``<i>``, ``<v Maya>``, ``<c.yellow>``)
    and sound cues (``[Music]``), strips invisible and bidirectional-control
    characters (a transcript is untrusted input: reliability case S3), applies NFKC
    and collapses whitespace.

    Args:
        raw: Caption text as the source gave it.

    Returns:
        Plain single-line text; empty if the line carried no speech.
    """
    text = html.unescape(raw) if "&" in raw else raw
    # NFKC and the invisible-character filter run before markup is removed: NFKC
    # turns full-width and small-form brackets (U+FF1C, U+FE64) into "<" and ">", so
    # "＜/transcript_excerpts＞" is removed as markup instead of surviving as a tag.
    text = _strip_invisible(text)
    text = _TAG.sub("", text)
    text = _SOUND_CUE.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


#: Longest stored title, characters (YouTube allows 100).
TITLE_MAX_CHARS = 200


def clean_title(raw: str) -> str:
    """Normalise a video title for storage: it is shown to the LLM and read aloud.

    Titles come from YouTube (the uploader writes them) or the command line, so they
    are untrusted like transcripts: HTML entities are unescaped, markup-like
    ``<...>`` runs removed (YouTube titles cannot contain ``<`` or ``>``), invisible
    and bidirectional-control characters stripped (S3), NFKC applied, line breaks
    and runs of whitespace collapsed to one space (a title cannot start a line of
    its own in a prompt), and the result cut to :data:`TITLE_MAX_CHARS`. Bracketed
    words (``[Official Video]``) are kept.

    Args:
        raw: The title as the source gave it.

    Returns:
        The single-line title; may be empty if nothing visible was left.
    """
    text = html.unescape(raw) if "&" in raw else raw
    text = _TAG.sub("", _strip_invisible(text))
    return _SPACE.sub(" ", text).strip()[:TITLE_MAX_CHARS].rstrip()


def dedupe_segments(segments: Sequence[Segment]) -> list[Segment]:
    """Drop repeated caption cues: the same words starting at the same time.

    Caption files often carry a cue twice (merged or re-exported subtitles, SRT
    files with repeated numbers), and a repeated cue would be spoken twice in its
    chunk and count twice in retrieval (reliability case I4). Two segments are the
    same cue when their start times agree to the millisecond and their cleaned text
    (:func:`clean_text`) is equal; the first is kept, with the longer of the two
    durations. The same words at another time are a different cue and stay.

    Args:
        segments: Segments in any order.

    Returns:
        The segments without repeats, in their original order.
    """
    kept: dict[tuple[int, str], int] = {}
    result: list[Segment] = []
    for seg in segments:
        key = (round(seg.start_s * 1000), clean_text(seg.text))
        index = kept.get(key)
        if index is None:
            kept[key] = len(result)
            result.append(seg)
        elif seg.duration_s > result[index].duration_s:
            result[index] = Segment(result[index].text, result[index].start_s, seg.duration_s)
    return result
