"""Transcript segments and the text clean-up every source goes through."""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Segment", "clean_text"]

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


def _visible(char: str) -> bool:
    # Cf: format characters (zero-width, bidi overrides/isolates, BOM);
    # Co: private use; Cc: control characters other than ordinary whitespace.
    category = unicodedata.category(char)
    if category in ("Cf", "Co"):
        return False
    return not (category == "Cc" and char not in "\t\n\r")


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
    text = _TAG.sub("", text)
    text = _SOUND_CUE.sub(" ", text)
    if not (text.isascii() and text.isprintable()):  # plain ASCII needs neither step
        text = unicodedata.normalize("NFKC", text)
        text = "".join(ch for ch in text if _visible(ch))
    return _SPACE.sub(" ", text).strip()
