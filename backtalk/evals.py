"""Retrieval evaluation on a QA file: recall@k and MRR per question kind, offline.

A QA file is a JSON list of ``{"video", "question", "answer_start", "answer_end",
"kind"}`` (seconds; ``kind`` one of ``factual``, ``conceptual``, ``follow_up``,
``off_topic``, ``playhead``; a follow-up has ``"after"``: the index of the question it
follows; an off-topic question has null times). ``video`` is the video's key in the
library. ``"position_s"`` (optional) is where the player was when the question was
asked: retrieval then combines the playhead with the search exactly as the agent does
(:class:`backtalk.processors.playhead.PlayheadRetriever`), so "what did he just say?"
is scored on the chunks under the playhead.

A retrieved chunk is a hit when its time window overlaps ``[answer_start,
answer_end)``. Recall@k is the share of answerable questions with a hit in the top
k; MRR is the mean of 1/rank of the first hit (0 when none). For off-topic questions
the measure is whether the similarity floor declines them (no chunk scores above it),
and, for answerable ones, whether the floor keeps them.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, TypeAdapter, ValidationError

from backtalk.errors import UsageError, VideoNotFoundError
from backtalk.processors.playhead import DEFAULT_BEFORE_S, merge_playhead, refers_to_playhead
from backtalk.processors.retrieval import RetrievedChunk
from backtalk.store.embedders import Embedder
from backtalk.store.repo import Store

__all__ = ["EvalReport", "KindScore", "QACase", "evaluate", "load_qa"]


class QACase(BaseModel):
    """One question of a QA file."""

    video: str
    question: str
    answer_start: float | None = None
    answer_end: float | None = None
    kind: str
    after: int | None = None
    position_s: float | None = None

    @property
    def answerable(self) -> bool:
        """True when the answer is somewhere in the video."""
        return self.answer_start is not None and self.answer_end is not None

    def is_hit(self, chunk: RetrievedChunk) -> bool:
        """Whether ``chunk``'s window overlaps the answer range."""
        assert self.answer_start is not None and self.answer_end is not None
        return chunk.start_s < self.answer_end and chunk.end_s > self.answer_start


_CASES = TypeAdapter(list[QACase])


def load_qa(path: Path) -> list[QACase]:
    """Read and validate a QA file.

    Raises:
        UsageError: unreadable or not of the expected shape (the message says where).
    """
    try:
        return _CASES.validate_python(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc}).") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON (line {exc.lineno}).") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{path}: at {where}: {first['msg']}.") from None


def build_query(history: Sequence[str], question: str, *, turns: int) -> str:
    """The retrieval query for ``question`` given the user's earlier messages.

    With ``turns == 1`` the query is the question alone; with ``turns == n`` the
    previous ``n - 1`` user messages are prepended, so that "explain that again, more
    simply" carries what "that" was.
    """
    previous = list(history)[-(turns - 1) :] if turns > 1 else []
    return " ".join([*previous, question])


@dataclass
class KindScore:
    """Scores of one question kind (or ``all``).

    Parameters:
        n: Questions of this kind.
        recall: Share of answerable questions with a hit in the top k.
        mrr: Mean reciprocal rank of the first hit.
        kept: Share of answerable questions whose top chunk clears the floor.
        declined: Share of off-topic questions the floor declines.
    """

    n: int = 0
    recall: float = 0.0
    mrr: float = 0.0
    kept: float | None = None
    declined: float | None = None


@dataclass
class EvalReport:
    """Result of :func:`evaluate`.

    Parameters:
        k: Chunks retrieved per question.
        query_turns: User messages in each query (see :func:`build_query`).
        min_score: The similarity floor applied, or None.
        kinds: Per-kind scores, plus ``all`` over answerable questions.
        top_scores: ``(kind, top-1 similarity)`` per question, for calibration.
    """

    k: int
    query_turns: int
    min_score: float | None
    kinds: dict[str, KindScore] = field(default_factory=dict)
    top_scores: list[tuple[str, float]] = field(default_factory=list)


def evaluate(
    store: Store,
    embedder: Embedder,
    cases: Sequence[QACase],
    *,
    k: int = 5,
    query_turns: int = 2,
    min_score: float | None = None,
    use_position: bool = True,
) -> EvalReport:
    """Run each question against its video and score the retrieval.

    Questions are asked in file order as one conversation per video, so a
    question's history is the earlier questions on the same video (for a
    follow-up, the question it follows comes last).

    Args:
        store: The library holding every video named in ``cases``.
        embedder: The library's embedder.
        cases: The QA set.
        k: Chunks per question.
        query_turns: User messages per query (1 = the question alone).
        min_score: Similarity floor; None to skip the floor measures.
        use_position: Use each case's ``position_s`` (the playhead); False scores
            the similarity search alone, for comparison.

    Raises:
        VideoNotFoundError: a case names a video not in the library.
    """
    videos = store.find_videos(sorted({c.video for c in cases}))
    for case in cases:
        if case.video not in videos:
            raise VideoNotFoundError(case.video)
    report = EvalReport(k=k, query_turns=query_turns, min_score=min_score)
    history: dict[str, list[str]] = defaultdict(list)
    per_kind: dict[str, list[tuple[bool, float, bool]]] = defaultdict(list)
    for case in cases:
        past = history[case.video]
        if case.after is not None:
            past = [*past, cases[case.after].question]
        query = build_query(past, case.question, turns=query_turns)
        history[case.video].append(case.question)
        hits = store.search(embedder.embed([query])[0], k=k, video_ids=[videos[case.video].id])
        top = hits[0].score if hits else -1.0
        if use_position and case.position_s is not None and refers_to_playhead(case.question):
            around = store.chunks_around(case.video, case.position_s, before_s=DEFAULT_BEFORE_S)
            hits = merge_playhead(around, hits, k=k, playhead_s=case.position_s)
            top = 1.0  # the agent keeps playhead chunks whatever their similarity
        report.top_scores.append((case.kind, top))
        above = min_score is None or top >= min_score
        if not case.answerable:
            per_kind[case.kind].append((False, 0.0, above))
            continue
        rank = next((i for i, chunk in enumerate(hits, 1) if case.is_hit(chunk)), None)
        per_kind[case.kind].append((rank is not None, 1.0 / rank if rank else 0.0, above))
    answerable = [row for kind, rows in per_kind.items() if kind != "off_topic" for row in rows]
    for kind, rows in [*sorted(per_kind.items()), ("all", answerable)]:
        if not rows:
            continue
        score = KindScore(n=len(rows))
        if kind == "off_topic":
            score.declined = sum(not above for _, _, above in rows) / len(rows)
        else:
            score.recall = sum(hit for hit, _, _ in rows) / len(rows)
            score.mrr = sum(rr for _, rr, _ in rows) / len(rows)
            score.kept = sum(above for _, _, above in rows) / len(rows)
        report.kinds[kind] = score
    return report
