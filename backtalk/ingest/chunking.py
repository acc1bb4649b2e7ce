"""Chunking: caption segments → time windows of about 30-60 s for retrieval.

A chunk is long enough to hold a complete thought (so an answer is retrieved whole)
and short enough that its time window is a useful citation. Windows close at the
first sentence end after ``target_s`` seconds, or at ``max_s`` seconds; captions
without punctuation (YouTube's auto-generated ones) close at ``target_s``.
A trailing window shorter than a third of ``target_s`` joins the one before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backtalk.ingest.segments import Segment, clean_text, dedupe_segments

__all__ = ["Chunk", "chunk_segments", "timed_segments"]

_SENTENCE_END = (".", "?", "!", "…", '."', '?"', '!"')


@dataclass(frozen=True, slots=True)
class Chunk:
    """A chunk of transcript.

    Parameters:
        text: The chunk's words, segments joined by spaces.
        start_s: Start of its first segment, seconds.
        end_s: End of its last segment, seconds.
    """

    text: str
    start_s: float
    end_s: float


def timed_segments(segments: Sequence[Segment]) -> list[tuple[str, float, float]]:
    """Clean, order and time segments as ``(text, start_s, end_s)``.

    Rolling auto-captions overlap: a line's ``start + duration`` runs past the next
    line's start. Each line therefore ends at the earlier of its own end and the
    next line's start. Lines with no speech left after cleaning are dropped, and a
    cue given twice (same start, same words) is kept once
    (:func:`~backtalk.ingest.segments.dedupe_segments`).

    Args:
        segments: Segments in any order.

    Returns:
        Non-empty lines in time order.
    """
    ordered = sorted(dedupe_segments(segments), key=lambda s: s.start_s)
    timed = []
    for i, seg in enumerate(ordered):
        end = seg.start_s + max(seg.duration_s, 0.0)
        if i + 1 < len(ordered) and ordered[i + 1].start_s > seg.start_s:
            end = min(end, ordered[i + 1].start_s)
        text = clean_text(seg.text)
        if text:
            timed.append((text, seg.start_s, max(end, seg.start_s)))
    return timed


def chunk_segments(
    segments: Sequence[Segment], *, target_s: float = 45.0, max_s: float = 60.0
) -> list[Chunk]:
    """Group segments into chunks (see the module docstring for the rule).

    Args:
        segments: The transcript.
        target_s: Preferred chunk length, seconds.
        max_s: Longest chunk, seconds (a single segment longer than this stays whole).

    Returns:
        Chunks in time order; empty if the transcript has no speech.

    Raises:
        ValueError: ``target_s`` is not positive or exceeds ``max_s``.
    """
    if not 0 < target_s <= max_s:
        raise ValueError(f"need 0 < target_s <= max_s, got {target_s}, {max_s}")
    lines = timed_segments(segments)
    if not lines:
        return []
    punctuated = sum(text.endswith(_SENTENCE_END) for text, _, _ in lines) >= 0.1 * len(lines)

    chunks: list[Chunk] = []
    current: list[tuple[str, float, float]] = []
    for line in lines:
        if current and line[2] - current[0][1] > max_s:
            chunks.append(_join(current))
            current = []
        current.append(line)
        length = line[2] - current[0][1]
        if length >= target_s and (not punctuated or line[0].endswith(_SENTENCE_END)):
            chunks.append(_join(current))
            current = []
    if current:
        tail = _join(current)
        if chunks and tail.end_s - tail.start_s < target_s / 3:
            last = chunks.pop()
            tail = Chunk(f"{last.text} {tail.text}", last.start_s, tail.end_s)
        chunks.append(tail)
    return chunks


def _join(lines: list[tuple[str, float, float]]) -> Chunk:
    return Chunk(" ".join(text for text, _, _ in lines), lines[0][1], lines[-1][2])
