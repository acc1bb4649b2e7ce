"""Synthetic but realistic text for the benchmarks, made from the fixture transcripts.

* :func:`library` — chunk texts of ~100-130 words spread over videos of 60-200 chunks,
  each video drawing on one stretch ("topic") of a fixture transcript plus lines a
  word-level Markov chain (order 1, over both transcripts) generates around it, so
  texts vary while staying on topic within a video.
* :func:`questions` — the 16 questions of ``qa.json`` plus questions built from
  spoken-question templates and 2-5-word spans of the transcripts.
* :func:`docstring_sources` — a much wider source for the same two generators: the prose
  sentences of the installed packages' docstrings, one "transcript" per module. Two
  fixture transcripts give a million chunks drawn from a few hundred lines, so every
  question sits almost equally far from thousands of near-duplicates; thousands of
  modules on as many subjects are closer to a real library of many videos.
* :func:`auto_caption_transcript` — an N-hour transcript in youtube-transcript-api's
  raw JSON shape, auto-caption style (lowercase lines of 4-12 words every ~2-3 s).
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from benchmarks._common import fixture_lines, qa_questions

_END = "\0"


@dataclass(frozen=True)
class Library:
    """A synthetic library.

    Attributes:
        texts: Chunk texts, grouped by video, in video order.
        video_of: ``video index`` of each chunk (0-based).
        video_sizes: Chunks per video.
    """

    texts: list[str]
    video_of: list[int]
    video_sizes: list[int]


class _Markov:
    def __init__(self, lines: list[str]):
        self.succ: dict[str, list[str]] = defaultdict(list)
        for line in lines:
            words = line.split()
            for a, b in zip(words, [*words[1:], _END], strict=True):
                self.succ[a].append(b)
        self.words = list(self.succ)  # restart points (the same order as the dict's keys)

    def line(self, rng: random.Random, start: str, min_words: int, max_words: int) -> str:
        n = rng.randint(min_words, max_words)
        words = [start]
        while len(words) < n:
            options = self.succ.get(words[-1])
            nxt = rng.choice(options) if options else _END
            if nxt == _END:
                nxt = rng.choice(self.words)
            words.append(nxt)
        return " ".join(words)


def library(
    n_chunks: int,
    *,
    seed: int = 7,
    window: int = 40,
    generated: int = 40,
    sources: list[list[str]] | None = None,
) -> Library:
    """``n_chunks`` chunk texts over videos of 60-200 chunks (see the module docstring).

    Args:
        n_chunks: How many chunks in total.
        seed: Random seed (the corpus is deterministic for given sources).
        window: Consecutive source lines a video's topic is drawn from.
        generated: Markov lines added to each video's pool.
        sources: Lines per source document (default: the fixture transcripts).
    """
    rng = random.Random(seed)
    if sources is None:
        sources = list(fixture_lines().values())
    markov = _Markov([line for lines in sources for line in lines])
    texts: list[str] = []
    video_of: list[int] = []
    sizes: list[int] = []
    while len(texts) < n_chunks:
        size = min(rng.randint(60, 200), n_chunks - len(texts))
        lines = rng.choices(sources, weights=[len(s) for s in sources])[0]
        offset = rng.randrange(len(lines))
        pool = [lines[(offset + i) % len(lines)] for i in range(min(window, len(lines)))]
        topic_words = [w for line in pool for w in line.split()]
        pool += [markov.line(rng, rng.choice(topic_words), 4, 12) for _ in range(generated)]
        lengths = [len(line.split()) for line in pool]
        video = len(sizes)
        for _ in range(size):
            target = rng.randint(100, 130)
            parts, words = [], 0
            while words < target:
                i = rng.randrange(len(pool))
                parts.append(pool[i])
                words += lengths[i]
            texts.append(" ".join(parts))
            video_of.append(video)
        sizes.append(size)
    return Library(texts, video_of, sizes)


_TEMPLATES = (
    "what does the speaker say about {p}?",
    "can you explain the part about {p}?",
    "why does {p} matter?",
    "how does {p} work?",
    "wait, what was that about {p}?",
    "tell me more about {p}",
    "go back to where they talk about {p}",
    "what did they mean by {p}?",
    "is {p} really that important?",
    "explain {p} more simply",
    "what's the deal with {p}?",
    "where in the video does it mention {p}?",
)


def questions(n: int, *, seed: int = 11, sources: list[list[str]] | None = None) -> list[str]:
    """``n`` user questions.

    With the default (fixture) sources, the ``qa.json`` questions first, then generated
    ones; with other ``sources``, all generated from their lines.
    """
    rng = random.Random(seed)
    if sources is None:
        out = [q["question"] for q in qa_questions()]
        sources = list(fixture_lines().values())
    else:
        out = []
    lines = [line for lines in sources for line in lines]
    while len(out) < n:
        words = rng.choice(lines).split()
        span = rng.randint(2, min(5, len(words)))
        start = rng.randrange(len(words) - span + 1)
        phrase = " ".join(words[start : start + span]).strip(".,?!").lower()
        out.append(rng.choice(_TEMPLATES).format(p=phrase))
    return out[:n]


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_PROSE_WORD = re.compile(r"^[A-Za-z][a-z]*[,.;:!?]?$")


@functools.cache
def docstring_sources(*, min_sentences: int = 8) -> list[list[str]]:
    """Prose sentences of the installed packages' docstrings, one list per module.

    Parsed once per process (~35 s here) and cached: every size of a retrieval run uses
    the same sources. Treat the result as read-only.

    Reads every ``.py`` file under the running interpreter's ``site-packages`` (sorted,
    so the result is fixed for a fixed set of installed packages), takes the module,
    class and function docstrings (``ast.get_docstring``), joins each paragraph, and
    keeps sentences of 6-40 words of which at least 85 % are plain words (no code,
    reST directives or tables). Modules with fewer than ``min_sentences`` are skipped.

    Returns:
        One list of sentences per module, in path order.
    """
    site = Path(sysconfig.get_paths()["purelib"])
    out: list[list[str]] = []
    for path in sorted(site.rglob("*.py")):
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError):
            continue
        sentences: list[str] = []
        for node in ast.walk(tree):
            if not isinstance(
                node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
            ):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for paragraph in doc.split("\n\n"):
                if paragraph.lstrip().startswith((">>>", "..", ":", "-", "*", "|", "=")):
                    continue
                for sentence in _SENTENCE_SPLIT.split(" ".join(paragraph.split())):
                    words = sentence.split()
                    if 6 <= len(words) <= 40 and sum(
                        bool(_PROSE_WORD.match(w)) for w in words
                    ) >= 0.85 * len(words):
                        sentences.append(sentence)
        if len(sentences) >= min_sentences:
            out.append(sentences)
    return out


def auto_caption_transcript(hours: float, *, seed: int = 3) -> list[dict]:
    """A youtube-transcript-api raw transcript of ``hours`` hours, auto-caption style.

    Lines of 4-12 words, lowercase, start every 2-3 s, each ``duration`` running to the
    start of the line after next (as YouTube's rolling captions do), with an
    occasional ``[Music]`` cue. Words come from the lecture fixture's lines, re-cut and
    re-combined by a word-level Markov chain, so the text never repeats verbatim.
    """
    rng = random.Random(seed)
    lines = fixture_lines()["gradient_descent_lecture"]
    markov = _Markov(lines)
    vocab = [w for line in lines for w in line.split()]
    end = hours * 3600.0
    starts: list[float] = []
    t = rng.uniform(0.0, 2.0)
    while t < end:
        starts.append(round(t, 3))
        t += rng.uniform(2.0, 3.0)
    out = []
    for i, start in enumerate(starts):
        nxt2 = starts[i + 2] if i + 2 < len(starts) else start + 5.0
        if rng.random() < 0.005:
            text = "[Music]"
        elif rng.random() < 0.5:
            text = rng.choice(lines)
            words = text.split()
            if not 4 <= len(words) <= 12:
                text = markov.line(rng, rng.choice(vocab), 4, 12)
        else:
            text = markov.line(rng, rng.choice(vocab), 4, 12)
        out.append({"text": text.lower(), "start": start, "duration": round(nxt2 - start, 3)})
    return out
